"""A sans-IO RADIUS client for the agents (FA, HA, gateway): Access-Requests to
an ordered list of home AAA servers, with retransmission, failover and
dead-server probing.

Rules (everything that decides what is sent when lives here):

1. Retransmission (RFC 2865 section 2.5, RFC 5080 section 2.2.1): a request
   not answered within ``timeout`` seconds is sent again as the *identical*
   datagram -- same Identifier, same Request Authenticator, same source port
   -- so the server's duplicate cache answers it instead of acting twice. It
   is sent at most ``1 + retries`` times to one server, at a fixed interval.
2. Identifiers (RFC 2865 section 3, RFC 5080 section 2.2.1): per server, an
   Identifier belongs to one outstanding datagram (request or probe) from its
   first transmission until its reply or its timeout; Identifiers are handed
   out round-robin from a random start, so a freed one is reused as late as
   possible and a late reply to its previous owner fails verification. With
   all 256 in use, further requests for that server wait, first come first
   served, until one is freed.
3. Failover: when a request's last transmission to a server times out, that
   server is marked dead and the request moves to the next server in the
   configured order that is alive and that this request has not tried, with
   a new Identifier and a new Request Authenticator, sealed with that
   server's secret (RFC 5080 section 2.2.1: a changed packet is a new
   request). With no such server the request fails (:class:`RequestFailed`).
   A new request goes to the first live server; if every server is dead it
   fails at once rather than wait out ``dead_time``.
4. Dead servers (RFC 5997 section 4.3): a dead server gets no requests for
   ``dead_time`` seconds. Meanwhile it is probed with a Status-Server (with
   Message-Authenticator, RFC 5997 section 3) every ``status_interval``
   seconds, each probe a fresh packet that is never retransmitted; any
   verified reply from it -- a probe's answer, or a late answer to a request
   -- revives it at once. When ``dead_time`` passes unanswered it is tried
   again with real requests.
5. Replies are believed only through
   :func:`~aaa_vpn.wire.radius_request.decode_access_reply` /
   :func:`~aaa_vpn.wire.radius_request.decode_status_reply`, matched by the
   server's exact (address, port) and an outstanding Identifier. Anything
   else -- unknown source, no such Identifier (a late duplicate of an answered
   request), failed verification -- is dropped and counted in
   :attr:`RadiusClient.counters`; the request keeps waiting for the genuine
   reply. A verified reply finishes its request exactly once.
6. An authentic Access-Accept whose profile does not decode fails the request
   at once (:class:`RequestFailed`): asking again would bring the same bytes
   from the server's duplicate cache.

Theory of operation (the aioquic shape): inputs are :meth:`RadiusClient.request`,
:meth:`~RadiusClient.receive_datagram` and :meth:`~RadiusClient.handle_timer`,
each with ``now`` (seconds, any monotonic clock); outputs are
:meth:`~RadiusClient.datagrams_to_send`, :meth:`~RadiusClient.get_timer` and
:meth:`~RadiusClient.next_event`. No sockets, no clock; randomness only
through the ``random_bytes`` callable. ``net/radius_client.py`` drives it
over asyncio; tests drive it with a fake clock.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import RejectReason, VpnProfile
from aaa_vpn.wire.radius import ACCESS_REQUEST
from aaa_vpn.wire.radius_request import (
    Accepted,
    AccessRequest,
    Confirmation,
    ProfileReplyError,
    ReplyError,
    build_status_server,
    decode_access_reply,
    decode_status_reply,
    encode_request_attributes,
    seal_request,
)

#: Seconds before a transmission counts as unanswered (RFC 5080 section 2.2.1's IRT).
DEFAULT_TIMEOUT = 2.0
#: Retransmissions to one server after the first transmission.
DEFAULT_RETRIES = 2
#: Seconds a server that timed out gets no requests unless it answers a probe.
DEFAULT_DEAD_TIME = 30.0
#: Seconds between Status-Server probes of a dead server (RFC 3539 section 3.4.1's minimum Tw).
DEFAULT_STATUS_INTERVAL = 6.0
#: Identifiers per server (one octet, RFC 2865 section 3).
IDENTIFIERS = 256

Address = tuple[str, int]


@dataclass(frozen=True)
class ServerConfig:
    """One home AAA server, in the client's order of preference."""

    address: str
    """IP address literal (replies are matched by their source address, so no
    host names); normalised on construction."""
    port: int
    """UDP port: 1812 for authentication (RFC 2865 section 3)."""
    secret: Secret
    """The RADIUS shared secret with this server."""
    name: str = ""
    """For events, logs and counters; defaults to ``address:port``."""
    transport: str = "udp"
    """``udp``, or ``radsec`` (RFC 6614: the driver carries this server's
    datagrams over TLS, roles/radsec.py; the secret is then ``radsec``)."""
    tls_name: str = ""
    """RadSec: the name the server's certificate must carry; default: its address."""

    def __post_init__(self) -> None:
        if self.transport not in ("udp", "radsec"):
            raise ValueError(f"server transport {self.transport!r}: udp or radsec")
        try:
            normalised = str(ip_address(self.address))
        except ValueError:
            raise ValueError(f"server address {self.address!r} is not an IP address literal") from None
        object.__setattr__(self, "address", normalised)
        if not 1 <= self.port <= 65535:
            raise ValueError(f"server port {self.port}: expected 1..65535")
        if not isinstance(self.secret, Secret) or not self.secret:
            raise ValueError("the shared secret is a non-empty Secret")
        if not self.name:
            object.__setattr__(self, "name", f"{normalised}:{self.port}")


