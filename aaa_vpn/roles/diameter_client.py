"""A foreign agent's AAA client over Diameter (RFC 4004 section 5.1), sans-IO:
the Access-Requests an FA makes become AA-Mobile-Node-Requests, the answers
the same events the RADIUS client reports (:mod:`aaa_vpn.roles.radius_client`),
so an FA can be given either.

Rules:

1. One AMR per request: Session-Id, Auth-Application-Id 2, Origin-Host and
   Origin-Realm (this FA), Destination-Realm the realm of the node's NAI
   (routing by realm, through relays, RFC 6733 section 6.1), User-Name,
   MIP-Reg-Request (the Registration Request as received from the node),
   MIP-MN-AAA-Auth describing its MN-AAA extension, MIP-Feature-Vector
   (FA-HA-Key-Request, and MN-FA-Key-Request / MN-HA-Key-Request when the
   Registration Request carries a Generalized MN-FA / MN-HA Key Generation
   Nonce Request of subtype AAA, RFC 4004 section 7.5),
   MIP-Home-Agent-Address when the node named one, and Class holding the
   home AAA's session when the FA renews one.
2. Sessions (RFC 6733 section 8.8, RFC 4004 section 4.1): a request that
   names no session starts a new Diameter session (``<host>;<high>;<low>``,
   the counter starting from a random value); one that names the home AAA's
   session renews the Diameter session of the node's NAI.
3. Answers: 2001 with the VPN profile's AVPs is :class:`RequestAccepted`
   (profile decoded by :func:`~aaa_vpn.wire.diameter_profile.decode_profile_avps`;
   an AMA whose profile does not decode is :class:`RequestFailed`: asking
   again would bring the same answer). With MIP-FA-to-MN-MSA and
   MIP-MN-to-FA-MSA (both, for the SPI the node asked with) the event
   carries the MN-FA key and its nonce (``mn_fa_key``; lifetime
   MIP-MSA-Lifetime); MSAs that do not decode, or disagree, make it
   :class:`RequestFailed` too. A result the home AAA gives for a
   refusal is :class:`RequestRejected` with the reason an FA maps to its Mobile
   IP reply code (:data:`REJECT_REASON`); anything else (3002, 3003, 3004,
   5025...), no route, or no answer within ``timeout`` seconds (RFC 6733's
   Tx timer) is :class:`RequestFailed`.

Inputs: :meth:`~DiameterAaaClient.amr`, the node's transport inputs
(``self.node``), :meth:`~DiameterAaaClient.handle_timer`; outputs:
:meth:`~DiameterAaaClient.next_event`, :meth:`~DiameterAaaClient.get_timer`
and the node's ``data_to_send``. No sockets, no clock.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable
from ipaddress import IPv4Address

from aaa_vpn.model import nai_realm
from aaa_vpn.roles import diameter_peer as peer
from aaa_vpn.roles.radius_client import Event, RadiusClient, RequestAccepted, RequestFailed, RequestRejected
from aaa_vpn.secret import Secret
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire import mip
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Command, Message, ResultCode
from aaa_vpn.wire.diameter_profile import decode_profile_avps
from aaa_vpn.wire.mip_auth import mn_aaa_proof
from aaa_vpn.wire.profile import MnKey, RejectReason, VpnProfile
from aaa_vpn.wire.radius_request import AccessRequest

#: Rule 3: the refusals of roles/diameter_home.py rule 7, as reject reasons.
REJECT_REASON: dict[int, RejectReason] = {
    ResultCode.AUTHENTICATION_REJECTED: RejectReason.AUTHENTICATION_FAILED,
    ResultCode.AUTHORIZATION_REJECTED: RejectReason.USER_DISABLED,
    ResultCode.UNKNOWN_SESSION_ID: RejectReason.NO_SESSION,
    ResultCode.INVALID_AVP_VALUE: RejectReason.BAD_REQUEST,
    ResultCode.MISSING_AVP: RejectReason.BAD_REQUEST,
    ResultCode.AVP_UNSUPPORTED: RejectReason.BAD_REQUEST,
    ResultCode.UNABLE_TO_COMPLY: RejectReason.PROFILE_TOO_LARGE,
}


class DiameterAaaClient:
    """An FA's Diameter AAA client (module rules)."""

    def __init__(
        self,
        identity: d.Identity,
        routes: dict[str, list[str]],
        timeout: float = 10.0,
        random_u32: Callable[[], int] = lambda: 0,
        options: peer.PeerOptions | None = None,
        jitter: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.identity = identity
        self.timeout = timeout
        self.node = peer.DiameterNode(
            identity,
            [d.MOBILE_IPV4_APPLICATION],
            {d.MOBILE_IPV4_APPLICATION: frozenset(d.AVPS)},
            options=options,
            routes=routes,
            random_u32=random_u32,
            jitter=jitter,
        )
        self._high = random_u32() & 0xFFFFFFFF
        self._low = itertools.count(random_u32() & 0xFFFF)
        self._sessions: dict[str, str] = {}  # NAI -> Diameter Session-Id (rule 2)
        self._deadlines: list[tuple[float, int]] = []
        self._pending: dict[int, object] = {}  # request number -> the caller's tag
        self._numbers = itertools.count(1)
        self._events: collections.deque[Event] = collections.deque()
        self.counters: collections.Counter[str] = collections.Counter()

    @property
    def outstanding(self) -> int:
        """AMRs waiting for their AMA (the RadiusClient surface)."""
        return len(self._pending)

    @property
    def waiting(self) -> int:
        """Requests queued for an Identifier: none here (the RadiusClient surface)."""
        return 0

    def session_id(self, nai: str, renewal: bool) -> str:
        """Rule 2."""
        if renewal and nai in self._sessions:
            return self._sessions[nai]
        session = f"{self.identity.host};{self._high};{next(self._low) & 0xFFFFFFFF}"
        self._sessions[nai] = session
        return session

    def amr(self, info: AccessRequest, registration: bytes, now: float, tag: object = None) -> None:
        """Rule 1: the AMR for ``info`` and the Registration Request it is for."""
        number = next(self._numbers)
        try:
            proof = mn_aaa_proof(registration)
        except ValueError as exc:
            self._events.append(RequestFailed(tag, f"no MN-AAA extension: {exc}", ()))
            return
        start = len(proof.preceding)
        avps = [
            d.avp_text(C.SESSION_ID, self.session_id(info.nai, info.session_id is not None)),
            d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION),
            d.avp_text(C.ORIGIN_HOST, self.identity.host),
            d.avp_text(C.ORIGIN_REALM, self.identity.realm),
            d.avp_text(C.DESTINATION_REALM, nai_realm(info.nai) or self.identity.realm),
            d.avp_text(C.USER_NAME, info.nai),
            d.avp_octets(C.MIP_REG_REQUEST, registration),
            d.avp_grouped(
                C.MIP_MN_AAA_AUTH,
                [
                    d.avp_u32(C.MIP_MN_AAA_SPI, proof.spi),
                    d.avp_u32(C.MIP_AUTH_INPUT_DATA_LENGTH, start),
                    d.avp_u32(C.MIP_AUTHENTICATOR_LENGTH, len(proof.authenticator)),
                    d.avp_u32(C.MIP_AUTHENTICATOR_OFFSET, start),
                ],
            ),
            d.avp_u32(C.MIP_FEATURE_VECTOR, feature_vector(registration)),
        ]
        if info.session_id is not None:
            # The home AAA's session, as its AMA's Class named it (RFC 6733 section 8.20):
            # a renewal stays one even if the server forgot the Diameter session.
            avps.append(d.avp_octets(C.CLASS, info.session_id.encode()))
        home_agent = info.requested_home_agent
        if home_agent is not None and home_agent != IPv4Address(0):
            avps.append(d.avp_address(C.MIP_HOME_AGENT_ADDRESS, home_agent))
        message = Message(Command.AA_MOBILE_NODE, True, d.MOBILE_IPV4_APPLICATION, avps=tuple(avps), proxiable=True)
        self._pending[number] = tag
        heapq.heappush(self._deadlines, (now + self.timeout, number))
        self.counters["amr"] += 1
        self.node.send_request(message, now, tag=number)
        self._node_events(now)

    def handle_timer(self, now: float) -> None:
        self.node.handle_timer(now)
        while self._deadlines and self._deadlines[0][0] <= now:
            _, number = heapq.heappop(self._deadlines)
            tag = self._pending.pop(number, None)
            if tag is not None:
                self.counters["timeouts"] += 1
                self._events.append(RequestFailed(tag, f"no answer within {self.timeout} s", ()))
        self._node_events(now)

    def get_timer(self) -> float | None:
        deadlines = [t for t in (self.node.get_timer(), self._deadlines[0][0] if self._deadlines else None) if t]
        return min(deadlines) if deadlines else None

    def next_event(self) -> Event | None:
        self._node_events()
        return self._events.popleft() if self._events else None

    def _node_events(self, now: float = 0.0) -> None:
        while (event := self.node.next_event()) is not None:
            self.node_event(event, now)

    def node_event(self, event: peer.Event, now: float) -> None:
        """One event of ``self.node`` (a transport that pumps the node itself
        hands them here, with its clock's time)."""
        if isinstance(event, peer.AnswerReceived):
            self._answer(event.tag, event.message)
        elif isinstance(event, peer.RequestFailed):
            tag = self._pending.pop(event.tag, None) if isinstance(event.tag, int) else None
            if tag is not None:
                self._events.append(RequestFailed(tag, event.reason, ()))
        elif isinstance(event, peer.RequestReceived):
            # ASR (RFC 6733 section 8.5): acknowledged; the visitor expires with its lifetime.
            self.counters[f"received.{event.message.name}"] += 1
            self.node.answer(event.handle, peer.answer_to(event.message, self.identity, ResultCode.SUCCESS), now)

    def _answer(self, number: object, message: Message) -> None:
        tag = self._pending.pop(number, None) if isinstance(number, int) else None
        if tag is None:
            return
        server = message.origin_host or ""
        code = message.result_code
        if code == ResultCode.SUCCESS:
            try:
                profile = decode_profile_avps(message.avps)
            except d.DiameterDecodeError as exc:
                self._events.append(RequestFailed(tag, f"the AMA's profile does not decode: {exc}", (server,)))
                return
            try:
                mn_fa = mn_key(message, C.MIP_MN_TO_FA_MSA, C.MIP_FA_TO_MN_MSA)
            except d.DiameterDecodeError as exc:
                self._events.append(RequestFailed(tag, f"the AMA's MN-FA key does not decode: {exc}", (server,)))
                return
            self._events.append(RequestAccepted(tag, profile, b"", b"", server, mn_fa_key=mn_fa))
            return
        text = message.text(C.ERROR_MESSAGE) or ""
        reason = REJECT_REASON.get(code or 0)
        if reason is not None:
            self._events.append(RequestRejected(tag, reason, f"{code}: {text}", server))
        else:
            self._events.append(RequestFailed(tag, f"answered {code}: {text}", (server,)))


