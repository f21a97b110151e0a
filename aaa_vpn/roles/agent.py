"""What the mobility agents (FA, HA, gateway) and the mobile-node simulator
have in common: the sans-IO shape and the events they hand to the service
layer.

Theory of operation (the aioquic shape, STYLE.md): an agent's inputs are
``receive_datagram(channel, data, source, now)``, ``handle_timer(now)`` and,
for an agent that asked for SAs, ``paths_installed(owner, error, now)``; its
outputs are ``datagrams_to_send(now)`` (each tagged with the socket it leaves
from: Mobile IP or RADIUS), ``get_timer()`` and ``next_event()``. Agents never
touch a socket, a clock, the database or an SA backend: they ask for SAs with
:class:`InstallPaths` / :class:`DeletePaths` events that the service layer
carries out (all or nothing) and reports back with ``paths_installed``.

Two habits every agent shares (docs/protocol.md section 3.11):

* Retransmission: a request that expects an answer is sent again, byte for
  byte, after ``first``, then ``2 * first``, ``4 * first`` ... seconds, each
  wait at most the exchange's cap (:func:`backoff`), as long as an answer
  could still arrive before the exchange's own timeout; the receiver of a
  duplicate answers it again and starts nothing new.
* Bounds: every table a peer that has not authenticated can make an agent
  fill has a limit; reaching it is counted (``limits.<table>``) and reported
  as a :class:`LimitReached` event at most once a minute per table, which the
  service layer logs.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn.wire.profile import PathProfile

Address = tuple[str, int]

#: Seconds between two :class:`LimitReached` events of one table (the log stays readable under a flood).
LIMIT_REPORT_INTERVAL = 60.0


def backoff(first: float, sent: int, cap: float = math.inf) -> float:
    """Seconds to wait after the ``sent``-th transmission of a request (1 for
    the first) before sending it again: ``first``, doubled each time (RFC 5944
    section 3.6.3, RFC 5080 section 2.2.1), but never more than ``cap`` (RFC
    5080's MRT: on a path whose round trip is milliseconds, a second or less
    between transmissions keeps an exchange alive under loss without
    crowding anyone)."""
    return min(first * (1 << min(max(0, sent - 1), 30)), max(first, cap))


def transmission_times(first: float, timeout: float, cap: float = math.inf) -> list[float]:
    """When (seconds after the first) a request is sent, first transmission
    included, if nothing answers: every :func:`backoff` step that falls
    before ``timeout``, when the exchange gives up."""
    times, sent = [0.0], 1
    while times[-1] + backoff(first, sent, cap) < timeout:
        times.append(times[-1] + backoff(first, sent, cap))
        sent += 1
    return times


class Channel(enum.Enum):
    """The socket a datagram belongs to."""

    MIP = "mip"  # Mobile IP control messages (UDP 434)
    RADIUS = "radius"  # the agent's RADIUS client socket
    COA = "coa"  # Disconnect-/CoA-Requests from its AAA server (RFC 5176, UDP 3799)
    ACCOUNTING = "accounting"  # the agent's RADIUS accounting client socket (RFC 2866)


@dataclass(frozen=True)
class Datagram:
    """One datagram to send."""

    channel: Channel
    """The socket it leaves from."""
    data: bytes
    """The UDP payload."""
    address: Address
    """Its destination (host, port)."""


class Event:
    """Base class of what agents report through ``next_event()``."""


@dataclass(frozen=True)
class InstallPaths(Event):
    """Install these paths, all or nothing, then call ``paths_installed``."""

    owner: str
    """Groups the paths of one registration or binding (for later deletion)."""
    paths: tuple[PathProfile, ...]
    """This node's views of the paths."""


@dataclass(frozen=True)
class DeletePaths(Event):
    """Remove the paths of ``owner`` (only those toward ``peer`` if given)."""

    owner: str
    """As given to :class:`InstallPaths`."""
    peer: IPv4Address | None = None
    """Restrict the deletion to paths toward this peer."""


