"""A sans-IO RADIUS client for the agents (FA, HA, gateway) and the foreign
AAA's upstream: Access-Requests to a pool of home AAA servers, with
retransmission, FreeRADIUS's pool types, zombie and dead servers, and
Status-Server probing.

Rules (everything that decides what is sent when lives here):

1. Retransmission (RFC 2865 section 2.5, RFC 5080 section 2.2.1): a request
   not answered within ``timeout`` seconds is sent again as the *identical*
   datagram -- same Identifier, same Request Authenticator, same source port
   -- so the server's duplicate cache answers it instead of acting twice.
   Each later wait is twice the one before, but never longer than
   ``max_timeout`` (RFC 5080's IRT, MRT and MRC): at most ``1 + retries``
   transmissions to one server, which is given up when the wait after the
   last one ends (:func:`retransmission_waits`; with the defaults at 0, 0.25,
   0.75, 1.75, 2.75 ... 6.75 s, given up at 7.75 s).
2. Identifiers (RFC 2865 section 3, RFC 5080 section 2.2.1): per server, an
   Identifier belongs to one outstanding datagram (request or probe) from its
   first transmission until its reply or its timeout; Identifiers are handed
   out round-robin from a random start, so a freed one is reused as late as
   possible and a late reply to its previous owner fails verification. With
   all 256 in use, further requests for that server wait, first come first
   served, until one is freed.
3. Failover: when a request's last transmission to a server times out, that
   server becomes a zombie (rule 4) and the request moves to the next live
   server of the pool (rule 4a) that this request has not tried, with
   a new Identifier and a new Request Authenticator, sealed with that
   server's secret (RFC 5080 section 2.2.1: a changed packet is a new
   request). With no such server the request fails (:class:`RequestFailed`).
   A new request goes to a live server (rule 4a). A zombie or dead mark only
   orders the servers, it never refuses a request: when no live server is
   left that a request has not tried, it goes to a zombie, else to the dead
   one whose dead time ends first (a lone server that missed one request
   under loss is still asked the next time), and fails only when it has
   tried them all.
4. Zombie and dead servers (RFC 5997 section 4.3, FreeRADIUS's
   ``zombie_period``): a server that lets a request time out becomes a
   *zombie*: it gets no new requests while a live server is left, and is
   probed with a Status-Server (with Message-Authenticator, RFC 5997 section
   3) every ``status_interval`` seconds, each probe a fresh packet that is
   never retransmitted. Any verified reply from it -- a probe's answer, or a
   late answer to a request -- revives it at once. A zombie that answers
   nothing for ``zombie_period`` seconds is marked *dead* for ``dead_time``
   seconds, probed the same way; when ``dead_time`` passes unanswered it is
   tried again with real requests. ``zombie_period=0`` marks it dead at once.
   Without probes (``status_interval=None``) only real requests and the
   passing of ``dead_time`` bring it back.
4a. Pools (FreeRADIUS's ``home_server_pool`` types): among the live servers a
   request has not tried, ``fail-over`` takes the first in configured order;
   ``load-balance`` the one with the fewest requests in flight (ties in
   turn); ``client-balance`` and ``keyed-balance`` a server chosen by a hash
   of the request's client (``nas_ip_address``, or the ``client`` a proxy
   passes) or of its ``key`` (the caller's, e.g. the NAI) -- so one client or
   one user keeps its server -- and the servers after it in order when it is
   not live. With no live server left, zombies come before dead servers,
   dead ones by the end of their dead time (rule 3).
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
7. Accounting-Requests (RFC 2866) travel the same pool with the same
   retransmission, Identifiers and failover: their Request Authenticator is
   the hash of the packet (RFC 2866 section 3), so a retransmission is the
   identical datagram and a failover a new one sealed with the next server's
   secret; their Accounting-Response is verified by its Response
   Authenticator (a Message-Authenticator, optional there, is checked when
   present) and reported as :class:`AccountingAnswered`.

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
import hashlib
import heapq
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Protocol

from aaa_vpn.roles.pools import DEFAULT_DEAD_TIME, DEFAULT_ZOMBIE_PERIOD, POOL_TYPES
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import MnKey, RejectReason, VpnProfile
from aaa_vpn.wire.radius import ACCESS_REQUEST, ACCOUNTING_REQUEST, encode_hashed_request
from aaa_vpn.wire.radius_request import (
    Accepted,
    AccessRequest,
    Confirmation,
    ProfileReplyError,
    ReplyError,
    build_status_server,
    decode_access_reply,
    decode_accounting_response,
    decode_status_reply,
    encode_request_attributes,
    seal_request,
)

#: Seconds before the first retransmission (RFC 5080 section 2.2.1's IRT): a
#: backbone's round trip is milliseconds, a busy home AAA's group commit tens
#: of them (docs/radius-client.md, "Defaults and why").
DEFAULT_TIMEOUT = 0.25
#: The longest wait between two transmissions (RFC 5080's MRT).
DEFAULT_MAX_TIMEOUT = 1.0
#: Retransmissions to one server after the first transmission (RFC 5080's MRC).
DEFAULT_RETRIES = 8
#: Seconds between Status-Server probes of a dead server (RFC 3539 section 3.4.1's minimum Tw).
DEFAULT_STATUS_INTERVAL = 6.0
#: Identifiers per server (one octet, RFC 2865 section 3).
IDENTIFIERS = 256

Address = tuple[str, int]


def retransmission_waits(timeout: float, retries: int, max_timeout: float) -> list[float]:
    """Rule 1: the seconds waited after each of the ``1 + retries``
    transmissions of a request to one server -- ``timeout``, then twice the
    wait before, never more than ``max_timeout`` (a ``timeout`` above it
    gives a fixed interval). Their sum is how long one
    server is given (:func:`server_time`)."""
    return [min(timeout * (1 << min(n, 30)), max(timeout, max_timeout)) for n in range(retries + 1)]


def server_time(
    timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES, max_timeout: float = DEFAULT_MAX_TIMEOUT
) -> float:
    """Seconds from a request's first transmission to a server until that
    server is given up (rule 1): what each configured server adds to an
    unanswered request's time (docs/protocol.md section 3.11)."""
    return sum(retransmission_waits(timeout, retries, max_timeout))


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
    mn_fa_key: MnKey | None = None
    """Diameter only: the MN-FA key the home AAA made for the mobile node and
    the nonce it derives it from (RFC 3957; roles/diameter_home.py rule 10)."""
    mn_ha_key: MnKey | None = None
    """Diameter only (a HAR's view): the MN-HA key the home AAA made for the
    mobile node and the nonce it derives it from."""


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
    """No usable answer: every server timed out, or a server's authentic
    Accept did not decode. An agent maps this to a
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
class AccountingAnswered(Event):
    """A server answered an Accounting-Request: the record is stored (RFC 2866 section 4.1)."""

    tag: object
    """The caller's tag."""
    server: str
    """The name of the server that answered."""


