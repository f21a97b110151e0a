"""The foreign agent (FA), sans-IO.

Rules (RFC 5944 sections 3.7 and 5; RFC 4721; DESIGN.md flow A):

1. A Registration Request from a mobile node must carry the NAI (RFC 2794;
   else code 97), a fresh MN-FA challenge this FA issued and nobody used yet
   (RFC 4721 section 9; missing: 105, unknown: 104, stale: 106 -- each reply
   carries a new challenge, which is how a mobile node without advertisements
   learns one) and an MN-AAA authenticator with CHAP_SPI (else 70). A
   lifetime above the FA's maximum gets 69 with the maximum (RFC 5944
   section 3.7.2.3). A request that does not decode is dropped (section 1.8)
   or, if its fixed part decodes, answered with 70.
2. The FA asks its AAA servers (an Access-Request with the MN-AAA proof as
   CHAP, docs/mn-aaa-chap.md). A reject is answered with 67 (unknown user,
   failed authentication, no session), 65 (disabled, bad request) or 66; AAA
   unreachable with 66 (the FA cannot serve the node now). No SA exists yet
   in any of these cases.
3. On an Access-Accept the FA asks the service layer to install its paths
   (all or nothing) and only then relays the request to the home agent with
   FA-HA authentication (RFC 5944 section 3.7.2.2). If the SAs cannot be
   installed the node gets 66 and nothing is relayed.
4. The home agent's reply must carry a valid FA-HA authenticator (else 68 to
   the node); a denial or no reply within ``ha_timeout`` (78) removes the
   paths again: a registration is either fully set up or rolled back.
5. An accepted reply is relayed to the node (FA-HA stripped, a fresh
   challenge appended for its next registration) and the node becomes a
   visitor until its lifetime ends, when its paths are removed. A
   deregistration (lifetime 0) is relayed without AAA and removes the
   visitor when the home agent accepts it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from aaa_vpn.roles.agent import Address, Agent, Channel, DeletePaths, InstallPaths, RegistrationDone
from aaa_vpn.roles.radius_client import (
    RadiusClient,
    RequestAccepted,
    RequestFailed,
    RequestRejected,
    ServerConfig,
)
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import ChallengeExtension, ExtensionType, NaiExtension, RegistrationReply, ReplyCode
from aaa_vpn.wire.mip_auth import CHAP_SPI, mn_aaa_proof, relay_reply, relay_request, verify_authentication
from aaa_vpn.wire.mip_vpn import previous_fa, session_extension
from aaa_vpn.wire.profile import RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_request import AccessRequestInfo

MIP_PORT = 434  # RFC 5944 section 1.8
CHALLENGE_LENGTH = 16


@dataclass(frozen=True)
class FaConfig:
    """How one foreign agent runs."""

    address: IPv4Address
    """Its address: the care-of address it offers and the source of its RADIUS requests."""
    aaa_servers: Sequence[ServerConfig]
    """Its AAA servers (the visited domain's foreign AAA, or the home AAA), in order."""
    mip_port: int = MIP_PORT
    """The Mobile IP port of home agents."""
    max_lifetime: int = 1800
    """The longest registration it grants (RFC 5944 section 3.7.2.3)."""
    challenge_lifetime: float = 30.0
    """How long an issued challenge may be answered (RFC 4721 CHALLENGE_WINDOW in time)."""
    ha_timeout: float = 5.0
    """How long it waits for the home agent's reply before answering 78."""
    radius_timeout: float = 2.0
    radius_retries: int = 2


@dataclass
class _Pending:
    request: bytes
    message: mip.RegistrationRequest
    source: Address
    nai: str
    profile: VpnProfile | None = None
    timer: int | None = None


@dataclass
class Visitor:
    """A mobile node registered through this FA."""

    nai: str
    home_address: IPv4Address
    home_agent: IPv4Address
    source: Address
    session_id: str
    owner: str  # what its paths are installed under
    expires: float
    profile: VpnProfile = field(repr=False)


def _owner(profile: VpnProfile) -> str:
    # One owner per session epoch: after a handoff away and back, the paths of
    # the earlier visit (other keys, other SPIs) are told apart from the new.
    return f"{profile.session_id}#{profile.epoch}"


def _key(home_agent: IPv4Address, identification: int) -> object:
    # RFC 5944 section 5.7: the low-order 32 bits of the Identification match
    # a reply to its request; with the home agent they name one registration.
    return (int(home_agent), identification & 0xFFFFFFFF)


class ForeignAgent(Agent):
    """One foreign agent."""

    def __init__(self, config: FaConfig, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.config = config
        self.random_bytes = random_bytes
        self.radius = RadiusClient(
            config.aaa_servers,
            timeout=config.radius_timeout,
            retries=config.radius_retries,
            nas_ip_address=config.address,
            random_bytes=random_bytes,
        )
        self.visitors: dict[str, Visitor] = {}
        self._challenges: dict[bytes, float] = {}  # issued, not yet used: challenge -> issued at
        self._pending: dict[object, _Pending] = {}
        self._by_owner: dict[str, object] = {}
        self._visitor_timers: dict[str, int] = {}

    # -- inputs ---------------------------------------------------------------------------------
    def receive_datagram(self, channel: Channel, data: bytes, source: Address, now: float) -> None:
        if channel is Channel.RADIUS:
            self.radius.receive_datagram(data, source, now)
            self._radius_events(now)
            return
        try:
            message = mip.decode_message(data)
        except mip.MipDecodeError as exc:
            self.counters["dropped.malformed"] += 1
            fixed = self._fixed_part(data)
            if fixed is not None:
                self._deny(fixed, source, ReplyCode.FA_POORLY_FORMED_REQUEST, "", f"poorly formed: {exc}")
            return
        if isinstance(message, mip.RegistrationRequest):
            self._registration_request(data, message, source, now)
        elif isinstance(message, mip.RegistrationReply):
            self._registration_reply(data, message, source, now)
        else:
            self.counters["dropped.unexpected"] += 1

    def paths_installed(self, owner: str, error: str | None, now: float) -> None:
        """The service layer's answer to :class:`InstallPaths`."""
        key = self._by_owner.get(owner)
        pending = self._pending.get(key) if key is not None else None
        if key is None or pending is None or pending.profile is None:
            return
        if error is not None:
            self._forget(key)
            self._deny(pending.message, pending.source, ReplyCode.FA_INSUFFICIENT_RESOURCES, pending.nai, error)
            return
        profile = pending.profile
        relayed = relay_request(
            pending.request,
            # Which session and key epoch these SAs belong to: after a handoff
            # answered by the foreign AAA, the HA's home AAA learns it here.
            extensions=[session_extension(profile.session_id, profile.epoch)],
            fa_ha_spi=profile.fa_ha_spi,
            fa_ha_key=profile.fa_ha_key,
        )
        self._send(Channel.MIP, relayed, (str(pending.message.home_agent), self.config.mip_port))
        pending.timer = self._call_at(now + self.config.ha_timeout, functools.partial(self._ha_timeout, key))

    # -- the registration request -------------------------------------------------------------------
    def _registration_request(self, data: bytes, message: mip.RegistrationRequest, source: Address, now: float) -> None:
        self.counters["requests"] += 1
        nai = next((e.nai for e in message.extensions if isinstance(e, NaiExtension)), "")
        if message.lifetime == 0:
            self._deregistration(data, message, source, nai)
            return
        if not nai:
            self._deny(message, source, ReplyCode.FA_MISSING_NAI, nai, "no NAI extension")
            return
        key = _key(message.home_agent, message.identification)
        if key in self._pending:
            self.counters["duplicates"] += 1  # a retransmission while we are still working on it
            return
        challenges = [e.challenge for e in message.extensions if isinstance(e, ChallengeExtension)]
        if not challenges:
            self._deny(
                message, source, ReplyCode.FA_MISSING_CHALLENGE, nai, "no MN-FA challenge", challenge=True, now=now
            )
            return
        issued = self._challenges.get(challenges[-1])
        if issued is None:
            self._deny(
                message,
                source,
                ReplyCode.FA_UNKNOWN_CHALLENGE,
                nai,
                "challenge not issued here or used",
                challenge=True,
                now=now,
            )
            return
        if now - issued > self.config.challenge_lifetime:
            del self._challenges[challenges[-1]]
            self._deny(message, source, ReplyCode.FA_STALE_CHALLENGE, nai, "challenge too old", challenge=True, now=now)
            return
        if message.lifetime > self.config.max_lifetime:  # 0xFFFF (infinity) included
            self._deny(
                message,
                source,
                ReplyCode.FA_LIFETIME_TOO_LONG,
                nai,
                "lifetime too long",
                lifetime=self.config.max_lifetime,
            )
            return
        try:
            proof = mn_aaa_proof(data)
            if proof.spi != CHAP_SPI:
                raise mip.MipValueError(f"MN-AAA SPI {proof.spi} cannot be checked through RADIUS")
            chap_password, chap_challenge = proof.chap_attributes()
        except (mip.MipDecodeError, mip.MipValueError) as exc:
            self._deny(message, source, ReplyCode.FA_POORLY_FORMED_REQUEST, nai, str(exc))
            return
        del self._challenges[challenges[-1]]  # RFC 4721 section 9: each challenge is answered once
        home_agent = message.home_agent if int(message.home_agent) else None
        try:
            previous = previous_fa(message.extensions)
        except mip.MipDecodeError as exc:
            self._deny(message, source, ReplyCode.FA_POORLY_FORMED_REQUEST, nai, str(exc))
            return
        info = AccessRequestInfo(
            nai=nai,
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=self.config.address,
            request_type=RequestType.FA_REGISTRATION,
            care_of_address=self.config.address,
            home_agent=home_agent,
            previous_fa=previous,
        )
        self._pending[key] = _Pending(data, message, source, nai)
        self.radius.request(info, now, tag=key)
        self._radius_events(now)

    def _deregistration(self, data: bytes, message: mip.RegistrationRequest, source: Address, nai: str) -> None:
        key = _key(message.home_agent, message.identification)
        self._pending[key] = _Pending(data, message, source, nai)
        # RFC 5944 section 3.5.4: no FA-HA authentication on a deregistration.
        self._send(Channel.MIP, relay_request(data), (str(message.home_agent), self.config.mip_port))

    # -- AAA answers ---------------------------------------------------------------------------------
    def _radius_events(self, now: float) -> None:
        for datagram, address in self.radius.datagrams_to_send(now):
            self._send(Channel.RADIUS, datagram, address)
        while (event := self.radius.next_event()) is not None:
            if isinstance(event, RequestAccepted):
                self._accepted(event, now)
            elif isinstance(event, RequestRejected):
                self._rejected(event)
            elif isinstance(event, RequestFailed):
                self._aaa_failed(event)

    def _accepted(self, event: RequestAccepted, now: float) -> None:
        key = event.tag
        pending = self._pending.get(key)
        if pending is None:
            return
        profile = event.profile
        if profile.fa_ha_key is None or profile.fa_ha_spi is None:
            self._forget(key)
            self._deny(
                pending.message,
                pending.source,
                ReplyCode.FA_INSUFFICIENT_RESOURCES,
                pending.nai,
                "no FA-HA key from AAA",
            )
            return
        pending.profile = profile
        owner = _owner(profile)
        self._by_owner[owner] = key
        paths = tuple(p for p in profile.paths if p.local == self.config.address)
        self._emit(InstallPaths(owner, paths))

    def _rejected(self, event: RequestRejected) -> None:
        pending = self._pending.pop(event.tag, None)
        if pending is None:
            return
        code = (
            {
                RejectReason.UNKNOWN_USER: ReplyCode.FA_MN_FAILED_AUTHENTICATION,
                RejectReason.AUTHENTICATION_FAILED: ReplyCode.FA_MN_FAILED_AUTHENTICATION,
                RejectReason.NO_SESSION: ReplyCode.FA_MN_FAILED_AUTHENTICATION,
                RejectReason.USER_DISABLED: ReplyCode.FA_ADMINISTRATIVELY_PROHIBITED,
                RejectReason.BAD_REQUEST: ReplyCode.FA_ADMINISTRATIVELY_PROHIBITED,
            }.get(event.reason, ReplyCode.FA_INSUFFICIENT_RESOURCES)
            if event.reason is not None
            else ReplyCode.FA_INSUFFICIENT_RESOURCES
        )
        self._deny(pending.message, pending.source, code, pending.nai, f"AAA rejected: {event.message}")

    def _aaa_failed(self, event: RequestFailed) -> None:
        pending = self._pending.pop(event.tag, None)
        if pending is not None:
            self._deny(
                pending.message,
                pending.source,
                ReplyCode.FA_INSUFFICIENT_RESOURCES,
                pending.nai,
                f"AAA unreachable: {event.reason}",
            )

    # -- the home agent's reply ----------------------------------------------------------------------
    def _registration_reply(self, data: bytes, message: RegistrationReply, source: Address, now: float) -> None:
        key = _key(message.home_agent, message.identification)
        pending = self._pending.get(key)
        if pending is None or source[0] != str(message.home_agent):
            self.counters["dropped.unmatched_reply"] += 1
            return
        if pending.message.lifetime == 0:  # deregistration
            self._pending.pop(key)
            if message.accepted:
                self._remove_visitor(pending.nai)
            self._send(Channel.MIP, relay_reply(data), pending.source)
            self._emit(RegistrationDone(pending.nai, message.home_address, int(message.code), 0, "deregistration"))
            return
        profile = pending.profile
        if profile is None or pending.timer is None:
            self.counters["dropped.early_reply"] += 1
            return
        assert profile.fa_ha_key is not None
        if not verify_authentication(data, ExtensionType.FA_HA_AUTH, profile.fa_ha_key, spi=profile.fa_ha_spi):
            self.counters["dropped.bad_fa_ha_auth"] += 1
            self._forget(key)
            self._emit(DeletePaths(_owner(profile)))
            self._deny(
                pending.message,
                pending.source,
                ReplyCode.FA_HA_FAILED_AUTHENTICATION,
                pending.nai,
                "home agent failed FA-HA authentication",
            )
            return
        self._forget(key)
        if not message.accepted:
            self._emit(DeletePaths(_owner(profile)))
            self._send(Channel.MIP, relay_reply(data), pending.source)
            self._emit(
                RegistrationDone(pending.nai, message.home_address, int(message.code), 0, "denied by the home agent")
            )
            return
        old = self.visitors.get(pending.nai)
        if old is not None and old.owner != _owner(profile):
            self._emit(DeletePaths(old.owner))
        self._add_visitor(pending, profile, message, now)
        relayed = relay_reply(data, extensions=[ChallengeExtension(self._new_challenge(now))])
        self._send(Channel.MIP, relayed, pending.source)
        self._emit(RegistrationDone(pending.nai, message.home_address, int(message.code), message.lifetime))

    def _ha_timeout(self, key: object, now: float) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        self._forget(key)
        if pending.profile is not None:
            self._emit(DeletePaths(_owner(pending.profile)))
        self._deny(
            pending.message,
            pending.source,
            ReplyCode.FA_REGISTRATION_TIMEOUT,
            pending.nai,
            "no reply from the home agent",
        )

    # -- visitors ------------------------------------------------------------------------------------
    def _add_visitor(self, pending: _Pending, profile: VpnProfile, reply: RegistrationReply, now: float) -> None:
        self._remove_visitor(pending.nai, delete=False)
        visitor = Visitor(
            nai=pending.nai,
            home_address=reply.home_address,
            home_agent=reply.home_agent,
            source=pending.source,
            session_id=profile.session_id,
            owner=_owner(profile),
            expires=now + reply.lifetime,
            profile=profile,
        )
        self.visitors[pending.nai] = visitor
        self._visitor_timers[pending.nai] = self._call_at(visitor.expires, functools.partial(self._expire, pending.nai))

    def _expire(self, nai: str, now: float) -> None:
        visitor = self.visitors.get(nai)
        if visitor is not None and visitor.expires <= now:
            self.counters["visitors_expired"] += 1
            self._remove_visitor(nai)

    def _remove_visitor(self, nai: str, delete: bool = True) -> None:
        visitor = self.visitors.pop(nai, None)
        self._cancel(self._visitor_timers.pop(nai, None))
        if visitor is not None and delete:
            self._emit(DeletePaths(visitor.owner))

    # -- helpers -----------------------------------------------------------------------------------------
    def _forget(self, key: object) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._cancel(pending.timer)
            if pending.profile is not None:
                self._by_owner.pop(_owner(pending.profile), None)

    def _new_challenge(self, now: float) -> bytes:
        for old in [c for c, issued in self._challenges.items() if now - issued > self.config.challenge_lifetime]:
            del self._challenges[old]
        challenge = self.random_bytes(CHALLENGE_LENGTH)
        self._challenges[challenge] = now
        return challenge

    @staticmethod
    def _fixed_part(data: bytes) -> mip.RegistrationRequest | None:
        if len(data) < mip.REGISTRATION_REQUEST_LENGTH or data[0] != mip.MessageType.REGISTRATION_REQUEST:
            return None
        try:
            return mip.decode_registration_request(data[: mip.REGISTRATION_REQUEST_LENGTH])
        except mip.MipDecodeError:
            return None

    def _deny(
        self,
        message: mip.RegistrationRequest,
        source: Address,
        code: ReplyCode,
        nai: str,
        detail: str,
        *,
        challenge: bool = False,
        now: float = 0.0,
        lifetime: int = 0,
    ) -> None:
        """An FA denial (RFC 5944 section 3.7.2.3): home address, home agent and
        identification copied; lifetime meaningful only for code 69."""
        extensions: list[mip.Extension] = []
        if nai:
            extensions.append(NaiExtension(nai))
        if challenge:
            extensions.append(ChallengeExtension(self._new_challenge(now)))
        reply = RegistrationReply(
            code=code,
            lifetime=lifetime,
            home_address=message.home_address,
            home_agent=message.home_agent,
            identification=message.identification,
            extensions=tuple(extensions),
        )
        self.counters[f"denied.{int(code)}"] += 1
        self._send(Channel.MIP, mip.encode_registration_reply(reply), source)
        self._emit(RegistrationDone(nai, message.home_address, int(code), 0, detail))

    def _inner_timer(self) -> float | None:
        return self.radius.get_timer()

    def _inner_handle_timer(self, now: float) -> None:
        self.radius.handle_timer(now)
        self._radius_events(now)