def feature_vector(registration: bytes) -> int:
    """Rule 1: MIP-Feature-Vector for a Registration Request (RFC 4004 section
    7.5): FA-HA-Key-Request, plus MN-FA-Key-Request and MN-HA-Key-Request for
    the Key Generation Nonce Requests of subtype AAA it carries (RFC 3957)."""
    features = d.FEATURE_FA_HA_KEY_REQUEST
    try:
        request = mip.decode_message(registration)
    except mip.MipDecodeError:
        return features
    asked = mip.aaa_key_requests(request.extensions)
    if mip.ExtensionType.MN_FA_KEY_REQUEST in asked:
        features |= d.FEATURE_MN_FA_KEY_REQUEST
    if mip.ExtensionType.MN_HA_KEY_REQUEST in asked:
        features |= d.FEATURE_MN_HA_KEY_REQUEST
    return features


def mn_key(message: Message, nonce_group: int, key_group: int) -> MnKey | None:
    """The node's key an answer (AMA) or request (HAR) carries in ``key_group``
    (MIP-FA-to-MN-MSA, MIP-HA-to-MN-MSA) with its nonce in ``nonce_group``
    (MIP-MN-to-FA-MSA, MIP-MN-to-HA-MSA), or None if it carries neither;
    :class:`~aaa_vpn.wire.diameter.DiameterDecodeError` if only one, or they
    do not decode or disagree (RFC 4004 section 9). Its :attr:`MnKey.spi` is
    the key group's, the SPI the node allocated; the agent allocates the
    other direction's (:attr:`MnKey.agent_spi`) itself."""
    nonce_avp, key_avp = message.find(nonce_group), message.find(key_group)
    if nonce_avp is None and key_avp is None:
        return None
    if nonce_avp is None or key_avp is None:
        missing = d.AVPS[(0, nonce_group if nonce_avp is None else key_group)].name
        raise d.DiameterDecodeError(f"{missing} missing", result_code=ResultCode.MISSING_AVP)
    nonce, key = d.decode_msa(nonce_avp), d.decode_msa(key_avp)
    spi = key.spi if key.spi is not None else nonce.spi
    if spi is None or nonce.aaa_spi is None:
        raise d.DiameterDecodeError(
            f"{key_avp.name}: no SPI, or {nonce_avp.name} without MIP-MN-AAA-SPI",
            result_code=ResultCode.MISSING_AVP,
        )
    # The nonce group's own SPI (MIP-MN-to-HA-MSA's MIP-MN-HA-SPI) names the node-to-agent direction,
    # which the agent allocates (RFC 4004 sections 9.5, 9.6): it may differ from the key's, and is not used.
    if nonce.algorithm != key.algorithm or nonce.replay_mode != key.replay_mode:
        raise d.DiameterDecodeError(
            f"{nonce_avp.name} and {key_avp.name} disagree", result_code=ResultCode.CONTRADICTING_AVPS
        )
    lifetime = message.find(C.MIP_MSA_LIFETIME)
    return MnKey(
        spi=spi,
        aaa_spi=nonce.aaa_spi,
        algorithm=key.algorithm,
        nonce=nonce.nonce,
        key=Secret(key.session_key),
        lifetime=lifetime.as_u32() if lifetime is not None else 0,
        replay_method=key.replay_mode,
    )


