"""The Diameter Mobile IPv4 application (RFC 4004) at the home AAA, sans-IO:
AMR, HAR/HAA, STR and ASR over the same home AAA role, store and sessions as
RADIUS.

The home AAA's decisions live in one place, :mod:`aaa_vpn.roles.home_aaa`,
which reads RADIUS Access-Requests. This role turns an AA-Mobile-Node-Request
into the Access-Request the foreign agent would have sent over RADIUS --
signed with that FA's RADIUS shared secret, as coming from its address --
lets the service layer have it decided, and turns the Access-Accept's view
back into an AA-Mobile-Node-Answer. A session created this way is an
ordinary session: renewed by the next AMR, pushed, disconnected or deleted
by the operator like any other (docs/diameter.md).

Rules (answers carry the Result-Code named; RFC 6733 section 7.1, RFC 4004
section 6):

1. An AMR needs Session-Id, Auth-Application-Id 2, Origin-Host,
   Origin-Realm, Destination-Realm, User-Name, MIP-Reg-Request and
   MIP-MN-AAA-Auth (RFC 4004 section 5.1); a missing one is 5005
   DIAMETER_MISSING_AVP with a Failed-AVP naming it.
2. The foreign agent is the RADIUS client whose name is the AMR's
   Origin-Host (case-insensitive), of role ``fa``, ``proxy`` or
   ``foreign-aaa``; none: 5003 DIAMETER_AUTHORIZATION_REJECTED. The
   Registration Request's care-of address must lie in that client's network
   (else 5003): it is the address the Access-Request comes "from". An AMR
   that a proxy relayed (a Route-Record names the hop before it) from a
   peer whose name is a client of role ``foreign-aaa`` is that client's
   request, as its RADIUS Access-Request would be: it comes "from" the
   client's address, the FA behind it is the foreign AAA's to vouch for,
   and the answer carries what that role gets (the session root key).
3. MIP-Reg-Request must be a Registration Request (RFC 5944 section 3.3)
   with an MN-AAA authentication extension (RFC 4721), and MIP-MN-AAA-Auth
   must describe that extension exactly: MIP-MN-AAA-SPI its SPI,
   MIP-Auth-Input-Data-Length the octets it covers, MIP-Authenticator-Offset
   where the authenticator starts and MIP-Authenticator-Length its length
   (RFC 4004 section 9.3); else 5004 DIAMETER_INVALID_AVP_VALUE with the AVP
   to blame. The MN-AAA proof is then checked by the home AAA (home_aaa rule
   4) exactly as over RADIUS: the 3GPP2 CHAP mapping needs SPI 2 (CHAP_SPI)
   and an MN-FA challenge (else 5004).
4. Keys leave only on a protected connection: every successful AMA carries
   keys (the MIP-FA-to-HA-MSA, the VPN paths), and Diameter has no
   end-to-end protection of AVPs, so an AMR that arrived on a connection
   that is neither TLS nor declared protected below Diameter is answered
   5025 DIAMETER_ERROR_END_TO_END_MIP_KEY_ENCRYPTION before anything is
   decided or stored (RFC 4004 sections 6.2 and 8).
5. The Diameter session (Session-Id) maps to the home AAA's session: the
   first AMR of a Session-Id creates (or moves) one; a later AMR with the
   same Session-Id names it, so it is renewed, re-keyed or updated as the
   home AAA decides (home_aaa rule 6). The mapping is also carried in the
   AMA's Class and Acct-Multi-Session-Id (the session id), which the FA
   echoes in STR; an AMR whose Session-Id is not (or no longer) known here
   names the session by its Class (the home AAA checks it, home_aaa rule 6,
   like any session a request names). It is forgotten on STR, on ASR, and once the session's
   lifetime has passed without a renewal.
6. The Access-Accept becomes an AMA with Result-Code 2001: Auth-Application-Id
   2, Auth-Session-State as asked (default STATE_MAINTAINED), User-Name,
   Authorization-Lifetime and MIP-MSA-Lifetime (the session's remaining
   lifetime), MIP-Home-Agent-Address, MIP-Mobile-Node-Address, the
   MIP-FA-to-HA-MSA (the session's FA-HA SPI and key, which the home AAA
   generated from the session root key; algorithm HMAC-SHA-1 per RFC 4004
   section 7.5, though the key serves the FA-HA authentication extension of
   RFC 5944 with HMAC-MD5 as the RADIUS profile's does), the MIP-Reg-Reply
   the home agent returned (rule 8), Class and Acct-Multi-Session-Id, and
   the VPN profile in the project's vendor AVPs (wire/diameter_profile.py).
7. An Access-Reject becomes: Unknown-User and Authentication-Failed 4001
   DIAMETER_AUTHENTICATION_REJECTED (no difference shown), User-Disabled
   5003, No-Session 5002 DIAMETER_UNKNOWN_SESSION_ID, Bad-Request 5004,
   Profile-Too-Large 5012 DIAMETER_UNABLE_TO_COMPLY, No-Resources 3004
   DIAMETER_TOO_BUSY; each with Error-Message. No reply (the store did not
   answer in time, home_aaa rule 10): 3004 DIAMETER_TOO_BUSY, which a
   client or relay may try again.
8. Home agent (RFC 4004 section 5.3): when the home agent's address belongs
   to a RADIUS client of role ``ha`` whose name is an open Diameter peer,
   the home AAA sends it a HAR with the Registration Request, the
   MIP-HA-to-FA-MSA, the addresses, lifetimes and the HA's own view of the
   VPN (decided by the home AAA as that HA's HA-Registration), and puts the
   HAA's MIP-Reg-Reply into the AMA; an HAA other than 2001 is answered
   4005 DIAMETER_ERROR_MIP_REPLY_FAILURE (with the reply it carried), no
   answer or no route 4006 DIAMETER_ERROR_HA_NOT_AVAILABLE. Otherwise the
   AMA carries no MIP-Reg-Reply and the FA relays the request to its home
   agent itself (RFC 5944), which asks the home AAA over RADIUS as always.
9. STR (RFC 6733 section 8.4): the session the Session-Id (or the Class)
   names is forgotten by the home AAA (as ``aaa-vpn session delete``); STA
   2001, or 5002 for a Session-Id we do not know. ASR (section 8.5) is sent
   to the FA of a Diameter session that the operator ended (deleted from the
   store): :meth:`DiameterHome.abort`.
10. Keys for the mobile node (RFC 4004 sections 7.5 and 9, RFC 3957): the
    home AAA generates a key for an MSA of the node when the AMR's
    MIP-Feature-Vector asks for it *and* the Registration Request carries the
    matching Key Generation Nonce Request of subtype AAA (which gives the
    node's SPI): MN-FA-Key-Request (32) with the MN-FA request (40),
    MN-HA-Key-Request (16) with the MN-HA request (42); without both, none.
    Each key has a nonce of :data:`NONCE_LENGTH` fresh octets from the
    role's random source and is ``HMAC-SHA1(MN-AAA secret, nonce || NAI)``
    (RFC 3957 section 5, the NAI of the request; the secret is the user's,
    with which the home AAA has just checked the MN-AAA proof, so only an
    accepted AMR gets keys). A fresh pair for every accepted AMR. MN-FA: the
    AMA carries MIP-MN-to-FA-MSA (MIP-MN-AAA-SPI = the request's MN-AAA SPI,
    the AAA SPI; MIP-Algorithm-Type; MIP-Nonce) for the node and
    MIP-FA-to-MN-MSA (MIP-FA-to-MN-SPI = the node's SPI; MIP-Algorithm-Type;
    MIP-Session-Key) for the FA, which builds the MN-FA Key Generation Nonce
    Reply. MN-HA: only with a HAR (rule 8), because the home agent builds the
    MN-HA Key Generation Nonce Reply (it precedes the MN-HA authenticator
    the HA computes, RFC 3957 section 6.4): the HAR carries MIP-MN-to-HA-MSA
    (MIP-MN-HA-SPI = the node's SPI, MIP-MN-AAA-SPI, algorithm,
    MIP-Replay-Mode 2 timestamps, MIP-Nonce) and MIP-HA-to-MN-MSA (algorithm,
    replay mode, MIP-Session-Key), the AMA MIP-MN-to-HA-MSA; an HA that asks
    over RADIUS gets no such key, so none is made. MIP-MSA-Lifetime (the
    session's remaining lifetime) is the keys' lifetime too. Keys leave only
    in MIP-Session-Key (rule 4), never in a log or a repr.

No sockets, no store, no clock: the service layer has each Access-Request
decided (:class:`Decide`) and hands the reply back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from aaa_vpn.model import Client, ClientRole
from aaa_vpn.roles.diameter_peer import answer_to
from aaa_vpn.secret import Secret
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire import mip
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Command, Message, ResultCode
from aaa_vpn.wire.diameter_profile import encode_profile_avps
from aaa_vpn.wire.mip_auth import derive_aaa_key, mn_aaa_proof, mn_identifier
from aaa_vpn.wire.mip_vpn import previous_fa
from aaa_vpn.wire.profile import MnKey, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_request import (
    Accepted,
    AccessRequest,
    Rejected,
    ReplyError,
    decode_access_reply,
    encode_access_request,
)

#: Rule 1: what an AMR must carry.
AMR_REQUIRED: tuple[tuple[int, str], ...] = (
    (C.SESSION_ID, "Session-Id"),
    (C.AUTH_APPLICATION_ID, "Auth-Application-Id"),
    (C.ORIGIN_HOST, "Origin-Host"),
    (C.ORIGIN_REALM, "Origin-Realm"),
    (C.DESTINATION_REALM, "Destination-Realm"),
    (C.USER_NAME, "User-Name"),
    (C.MIP_REG_REQUEST, "MIP-Reg-Request"),
    (C.MIP_MN_AAA_AUTH, "MIP-MN-AAA-Auth"),
)
#: Rule 7.
REJECT_RESULT: dict[RejectReason | None, int] = {
    RejectReason.UNKNOWN_USER: ResultCode.AUTHENTICATION_REJECTED,
    RejectReason.AUTHENTICATION_FAILED: ResultCode.AUTHENTICATION_REJECTED,
    RejectReason.USER_DISABLED: ResultCode.AUTHORIZATION_REJECTED,
    RejectReason.NO_SESSION: ResultCode.UNKNOWN_SESSION_ID,
    RejectReason.BAD_REQUEST: ResultCode.INVALID_AVP_VALUE,
    RejectReason.PROFILE_TOO_LARGE: ResultCode.UNABLE_TO_COMPLY,
    RejectReason.NO_RESOURCES: ResultCode.TOO_BUSY,
    None: ResultCode.AUTHORIZATION_REJECTED,
}
_FA_ROLES = frozenset({ClientRole.FA, ClientRole.PROXY, ClientRole.FOREIGN_AAA})
#: The AVPs (vendor, code) the application accepts with the M bit: the dictionary's.
KNOWN_AVPS: frozenset[tuple[int, int]] = frozenset(d.AVPS)
#: Rule 10: octets of a Key Generation Nonce (RFC 3957: at least 128 bits).
NONCE_LENGTH = 16
#: Rule 10: the feature bit and the request extension that ask for each key.
KEY_REQUESTS: dict[str, tuple[int, mip.ExtensionType]] = {
    "mn_fa": (d.FEATURE_MN_FA_KEY_REQUEST, mip.ExtensionType.MN_FA_KEY_REQUEST),
    "mn_ha": (d.FEATURE_MN_HA_KEY_REQUEST, mip.ExtensionType.MN_HA_KEY_REQUEST),
}
#: The commands of application 2 this home AAA serves.
COMMANDS = frozenset({Command.AA_MOBILE_NODE, Command.SESSION_TERMINATION, Command.ABORT_SESSION})


@dataclass(frozen=True)
class Decide:
    """Have ``datagram`` (an Access-Request from ``source``) decided by the home
    AAA, then call :meth:`DiameterHome.decided` with the reply (or None)."""

    datagram: bytes = field(repr=False)
    source: tuple[str, int]
    secret: Secret = field(repr=False)


@dataclass
class DiameterSession:
    """A Diameter session the home AAA serves (rule 5)."""

    diameter_id: str
    session_id: str
    nai: str
    fa_host: str
    fa_realm: str
    peer: str = ""
    """The Diameter peer its AMRs came through (the FA, or a relay)."""
    expires: float = 0.0
    """When the home AAA's session expires unless renewed (then it is forgotten here, no ASR)."""