@dataclass(frozen=True)
class RegistrationDone(Event):
    """A registration (or a binding at a gateway) was decided, for logs and tests."""

    nai: str
    """The mobile node's NAI ('' where the message carries none)."""
    home_address: IPv4Address
    """Its home address."""
    code: int
    """The Mobile IP reply code (or Binding Acknowledge status) sent."""
    lifetime: int
    """The lifetime granted (0 when denied or deregistered)."""
    detail: str = ""
    """Why, when denied."""


@dataclass(frozen=True)
class LimitReached(Event):
    """A bounded table was full: something was refused or evicted (for logs)."""

    table: str
    """Which table (also the counter ``limits.<table>``)."""
    limit: int
    """Its size limit."""
    hits: int
    """How often the limit was hit since the last report."""


class Agent:
    """Output queues and timers shared by the agents."""

    def __init__(self) -> None:
        self._outbox: list[Datagram] = []
        self._events: collections.deque[Event] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._sequence = itertools.count()
        self._cancelled: set[int] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        self._limit_reports: dict[str, tuple[float, int]] = {}  # table -> (last report, hits since)

    # -- outputs --------------------------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        while self._timers and self._timers[0][1] in self._cancelled:
            self._cancelled.discard(heapq.heappop(self._timers)[1])
        own = self._timers[0][0] if self._timers else None
        inner = self._inner_timer()
        if own is None:
            return inner
        return own if inner is None else min(own, inner)

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _when, number, callback = heapq.heappop(self._timers)
            if number in self._cancelled:
                self._cancelled.discard(number)
                continue
            callback(now)
        self._inner_handle_timer(now)

    # -- restart (docs/agents.md, "Restart") -------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """The long-lived state a restarted agent needs: plain values, plus
        :class:`~aaa_vpn.wire.profile.VpnProfile` and
        :class:`~aaa_vpn.secret.Secret` objects (the journal protects them).
        In-flight exchanges are not part of it: they start over."""
        return {}

    def restore_state(self, state: dict[str, Any], now: float) -> None:
        """Take ``state`` (from :meth:`export_state`) back; entries that ended
        before ``now`` are dropped, timers are armed again."""

    def owners(self) -> set[str]:
        """The SA owners the live state uses: what a restarted agent keeps."""
        return set()

    def exchanges(self) -> int:
        """Exchanges under way: requests waiting for an answer, paths being
        installed, state held for an outcome that is not known yet (zero: the
        agent waits for nobody; tests and labs use it to know when the
        system has settled)."""
        return 0

    def forget_unbacked(self, installed: set[str], now: float) -> None:
        """After a restart: drop live state whose SAs are gone from the
        backend (``installed``: the owners it still holds), as if it had ended."""

    # -- for subclasses --------------------------------------------------------------------------
    def _send(self, channel: Channel, data: bytes, address: Address) -> None:
        self._outbox.append(Datagram(channel, data, address))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _call_at(self, when: float, callback: Callable[[float], None]) -> int:
        number = next(self._sequence)
        heapq.heappush(self._timers, (when, number, callback))
        return number

    def _cancel(self, number: int | None) -> None:
        if number is not None:
            self._cancelled.add(number)

    def _limit_hit(self, table: str, limit: int, now: float) -> None:
        """Count that ``table`` is full; report it at most every :data:`LIMIT_REPORT_INTERVAL` s."""
        self.counters[f"limits.{table}"] += 1
        last, hits = self._limit_reports.get(table, (float("-inf"), 0))
        hits += 1
        if now - last >= LIMIT_REPORT_INTERVAL:
            self._emit(LimitReached(table, limit, hits))
            last, hits = now, 0
        self._limit_reports[table] = (last, hits)

    def _inner_timer(self) -> float | None:
        """Timers of embedded state machines (the RADIUS client)."""
        return None

    def _inner_handle_timer(self, now: float) -> None:
        pass
