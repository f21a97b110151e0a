"""The foreign AAA as a Diameter proxy agent (RFC 6733 section 2.8.3) for the
realms whose home AAA speaks Diameter (``protocol = "diameter"`` in
``serve foreign``'s file), sans-IO: which AMRs go home, what comes back to
the FA, and what the foreign AAA's session cache learns on the way
(docs/design.md flows A, B and C over Diameter).

Rules (RFC 6733 sections 6.1.9, 6.2, 6.5 and 6.7; RFC 4004 section 5.1):

1. An AMR of such a realm that the foreign AAA can answer itself -- a
   same-domain handoff of a session in its cache (roles/foreign_aaa.py rule
   9) -- is answered here as over RADIUS, never sent home. Every other AMR,
   and every STR, of the realm is forwarded to the realm's home peers in
   their configured order (the first OKAY one; roles/diameter_peer.py rules
   7 and 8): Session-Id, End-to-End Identifier, T bit and Proxy-Info as
   received, a Route-Record naming the FA, a new Hop-by-Hop Identifier.
2. The answer goes back to the FA on the connection the request came in
   on, with the request's identifiers. An AMA with Result-Code 2001
   carrying the VPN profile (wire/diameter_profile.py) is read on the way:
   with a session root key -- the home AAA gives it to its ``foreign-aaa``
   clients only -- the session is cached for same-domain handoffs exactly as
   from a RADIUS Access-Accept (roles/foreign_aaa.py rule 8), and
   **Aaa-Vpn-Session-Root-Key is removed** from what the FA gets (least
   privilege, docs/design.md section 3) -- from every answer relayed. An AMA
   2001 with the project's vendor AVPs that do not decode as a profile is
   not passed on: the FA gets 5012 DIAMETER_UNABLE_TO_COMPLY. Any other
   answer (a refusal, 3xxx from further on) is relayed as it is.
3. No OKAY home peer, the peer went away with no other to fail over to, or
   no answer within ``timeout`` seconds (below the FA's own five): 3002
   DIAMETER_UNABLE_TO_DELIVER to the FA, counted ``unable_to_deliver`` with
   the reason. Our own host in the request's Route-Records: 3005
   DIAMETER_LOOP_DETECTED. An answer that does not decode never reaches
   here (the node drops it, roles/diameter_peer.py rule 1): the request
   times out.
4. Duplicates (section 6.5): a retransmission (T bit) of a request already
   answered is answered again by the node from its duplicate cache; one
   still on its way home is dropped by the node, whose answer will serve it.
   A retransmission that arrives on a new connection after the FA's old one
   closed is forwarded again, T bit set, and the home AAA's duplicate
   detection answers it.
5. Bounded: at most ``limit`` requests on their way home; beyond that 3004
   DIAMETER_TOO_BUSY at once.

Inputs: :meth:`DiameterProxy.start`, :meth:`~DiameterProxy.answered`,
:meth:`~DiameterProxy.failed`, :meth:`~DiameterProxy.expire`, each with
``now``; outputs are their return values and :meth:`~DiameterProxy.get_timer`.
No sockets, no clock.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
from dataclasses import dataclass
from ipaddress import IPv4Address

from aaa_vpn.roles.diameter_peer import answer_to
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Command, Message, ResultCode
from aaa_vpn.wire.diameter_profile import decode_profile_avps
from aaa_vpn.wire.profile import VENDOR_ID, VpnProfile
from aaa_vpn.wire.radius import AaaVpnAttr

#: Rule 3: seconds a forwarded request waits for its answer, below the FA's
#: own Diameter wait (at least 5 s, roles/fa.py) so the FA hears 3002.
DEFAULT_TIMEOUT = 4.0
#: Rule 5.
DEFAULT_LIMIT = 10_000
DIAMETER_PORT = d.DIAMETER_PORT


@dataclass(frozen=True)
class DiameterPeerConfig:
    """One Diameter server of a home realm (its home AAA's ``--diameter-listen``)."""

    host: str
    """Its Origin-Host: routes name it, its CEA must carry it, and over TLS its certificate."""
    address: IPv4Address
    port: int = DIAMETER_PORT
    tls: bool = False
    """TLS (RFC 6733 section 13) with the foreign AAA's ``tls_cert``/``tls_key``/``tls_ca``."""

    def __post_init__(self) -> None:
        d.Identity(self.host, "realm.invalid")  # an FQDN, or DiameterValueError
        if not 1 <= self.port <= 65535:
            raise ValueError(f"Diameter peer {self.host}: port {self.port}: expected 1..65535")


@dataclass(frozen=True)
class DiameterRealm:
    """A realm whose AMRs go to home peers over Diameter, first preferred."""

    name: str
    peers: tuple[DiameterPeerConfig, ...]

    def __post_init__(self) -> None:
        if not self.peers:
            raise ValueError(f"realm {self.name}: a Diameter realm needs at least one peer")
        hosts = [p.host.lower() for p in self.peers]
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"realm {self.name}: a Diameter peer is named twice")

    @property
    def key(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Learned:
    """What an AMA taught (rule 2): the session to cache."""

    nai: str
    profile: VpnProfile
    """The full profile, session root key included."""
    client: str
    """The FA's client name (its Origin-Host)."""
    realm: str
    server: str
    """The home peer that answered (the answer's Origin-Host)."""


@dataclass(frozen=True)
class Reply:
    """Answer local request ``handle`` with ``answer``."""

    handle: int
    answer: Message
    learned: Learned | None = None
    """A session to put into the foreign AAA's cache, if the answer brought one."""
    failure: str = ""
    """Why the FA gets 3002/5012 (for the log), '' when the home AAA answered."""


@dataclass
class _Forwarded:
    handle: int
    request: Message
    nai: str
    client: str
    realm: str
    deadline: float


def _without_root_key(avps: tuple[d.Avp, ...]) -> tuple[d.Avp, ...]:
    return tuple(a for a in avps if not (a.vendor == VENDOR_ID and a.code == AaaVpnAttr.SESSION_ROOT_KEY))


class DiameterProxy:
    """The Diameter realms of one foreign AAA (module rules)."""

    def __init__(
        self,
        identity: d.Identity,
        realms: tuple[DiameterRealm, ...],
        timeout: float = DEFAULT_TIMEOUT,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        if timeout <= 0 or limit < 1:
            raise ValueError("the Diameter proxy needs a timeout > 0 and a limit >= 1")
        self.identity = identity
        self.realms = {r.key: r for r in realms}
        self.timeout = timeout
        self.limit = limit
        self.counters: collections.Counter[str] = collections.Counter()
        self._pending: dict[int, _Forwarded] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._tags = itertools.count(1)

    def routes(self) -> dict[str, list[str]]:
        """The node's routes (roles/diameter_peer.py rule 7): realm -> home peers in order."""
        return {key: [p.host for p in realm.peers] for key, realm in self.realms.items()}

    def serves(self, realm: str) -> bool:
        return realm.lower() in self.realms

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self, handle: int, request: Message, nai: str, client: str, realm: str, now: float) -> int | Message:
        """Rule 1: the tag to forward ``handle`` with (the node's
        ``forward``), or the answer at once (rule 5)."""
        if len(self._pending) >= self.limit:
            self.counters["too_busy"] += 1
            return _error(request, self.identity, ResultCode.TOO_BUSY, "too many requests on their way home")
        tag = next(self._tags)
        self._pending[tag] = _Forwarded(handle, request, nai, client, realm.lower(), now + self.timeout)
        heapq.heappush(self._deadlines, (now + self.timeout, tag))
        self.counters[f"forwarded.{request.name}"] += 1
        return tag

    def not_sent(self, tag: int, code: int) -> Reply | None:
        """The node could not forward ``tag`` (rule 3): the answer to give."""
        item = self._pending.pop(tag, None)
        if item is None:
            return None
        reason = "loop detected" if code == ResultCode.LOOP_DETECTED else f"no open home peer of realm {item.realm}"
        return self._unable(item, reason, code)

    def answered(self, tag: object, answer: Message) -> Reply | None:
        """Rule 2: the home AAA's answer; None for a tag no longer waiting."""
        item = self._pending.pop(tag, None) if isinstance(tag, int) else None
        if item is None:
            self.counters["late_answers"] += 1
            return None
        self.counters[f"answered.{answer.result_code}"] += 1
        relayed = dataclasses.replace(answer, avps=_without_root_key(answer.avps))  # whatever the answer
        if item.request.command != Command.AA_MOBILE_NODE or answer.result_code != ResultCode.SUCCESS:
            return Reply(item.handle, relayed)
        if not any(a.vendor == VENDOR_ID for a in answer.avps):  # an RFC 4004-only home AAA: nothing to learn
            return Reply(item.handle, relayed)
        try:
            profile = decode_profile_avps(answer.avps)
        except d.DiameterDecodeError as exc:
            self.counters["undecodable_answers"] += 1
            failure = f"the home AAA's VPN profile does not decode: {exc}"
            return Reply(
                item.handle,
                _error(item.request, self.identity, ResultCode.UNABLE_TO_COMPLY, failure),
                failure=failure,
            )
        learned = None
        if profile.session_root_key is not None:
            learned = Learned(item.nai, profile, item.client, item.realm, answer.origin_host or "")
        else:
            self.counters["answers_without_session_root_key"] += 1
        return Reply(item.handle, relayed, learned)

    def failed(self, tag: object, reason: str) -> Reply | None:
        """Rule 3: the node gave up on ``tag`` (its peer went away)."""
        item = self._pending.pop(tag, None) if isinstance(tag, int) else None
        return None if item is None else self._unable(item, reason)

    def expire(self, now: float) -> list[Reply]:
        """Rule 3: the requests whose answer did not come in time."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, tag = heapq.heappop(self._deadlines)
            item = self._pending.pop(tag, None)
            if item is not None:
                self.counters["timeouts"] += 1
                out.append(
                    self._unable(item, f"no answer from the home peers of realm {item.realm} in {self.timeout:g} s")
                )
        return out

    def get_timer(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def _unable(self, item: _Forwarded, reason: str, code: int = ResultCode.UNABLE_TO_DELIVER) -> Reply:
        self.counters["unable_to_deliver" if code == ResultCode.UNABLE_TO_DELIVER else f"result.{code}"] += 1
        return Reply(item.handle, _error(item.request, self.identity, code, reason), failure=reason)


def _error(request: Message, identity: d.Identity, code: int, text: str) -> Message:
    # RFC 4004 section 5.2: an AMA (and an STA) names its application.
    application = [d.avp_u32(C.AUTH_APPLICATION_ID, request.application)]
    return answer_to(request, identity, code, application, error_message=text)


__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_TIMEOUT",
    "DiameterPeerConfig",
    "DiameterProxy",
    "DiameterRealm",
    "Learned",
    "Reply",
]