@dataclass(frozen=True)
class ServerZombie(Event):
    """A server let a request time out: probed, and given no new requests
    while another server is live, until it answers or ``until`` (rule 4)."""

    server: str
    until: float


@dataclass(frozen=True)
class ServerUp(Event):
    """A dead server is in use again (rule 4)."""

    server: str
    """The server's name."""
    reason: str
    """``"answered"`` (a verified reply arrived) or ``"dead time elapsed"``."""


# --- internal state --------------------------------------------------------------------------


class _Server:
    __slots__ = (
        "config",
        "dead_until",
        "in_flight",
        "index",
        "key",
        "next_id",
        "next_probe",
        "requests",
        "stats",
        "zombie_until",
    )

    def __init__(self, index: int, config: ServerConfig, first_id: int) -> None:
        self.index = index
        self.config = config
        self.key = config.secret.value
        self.in_flight: dict[int, _Request | _Probe] = {}
        self.next_id = first_id
        self.dead_until: float | None = None
        self.zombie_until: float | None = None
        self.next_probe: float | None = None
        self.requests = 0  # requests (not probes) in flight
        self.stats: collections.Counter[str] = collections.Counter()

    @property
    def down_until(self) -> float | None:
        """The end of the zombie period or of the dead time, whichever applies."""
        return self.dead_until if self.dead_until is not None else self.zombie_until

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

    __slots__ = (
        "attributes",
        "balance",
        "code",
        "deadline",
        "done",
        "identifier",
        "packet",
        "server",
        "tag",
        "transmissions",
        "tried",
    )

    def __init__(self, tag: object, attributes: bytes, balance: int, code: int = ACCESS_REQUEST) -> None:
        self.tag = tag
        self.code = code  # Access-Request, or Accounting-Request (rule 7)
        self.attributes = attributes
        self.balance = balance  # rule 4a: where a balancing pool starts looking
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
_FLIGHT, _PROBE_DUE, _REVIVE, _ZOMBIE_END = 0, 1, 2, 3
_TimerEntry = tuple[float, int, int, object]