class Event:
    """Base class of what the client reports through :meth:`RadiusClient.next_event`."""


@dataclass(frozen=True)
class RequestAccepted(Event):
    """The home AAA accepted a request."""

    tag: object
    """The caller's tag given to :meth:`RadiusClient.request`."""
    profile: VpnProfile | None
    """The receiver's view of the VPN; None when the Accept is a confirmation."""
    attributes: bytes
    """The reply's raw attribute section, for attributes the profile does not cover."""
    request_authenticator: bytes
    """The Request Authenticator the reply answers: salt-encrypted values in
    ``attributes`` decrypt with it (RFC 2868 section 3.5)."""
    server: str
    """The name of the server that answered."""
    confirmation: Confirmation | None = None
    """Set instead of ``profile``: the server confirmed the view the request's
    Aaa-Vpn-Profile-Digest named (its keys stand; only the lifetime is new)."""


@dataclass(frozen=True)
class RequestRejected(Event):
    """The home AAA rejected a request (Access-Reject, or an Access-Challenge
    treated as one)."""

    tag: object
    """The caller's tag."""
    reason: RejectReason | None
    """Aaa-Vpn-Reject-Reason (``None``: absent or unknown)."""
    message: str
    """The Reply-Message text."""
    server: str
    """The name of the server that answered."""


@dataclass(frozen=True)
class RequestFailed(Event):
    """No usable answer: every server tried timed out, every server is dead,
    or a server's authentic Accept did not decode. An agent maps this to a
    Mobile IP reply such as 88 (home agent / AAA unreachable)."""

    tag: object
    """The caller's tag."""
    reason: str
    """What happened, for logs."""
    servers: tuple[str, ...]
    """The names of the servers this request was sent to, in order."""


@dataclass(frozen=True)
class ServerDown(Event):
    """A server was marked dead (rule 4)."""

    server: str
    """The server's name."""
    until: float
    """When it is tried again with requests unless a probe revives it first."""


@dataclass(frozen=True)
class ServerUp(Event):
    """A dead server is in use again (rule 4)."""

    server: str
    """The server's name."""
    reason: str
    """``"answered"`` (a verified reply arrived) or ``"dead time elapsed"``."""


# --- internal state --------------------------------------------------------------------------


class _Server:
    __slots__ = ("config", "dead_until", "in_flight", "index", "key", "next_id", "next_probe")

    def __init__(self, index: int, config: ServerConfig, first_id: int) -> None:
        self.index = index
        self.config = config
        self.key = config.secret.value
        self.in_flight: dict[int, _Request | _Probe] = {}
        self.next_id = first_id
        self.dead_until: float | None = None
        self.next_probe: float | None = None

    @property
    def address(self) -> Address:
        return (self.config.address, self.config.port)

    def allocate(self) -> int | None:
        """A free Identifier, round-robin (rule 2), or None if all are in use."""
        if len(self.in_flight) >= IDENTIFIERS:
            return None
        for step in range(IDENTIFIERS):
            identifier = (self.next_id + step) % IDENTIFIERS
            if identifier not in self.in_flight:
                self.next_id = (identifier + 1) % IDENTIFIERS
                return identifier
        return None  # pragma: no cover - excluded by the length check


class _Request:
    """One request, from :meth:`RadiusClient.request` until its event."""

    __slots__ = ("attributes", "deadline", "done", "identifier", "packet", "server", "tag", "transmissions", "tried")

    def __init__(self, tag: object, attributes: bytes) -> None:
        self.tag = tag
        self.attributes = attributes
        self.tried: list[_Server] = []
        self.server: _Server | None = None  # while a datagram is in flight
        self.identifier = -1
        self.packet = b""
        self.transmissions = 0
        self.deadline = 0.0
        self.done = False


