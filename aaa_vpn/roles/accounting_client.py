"""An agent's RADIUS accounting (RFC 2866), sans-IO: the registrations an FA
or HA holds in, Accounting-Requests Start, Interim-Update and Stop out, over
the pool of accounting servers of a :class:`~aaa_vpn.roles.radius_client.RadiusClient`.

Rules:

1. An accounting session is one registration epoch at this agent: its
   Acct-Session-Id is the owner its SAs are installed under
   (``<session id>#<epoch>``), its Acct-Multi-Session-Id the AAA session id
   (RFC 2866 section 5.11: it links the records of one session across
   epochs, agents and nodes), and its Class the one the home AAA put into
   every Access-Accept (``aaa-vpn:<session id>``, RFC 2865 section 5.25).
2. The caller hands :meth:`AccountingReporter.observe` the agent's live
   registrations after every change. One that appears is sent a Start; one
   that disappears a Stop with its final counters and why it ended
   (Acct-Terminate-Cause): the caller's hint for its NAI (deregistration:
   User-Request, disconnected by the AAA: Admin-Reset, revoked: Lost-Service),
   else Session-Timeout if its lifetime ran out, NAS-Request with
   3GPP2-Session-Continue = 1 if the same NAI is still registered here under
   a new epoch (a re-key or VPN change; X.S0011-005 uses Session-Continue
   for a record that another continues), and Lost-Carrier otherwise (it
   moved to another FA).
3. Every ``interim_interval`` seconds after its Start a live session is sent
   an Interim-Update with its counters (0: none). Counters are the inner
   octets and packets of its SAs, inbound as input and outbound as output,
   64-bit with Gigawords (RFC 2869 section 5.1), as the caller's ``usage``
   function reads them from the SA backend; a backend without counters sends
   none rather than zeros.
4. :meth:`AccountingReporter.starting` sends an Accounting-On (RFC 2866
   section 5.1) only when the agent starts without sessions to carry on: an
   agent that recovered registrations from its journal keeps their records
   open, and re-sends their Start (the server merges a repeated Start into
   its record).
5. Delivery is the client's: retransmission, failover and Status-Server
   probes (radius_client.py rules 1-4, 7). A request every server left
   unanswered is counted (``failed``) and dropped; at most ``backlog``
   requests wait for an Identifier, more are dropped and counted
   (``dropped_backlog``), so a dead accounting server never grows memory.
6. Times: ``now`` is seconds since the epoch (the agent's clock), so it is
   also the Event-Timestamp (RFC 2869 section 5.3).
"""

from __future__ import annotations

import collections
import enum
import heapq
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from aaa_vpn.roles.radius_client import (
    AccountingAnswered,
    Address,
    RadiusClient,
    RequestFailed,
)
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.accounting import AcctStatus, accounting_attributes, counter_attributes, session_class

_U32 = struct.Struct("!I")
_A = rc.Attr
_BACKLOG = 10_000


class TerminateCause(enum.IntEnum):
    """Acct-Terminate-Cause values (RFC 2866 section 5.10) this reporter sends."""

    USER_REQUEST = 1
    LOST_CARRIER = 2
    LOST_SERVICE = 3
    SESSION_TIMEOUT = 5
    ADMIN_RESET = 6
    NAS_REQUEST = 10


@dataclass(frozen=True)
class Usage:
    """Inner octets and packets of a session's SAs (rule 3)."""

    input_octets: int = 0
    output_octets: int = 0
    input_packets: int = 0
    output_packets: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_octets + other.input_octets,
            self.output_octets + other.output_octets,
            self.input_packets + other.input_packets,
            self.output_packets + other.output_packets,
        )


@dataclass(frozen=True)
class AccountedSession:
    """One live registration at the agent, as accounting sees it."""

    acct_session_id: str
    """The owner its SAs are installed under: ``<session id>#<epoch>`` (rule 1)."""
    nai: str
    session_id: str
    home_address: IPv4Address
    expires: float
    """When its lifetime runs out (seconds since the epoch)."""
    owners: tuple[str, ...]
    """The SA owners whose counters are its usage."""


