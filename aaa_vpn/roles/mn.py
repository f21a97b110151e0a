"""The mobile node simulator, sans-IO: registers with NAI, MN-HA and MN-AAA
authentication, moves between foreign agents, deregisters.

Rules (RFC 5944 sections 3.3, 3.6 and 5.7; RFC 4721):

1. A Registration Request carries, in this order: the NAI (RFC 2794), the
   previous FA when moving (an NVSE, docs/protocol.md), MN-HA authentication,
   the MN-FA challenge of this FA if it has one, and MN-AAA authentication
   with CHAP_SPI (RFC 4721 sections 6 and 8). Its Identification is a
   timestamp (section 5.7), new for every request, retransmissions included.
2. Without a challenge of that FA it sends the request anyway: the FA answers
   105 (or 104/106) with a fresh challenge, and the node sends again at once.
   Every accepted reply may carry the challenge for the next registration.
3. An accepted reply must carry a valid MN-HA authenticator, or it is
   ignored (the node keeps waiting and retransmits). The granted lifetime is
   the smaller of the requested and the replied one.
4. Unanswered requests are sent again (RFC 5944 section 3.6.3): the first
   time after ``retransmit`` seconds (at least 1 s in a real deployment),
   then twice as long each time, never longer than the requested lifetime;
   at most ``attempts`` transmissions, and a last wait as long as the one
   before; then the registration fails (reported as code 78). Each
   transmission has a new Identification (timestamps, section 5.7) and the
   same challenge -- the node has no other until a reply brings one --,
   which is how the FA recognises it (fa.py rule R1, RFC 4721).
5. A reply answers the outstanding registration if its Identification
   matches that of any of the registration's transmissions (the low 32
   bits, section 5.7) and it authenticates: an agent that got the request
   more than once answers one of them, not necessarily the last.
6. With ``request_keys`` every registration (not a deregistration) asks the
   home AAA for an MN-FA and an MN-HA key (RFC 3957 sections 3 and 6.1,
   6.3): Generalized MN-FA and MN-HA Key Generation Nonce Requests of
   subtype AAA, naming ``mn_fa_key_spi`` and ``mn_ha_key_spi``, right after
   the NAI (so that every authenticator covers them).
7. A reply that carries an MN-HA Key Generation Nonce Reply from AAA (RFC
   3957 section 6.4; AAA SPI the one of its MN-AAA extension, replay method
   timestamps, a nonce of at least 16 octets, an Algorithm Identifier the
   node computes: HMAC-SHA-1, 2; otherwise no key, counted) is checked with
   the key the node derives, ``HMAC-SHA1(MN-AAA secret, nonce || NAI)``
   (section 5), under ``mn_ha_key_spi`` and that algorithm (a 20-octet
   HMAC-SHA-1 authenticator); if it verifies, that MSA (SPI: the reply's HA
   SPI, which the HA allocated -- one below 256 gives no key --, its
   algorithm) authenticates the node's next requests while it lives (the
   reply's key lifetime) and the node is registered; a reply without one
   must verify under the MSA its request used (an MSA from AAA: under the
   node's own SPI, which the agents' messages to it name). Likewise an
   MN-FA Key Generation Nonce Reply: the key derived from it must verify
   the reply's MN-FA authentication (last extension, ``mn_fa_key_spi``,
   under the algorithm the nonce reply names), and is then kept
   (``mn_fa``); one that does not verify is not kept (counted). A
   deregistration, or the registration running out, returns the node to its
   provisioned MN-HA key (the home agent's binding and its MSA are gone).
8. While the node holds an MN-FA MSA from AAA, its requests through the FA
   that gave it (renewals, retransmissions, its deregistration) end with
   MN-FA authentication (RFC 5944 sections 3.5.3 and 3.6.1.3: after MN-HA,
   the challenge and MN-AAA) under the MSA's SPI (the reply's FA SPI, which
   the FA allocated) and algorithm. A request through another FA, or after the MSA's lifetime,
   drops it: it is with that one FA only.
9. An FA that answers 107 (RFC 3957 section 7: it has no MN-FA key to give)
   to a request that asked for one is asked again at once -- with the
   challenge its denial brought, like rule 2 -- without the MN-FA Key
   Generation Nonce Request, and never asked for one again by this node
   (counted ``keys.mn_fa_unavailable``); the MN-HA request stays.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from aaa_vpn.roles.agent import Address, Agent, Channel, RegistrationDone, backoff
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import (
    ChallengeExtension,
    ExtensionType,
    GeneralizedAuthSubtype,
    KeyGenAlgorithm,
    KeyReplyExtension,
    KeyRequestExtension,
    NaiExtension,
    RegistrationFlags,
    ReplyCode,
)
from aaa_vpn.wire.mip_auth import (
    CHAP_SPI,
    DEFAULT_ALGORITHM,
    FIRST_ALLOCATED_SPI,
    append_authentication,
    append_generalized_authentication,
    derive_aaa_key,
    msa_algorithm,
    verify_authentication,
)
from aaa_vpn.wire.mip_replay import identification_matches, timestamp_identification
from aaa_vpn.wire.mip_vpn import previous_fa_extension

_CHALLENGE_CODES = (ReplyCode.FA_MISSING_CHALLENGE, ReplyCode.FA_UNKNOWN_CHALLENGE, ReplyCode.FA_STALE_CHALLENGE)
#: How often one registration starts over with a challenge an FA's reply brought (rule 2).
CHALLENGE_RETRIES = 2
#: Rule 7: the shortest Key Generation Nonce the node accepts (RFC 3957: at least 128 bits).
MIN_NONCE = 16


@dataclass(frozen=True)
class Msa:
    """A mobility security association of the node: the SPI its authentication
    extensions carry, the key and the algorithm (rule 7: HMAC-MD5 for the
    provisioned MN-HA key, the one a Key Generation Nonce Reply names for an
    MSA from AAA)."""

    spi: int
    key: Secret = field(repr=False)
    until: float = float("inf")
    algorithm: KeyGenAlgorithm = DEFAULT_ALGORITHM
    reply_spi: int | None = None
    """The SPI the agent's messages to the node name, if not :attr:`spi`: for
    an MSA from AAA the node's own (it allocated it, the agent the one its
    requests name; RFC 4004 sections 9.1, 9.4-9.6)."""


@dataclass(frozen=True)
class MnConfig:
    """A mobile node's identity and keys."""

    nai: str
    home_address: IPv4Address
    home_agent: IPv4Address
    mn_ha_spi: int
    mn_ha_key: Secret = field(repr=False)
    mn_aaa_secret: Secret = field(repr=False)
    lifetime: int = 600
    retransmit: float = 1.0
    """Seconds before the first retransmission (doubled each time, rule 4)."""
    attempts: int = 5
    """Transmissions of one request before it fails: 5 wait 1+2+4+8+16 = 31 s in all,
    longer than an FA's worst case (RADIUS, then ha_timeout: docs/protocol.md section 3.11)."""
    request_keys: bool = False
    """Rule 6: ask the home AAA for an MN-FA and an MN-HA key (RFC 3957)."""
    mn_fa_key_spi: int = 0x3958
    """Rule 6: the SPI the node gives the MSA with its FA (Mobile Node SPI of its request)."""
    mn_ha_key_spi: int = 0x3957
    """Rule 6: the SPI the node gives the MSA with its HA; not its provisioned ``mn_ha_spi``."""