class AgentAaaSettings(Protocol):
    """What an agent's settings say about its AAA servers (FaConfig, HaConfig)."""

    @property
    def address(self) -> IPv4Address: ...
    @property
    def aaa_servers(self) -> Sequence[ServerConfig]: ...
    @property
    def radius_timeout(self) -> float: ...
    @property
    def radius_retries(self) -> int: ...
    @property
    def radius_max_timeout(self) -> float: ...
    @property
    def radius_pool(self) -> str: ...
    @property
    def radius_zombie_period(self) -> float: ...
    @property
    def radius_dead_time(self) -> float: ...


class RadiusClient:
    """Access-Requests to a pool of ``servers`` (in configured order), sans-IO."""

    @classmethod
    def for_agent(
        cls,
        config: AgentAaaSettings,
        random_bytes: Callable[[int], bytes] = os.urandom,
        servers: Sequence[ServerConfig] | None = None,
    ) -> RadiusClient:
        """The client of an FA or HA: its servers (or ``servers``: the same
        ones' accounting ports), pool and timers from its settings, its own
        address in Status-Server probes."""
        return cls(
            config.aaa_servers if servers is None else servers,
            timeout=config.radius_timeout,
            retries=config.radius_retries,
            max_timeout=config.radius_max_timeout,
            pool_type=config.radius_pool,
            zombie_period=config.radius_zombie_period,
            dead_time=config.radius_dead_time,
            nas_ip_address=config.address,
            random_bytes=random_bytes,
        )

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_timeout: float = DEFAULT_MAX_TIMEOUT,
        dead_time: float = DEFAULT_DEAD_TIME,
        status_interval: float | None = DEFAULT_STATUS_INTERVAL,
        zombie_period: float = DEFAULT_ZOMBIE_PERIOD,
        pool_type: str = "fail-over",
        nas_ip_address: IPv4Address | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``status_interval=None`` disables probing (a dead server then comes
        back only when ``dead_time`` passes). ``pool_type`` is one of
        :data:`POOL_TYPES` (rule 4a). ``nas_ip_address`` goes into the
        Status-Server probes and is the client ``client-balance`` hashes.
        ``random_bytes`` supplies Request Authenticators and the first
        Identifiers (tests pass a seeded one)."""
        if not servers:
            raise ValueError("a RADIUS client needs at least one server")
        if timeout <= 0:
            raise ValueError(f"timeout {timeout}: expected > 0")
        if retries < 0:
            raise ValueError(f"retries {retries}: expected >= 0")
        if max_timeout <= 0:
            raise ValueError(f"max_timeout {max_timeout}: expected > 0")
        if dead_time < 0:
            raise ValueError(f"dead_time {dead_time}: expected >= 0")
        if status_interval is not None and status_interval <= 0:
            raise ValueError(f"status_interval {status_interval}: expected > 0, or None for no probes")
        if zombie_period < 0:
            raise ValueError(f"zombie_period {zombie_period}: expected >= 0")
        if pool_type not in POOL_TYPES:
            raise ValueError(f"pool type {pool_type!r}: expected one of {', '.join(POOL_TYPES)}")
        self.zombie_period = zombie_period
        self.pool_type = pool_type
        self._turn = 0  # load-balance: where ties start
        self.timeout = timeout
        self.retries = retries
        self.max_timeout = max(timeout, max_timeout)
        self.waits = retransmission_waits(timeout, retries, max_timeout)
        """Rule 1: the wait after each transmission to one server."""
        self.dead_time = dead_time
        self.status_interval = status_interval
        self.nas_ip_address = nas_ip_address
        self.random_bytes = random_bytes
        self.counters: collections.Counter[str] = collections.Counter()
        """What happened, by name: ``requests``, ``sent``, ``retransmissions``,
        ``timeouts``, ``failovers``, ``accepts``, ``rejects``, ``failed``,
        ``undecodable``, ``marked_zombie``, ``marked_dead``, ``revived``, ``status_sent``,
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
    def request(self, info: AccessRequest, now: float, tag: object = None, key: bytes | None = None) -> None:
        """Queue an Access-Request for ``info``; its outcome arrives as one
        :class:`RequestAccepted`, :class:`RequestRejected` or
        :class:`RequestFailed` carrying ``tag``. ``key`` is what a
        ``keyed-balance`` pool hashes (rule 4a; default: the NAI).

        Raises :class:`~aaa_vpn.wire.radius_request.RequestError` at once if
        the request cannot be encoded (the caller's fault)."""
        if key is None:
            key = info.nai.encode()
        self.request_attributes(encode_request_attributes(info), now, tag, key=key)

    def request_attributes(
        self,
        attributes: bytes,
        now: float,
        tag: object = None,
        *,
        key: bytes | None = None,
        client: bytes | None = None,
    ) -> None:
        """Like :meth:`request` for attributes already encoded (a proxy relays
        its client's verbatim): raw attributes without Message-Authenticator,
        which sealing puts first for each server. ``client`` is the client a
        ``client-balance`` pool hashes (default: ``nas_ip_address``); ``key``
        the key of a ``keyed-balance`` one (default: the client)."""
        entry = _Request(tag, attributes, self._balance(key, client))
        self.counters["requests"] += 1
        self._waiting.append(entry)
        self._dispatch(now)

    def request_accounting(
        self, attributes: bytes, now: float, tag: object = None, *, key: bytes | None = None
    ) -> None:
        """Queue an Accounting-Request (rule 7) of raw ``attributes`` (without
        Message-Authenticator; the seal adds one). Its outcome arrives as one
        :class:`AccountingAnswered` or :class:`RequestFailed` carrying ``tag``."""
        entry = _Request(tag, attributes, self._balance(key, None), ACCOUNTING_REQUEST)
        self.counters["accounting_requests"] += 1
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
            elif kind == _ZOMBIE_END:
                assert isinstance(item, _Server)
                self._mark_dead(item, now)  # rule 4: a zombie period without an answer
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
            server.stats["status_replies"] += 1
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

    def retune(
        self,
        *,
        timeout: float,
        retries: int,
        max_timeout: float,
        pool_type: str,
        zombie_period: float,
        dead_time: float,
    ) -> None:
        """New timing and pool type for requests sent from now on (a reload);
        what is in flight keeps its schedule. Raises ValueError like the constructor."""
        if timeout <= 0 or retries < 0 or max_timeout <= 0 or zombie_period < 0 or dead_time < 0:
            raise ValueError("timeout and max_timeout > 0; retries, zombie_period and dead_time >= 0")
        if pool_type not in POOL_TYPES:
            raise ValueError(f"pool type {pool_type!r}: expected one of {', '.join(POOL_TYPES)}")
        self.timeout, self.retries = timeout, retries
        self.max_timeout = max(timeout, max_timeout)
        self.waits = retransmission_waits(timeout, retries, max_timeout)
        self.pool_type, self.zombie_period, self.dead_time = pool_type, zombie_period, dead_time

    def knows(self, address: Address) -> bool:
        """Whether ``address`` (host, port) is one of this client's servers."""
        return address in self._by_address or self._lookup(address) is not None

    def is_alive(self, name: str, now: float) -> bool:
        """Whether the server called ``name`` is in use (neither zombie nor
        dead) at ``now``."""
        return self.state(name, now) == "alive"

    def state(self, name: str, now: float) -> str:
        """``alive``, ``zombie`` or ``dead``: the server called ``name`` at ``now`` (rule 4)."""
        for server in self._servers:
            if server.config.name == name:
                return self._state(server, now)
        raise KeyError(name)

    def pool_status(self, now: float) -> list[dict[str, object]]:
        """Per server, in configured order: name, state, requests in flight
        and its counters (``sent``, ``retransmissions``, ``timeouts``,
        ``accepts``, ``rejects``, ``status_sent``, ``status_replies``,
        ``marked_zombie``, ``marked_dead``, ``revived``). Never secrets."""
        return [
            {
                "name": s.config.name,
                "state": self._state(s, now),
                "in_flight": s.requests,
                **dict(sorted(s.stats.items())),
            }
            for s in self._servers
        ]

    # -- internals --------------------------------------------------------------------------
    def _balance(self, key: bytes | None, client: bytes | None) -> int:
        """Rule 4a: the index a hashing pool starts from (0 for the others)."""
        if self.pool_type not in ("client-balance", "keyed-balance") or len(self._servers) == 1:
            return 0
        if client is None:
            client = self.nas_ip_address.packed if self.nas_ip_address is not None else b""
        material = client if self.pool_type == "client-balance" or key is None else key
        digest = hashlib.blake2s(material, digest_size=8).digest()
        return int.from_bytes(digest, "big") % len(self._servers)

    @staticmethod
    def _state(server: _Server, now: float) -> str:
        if server.dead_until is not None and now < server.dead_until:
            return "dead"
        if server.zombie_until is not None and server.dead_until is None:
            return "zombie"
        return "alive"

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
        if kind == _ZOMBIE_END:
            return item.zombie_until == when and item.dead_until is None
        return item.dead_until == when

    def _alive(self, server: _Server, now: float) -> bool:
        if server.dead_until is not None:
            if now < server.dead_until:
                return False
            self._revive(server, "dead time elapsed")
        return server.zombie_until is None

    def _choose(self, entry: _Request, now: float) -> _Server | None:
        """Rules 3 and 4a: the server ``entry`` goes to next, or None."""
        servers = self._servers
        count = len(servers)
        start = entry.balance if count > 1 else 0
        ordered = servers if start == 0 else servers[start:] + servers[:start]
        untried = [s for s in ordered if s not in entry.tried]
        if not untried:
            return None
        live = [s for s in untried if self._alive(s, now)]
        if live:
            if self.pool_type != "load-balance" or len(live) == 1:
                return live[0]
            fewest = min(s.requests for s in live)
            candidates = [s for s in live if s.requests == fewest]
            self._turn += 1
            return candidates[self._turn % len(candidates)]
        # Rule 3: a zombie or dead mark orders the servers, it never refuses a request.
        self.counters["sent_to_dead"] += 1
        return min(untried, key=lambda s: (s.dead_until is not None, s.down_until or now, s.index))

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
        server = self._choose(entry, now)
        if server is None:
            self._fail(entry, "no reply from " + ", ".join(s.config.name for s in entry.tried))
            return True
        identifier = server.allocate()
        if identifier is None:
            self.counters["identifier_waits"] += 1
            return False
        entry.server = server
        entry.identifier = identifier
        if entry.code == ACCOUNTING_REQUEST:
            entry.packet = encode_hashed_request(ACCOUNTING_REQUEST, identifier, server.key, entry.attributes)
        else:
            entry.packet = seal_request(ACCESS_REQUEST, identifier, self.random_bytes(16), server.key, entry.attributes)
        entry.transmissions = 1
        entry.deadline = now + self.waits[0]
        entry.tried.append(server)
        server.in_flight[identifier] = entry
        server.requests += 1
        server.stats["sent"] += 1
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
            entry.deadline = now + self.waits[entry.transmissions - 1]
            self._outbox.append((entry.packet, server.address))
            self.counters["retransmissions"] += 1
            server.stats["retransmissions"] += 1
            self._push(entry.deadline, _FLIGHT, entry)
            return False
        self.counters["timeouts"] += 1
        server.stats["timeouts"] += 1
        self._release(server, entry)
        self._mark_zombie(server, now)
        self.counters["failovers"] += 1
        return True

    def _mark_zombie(self, server: _Server, now: float) -> None:
        """Rule 4: a server that let a request time out."""
        if server.dead_until is not None and server.dead_until > now:
            return  # dead already
        if server.zombie_until is not None:
            return  # a zombie already: its period runs on
        if self.zombie_period == 0:
            self._mark_dead(server, now)
            return
        server.dead_until = None
        server.zombie_until = now + self.zombie_period
        self._marked(server, "marked_zombie", ServerZombie(server.config.name, server.zombie_until), _ZOMBIE_END, now)

    def _mark_dead(self, server: _Server, now: float) -> None:
        server.zombie_until = None
        server.dead_until = now + self.dead_time
        self._marked(server, "marked_dead", ServerDown(server.config.name, server.dead_until), _REVIVE, now)

    def _marked(self, server: _Server, counter: str, event: ServerZombie | ServerDown, timer: int, now: float) -> None:
        """Rule 4: count, report and time a server's new mark, and probe it."""
        self.counters[counter] += 1
        server.stats[counter] += 1
        self._events.append(event)
        self._push(event.until, timer, server)
        self._schedule_probe(server, now)

    def _schedule_probe(self, server: _Server, now: float) -> None:
        until = server.down_until
        if self.status_interval is None or until is None:
            server.next_probe = None
            return
        due = now + self.status_interval
        if due >= until and server.dead_until is not None:
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
        probe = _Probe(server, identifier, packet, now + self.max_timeout)
        server.in_flight[identifier] = probe
        self._outbox.append((packet, server.address))
        self.counters["status_sent"] += 1
        server.stats["status_sent"] += 1
        self._push(probe.deadline, _FLIGHT, probe)

    def _probe_timed_out(self, probe: _Probe) -> None:
        self.counters["status_timeouts"] += 1
        self._finish_probe(probe)

    @staticmethod
    def _finish_probe(probe: _Probe) -> None:
        probe.done = True
        del probe.server.in_flight[probe.identifier]

    def _revive(self, server: _Server, reason: str) -> None:
        if server.dead_until is None and server.zombie_until is None:
            return
        server.dead_until = None
        server.zombie_until = None
        server.next_probe = None
        self.counters["revived"] += 1
        server.stats["revived"] += 1
        self._events.append(ServerUp(server.config.name, reason))

    def _reply(self, server: _Server, entry: _Request, data: bytes) -> None:
        if entry.code == ACCOUNTING_REQUEST:
            try:
                decode_accounting_response(data, entry.packet, server.key)
            except ReplyError as exc:
                self._drop("bad_reply", f"{server.config.name}: {exc}")
                return
            self._release(server, entry)
            self._revive(server, "answered")
            entry.done = True
            self.counters["accounting_responses"] += 1
            server.stats["accounting_responses"] += 1
            self._events.append(AccountingAnswered(entry.tag, server.config.name))
            return
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
            server.stats["accepts"] += 1
            self._events.append(
                RequestAccepted(
                    entry.tag, result.profile, result.attributes, entry.packet[4:20], name, result.confirmation
                )
            )
        else:
            self.counters["rejects"] += 1
            server.stats["rejects"] += 1
            self._events.append(RequestRejected(entry.tag, result.reason, result.message, name))

    @staticmethod
    def _release(server: _Server, entry: _Request) -> None:
        del server.in_flight[entry.identifier]
        server.requests -= 1
        entry.server = None

    def _fail(self, entry: _Request, reason: str) -> None:
        entry.done = True
        self.counters["failed"] += 1
        self._events.append(RequestFailed(entry.tag, reason, tuple(s.config.name for s in entry.tried)))


__all__ = [
    "DEFAULT_DEAD_TIME",
    "DEFAULT_MAX_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_STATUS_INTERVAL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_ZOMBIE_PERIOD",
    "POOL_TYPES",
    "AccountingAnswered",
    "Event",
    "RadiusClient",
    "RequestAccepted",
    "RequestFailed",
    "RequestRejected",
    "ServerConfig",
    "ServerDown",
    "ServerUp",
    "ServerZombie",
    "retransmission_waits",
    "server_time",
]