@dataclass
class _Tracked:
    session: AccountedSession
    started: float
    next_interim: float | None


UsageReader = Callable[[tuple[str, ...]], Usage | None]


class AccountingReporter:
    """Start, Interim-Update and Stop for an agent's registrations, sans-IO."""

    def __init__(
        self,
        client: RadiusClient,
        *,
        nas_ip_address: IPv4Address,
        nas_identifier: str = "",
        interim_interval: float = 300.0,
        backlog: int = _BACKLOG,
    ) -> None:
        if interim_interval < 0:
            raise ValueError(f"interim_interval {interim_interval}: expected >= 0 (0: no Interim-Update)")
        self.client = client
        self.nas_ip_address = nas_ip_address
        self.nas_identifier = nas_identifier
        self.interim_interval = interim_interval
        self.backlog = backlog
        self.counters: collections.Counter[str] = collections.Counter()
        """``start``, ``interim``, ``stop``, ``on`` sent; ``answered``,
        ``failed``, ``dropped_backlog``; ``stop.<cause>``."""
        self._tracked: dict[str, _Tracked] = {}
        self._interims: list[tuple[float, str]] = []
        self._tags = 0

    # -- inputs -------------------------------------------------------------------------------
    def starting(self, now: float, recovered: bool) -> None:
        """The agent starts (rule 4)."""
        if not recovered:
            self._send(AcctStatus.ACCOUNTING_ON, "", [], now, b"")
            self.counters["on"] += 1

    def observe(
        self,
        live: Iterable[AccountedSession],
        now: float,
        usage: UsageReader,
        causes: Mapping[str, TerminateCause] | None = None,
    ) -> None:
        """Rule 2: Start what appeared, Stop what disappeared."""
        current = {s.acct_session_id: s for s in live}
        tracked = self._tracked
        gone = [key for key in tracked if key not in current]
        if gone:
            live_nais = {s.nai for s in current.values()}
            for key in gone:
                ended = tracked.pop(key)
                self._stop(ended, now, usage, self._cause(ended.session, now, live_nais, causes or {}))
        for key, session in current.items():
            entry = tracked.get(key)
            if entry is None:
                interim = now + self.interim_interval if self.interim_interval else None
                tracked[key] = _Tracked(session, now, interim)
                if interim is not None:
                    heapq.heappush(self._interims, (interim, key))
                self._send(AcctStatus.START, key, self._identity(session), now, session.nai.encode())
                self.counters["start"] += 1
            elif entry.session != session:
                entry.session = session  # renewed: a new expiry, same record

    def handle_timer(self, now: float, usage: UsageReader) -> None:
        """Interim-Updates that are due (rule 3), and the client's own timers."""
        interims = self._interims
        while interims and interims[0][0] <= now:
            when, key = heapq.heappop(interims)
            entry = self._tracked.get(key)
            if entry is None or entry.next_interim != when:
                continue
            attributes = self._identity(entry.session) + self._times(entry, now) + self._usage(entry, usage)
            self._send(AcctStatus.INTERIM_UPDATE, key, attributes, now, entry.session.nai.encode())
            self.counters["interim"] += 1
            entry.next_interim = now + self.interim_interval
            heapq.heappush(interims, (entry.next_interim, key))
        self.client.handle_timer(now)
        self._collect()

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        self.client.receive_datagram(data, address, now)
        self._collect()

    # -- outputs ------------------------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return self.client.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        interims = self._interims
        while interims and (
            interims[0][1] not in self._tracked or self._tracked[interims[0][1]].next_interim != interims[0][0]
        ):
            heapq.heappop(interims)
        times = [t for t in (interims[0][0] if interims else None, self.client.get_timer()) if t is not None]
        return min(times) if times else None

    @property
    def sessions(self) -> int:
        """Accounting sessions open."""
        return len(self._tracked)

    # -- internals ----------------------------------------------------------------------------
    def _cause(
        self, session: AccountedSession, now: float, live_nais: set[str], causes: Mapping[str, TerminateCause]
    ) -> tuple[TerminateCause, bool]:
        """Rule 2: (the cause, whether the session continues in another record)."""
        hint = causes.get(session.nai)
        if hint is not None:
            return hint, False
        if session.nai in live_nais:
            return TerminateCause.NAS_REQUEST, True
        if now >= session.expires:
            return TerminateCause.SESSION_TIMEOUT, False
        return TerminateCause.LOST_CARRIER, False

    def _stop(self, entry: _Tracked, now: float, usage: UsageReader, cause: tuple[TerminateCause, bool]) -> None:
        terminate, continues = cause
        attributes = self._identity(entry.session) + self._times(entry, now) + self._usage(entry, usage)
        attributes.append(rc.attribute(_A.ACCT_TERMINATE_CAUSE, _U32.pack(int(terminate))))
        if continues:
            attributes.append(
                rc.vendor_attribute(rc.THREEGPP2_VENDOR_ID, rc.ThreeGpp2Attr.SESSION_CONTINUE, _U32.pack(1))
            )
        self._send(AcctStatus.STOP, entry.session.acct_session_id, attributes, now, entry.session.nai.encode())
        self.counters["stop"] += 1
        self.counters[f"stop.{terminate.name.lower()}"] += 1

    def _identity(self, session: AccountedSession) -> list[bytes]:
        return [
            rc.attribute(_A.USER_NAME, session.nai.encode()),
            rc.attribute(_A.FRAMED_IP_ADDRESS, session.home_address.packed),
            rc.attribute(_A.ACCT_MULTI_SESSION_ID, session.session_id.encode()),
            rc.attribute(_A.CLASS, session_class(session.session_id)),
        ]

    @staticmethod
    def _times(entry: _Tracked, now: float) -> list[bytes]:
        return [rc.attribute(_A.ACCT_SESSION_TIME, _U32.pack(max(0, int(now - entry.started)) & 0xFFFFFFFF))]

    def _usage(self, entry: _Tracked, usage: UsageReader) -> list[bytes]:
        used = usage(entry.session.owners)
        if used is None:
            self.counters["no_counters"] += 1
            return []
        return counter_attributes(used.input_octets, used.output_octets, used.input_packets, used.output_packets)

    def _send(self, status: AcctStatus, acct_session_id: str, attributes: list[bytes], now: float, key: bytes) -> None:
        if self.client.waiting >= self.backlog:
            self.counters["dropped_backlog"] += 1
            return
        body = accounting_attributes(status, acct_session_id, attributes)
        body.append(rc.attribute(_A.NAS_IP_ADDRESS, self.nas_ip_address.packed))
        if self.nas_identifier:
            body.append(rc.attribute(_A.NAS_IDENTIFIER, self.nas_identifier.encode()[:253]))
        body.append(rc.attribute(_A.EVENT_TIMESTAMP, _U32.pack(int(now) & 0xFFFFFFFF)))
        self._tags += 1
        self.client.request_accounting(b"".join(body), now, ("acct", self._tags), key=key or None)

    def _collect(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, AccountingAnswered):
                self.counters["answered"] += 1
            elif isinstance(event, RequestFailed):
                self.counters["failed"] += 1


def usage_of(counters: Iterable[tuple[str, int, int]]) -> Usage:
    """Usage from per-SA ``(direction, packets, octets)`` (``"in"`` or ``"out"``)."""
    total = Usage()
    for direction, packets, octets in counters:
        if direction == "in":
            total += Usage(input_octets=octets, input_packets=packets)
        else:
            total += Usage(output_octets=octets, output_packets=packets)
    return total


__all__ = ["AccountedSession", "AccountingReporter", "TerminateCause", "Usage", "UsageReader", "usage_of"]