def give_up_after(config: MnConfig, lifetime: int | None = None) -> float:
    """The longest one registration (or, ``lifetime`` 0, deregistration) can
    take before the node reports 78: ``attempts`` transmissions and their
    waits (rule 4), started over at most :data:`CHALLENGE_RETRIES` times with
    a new challenge (rule 2)."""
    lifetime = config.lifetime if lifetime is None else lifetime
    waits = [backoff(config.retransmit, n) for n in range(1, config.attempts + 1)]
    if lifetime:
        waits = [min(w, max(config.retransmit, float(lifetime))) for w in waits]
    return (1 + CHALLENGE_RETRIES) * sum(waits)


@dataclass
class _Outstanding:
    fa: Address
    lifetime: int
    previous_fa: IPv4Address | None
    identification: int = 0
    identifications: list[int] = field(default_factory=list)  # of every transmission (rule 5)
    attempts: int = 0
    challenge_retries: int = 0
    timer: int | None = None
    msa: Msa | None = None  # the MN-HA MSA its requests are authenticated with (rule 7)
    mn_fa: Msa | None = None  # the MN-FA MSA with this FA its requests end with (rule 8)


class MobileNode(Agent):
    """One simulated mobile node."""

    def __init__(self, config: MnConfig, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.config = config
        self.random_bytes = random_bytes
        self.current_fa: Address | None = None
        self.registered_until = 0.0
        self._challenges: dict[str, bytes] = {}  # FA address -> challenge for the next request
        self._outstanding: _Outstanding | None = None
        self._last_sent = 0
        self.mn_ha: Msa | None = None
        """Rule 7: the MN-HA MSA AAA made, while it is in use."""
        self.mn_fa: Msa | None = None
        """Rule 7: the MN-FA MSA AAA made with the current FA."""
        self._mn_fa_at: Address | None = None
        self._no_mn_fa_key: set[str] = set()  # rule 9: FAs that answered 107

    # -- the API --------------------------------------------------------------------------------
    def register(self, fa: Address, now: float, previous_fa: IPv4Address | None = None) -> None:
        """Register through the FA at ``fa`` (its Mobile IP address and port)."""
        self._start(_Outstanding(fa, self.config.lifetime, previous_fa), now)

    def deregister(self, now: float) -> None:
        """Deregister (lifetime 0) through the current FA."""
        if self.current_fa is None:
            raise ValueError("not registered")
        self._start(_Outstanding(self.current_fa, 0, None), now)

    # -- inputs ---------------------------------------------------------------------------------
    def receive_datagram(self, channel: Channel, data: bytes, source: Address, now: float) -> None:
        outstanding = self._outstanding
        try:
            reply = mip.decode_registration_reply(data)
        except mip.MipDecodeError:
            self.counters["dropped.malformed"] += 1
            return
        if outstanding is None or source[0] != outstanding.fa[0]:
            self.counters["dropped.unexpected"] += 1
            return
        if not any(identification_matches(reply.identification, sent) for sent in outstanding.identifications):
            self.counters["dropped.unmatched"] += 1
            return
        challenge = next((e.challenge for e in reversed(reply.extensions) if isinstance(e, ChallengeExtension)), None)
        if challenge is not None:
            self._challenges[outstanding.fa[0]] = challenge
        if (
            reply.code in _CHALLENGE_CODES
            and challenge is not None
            and outstanding.challenge_retries < CHALLENGE_RETRIES
        ):
            # A new request with the challenge the FA gave: its own transmissions.
            outstanding.challenge_retries += 1
            outstanding.attempts = 0
            outstanding.identifications.clear()
            self._send_request(outstanding, now)
            return
        if (
            reply.code == ReplyCode.FA_MISSING_MN_FA_KEY
            and self.config.request_keys
            and outstanding.fa[0] not in self._no_mn_fa_key
            and outstanding.challenge_retries < CHALLENGE_RETRIES
        ):
            # Rule 9: this FA cannot give an MN-FA key: at once again, without asking for one.
            self._no_mn_fa_key.add(outstanding.fa[0])
            self.counters["keys.mn_fa_unavailable"] += 1
            outstanding.challenge_retries += 1
            outstanding.attempts = 0
            outstanding.identifications.clear()
            self._send_request(outstanding, now)
            return
        new_ha: Msa | None = None
        if reply.accepted:
            new_ha = self._new_key(reply, ExtensionType.MN_HA_KEY_REPLY, now)
            used = outstanding.msa or Msa(self.config.mn_ha_spi, self.config.mn_ha_key)
            check = used if new_ha is None else new_ha
            spi = check.spi if check.reply_spi is None else check.reply_spi
            if not verify_authentication(data, ExtensionType.MN_HA_AUTH, check.key, spi=spi, algorithm=check.algorithm):
                self.counters["dropped.bad_mn_ha_auth"] += 1
                return
        self._cancel(outstanding.timer)
        self._outstanding = None
        if reply.accepted:
            lifetime = min(reply.lifetime, outstanding.lifetime)
            self.current_fa = outstanding.fa if lifetime else None
            self.registered_until = now + lifetime
            if not lifetime:
                self.mn_ha = self.mn_fa = None  # the binding and its MSA are gone
            elif new_ha is not None:
                self.mn_ha = new_ha
                self.counters["keys.mn_ha"] += 1
            new_fa = self._new_key(reply, ExtensionType.MN_FA_KEY_REPLY, now)
            if self.mn_fa is not None and self.current_fa != self._mn_fa_at:
                self.mn_fa = None  # an MN-FA MSA is with one FA only
            if new_fa is not None and lifetime:
                spi, algorithm = self.config.mn_fa_key_spi, new_fa.algorithm  # the FA names the node's SPI
                if verify_authentication(data, ExtensionType.MN_FA_AUTH, new_fa.key, spi=spi, algorithm=algorithm):
                    self.mn_fa, self._mn_fa_at = new_fa, self.current_fa
                    self.counters["keys.mn_fa"] += 1
                else:
                    self.counters["keys.bad_mn_fa_auth"] += 1
            self._emit(RegistrationDone(self.config.nai, self.config.home_address, int(reply.code), lifetime))
        else:
            self._emit(RegistrationDone(self.config.nai, self.config.home_address, int(reply.code), 0, "denied"))

    def _new_key(self, reply: mip.RegistrationReply, reply_type: ExtensionType, now: float) -> Msa | None:
        """Rule 7: the MSA a Key Generation Nonce Reply from AAA gives (its
        key derived here), or None (none asked, none there, or unusable)."""
        c = self.config
        if not c.request_keys:
            return None
        extension = next(
            (e for e in reply.extensions if isinstance(e, KeyReplyExtension) and e.type == reply_type), None
        )
        if extension is None:
            return None
        try:
            nonce = mip.decode_aaa_nonce(extension)
        except mip.MipDecodeError:
            self.counters["keys.malformed"] += 1
            return None
        replay_ok = reply_type == ExtensionType.MN_FA_KEY_REPLY or nonce.replay_method == mip.ReplayMethod.TIMESTAMPS
        reserved = nonce.agent_spi < FIRST_ALLOCATED_SPI  # rule 7: the agent named a reserved SPI
        if nonce.aaa_spi != CHAP_SPI or len(nonce.nonce) < MIN_NONCE or not replay_ok or reserved:
            self.counters["keys.refused"] += 1
            return None
        algorithm = msa_algorithm(nonce.algorithm)
        if algorithm is None:
            self.counters["keys.unknown_algorithm"] += 1
            return None
        key = derive_aaa_key(c.mn_aaa_secret, nonce.nonce, c.nai.encode("utf-8"))
        own = c.mn_fa_key_spi if reply_type == ExtensionType.MN_FA_KEY_REPLY else c.mn_ha_key_spi
        return Msa(nonce.agent_spi, key, now + extension.lifetime, algorithm, reply_spi=own)

    def _mn_ha_msa(self, now: float) -> Msa | None:
        """Rule 7: the MSA AAA made, while it lives and the node is registered."""
        msa = self.mn_ha
        if msa is not None and (now >= msa.until or now >= self.registered_until):
            self.mn_ha = self.mn_fa = None
            return None
        return msa

    # -- requests -------------------------------------------------------------------------------
    def _start(self, outstanding: _Outstanding, now: float) -> None:
        outstanding.msa = self._mn_ha_msa(now)
        if self.mn_fa is not None and (outstanding.fa != self._mn_fa_at or now >= self.mn_fa.until):
            self.mn_fa = None  # rule 8: it is with the FA that gave it, while it lives
        outstanding.mn_fa = self.mn_fa
        if self._outstanding is not None:
            self._cancel(self._outstanding.timer)
        self._outstanding = outstanding
        self._send_request(outstanding, now)

    def _send_request(self, outstanding: _Outstanding, now: float) -> None:
        outstanding.attempts += 1
        # RFC 5944 section 5.7: every request newer than the last one.
        outstanding.identification = max(
            timestamp_identification(now, int.from_bytes(self.random_bytes(2), "big") & 0xFFF), self._last_sent + 1
        )
        self._last_sent = outstanding.identification
        outstanding.identifications.append(outstanding.identification)
        self._send(Channel.MIP, self._request_bytes(outstanding), outstanding.fa)
        self._cancel(outstanding.timer)
        delay = backoff(self.config.retransmit, outstanding.attempts)
        if outstanding.lifetime:
            delay = min(delay, max(self.config.retransmit, float(outstanding.lifetime)))
        outstanding.timer = self._call_at(now + delay, self._retransmit)

    def _retransmit(self, now: float) -> None:
        outstanding = self._outstanding
        if outstanding is None:
            return
        if outstanding.attempts >= self.config.attempts:
            self._outstanding = None
            self._emit(
                RegistrationDone(
                    self.config.nai, self.config.home_address, int(ReplyCode.FA_REGISTRATION_TIMEOUT), 0, "no reply"
                )
            )
            return
        self._send_request(outstanding, now)

    def _request_bytes(self, outstanding: _Outstanding) -> bytes:
        c = self.config
        extensions: list[mip.Extension] = [NaiExtension(c.nai)]
        if c.request_keys and outstanding.lifetime:  # rule 6
            if outstanding.fa[0] not in self._no_mn_fa_key:  # rule 9
                extensions.append(KeyRequestExtension(ExtensionType.MN_FA_KEY_REQUEST, c.mn_fa_key_spi))
            extensions.append(KeyRequestExtension(ExtensionType.MN_HA_KEY_REQUEST, c.mn_ha_key_spi))
        if outstanding.previous_fa is not None:
            extensions.append(previous_fa_extension(outstanding.previous_fa))
        request = mip.RegistrationRequest(
            flags=RegistrationFlags.T,  # reverse tunnelling through the HA (RFC 3024)
            lifetime=outstanding.lifetime,
            home_address=c.home_address,
            home_agent=c.home_agent,
            care_of_address=IPv4Address(outstanding.fa[0]),
            identification=outstanding.identification,
            extensions=tuple(extensions),
        )
        msa = outstanding.msa or Msa(c.mn_ha_spi, c.mn_ha_key)
        data = append_authentication(
            mip.encode_registration_request(request), ExtensionType.MN_HA_AUTH, msa.spi, msa.key, msa.algorithm
        )
        challenge = self._challenges.get(outstanding.fa[0])
        if challenge is not None:
            data += mip.encode_extension(ChallengeExtension(challenge))
            data = append_generalized_authentication(data, GeneralizedAuthSubtype.MN_AAA, CHAP_SPI, c.mn_aaa_secret)
        if outstanding.mn_fa is not None:  # rule 8: the last extension
            mn_fa = outstanding.mn_fa
            data = append_authentication(data, ExtensionType.MN_FA_AUTH, mn_fa.spi, mn_fa.key, mn_fa.algorithm)
        return data