class _Probe:
    """One Status-Server in flight."""

    __slots__ = ("deadline", "done", "identifier", "packet", "server")

    def __init__(self, server: _Server, identifier: int, packet: bytes, deadline: float) -> None:
        self.server = server
        self.identifier = identifier
        self.packet = packet
        self.deadline = deadline
        self.done = False


# Timer entries: (when, sequence, kind, object). Stale entries stay in the heap
# and are skipped when they surface (lazy deletion).
_FLIGHT, _PROBE_DUE, _REVIVE = 0, 1, 2
_TimerEntry = tuple[float, int, int, object]


class RadiusClient:
    """Access-Requests to ``servers`` (tried in this order), sans-IO."""

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        dead_time: float = DEFAULT_DEAD_TIME,
        status_interval: float | None = DEFAULT_STATUS_INTERVAL,
        nas_ip_address: IPv4Address | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``status_interval=None`` disables probing (a dead server then comes
        back only when ``dead_time`` passes). ``nas_ip_address`` goes into the
        Status-Server probes. ``random_bytes`` supplies Request Authenticators
        and the first Identifiers (tests pass a seeded one)."""
        if not servers:
            raise ValueError("a RADIUS client needs at least one server")
        if timeout <= 0:
            raise ValueError(f"timeout {timeout}: expected > 0")
        if retries < 0:
            raise ValueError(f"retries {retries}: expected >= 0")
        if dead_time < 0:
            raise ValueError(f"dead_time {dead_time}: expected >= 0")
        if status_interval is not None and status_interval <= 0:
            raise ValueError(f"status_interval {status_interval}: expected > 0, or None for no probes")
        self.timeout = timeout
        self.retries = retries
        self.dead_time = dead_time
        self.status_interval = status_interval
        self.nas_ip_address = nas_ip_address
        self.random_bytes = random_bytes
        self.counters: collections.Counter[str] = collections.Counter()
        """What happened, by name: ``requests``, ``sent``, ``retransmissions``,
        ``timeouts``, ``failovers``, ``accepts``, ``rejects``, ``failed``,
        ``undecodable``, ``marked_dead``, ``revived``, ``status_sent``,
        ``status_replies``, ``status_timeouts``, ``received``, ``dropped`` and
        ``dropped.<reason>`` (``unknown_source``, ``malformed``, ``unmatched``,
        ``bad_reply``)."""
        self.last_drop = ""
        """Why the latest reply was dropped (for logs; never contains secrets)."""
        self._servers: list[_Server] = []
        self._by_address: dict[Address, _Server] = {}
        for index, config in enumerate(servers):
            server = _Server(index, config, random_bytes(1)[0])
            if server.address in self._by_address:
                raise ValueError(f"server {config.name}: {config.address}:{config.port} is configured twice")
            self._servers.append(server)
            self._by_address[server.address] = server
        self._waiting: collections.deque[_Request] = collections.deque()
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: collections.deque[Event] = collections.deque()
        self._timers: list[_TimerEntry] = []
        self._sequence = itertools.count()

    # -- the API ----------------------------------------------------------------------------
    def request(self, info: AccessRequest, now: float, tag: object = None) -> None:
        """Queue an Access-Request for ``info``; its outcome arrives as one
        :class:`RequestAccepted`, :class:`RequestRejected` or
        :class:`RequestFailed` carrying ``tag``.

        Raises :class:`~aaa_vpn.wire.radius_request.RequestError` at once if
        the request cannot be encoded (the caller's fault)."""
        self.request_attributes(encode_request_attributes(info), now, tag)

    def request_attributes(self, attributes: bytes, now: float, tag: object = None) -> None:
        """Like :meth:`request` for attributes already encoded (a proxy relays
        its client's verbatim): raw attributes without Message-Authenticator,
        which sealing puts first for each server."""
        entry = _Request(tag, attributes)
        self.counters["requests"] += 1
        self._waiting.append(entry)
        self._dispatch(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The datagrams to send now, each with its destination (host, port)."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or None."""
        timers = self._timers
        while timers and not self._live(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, fail over, probe and revive whatever is due at ``now``."""
        timers = self._timers
        failing: list[_Request] = []
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if not self._live(entry):
                continue
            kind, item = entry[2], entry[3]
            if kind == _FLIGHT:
                if isinstance(item, _Request):
                    if self._request_timed_out(item, now):
                        failing.append(item)
                else:
                    assert isinstance(item, _Probe)
                    self._probe_timed_out(item)
            elif kind == _PROBE_DUE:
                assert isinstance(item, _Server)
                self._probe(item, now)
            else:
                assert isinstance(item, _Server)
                self._revive(item, "dead time elapsed")
        # Requests failing over already waited their turn: they go first, in order.
        self._waiting.extendleft(reversed(failing))
        self._dispatch(now)

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """Handle a datagram received from ``address`` (host, port)."""
        self.counters["received"] += 1
        server = self._by_address.get(address)
        if server is None:
            server = self._lookup(address)
            if server is None:
                self._drop("unknown_source", f"a datagram from {address[0]}:{address[1]}, not a configured server")
                return
        if len(data) < 20:
            self._drop("malformed", f"{len(data)} octets from {server.config.name}: shorter than a RADIUS header")
            return
        flight = server.in_flight.get(data[1])
        if flight is None:
            self._drop("unmatched", f"{server.config.name}: no request outstanding with Identifier {data[1]}")
            return
        if isinstance(flight, _Probe):
            try:
                decode_status_reply(data, flight.packet, server.key)
            except ReplyError as exc:
                self._drop("bad_reply", f"{server.config.name}: {exc}")
                return
            self._finish_probe(flight)
            self.counters["status_replies"] += 1
            self._revive(server, "answered")
        else:
            self._reply(server, flight, data)
        self._dispatch(now)

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    # -- introspection ----------------------------------------------------------------------
    @property
    def servers(self) -> tuple[ServerConfig, ...]:
        return tuple(s.config for s in self._servers)

    @property
    def waiting(self) -> int:
        """Requests waiting for a free Identifier (rule 2)."""
        return len(self._waiting)

    @property
    def outstanding(self) -> int:
        """Requests with a datagram in flight."""
        return sum(isinstance(f, _Request) for s in self._servers for f in s.in_flight.values())

    def is_alive(self, name: str, now: float) -> bool:
        """Whether the server called ``name`` is in use (not marked dead) at ``now``."""
        for server in self._servers:
            if server.config.name == name:
                return server.dead_until is None or now >= server.dead_until
        raise KeyError(name)

    # -- internals --------------------------------------------------------------------------
    def _lookup(self, address: Address) -> _Server | None:
        """Slow path: the same address spelled differently (e.g. IPv6 forms)."""
        try:
            normalised = (str(ip_address(address[0])), int(address[1]))
        except (ValueError, TypeError, IndexError):
            return None
        return self._by_address.get(normalised)

    def _drop(self, reason: str, detail: str) -> None:
        self.counters["dropped"] += 1
        self.counters[f"dropped.{reason}"] += 1
        self.last_drop = detail

    def _push(self, when: float, kind: int, item: object) -> None:
        heapq.heappush(self._timers, (when, next(self._sequence), kind, item))

    @staticmethod
    def _live(entry: _TimerEntry) -> bool:
        when, _, kind, item = entry
        if kind == _FLIGHT:
            assert isinstance(item, (_Request, _Probe))
            return (
                not item.done and item.deadline == when and (not isinstance(item, _Request) or item.server is not None)
            )
        assert isinstance(item, _Server)
        if kind == _PROBE_DUE:
            return item.next_probe == when
        return item.dead_until == when

    def _alive(self, server: _Server, now: float) -> bool:
        if server.dead_until is None:
            return True
        if now >= server.dead_until:
            self._revive(server, "dead time elapsed")
            return True
        return False

    def _dispatch(self, now: float) -> None:
        """Send what waits, in order, as far as Identifiers allow (rules 2, 3)."""
        if not self._waiting:
            return
        still: collections.deque[_Request] = collections.deque()
        while self._waiting:
            entry = self._waiting.popleft()
            if not self._assign(entry, now):
                still.append(entry)
        self._waiting = still

    def _assign(self, entry: _Request, now: float) -> bool:
        """Send ``entry`` to its next server; False if it must wait for an Identifier."""
        server = next((s for s in self._servers if s not in entry.tried and self._alive(s, now)), None)
        if server is None:
            if entry.tried:
                names = ", ".join(s.config.name for s in entry.tried)
                reason = f"no reply from {names}"
                if len(entry.tried) < len(self._servers):
                    reason += "; the other servers are marked dead"
            else:
                reason = "every server is marked dead"
            self._fail(entry, reason)
            return True
        identifier = server.allocate()
        if identifier is None:
            self.counters["identifier_waits"] += 1
            return False
        authenticator = self.random_bytes(16)
        entry.server = server
        entry.identifier = identifier
        entry.packet = seal_request(ACCESS_REQUEST, identifier, authenticator, server.key, entry.attributes)
        entry.transmissions = 1
        entry.deadline = now + self.timeout
        entry.tried.append(server)
        server.in_flight[identifier] = entry
        self._outbox.append((entry.packet, server.address))
        self.counters["sent"] += 1
        self._push(entry.deadline, _FLIGHT, entry)
        return True

    def _request_timed_out(self, entry: _Request, now: float) -> bool:
        """Retransmit (rule 1) or give the server up (rule 3); True if
        ``entry`` must fail over."""
        server = entry.server
        assert server is not None
        if entry.transmissions <= self.retries:
            # Rule 1: the identical datagram, so the server's duplicate cache answers.
            entry.transmissions += 1
            entry.deadline = now + self.timeout
            self._outbox.append((entry.packet, server.address))
            self.counters["retransmissions"] += 1
            self._push(entry.deadline, _FLIGHT, entry)
            return False
        self.counters["timeouts"] += 1
        del server.in_flight[entry.identifier]
        entry.server = None
        self._mark_dead(server, now)
        self.counters["failovers"] += 1
        return True

    def _mark_dead(self, server: _Server, now: float) -> None:
        if server.dead_until is not None and server.dead_until > now:
            return
        server.dead_until = now + self.dead_time
        self.counters["marked_dead"] += 1
        self._events.append(ServerDown(server.config.name, server.dead_until))
        self._push(server.dead_until, _REVIVE, server)
        self._schedule_probe(server, now)

    def _schedule_probe(self, server: _Server, now: float) -> None:
        if self.status_interval is None or server.dead_until is None:
            server.next_probe = None
            return
        due = now + self.status_interval
        if due >= server.dead_until:
            server.next_probe = None  # dead time ends first: real requests try it then
            return
        server.next_probe = due
        self._push(due, _PROBE_DUE, server)

    def _probe(self, server: _Server, now: float) -> None:
        """Rule 4: a fresh Status-Server, never retransmitted."""
        self._schedule_probe(server, now)
        identifier = server.allocate()
        if identifier is None:
            return  # every Identifier is waiting on the server anyway
        packet = build_status_server(identifier, self.random_bytes(16), server.key, self.nas_ip_address)
        probe = _Probe(server, identifier, packet, now + self.timeout)
        server.in_flight[identifier] = probe
        self._outbox.append((packet, server.address))
        self.counters["status_sent"] += 1
        self._push(probe.deadline, _FLIGHT, probe)

    def _probe_timed_out(self, probe: _Probe) -> None:
        self.counters["status_timeouts"] += 1
        self._finish_probe(probe)

    @staticmethod
    def _finish_probe(probe: _Probe) -> None:
        probe.done = True
        del probe.server.in_flight[probe.identifier]

    def _revive(self, server: _Server, reason: str) -> None:
        if server.dead_until is None:
            return
        server.dead_until = None
        server.next_probe = None
        self.counters["revived"] += 1
        self._events.append(ServerUp(server.config.name, reason))

    def _reply(self, server: _Server, entry: _Request, data: bytes) -> None:
        try:
            result = decode_access_reply(data, entry.packet, server.key)
        except ProfileReplyError as exc:
            self._release(server, entry)
            self._revive(server, "answered")
            self.counters["undecodable"] += 1
            self._fail(entry, f"{server.config.name}: {exc}")
            return
        except ReplyError as exc:
            self._drop("bad_reply", f"{server.config.name}: {exc}")
            return
        self._release(server, entry)
        self._revive(server, "answered")
        entry.done = True
        name = server.config.name
        if isinstance(result, Accepted):
            self.counters["accepts"] += 1
            self._events.append(
                RequestAccepted(
                    entry.tag, result.profile, result.attributes, entry.packet[4:20], name, result.confirmation
                )
            )
        else:
            self.counters["rejects"] += 1
            self._events.append(RequestRejected(entry.tag, result.reason, result.message, name))

    @staticmethod
    def _release(server: _Server, entry: _Request) -> None:
        del server.in_flight[entry.identifier]
        entry.server = None

    def _fail(self, entry: _Request, reason: str) -> None:
        entry.done = True
        self.counters["failed"] += 1
        self._events.append(RequestFailed(entry.tag, reason, tuple(s.config.name for s in entry.tried)))


__all__ = [
    "DEFAULT_DEAD_TIME",
    "DEFAULT_RETRIES",
    "DEFAULT_STATUS_INTERVAL",
    "DEFAULT_TIMEOUT",
    "Event",
    "RadiusClient",
    "RequestAccepted",
    "RequestFailed",
    "RequestRejected",
    "ServerConfig",
    "ServerDown",
    "ServerUp",
]