class FaDiameterClient(DiameterAaaClient):
    """:class:`DiameterAaaClient` with the surface of
    :class:`~aaa_vpn.roles.radius_client.RadiusClient` that
    :class:`~aaa_vpn.roles.fa.ForeignAgent` uses: ``request(info, now, tag)``
    finds the Registration Request through ``registration_of(tag)``; the
    stream leaves through the transport, which ``flush`` (set by it) pumps
    whenever the FA collects its datagrams."""

    registration_of: Callable[[object], bytes | None] = staticmethod(lambda _tag: None)
    flush: Callable[[], None] = staticmethod(lambda: None)

    def request(self, info: AccessRequest, now: float, tag: object = None) -> None:
        registration = self.registration_of(tag)
        if registration is None:
            self._events.append(RequestFailed(tag, "no Registration Request for this request", ()))
            return
        self.amr(info, registration, now, tag)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        self.flush()
        return []

    def receive_datagram(self, data: bytes, address: tuple[str, int], now: float) -> None:
        """Nothing arrives as a datagram: the stream goes to ``self.node``."""


class HaDiameterClient:
    """A home agent's AAA client when the home AAA speaks Diameter to it
    (RFC 4004 section 5.3): a Home-Agent-MIP-Request carries the HA's view of
    the session the home AAA has just authorized, and the HA's own request for
    that registration is answered from it; anything else goes to the RADIUS
    client as before. It has the surface of
    :class:`~aaa_vpn.roles.radius_client.RadiusClient` that
    :class:`~aaa_vpn.roles.ha.HomeAgent` uses.

    Rules:

    1. A HAR (Auth-Application-Id 2) with User-Name and the VPN profile's AVPs
       (the HA's view: wire/diameter_profile.py) is kept for
       :data:`VIEW_SECONDS`, one per NAI, and answered HAA 2001 with the
       addresses; the registration itself still reaches the HA from the FA
       (RFC 5944 relaying), so the HAA carries no MIP-Reg-Reply and the AMA
       none either. With MIP-MN-to-HA-MSA and MIP-HA-to-MN-MSA the view
       keeps the node's new MN-HA key and its nonce (RFC 3957; ha.py rule
       4b). A HAR whose profile or MSAs do not decode: 5004 (or 5005, 5007)
       with the AVP to blame. Other requests: 3001.
    2. A request of the HA whose NAI has a kept view for the same care-of
       address -- and, where the request names them, the same session and key
       epoch -- is accepted from it at once (:class:`RequestAccepted`, counted
       ``from_har``); the view is used once. Without one the request goes over
       RADIUS (a same-domain handoff the foreign AAA answered never reaches
       the home AAA's Diameter side, flow C).
    """

    #: Rule 1: how long a HAR's view waits for the registration it is for.
    VIEW_SECONDS = 30.0

    def __init__(
        self,
        identity: d.Identity,
        routes: dict[str, list[str]],
        radius: RadiusClient,
        random_u32: Callable[[], int] = lambda: 0,
    ) -> None:
        self.identity = identity
        self.radius = radius
        self.node = peer.DiameterNode(
            identity,
            [d.MOBILE_IPV4_APPLICATION],
            {d.MOBILE_IPV4_APPLICATION: frozenset(d.AVPS)},
            routes=routes,
            random_u32=random_u32,
        )
        self._views: dict[str, tuple[float, VpnProfile, str, MnKey | None]] = {}  # NAI -> (until, view, from, key)
        self._events: collections.deque[Event] = collections.deque()
        self.counters: collections.Counter[str] = collections.Counter()
        self.flush: Callable[[], None] = lambda: None
        self._now = 0.0

    # -- the RadiusClient surface ----------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return self.radius.outstanding

    @property
    def waiting(self) -> int:
        return self.radius.waiting

    def request(self, info: AccessRequest, now: float, tag: object = None) -> None:
        self._now = now
        kept = self._views.get(info.nai)
        if kept is not None:
            until, view, server, mn_ha = kept
            if (
                until > now
                and view.care_of_address == info.care_of_address
                and info.session_id in (None, view.session_id)
                and info.key_epoch in (None, view.epoch)
            ):
                del self._views[info.nai]
                self.counters["from_har"] += 1
                self._events.append(RequestAccepted(tag, view, b"", b"", server, mn_ha_key=mn_ha))
                return
        self.counters["over_radius"] += 1
        self.radius.request(info, now, tag)

    def receive_datagram(self, data: bytes, address: tuple[str, int], now: float) -> None:
        self.radius.receive_datagram(data, address, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        self.flush()
        return self.radius.datagrams_to_send(now)

    def next_event(self) -> Event | None:
        if self._events:
            return self._events.popleft()
        return self.radius.next_event()

    def get_timer(self) -> float | None:
        timers = [t for t in (self.radius.get_timer(), self.node.get_timer()) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.radius.handle_timer(now)
        self.node.handle_timer(now)
        for nai in [n for n, (until, *_) in self._views.items() if until <= now]:
            del self._views[nai]

    # -- the Diameter side -------------------------------------------------------------------------
    def node_event(self, event: peer.Event, now: float) -> None:
        """One event of ``self.node``, with the transport's time (rule 1)."""
        self._now = max(self._now, now)
        if not isinstance(event, peer.RequestReceived):
            return
        message = event.message
        if message.command != Command.HOME_AGENT_MIP:
            answer = peer.answer_to(message, self.identity, ResultCode.COMMAND_UNSUPPORTED)
        else:
            answer = self._har(message)
        self.node.answer(event.handle, answer, self._now)

    def _har(self, message: Message) -> Message:
        """Rule 1."""
        self.counters["har"] += 1
        try:
            nai = message.text(C.USER_NAME)
            if not nai:
                return peer.answer_to(
                    message, self.identity, ResultCode.MISSING_AVP, error_message="HAR without User-Name"
                )
            view = decode_profile_avps(message.avps)
            mn_ha = mn_key(message, C.MIP_MN_TO_HA_MSA, C.MIP_HA_TO_MN_MSA)
        except d.DiameterDecodeError as exc:
            return peer.answer_to(
                message, self.identity, exc.result_code, error_message=str(exc), failed_avp=exc.failed_avp
            )
        if len(self._views) >= 100_000:
            self._views.clear()
        self._views[nai] = (self._now + self.VIEW_SECONDS, view, message.origin_host or "", mn_ha)
        return peer.answer_to(
            message,
            self.identity,
            ResultCode.SUCCESS,
            [
                d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION),
                d.avp_text(C.USER_NAME, nai),
                d.avp_address(C.MIP_HOME_AGENT_ADDRESS, view.home_agent),
                d.avp_address(C.MIP_MOBILE_NODE_ADDRESS, view.home_address),
            ],
        )


__all__ = [
    "REJECT_REASON",
    "DiameterAaaClient",
    "FaDiameterClient",
    "HaDiameterClient",
    "feature_vector",
    "mn_key",
]