@dataclass
class _Amr:
    """An AMR being answered."""

    handle: int
    message: Message
    client: Client
    rrq: bytes
    nai: str
    decide: Decide | None = None
    accepted: VpnProfile | None = None
    ha: Decide | None = None
    ha_host: str = ""
    reg_reply: bytes | None = None
    peer: str = ""
    mn_fa: MnKey | None = None
    mn_ha: MnKey | None = None
    """Rule 10: the keys made for the node (MN-HA only once a HAR carries it)."""
    mn_ha_sent: bool = False


class DiameterHome:
    """The RFC 4004 application of one home AAA process (module rules)."""

    def __init__(
        self,
        identity: d.Identity,
        clients: Callable[[], Sequence[Client]],
        random_bytes: Callable[[int], bytes],
        mn_aaa_secret: Callable[[str], Secret | None] = lambda _nai: None,
    ) -> None:
        self.identity = identity
        self.clients = clients
        self._random = random_bytes
        self._mn_aaa_secret = mn_aaa_secret
        """Rule 10: the user's MN-AAA secret by NAI (None: no keys are made)."""
        self._ids = itertools.count(1)
        self.sessions: dict[str, DiameterSession] = {}
        self._jobs: dict[int, _Amr] = {}
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- AMR --------------------------------------------------------------------------------------
    def amr(self, handle: int, message: Message, secure: bool, peer: str = "") -> Decide | Message:
        """Rules 1-5: the Access-Request to have decided, or the answer at once."""
        self._count("amr")
        for code, name in AMR_REQUIRED:
            if message.find(code) is None:
                example = d.encode_avp(d.Avp(code, bytes(4), mandatory=True))
                return self._error(message, ResultCode.MISSING_AVP, f"AMR without {name}", example)
        if message.u32(C.AUTH_APPLICATION_ID) != d.MOBILE_IPV4_APPLICATION:
            avp = message.find(C.AUTH_APPLICATION_ID)
            assert avp is not None
            return self._error(message, ResultCode.INVALID_AVP_VALUE, "Auth-Application-Id is not 2", d.encode_avp(avp))
        if not secure:
            return self._error(
                message,
                ResultCode.END_TO_END_MIP_KEY_ENCRYPTION,
                "keys are sent only over TLS or a connection declared protected",
            )
        host = message.origin_host or ""
        relay = None
        if peer and peer.lower() != host.lower() and message.find(C.ROUTE_RECORD) is not None:
            relay = next(
                (c for c in self.clients() if c.name.lower() == peer.lower() and c.role is ClientRole.FOREIGN_AAA),
                None,
            )
        client = relay or next(
            (c for c in self.clients() if c.name.lower() == host.lower() and c.role in _FA_ROLES), None
        )
        if client is None:
            return self._error(message, ResultCode.AUTHORIZATION_REJECTED, f"{host} is not a foreign agent here")
        reg = message.find(C.MIP_REG_REQUEST)
        assert reg is not None
        rrq_bytes = reg.value
        try:
            rrq = mip.decode_message(rrq_bytes)
            if not isinstance(rrq, mip.RegistrationRequest):
                raise mip.MipDecodeError("not a Registration Request", 0)
            proof = mn_aaa_proof(rrq_bytes)
            previous = previous_fa(rrq.extensions)
        except mip.MipDecodeError as exc:
            return self._error(message, ResultCode.INVALID_AVP_VALUE, f"MIP-Reg-Request: {exc}", d.encode_avp(reg))
        auth_avp = message.find(C.MIP_MN_AAA_AUTH)
        assert auth_avp is not None
        auth = {a.code: a.as_u32() for a in auth_avp.as_grouped() if not a.vendor and len(a.value) == 4}
        start = len(proof.preceding)
        described = (
            auth.get(C.MIP_MN_AAA_SPI),
            auth.get(C.MIP_AUTH_INPUT_DATA_LENGTH),
            auth.get(C.MIP_AUTHENTICATOR_OFFSET),
            auth.get(C.MIP_AUTHENTICATOR_LENGTH),
        )
        if described != (proof.spi, start, start, len(proof.authenticator)):
            return self._error(
                message,
                ResultCode.INVALID_AVP_VALUE,
                f"MIP-MN-AAA-Auth {described} does not describe the request's MN-AAA extension",
                d.encode_avp(auth_avp),
            )
        if relay is None and rrq.care_of_address not in client.network:
            return self._error(
                message,
                ResultCode.AUTHORIZATION_REJECTED,
                f"care-of address {rrq.care_of_address} is not {client.name}'s",
            )
        try:
            chap_password, chap_challenge = proof.chap_attributes()
        except mip.MipValueError as exc:
            return self._error(message, ResultCode.INVALID_AVP_VALUE, str(exc), d.encode_avp(auth_avp))
        nai = message.text(C.USER_NAME) or ""
        known = self.sessions.get(message.session_id or "")
        named = known.session_id if known is not None and known.nai == nai else None
        class_avp = message.find(C.CLASS)
        if named is None and class_avp is not None and 0 < len(class_avp.value) <= 64 and class_avp.value.isascii():
            named = class_avp.value.decode("ascii")
        home_agent = rrq.home_agent if int(rrq.home_agent) else None
        request = AccessRequest(
            nai=nai,
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=rrq.care_of_address,
            nas_identifier=host[:253],
            request_type=RequestType.FA_REGISTRATION,
            care_of_address=rrq.care_of_address,
            home_agent=home_agent,
            previous_fa=previous,
            session_id=named,
        )
        job = _Amr(handle, message, client, rrq_bytes, nai, peer=peer)
        job.decide = self._decide(request, client, rrq.care_of_address if relay is None else client.network[0])
        self._jobs[handle] = job
        return job.decide

    def _decide(self, request: AccessRequest, client: Client, source: IPv4Address) -> Decide:
        identifier = next(self._ids) & 0xFF
        datagram = encode_access_request(request, identifier, self._random(16), client.secret)
        # A port of its own per request: the home AAA's duplicate cache keys on
        # (source, Identifier, Request Authenticator).
        return Decide(datagram, (str(source), 1 + next(self._ids) % 65000), client.secret)

    def decided(self, handle: int, reply: bytes | None, now: float = 0.0) -> Message | VpnProfile | None:
        """The home AAA's reply to :meth:`amr`'s Access-Request: the error AMA
        (rule 7), or the FA's view when accepted -- then either
        :meth:`finish` answers, or rule 8 goes through the home agent first
        (:meth:`ha_request`, :meth:`har`, :meth:`haa`); None if ``handle``
        is unknown."""
        job = self._jobs.get(handle)
        if job is None or job.decide is None:
            return None
        if reply is None:
            del self._jobs[handle]
            return self._error(job.message, ResultCode.TOO_BUSY, "the home AAA could not decide in time")
        try:
            outcome = decode_access_reply(reply, job.decide.datagram, job.client.secret)
        except ReplyError as exc:
            del self._jobs[handle]
            return self._error(job.message, ResultCode.UNABLE_TO_COMPLY, f"internal: {exc}")
        if isinstance(outcome, Rejected):
            del self._jobs[handle]
            self._count("amr.rejected")
            return self._error(job.message, REJECT_RESULT.get(outcome.reason, 5003), outcome.message or "rejected")
        assert isinstance(outcome, Accepted)
        if outcome.profile is None:  # a confirmation: never asked for (no digest is named)
            del self._jobs[handle]
            return self._error(job.message, ResultCode.UNABLE_TO_COMPLY, "internal: a confirmation")
        job.accepted = outcome.profile
        job.mn_fa, job.mn_ha = self._mn_keys(job, outcome.profile.lifetime)
        session_id = outcome.profile.session_id
        diameter_id = job.message.session_id or ""
        self.sessions[diameter_id] = DiameterSession(
            diameter_id,
            session_id,
            job.nai,
            job.message.origin_host or "",
            job.message.origin_realm or "",
            job.peer,
            now + outcome.profile.lifetime,
        )
        return outcome.profile

    def _mn_keys(self, job: _Amr, lifetime: int) -> tuple[MnKey | None, MnKey | None]:
        """Rule 10: the MN-FA and MN-HA keys the AMR and its request ask for."""
        vector = job.message.find(C.MIP_FEATURE_VECTOR)
        features = vector.as_u32() if vector is not None and len(vector.value) == 4 else 0
        rrq = mip.decode_message(job.rrq)
        assert isinstance(rrq, mip.RegistrationRequest)
        asked = mip.aaa_key_requests(rrq.extensions)
        wanted = {name: asked.get(ext) for name, (bit, ext) in KEY_REQUESTS.items() if features & bit}
        if not any(wanted.values()):
            return None, None
        secret = self._mn_aaa_secret(job.nai)
        if secret is None:
            return None, None
        aaa_spi = mn_aaa_proof(job.rrq).spi
        identifier = mn_identifier(rrq)

        def make(name: str, replay: int | None) -> MnKey | None:
            request = wanted.get(name)
            if request is None:
                return None
            nonce = self._random(NONCE_LENGTH)
            return MnKey(
                spi=request.mn_spi,
                aaa_spi=aaa_spi,
                algorithm=d.ALGORITHM_HMAC_SHA1,
                nonce=nonce,
                key=derive_aaa_key(secret, nonce, identifier),
                lifetime=lifetime,
                replay_method=replay,
            )

        return make("mn_fa", None), make("mn_ha", d.REPLAY_TIMESTAMPS)

    def home_agent_client(self, address: IPv4Address) -> Client | None:
        """Rule 8: the RADIUS client of role ``ha`` that holds ``address``."""
        return next((c for c in self.clients() if c.role is ClientRole.HA and address in c.network), None)

    def ha_request(self, handle: int, ha: Client) -> Decide | None:
        """Rule 8: the HA's HA-Registration for the session just decided."""
        job = self._jobs.get(handle)
        if job is None or job.accepted is None:
            return None
        rrq = mip.decode_message(job.rrq)
        assert isinstance(rrq, mip.RegistrationRequest)
        proof = mn_aaa_proof(job.rrq)
        chap_password, chap_challenge = proof.chap_attributes()
        request = AccessRequest(
            nai=job.nai,
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=job.accepted.home_agent,
            nas_identifier=ha.name,
            request_type=RequestType.HA_REGISTRATION,
            care_of_address=rrq.care_of_address,
            session_id=job.accepted.session_id,
            key_epoch=job.accepted.epoch,
        )
        job.ha = self._decide(request, ha, job.accepted.home_agent)
        job.ha_host = ha.name
        return job.ha

    def har(self, handle: int, ha: Client, reply: bytes | None) -> Message | None:
        """Rule 8: the HAR to send to the HA, given the home AAA's answer to
        its HA-Registration; None if that was refused (then :meth:`finish`
        answers the AMR without the HA)."""
        job = self._jobs.get(handle)
        if job is None or job.ha is None or job.accepted is None or reply is None:
            return None
        try:
            outcome = decode_access_reply(reply, job.ha.datagram, ha.secret)
        except ReplyError:
            return None
        if not isinstance(outcome, Accepted) or outcome.profile is None:
            return None
        view = outcome.profile
        fa_view = job.accepted
        avps = [
            d.avp_text(C.SESSION_ID, job.message.session_id or ""),
            d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION),
            d.avp_text(C.ORIGIN_HOST, self.identity.host),
            d.avp_text(C.ORIGIN_REALM, self.identity.realm),
            d.avp_text(C.DESTINATION_REALM, self.identity.realm),
            d.avp_text(C.DESTINATION_HOST, ha.name),
            d.avp_u32(C.AUTHORIZATION_LIFETIME, view.lifetime),
            d.avp_u32(C.AUTH_SESSION_STATE, d.STATE_MAINTAINED),
            d.avp_octets(C.MIP_REG_REQUEST, job.rrq),
            d.avp_text(C.USER_NAME, job.nai),
            d.avp_address(C.MIP_MOBILE_NODE_ADDRESS, view.home_address),
            d.avp_address(C.MIP_HOME_AGENT_ADDRESS, view.home_agent),
            *_msa(C.MIP_HA_TO_FA_MSA, C.MIP_HA_TO_FA_SPI, fa_view.fa_ha_spi, fa_view.fa_ha_key),
            d.avp_u32(C.MIP_MSA_LIFETIME, view.lifetime),
            *encode_profile_avps(view),
        ]
        if job.mn_ha is not None:  # rule 10
            avps += [_nonce_msa(C.MIP_MN_TO_HA_MSA, job.mn_ha), _key_msa(C.MIP_HA_TO_MN_MSA, job.mn_ha)]
            job.mn_ha_sent = True
        return Message(Command.HOME_AGENT_MIP, True, d.MOBILE_IPV4_APPLICATION, avps=tuple(avps), proxiable=True)

    def haa(self, handle: int, answer: Message | None) -> Message | None:
        """Rule 8: the HA's answer (None: none came); returns the AMA."""
        job = self._jobs.get(handle)
        if job is None:
            return None
        if answer is None:
            del self._jobs[handle]
            return self._error(job.message, ResultCode.HA_NOT_AVAILABLE, f"home agent {job.ha_host} did not answer")
        reply = answer.find(C.MIP_REG_REPLY)
        job.reg_reply = reply.value if reply is not None else None
        if answer.result_code != ResultCode.SUCCESS:
            del self._jobs[handle]
            extra = [reply] if reply is not None else []
            return self._error(
                job.message, ResultCode.MIP_REPLY_FAILURE, f"home agent answered {answer.result_code}", avps=extra
            )
        return self.finish(handle)

    def finish(self, handle: int) -> Message:
        """Rule 6: the AMA of an accepted AMR."""
        job = self._jobs.pop(handle)
        profile = job.accepted
        assert profile is not None
        request = job.message
        avps = [
            d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION),
            d.avp_u32(C.AUTH_SESSION_STATE, state if (state := request.u32(C.AUTH_SESSION_STATE)) is not None else 0),
            d.avp_text(C.USER_NAME, job.nai),
            d.avp_u32(C.AUTHORIZATION_LIFETIME, profile.lifetime),
            d.avp_octets(C.CLASS, profile.session_id.encode()),
            d.avp_text(C.ACCT_MULTI_SESSION_ID, profile.session_id),
            d.avp_address(C.MIP_HOME_AGENT_ADDRESS, profile.home_agent),
            d.avp_address(C.MIP_MOBILE_NODE_ADDRESS, profile.home_address),
            *_msa(C.MIP_FA_TO_HA_MSA, C.MIP_FA_TO_HA_SPI, profile.fa_ha_spi, profile.fa_ha_key),
            d.avp_u32(C.MIP_MSA_LIFETIME, profile.lifetime),
        ]
        if job.mn_fa is not None:  # rule 10
            avps += [_nonce_msa(C.MIP_MN_TO_FA_MSA, job.mn_fa), _key_msa(C.MIP_FA_TO_MN_MSA, job.mn_fa)]
            self._count("keys.mn_fa")
        if job.mn_ha is not None and job.mn_ha_sent:
            avps.append(_nonce_msa(C.MIP_MN_TO_HA_MSA, job.mn_ha))
            self._count("keys.mn_ha")
        if job.reg_reply is not None:
            avps.append(d.avp_octets(C.MIP_REG_REPLY, job.reg_reply))
        avps += encode_profile_avps(profile)
        self._count("amr.accepted")
        return answer_to(request, self.identity, ResultCode.SUCCESS, avps)

    # -- STR / ASR --------------------------------------------------------------------------------
    def str_(self, message: Message) -> tuple[str | None, Message]:
        """Rule 9: (the home AAA session to forget, or None; the STA)."""
        self._count("str")
        known = self.sessions.pop(message.session_id or "", None)
        if known is None:
            return None, self._error(message, ResultCode.UNKNOWN_SESSION_ID, "no such session", avps=())
        return known.session_id, answer_to(
            message, self.identity, ResultCode.SUCCESS, [d.avp_octets(C.CLASS, known.session_id.encode())]
        )

    def ended(self, now: float, gone: Callable[[str], bool]) -> list[Message]:
        """Rule 9: the ASRs for the Diameter sessions whose home AAA session
        ``gone`` says the operator ended; sessions past their lifetime are
        forgotten without one (the FA lets them expire too)."""
        out = []
        for session in list(self.sessions.values()):
            if now >= session.expires:
                del self.sessions[session.diameter_id]
            elif gone(session.session_id):
                out.append(self.abort(session))
        return out

    def abort(self, session: DiameterSession) -> Message:
        """Rule 9: the ASR for a session the operator ended."""
        self.sessions.pop(session.diameter_id, None)
        self._count("asr")
        return Message(
            Command.ABORT_SESSION,
            True,
            d.MOBILE_IPV4_APPLICATION,
            avps=(
                d.avp_text(C.SESSION_ID, session.diameter_id),
                d.avp_text(C.ORIGIN_HOST, self.identity.host),
                d.avp_text(C.ORIGIN_REALM, self.identity.realm),
                d.avp_text(C.DESTINATION_REALM, session.fa_realm),
                d.avp_text(C.DESTINATION_HOST, session.fa_host),
                d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION),
                d.avp_text(C.USER_NAME, session.nai),
            ),
            proxiable=True,
        )

    def forget(self, handle: int) -> None:
        self._jobs.pop(handle, None)

    def _error(
        self,
        request: Message,
        code: int,
        text: str,
        failed_avp: bytes = b"",
        avps: Sequence[d.Avp] = (),
    ) -> Message:
        self._count(f"result.{code}")
        extra = [d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION), *avps]
        return answer_to(request, self.identity, code, extra, error_message=text, failed_avp=failed_avp)


def _msa(group: int, spi_code: int, spi: int | None, key: Secret | None) -> list[d.Avp]:
    """An FA-HA MSA (RFC 4004 section 9): SPI, MIP-Algorithm-Type, MIP-Session-Key."""
    if spi is None or key is None:
        return []
    assert d.MSA_SPI[group] == spi_code
    return [d.encode_msa(group, d.Msa(d.ALGORITHM_HMAC_SHA1, spi, key.value))]


def _nonce_msa(group: int, key: MnKey) -> d.Avp:
    """Rule 10: MIP-MN-to-FA-MSA or MIP-MN-to-HA-MSA, what the node derives its key from."""
    spi = key.spi if group in d.MSA_SPI else None
    return d.encode_msa(
        group, d.Msa(key.algorithm, spi, nonce=key.nonce, replay_mode=key.replay_method, aaa_spi=key.aaa_spi)
    )


def _key_msa(group: int, key: MnKey) -> d.Avp:
    """Rule 10: MIP-FA-to-MN-MSA or MIP-HA-to-MN-MSA, the key itself for the agent."""
    return d.encode_msa(group, d.Msa(key.algorithm, key.spi, session_key=key.key.value, replay_mode=key.replay_method))


__all__ = [
    "AMR_REQUIRED",
    "COMMANDS",
    "KEY_REQUESTS",
    "KNOWN_AVPS",
    "NONCE_LENGTH",
    "REJECT_RESULT",
    "Decide",
    "DiameterHome",
    "DiameterSession",
]
