"""The foreign-domain AAA (AAAF): a sans-IO RADIUS proxy that routes the
visited domain's Access-Requests by NAI realm to pools of home AAA servers
(docs/design.md flows A and B), and caches what it learns for same-domain
handoffs (flow C, answered later from :class:`SessionCache`).

Rules (everything that decides what is sent, relayed or kept lives here):

1. RADIUS plumbing (:mod:`aaa_vpn.roles.radius_server` rules 1-6, shared
   with the home AAA): clients by address or CIDR, the longest prefix
   winning; framing checked (an attribute that runs past the packet is
   malformed); only Access-Request and Status-Server; retransmissions of a
   request still being proxied are absorbed (never forwarded twice: the
   upstream client retransmits on its own), those of an answered one within
   ``dup_cache_seconds`` get the byte-identical reply again;
   Message-Authenticator wrong: dropped, missing: dropped for Status-Server
   and for clients that require it (the default). Every drop is counted by
   reason.
2. The request is decoded once into an
   :class:`~aaa_vpn.wire.radius_request.AccessRequest`; one that does not
   decode (User-Name missing or repeated, a malformed known attribute) is
   answered here with an Access-Reject (Bad-Request).
3. (Retransmissions: rule 1.)
4. Status-Server to the AAAF itself (RFC 5997 section 3) is answered with an
   Access-Accept carrying a Reply-Message with the counters; it is never
   proxied.
5. Routing: the realm is what follows the last ``@`` of the User-Name (the
   NAI, RFC 7542), compared case-insensitively; a realm without its own
   pool goes to ``DEFAULT`` if configured. No route: Access-Reject with
   ``Reply-Message = "no route to realm ..."`` and
   ``Aaa-Vpn-Reject-Reason = Unknown-User`` (nobody here can vouch for the
   user). A realm served over Diameter only (roles/diameter_proxy.py) has
   no RADIUS route, not even ``DEFAULT``: Access-Reject, ``Reply-Message =
   "realm ... is served over Diameter only"``. A request whose Proxy-States
   already hold one of ours is a proxy loop and is dropped.
6. Forwarding (RFC 2865 section 2.3): the client's attributes are carried
   unchanged and in order (its Proxy-States included), without its
   Message-Authenticator, and our own Proxy-State is appended last. The
   upstream :class:`~aaa_vpn.roles.radius_client.RadiusClient` of the realm's
   pool gives the request a fresh Identifier and Request Authenticator, puts
   a new Message-Authenticator first, retransmits, fails over in the pool's
   order and probes dead servers with Status-Server (its rules 1-4).
7. Replies from upstream are believed only after the RadiusClient verified
   them (Response Authenticator, Message-Authenticator, every Proxy-State
   echoed in order -- so ours is present and last); anything else is
   dropped there and the request keeps waiting. Our Proxy-State is removed
   and the reply is re-signed for the client (its secret, its Identifier,
   its Request Authenticator), Message-Authenticator first:

   * Access-Reject (and Access-Challenge, which the agents do not do, RFC
     2865 section 4.4): its attributes as they are, as an Access-Reject.
   * Access-Accept: the VPN profile -- decoded with the home server's secret
     and the proxied request's authenticator -- is re-encoded in the
     ``aaa-vpn`` flavour with the client's secret and the client's Request
     Authenticator (RFC 2868 section 3.5), **without the session root key**,
     which stays here (least privilege, docs/design.md section 3). Other standard
     attributes are copied; Tunnel-Password and other vendors' attributes are
     not, since they may be encrypted under the home server's secret. A
     confirmation (the FA's renewal named the digest of the view it holds,
     and nothing changed) carries no key: it is relayed as it is, and the
     cached session's lifetime follows it.
   * No usable answer (every server timed out or is dead, or an authentic
     Accept did not decode): Access-Reject with a Reply-Message and
     ``Aaa-Vpn-Reject-Reason = No-Resources``.
8. Cache: every relayed Accept's full profile (session root key included),
   and every such AMA of a Diameter home AAA (roles/diameter_proxy.py rule
   2, :meth:`ForeignAaa.remember`), is kept by NAI and session id, with
   the FA (care-of address) and client it was for, until the profile's
   lifetime ends; a newer session of a NAI
   replaces its older ones (as the home AAA does); at most ``cache_size``
   sessions, the oldest evicted first.
9. Same-domain handoff (flow C): an FA-Registration that names a previous FA
   (Aaa-Vpn-Previous-FA) through which a cached, live session of the NAI was
   set up, from a client whose network holds the new care-of address, is
   answered here at once, without the home domain: the cached view is moved
   to the new FA in the next epoch (:func:`aaa_vpn.roles.home_plan.moved_view`:
   keys and SPIs derived from the session root key exactly as the home AAA
   derives them when the HA reports the move) and the cache follows the
   node. The foreign AAA cannot check the MN-AAA proof (it has no MN-AAA
   secret): the mobile node is authenticated on the home leg, where the HA
   checks MN-HA and the home AAA the MN-AAA proof before any SA at the HA
   or a gateway moves; a forged request only makes the new FA install SAs
   that never carry traffic and are removed when the HA refuses.
10. Accounting (RFC 2866 section 2.2, proxied): on its accounting socket
   the AAAF admits Accounting-Requests from its clients (the same plumbing,
   Request Authenticator checked under the client's secret) and answers
   Status-Server itself. A request is routed like an Access-Request, by the
   realm of its User-Name, to the accounting ports of the realm's pool
   (each server's ``accounting_port``, by default its port + 1), its
   attributes unchanged and in order, without Message-Authenticator, our
   Proxy-State last, hashed again with the home server's secret by the
   pool's accounting client (retransmission, failover, zombie and dead
   servers as for Access-Requests). An Accounting-On or -Off speaks for the
   whole NAS and goes to every pool. The FA gets its Accounting-Response only
   when every home server it went to answered -- the record is stored
   there (RFC 2866 section 4.1); with no answer (or no route) it gets none
   and retransmits (``accounting.upstream_failed``, ``accounting.no_route``).

Theory of operation (the aioquic shape): inputs are
:meth:`ForeignAaa.receive_from_client`, :meth:`ForeignAaa.receive_accounting`, :meth:`ForeignAaa.receive_from_upstream`
and :meth:`ForeignAaa.handle_timer`, each with ``now`` (seconds, any monotonic
clock); outputs are :meth:`ForeignAaa.datagrams_to_send` (each with the
socket to send it from: the clients' socket, or the pool's upstream socket),
:meth:`ForeignAaa.get_timer` and :meth:`ForeignAaa.next_event`. No sockets,
no clock; randomness only through ``random_bytes``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import NamedTuple

from aaa_vpn.model import Flavour
from aaa_vpn.roles.accounting import Prefixed
from aaa_vpn.roles.home_plan import moved_view
from aaa_vpn.roles.radius_client import (
    DEFAULT_DEAD_TIME,
    DEFAULT_MAX_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_STATUS_INTERVAL,
    DEFAULT_TIMEOUT,
    DEFAULT_ZOMBIE_PERIOD,
    POOL_TYPES,
    AccountingAnswered,
    RadiusClient,
    RequestAccepted,
    RequestFailed,
    RequestRejected,
    ServerConfig,
    ServerDown,
    ServerUp,
    ServerZombie,
)
from aaa_vpn.roles.radius_server import Dropped, Incoming, RadiusServer
from aaa_vpn.secret import Secret
from aaa_vpn.wire.accounting import AcctStatus
from aaa_vpn.wire.profile import VENDOR_ID, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius import (
    ACCESS_ACCEPT,
    ACCESS_REJECT,
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    HEADER_LENGTH,
    MAX_PACKET_LENGTH,
    MESSAGE_AUTHENTICATOR_LENGTH,
    MESSAGE_AUTHENTICATOR_TYPE,
    PROXY_STATE,
    REPLY_MESSAGE,
    SESSION_TIMEOUT,
    STATUS_SERVER,
    TUNNEL_PASSWORD,
    USER_NAME,
    VENDOR_SPECIFIC,
    AaaVpnAttr,
    Attr,
    RadiusDecodeError,
    attribute,
    split_attributes,
)
from aaa_vpn.wire.radius_profile import ProfileError, encode_profile
from aaa_vpn.wire.radius_request import AccessRequest, RequestDecodeError, decode_access_request

#: The realm name that catches every realm without its own pool.
DEFAULT_REALM = "DEFAULT"
#: Upstream retransmissions to one server (radius_client.py rule 1): two fewer
#: than an agent's, so with the default waits a home AAA server is given up
#: after 5.75 s, while an FA's own RADIUS client (7.75 s) still has two
#: transmissions to fetch the answer from the duplicate cache (docs/protocol.md
#: section 3.11).
UPSTREAM_RETRIES = DEFAULT_RETRIES - 2
DEFAULT_DUP_CACHE_SECONDS = 10.0
DEFAULT_CACHE_SIZE = 100_000
#: Our Proxy-State: 4 octets naming this proxy instance, 4 octets of sequence.
PROXY_STATE_LENGTH = 8

Address = tuple[str, int]


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyClient:
    """A RADIUS client of the AAAF: an FA (or a block of FAs) of the visited domain."""

    name: str
    """For logs and counters."""
    network: IPv4Network
    """One address (/32) or a CIDR block."""
    secret: Secret
    """The RADIUS shared secret with this client."""
    require_message_authenticator: bool = True
    """Drop its Access-Requests without a Message-Authenticator (BlastRADIUS)."""

    def __post_init__(self) -> None:
        if not isinstance(self.network, IPv4Network):
            raise ValueError(f"client {self.name}: the network must be an IPv4Network")
        if not isinstance(self.secret, Secret) or not self.secret:
            raise ValueError(f"client {self.name}: the shared secret is a non-empty Secret")


@dataclass(frozen=True)
class Realm:
    """A realm and the pool of home AAA servers that serve it, in failover order."""

    name: str
    """The NAI realm, e.g. ``home.example`` (matched case-insensitively), or ``DEFAULT``."""
    servers: tuple[ServerConfig, ...]
    """The pool, first preferred."""
    accounting_ports: tuple[int, ...] = ()
    """Each server's accounting port (rule 10); empty: each one's port + 1."""
    pool_type: str = "fail-over"
    """How the pool spreads requests (RadiusClient rule 4a): ``fail-over``,
    ``load-balance``, ``client-balance`` (by the FA's address) or
    ``keyed-balance`` (by the NAI)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a realm needs a name")
        if not self.servers:
            raise ValueError(f"realm {self.name}: the pool needs at least one home server")
        if self.pool_type not in POOL_TYPES:
            raise ValueError(
                f"realm {self.name}: pool type {self.pool_type!r}: expected one of {', '.join(POOL_TYPES)}"
            )

    @property
    def key(self) -> str:
        """The name routing compares with: lower case, ``DEFAULT`` as is."""
        return DEFAULT_REALM if self.name.upper() == DEFAULT_REALM else self.name.lower()


@dataclass(frozen=True)
class ForeignAaaOptions:
    """Tunables of the proxy; the upstream ones go to each pool's RadiusClient."""

    dup_cache_seconds: float = DEFAULT_DUP_CACHE_SECONDS
    """How long an answered request's reply is kept for retransmissions."""
    dup_cache_limit: int = 200_000
    """At most this many answered requests are remembered."""
    cache_size: int = DEFAULT_CACHE_SIZE
    """At most this many cached sessions."""
    timeout: float = DEFAULT_TIMEOUT
    """Upstream: seconds before the first retransmission (doubled each time)."""
    retries: int = UPSTREAM_RETRIES
    """Upstream: retransmissions to one server before failing over."""
    max_timeout: float = DEFAULT_MAX_TIMEOUT
    """Upstream: the longest wait between two transmissions."""
    dead_time: float = DEFAULT_DEAD_TIME
    """Upstream: seconds a server that timed out gets no requests."""
    status_interval: float | None = DEFAULT_STATUS_INTERVAL
    """Upstream: seconds between Status-Server probes of a dead server (None: no probes)."""
    zombie_period: float = DEFAULT_ZOMBIE_PERIOD
    """Upstream: seconds a server that let a request time out stays a zombie before it is dead."""
    nas_ip_address: IPv4Address | None = None
    """The AAAF's own address, put into its Status-Server probes."""


# --- outputs and events --------------------------------------------------------------------


class Datagram(NamedTuple):
    """A datagram to send."""

    data: bytes
    """The packet."""
    address: Address
    """Where to: a client's (address, port) or a home server's."""
    pool: int | None
    """The socket to send it from: None for the clients' (listening) socket,
    :data:`ACCOUNTING_SOCKET` for the accounting one, else the index of the
    pool whose upstream socket it belongs to."""


#: :attr:`Datagram.pool` of a reply on the accounting listening socket.
ACCOUNTING_SOCKET = -1


class Event:
    """Base class of what :meth:`ForeignAaa.next_event` reports (for logs)."""


@dataclass(frozen=True)
class Answered(Event):
    """A proxied (or locally rejected) Access-Request was answered."""

    nai: str
    """The User-Name, as far as it is printable."""
    client: str
    """The client's name."""
    realm: str
    """The realm it was routed by ('' if none)."""
    outcome: str
    """``accept``, ``reject`` (relayed from home), ``handoff`` (answered from
    the cache, rule 9), ``no_route``, ``no_resources``, ``bad_request``,
    ``profile_too_large``."""
    detail: str
    """The Reply-Message or the failure reason (never a secret)."""
    server: str = ""
    """The home server that answered, if any."""


@dataclass(frozen=True)
class UpstreamDown(Event):
    """A home server was marked zombie or dead (RadiusClient rule 4)."""

    pool: str
    """The pool's name (its realms)."""
    server: str
    """The server's name."""
    state: str = "dead"
    """``zombie`` (it let a request time out) or ``dead`` (its zombie period passed unanswered)."""


@dataclass(frozen=True)
class UpstreamUp(Event):
    """A dead home server is in use again."""

    pool: str
    """The pool's name (its realms)."""
    server: str
    """The server's name."""
    reason: str
    """Why (``answered`` or ``dead time elapsed``)."""


# --- the session cache ---------------------------------------------------------------------


@dataclass(frozen=True)
class CachedSession:
    """What the AAAF keeps of one proxied registration (docs/design.md flow C).

    The profile is the proxy's view from the home AAA: the FA's paths, the
    FA-HA key and the session root key, all :class:`Secret` (redacted in
    ``repr``)."""

    nai: str
    """The mobile node's NAI."""
    profile: VpnProfile
    """The full profile, session root key included."""
    care_of_address: IPv4Address
    """The FA the session was set up through (the profile's care-of address)."""
    client: str
    """The name of the AAAF client that asked."""
    realm: str
    """The realm the request was routed by."""
    server: str
    """The home AAA server that answered."""
    created: float
    """When it was cached (the role's clock)."""
    expires: float
    """``created`` + the profile's lifetime."""

    @property
    def session_id(self) -> str:
        return self.profile.session_id

    @property
    def session_root_key(self) -> Secret | None:
        return self.profile.session_root_key


class SessionCache:
    """Cached sessions by NAI and session id; see rule 8."""

    def __init__(self, limit: int = DEFAULT_CACHE_SIZE) -> None:
        if limit < 1:
            raise ValueError(f"cache size {limit}: expected >= 1")
        self.limit = limit
        self._by_id: collections.OrderedDict[str, CachedSession] = collections.OrderedDict()
        self._by_nai: dict[str, str] = {}  # NAI (lower case) -> its current session id
        self.expired = 0
        self.evicted = 0

    @staticmethod
    def _nai_key(nai: str) -> str:
        # The user part of a NAI is case-sensitive in principle (RFC 7542
        # section 2.4), but the home AAA treats NAIs as given; so do we, except
        # for the realm, which is case-insensitive.
        user, at, realm = nai.rpartition("@")
        return f"{user}@{realm.lower()}" if at else nai

    def put(self, entry: CachedSession) -> None:
        """Keep ``entry``; it replaces the NAI's earlier session."""
        key = self._nai_key(entry.nai)
        previous = self._by_nai.get(key)
        if previous is not None:
            self._by_id.pop(previous, None)
        self._by_id.pop(entry.session_id, None)
        self._by_id[entry.session_id] = entry
        self._by_nai[key] = entry.session_id
        while len(self._by_id) > self.limit:
            _sid, oldest = self._by_id.popitem(last=False)
            self._forget_nai(oldest)
            self.evicted += 1

    def _forget_nai(self, entry: CachedSession) -> None:
        key = self._nai_key(entry.nai)
        if self._by_nai.get(key) == entry.session_id:
            del self._by_nai[key]

    def lookup(self, nai: str, previous_fa: IPv4Address | None, now: float) -> CachedSession | None:
        """The NAI's live session, if it was set up through ``previous_fa``
        (any FA when None): what a same-domain handoff needs."""
        session_id = self._by_nai.get(self._nai_key(nai))
        if session_id is None:
            return None
        entry = self.get(session_id, now)
        if entry is None or (previous_fa is not None and entry.care_of_address != previous_fa):
            return None
        return entry

    def get(self, session_id: str, now: float) -> CachedSession | None:
        """The live session ``session_id``, or None."""
        entry = self._by_id.get(session_id)
        if entry is not None and entry.expires <= now:
            self._remove(entry)
            self.expired += 1
            return None
        return entry

    def _remove(self, entry: CachedSession) -> None:
        self._by_id.pop(entry.session_id, None)
        self._forget_nai(entry)

    def expire(self, now: float) -> int:
        """Drop every expired session; return how many."""
        dead = [entry for entry in self._by_id.values() if entry.expires <= now]
        for entry in dead:
            self._remove(entry)
        self.expired += len(dead)
        return len(dead)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[CachedSession]:
        return iter(list(self._by_id.values()))


# --- internals -----------------------------------------------------------------------------


@dataclass
class _Pool:
    index: int
    name: str
    client: RadiusClient
    accounting: RadiusClient | None = None


@dataclass
class _AccountingPending:
    """An Accounting-Request being proxied: answered when ``waiting`` reaches 0."""

    incoming: Incoming[ProxyClient]
    waiting: int
    failed: bool = False


@dataclass
class _Pending:
    """An Access-Request being proxied (or answered here)."""

    incoming: Incoming[ProxyClient]
    nai: str
    realm: str = ""

    @property
    def client(self) -> ProxyClient:
        return self.incoming.client

    @property
    def authenticator(self) -> bytes:
        return self.incoming.authenticator

    @property
    def reserved(self) -> int:
        """Octets of the reply the client's Proxy-States take."""
        return len(self.incoming.packet.proxy_states())


def _reject_attributes(reason: RejectReason, message: str) -> list[bytes]:
    return [
        attribute(REPLY_MESSAGE, message.encode("utf-8")[:253]),
        struct.pack("!BBIBBI", VENDOR_SPECIFIC, 12, VENDOR_ID, AaaVpnAttr.REJECT_REASON, 6, reason),
    ]


def _is_ours(code: int, value: bytes) -> bool:
    """Whether an attribute is part of the aaa-vpn profile (re-encoded, not copied)."""
    if code == SESSION_TIMEOUT:
        return True
    return code == VENDOR_SPECIFIC and len(value) >= 4 and int.from_bytes(value[:4], "big") == VENDOR_ID


def _printable(raw: bytes) -> str:
    return raw[:128].decode("utf-8", "backslashreplace")


def realm_of(nai: str) -> str:
    """The realm of a NAI, lower case; '' when it has none (RFC 7542 section 2.2)."""
    _user, at, realm = nai.rpartition("@")
    return realm.lower() if at else ""


# --- the proxy -----------------------------------------------------------------------------


class ForeignAaa:
    """The foreign AAA's decisions; see the module rules."""

    def __init__(
        self,
        clients: Sequence[ProxyClient],
        realms: Sequence[Realm],
        options: ForeignAaaOptions | None = None,
        *,
        now: float = 0.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
        diameter_realms: Sequence[str] = (),
    ) -> None:
        """``now`` starts the uptime shown in Status-Server replies;
        ``diameter_realms``: realms whose home AAA is reached over Diameter
        (roles/diameter_proxy.py), without a RADIUS pool of their own (rule 5).

        Raises ValueError for two clients with the same network or two realms
        of the same name (the configuration's fault)."""
        self.options = options or ForeignAaaOptions()
        self.random_bytes = random_bytes
        self.diameter_realms = frozenset(r.lower() for r in diameter_realms)
        self.started = now
        self.process_id = 0
        """Shown in Status-Server answers; the service layer sets it (a role reads no process state)."""
        self.counters: collections.Counter[str] = collections.Counter()
        networks: dict[IPv4Network, str] = {}
        for client in clients:
            if client.network in networks:
                raise ValueError(f"clients {networks[client.network]} and {client.name}: same network {client.network}")
            networks[client.network] = client.name
        self.server: RadiusServer[ProxyClient] = RadiusServer(
            clients,
            dup_ttl=self.options.dup_cache_seconds,
            dup_limit=self.options.dup_cache_limit,
            counters=self.counters,
        )
        self.accounting_server: RadiusServer[ProxyClient] = RadiusServer(
            clients,
            codes=(ACCOUNTING_REQUEST, STATUS_SERVER),
            dup_ttl=self.options.dup_cache_seconds,
            dup_limit=self.options.dup_cache_limit,
            counters=Prefixed(self.counters, "accounting."),
        )
        self._accounting: dict[tuple[str, int], _AccountingPending] = {}  # by (kind, upstream tag)
        self.cache = SessionCache(self.options.cache_size)
        # Realms with the same pool (same servers, secrets and order) share one
        # upstream client, hence one Identifier space and one view of which
        # servers are dead; every distinct pool has its own upstream socket.
        self.pools: list[_Pool] = []
        self._routes: dict[str, _Pool] = {}
        by_servers: dict[tuple[object, ...], _Pool] = {}
        for realm in realms:
            if realm.key in self._routes:
                raise ValueError(f"realm {realm.name} is configured twice")
            identity = (
                realm.pool_type,
                realm.accounting_ports,
                *((s.address, s.port, hashlib.sha256(s.secret.value).digest()) for s in realm.servers),
            )
            pool = by_servers.get(identity)
            if pool is None:
                upstream = self._upstream(realm.servers, realm.pool_type, random_bytes)
                # RadSec carries accounting on the server's connection (RFC 6614 section 2.1)
                ports = realm.accounting_ports or tuple(
                    s.port if s.transport == "radsec" else min(65535, s.port + 1) for s in realm.servers
                )
                accounting = self._upstream(
                    [
                        ServerConfig(s.address, port, s.secret, f"{s.name}/acct", s.transport, s.tls_name)
                        for s, port in zip(realm.servers, ports, strict=True)
                    ],
                    realm.pool_type,
                    random_bytes,
                )
                pool = by_servers[identity] = _Pool(len(self.pools), realm.key, upstream, accounting)
                self.pools.append(pool)
            else:
                pool.name += f",{realm.key}"
            self._routes[realm.key] = pool
        self._instance = random_bytes(4)
        self._sequence = itertools.count(1)
        self._pending: dict[int, _Pending] = {}  # by upstream tag
        self._outbox: list[Datagram] = []
        self._events: collections.deque[Event | Dropped] = collections.deque()

    def _upstream(
        self, servers: Sequence[ServerConfig], pool_type: str, random_bytes: Callable[[int], bytes]
    ) -> RadiusClient:
        """A pool's RADIUS client (rule 6), for Access-Requests or for accounting (rule 10)."""
        options = self.options
        return RadiusClient(
            servers,
            timeout=options.timeout,
            retries=options.retries,
            max_timeout=options.max_timeout,
            dead_time=options.dead_time,
            status_interval=options.status_interval,
            zombie_period=options.zombie_period,
            pool_type=pool_type,
            nas_ip_address=options.nas_ip_address,
            random_bytes=random_bytes,
        )

    # -- the API ----------------------------------------------------------------------------
    def receive_from_client(self, data: bytes, source: Address, now: float, client: ProxyClient | None = None) -> None:
        """Handle a datagram an FA sent to the AAAF's listening socket;
        ``client``: a RadSec peer's (roles/radsec.py rule 2)."""
        result = self.server.receive(data, source, now, client)
        self._take_dropped()
        if result is None:
            return
        if isinstance(result, bytes):
            self._send_to_client(result, source)
            return
        if result.code == STATUS_SERVER:
            reply = self.server.status_reply(result, self._status_message(now), now)
            self._take_dropped()
            if reply is not None:
                self._send_to_client(reply, source)
            return
        self.counters["access_requests"] += 1
        self._access_request(result, now)

    def receive_accounting(self, data: bytes, source: Address, now: float, client: ProxyClient | None = None) -> None:
        """Handle a datagram an FA sent to the AAAF's accounting socket (rule 10);
        ``client``: a RadSec peer's (roles/radsec.py rule 2)."""
        result = self.accounting_server.receive(data, source, now, client)
        self._take_dropped()
        if result is None:
            return
        if isinstance(result, bytes):
            self._outbox.append(Datagram(result, source, ACCOUNTING_SOCKET))
            return
        if result.code == STATUS_SERVER:
            reply = self.accounting_server.status_reply(result, self._status_message(now), now)
            self._take_dropped()
            if reply is not None:
                self._outbox.append(Datagram(reply, source, ACCOUNTING_SOCKET))
            return
        self._accounting_request(result, now)

    def receive_from_upstream(self, data: bytes, source: Address, pool: int, now: float) -> None:
        """Handle a datagram that arrived on pool ``pool``'s upstream socket."""
        if not 0 <= pool < len(self.pools):
            raise ValueError(f"no pool {pool}")  # the caller's bug
        chosen = self.pools[pool]
        # Over RadSec both clients talk to one (address, port): the code tells
        # an Accounting-Response from the rest.
        shared = chosen.client.knows(source)
        if (
            chosen.accounting is not None
            and chosen.accounting.knows(source)
            and (not shared or (len(data) >= 1 and data[0] == ACCOUNTING_RESPONSE))
        ):
            chosen.accounting.receive_datagram(data, source, now)
            self._collect_accounting(chosen, now)
            return
        chosen.client.receive_datagram(data, source, now)
        self._collect(chosen, data, now)

    def handle_timer(self, now: float) -> None:
        """Retransmit, fail over and probe upstream; expire what is due."""
        for pool in self.pools:
            when = pool.client.get_timer()
            if when is not None and when <= now:
                pool.client.handle_timer(now)
                self._collect(pool, None, now)
            if pool.accounting is not None:
                when = pool.accounting.get_timer()
                if when is not None and when <= now:
                    pool.accounting.handle_timer(now)
                    self._collect_accounting(pool, now)

    def datagrams_to_send(self) -> list[Datagram]:
        """The datagrams to send now."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or None."""
        timers = [when for pool in self.pools if (when := pool.client.get_timer()) is not None]
        timers += [
            when
            for pool in self.pools
            if pool.accounting is not None and (when := pool.accounting.get_timer()) is not None
        ]
        return min(timers) if timers else None

    def next_event(self) -> Event | Dropped | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def expire(self, now: float) -> int:
        """Housekeeping: drop expired cached sessions and duplicate-cache
        entries; return the number of sessions dropped."""
        self.server.expire(now)
        self.accounting_server.expire(now)
        count = self.cache.expire(now)
        self.counters["sessions_expired"] += count
        return count

    def lookup(self, nai: str, previous_fa: IPv4Address | None, now: float) -> CachedSession | None:
        """The cached session of ``nai`` set up through ``previous_fa`` (flow C)."""
        return self.cache.lookup(nai, previous_fa, now)

    @property
    def pending(self) -> int:
        """Access-Requests being proxied."""
        return len(self._pending)

    def upstream_counters(self) -> collections.Counter[str]:
        """The pools' RadiusClient counters, summed."""
        total: collections.Counter[str] = collections.Counter()
        for pool in self.pools:
            total.update(pool.client.counters)
        return total

    # -- client side ------------------------------------------------------------------------
    def _take_dropped(self) -> None:
        for server in (self.server, self.accounting_server):
            dropped = server.dropped
            while dropped:
                self._events.append(dropped.popleft())

    # -- accounting (rule 10) ---------------------------------------------------------------------
    def _accounting_request(self, incoming: Incoming[ProxyClient], now: float) -> None:
        packet = incoming.packet
        status = int.from_bytes(packet.first(Attr.ACCT_STATUS_TYPE) or b"", "big")
        for state in packet.all(PROXY_STATE):
            if len(state) == PROXY_STATE_LENGTH and state[:4] == self._instance:
                self.accounting_server.abandon(incoming, "proxy_loop", "our own Proxy-State came back")
                self._take_dropped()
                return
        self.counters["accounting.requests"] += 1
        if status in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
            pools = [p for p in self.pools if p.accounting is not None]
        else:
            names = packet.all(USER_NAME)
            realm = realm_of(_printable(names[0])) if len(names) == 1 else ""
            pool = self._routes.get(realm) or (
                None if realm in self.diameter_realms else self._routes.get(DEFAULT_REALM)
            )
            pools = [pool] if pool is not None and pool.accounting is not None else []
        if not pools:
            self.accounting_server.abandon(incoming, "no_route", "no home AAA for this accounting request's realm")
            self._take_dropped()
            return
        state = self._instance + struct.pack("!I", next(self._sequence) & 0xFFFFFFFF)
        upstream = b"".join(
            attribute(code, value) for code, value in packet.attributes if code != MESSAGE_AUTHENTICATOR_TYPE
        )
        upstream += attribute(PROXY_STATE, state)
        if HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(upstream) > MAX_PACKET_LENGTH:
            self.accounting_server.abandon(incoming, "bad_request", "the request is too large to proxy")
            self._take_dropped()
            return
        tag = int.from_bytes(state[4:], "big")
        self._accounting[("acct", tag)] = _AccountingPending(incoming, len(pools))
        for pool in pools:
            assert pool.accounting is not None
            pool.accounting.request_accounting(upstream, now, ("acct", tag), key=incoming.source[0].encode())
            self.counters["accounting.proxied"] += 1
            self._collect_accounting(pool, now)

    def _collect_accounting(self, pool: _Pool, now: float) -> None:
        client = pool.accounting
        assert client is not None
        for packet, address in client.datagrams_to_send(now):
            self._outbox.append(Datagram(packet, address, pool.index))
        while (event := client.next_event()) is not None:
            if isinstance(event, (AccountingAnswered, RequestFailed)):
                tag = event.tag
                pending = self._accounting.get(tag) if isinstance(tag, tuple) else None
                if pending is None:  # pragma: no cover - every tag is ours
                    continue
                pending.waiting -= 1
                pending.failed = pending.failed or isinstance(event, RequestFailed)
                if pending.waiting > 0:
                    continue
                del self._accounting[tag]  # type: ignore[arg-type]
                if pending.failed:
                    self.counters["accounting.upstream_failed"] += 1
                    self.accounting_server.abandon(
                        pending.incoming, "upstream_failed", "no home AAA accounting server answered"
                    )
                    self._take_dropped()
                    continue
                reply = self.accounting_server.answer(pending.incoming, ACCOUNTING_RESPONSE, (), now)
                if reply is not None:
                    self.counters["accounting.answered"] += 1
                    self._outbox.append(Datagram(reply, pending.incoming.source, ACCOUNTING_SOCKET))
            elif isinstance(event, ServerZombie):
                self._events.append(UpstreamDown(pool.name, event.server, "zombie"))
            elif isinstance(event, ServerDown):
                self._events.append(UpstreamDown(pool.name, event.server, "dead"))
            elif isinstance(event, ServerUp):
                self._events.append(UpstreamUp(pool.name, event.server, event.reason))

    def _drop(self, reason: str, source: Address, detail: str) -> None:
        self.server.drop(reason, source, detail)
        self._take_dropped()

    def _send_to_client(self, reply: bytes, destination: Address) -> None:
        self._outbox.append(Datagram(reply, destination, None))

    def _status_message(self, now: float) -> str:
        c, up = self.counters, self.upstream_counters()
        return (
            f"aaa-vpn foreign AAA up {int(now - self.started)}s pid {self.process_id}:"
            f" requests {c['access_requests']} accepts {c['accepts']} rejects {c['rejects']}"
            f" no_route {c['rejects.no_route']} no_resources {c['rejects.no_resources']}"
            f" absorbed {c['absorbed']} duplicates {c['duplicates']} dropped {c['dropped']}"
            f" pending {len(self._pending)} cached {len(self.cache)}"
            f" upstream sent {up['sent']} retransmitted {up['retransmissions']} failovers {up['failovers']}"
            f" dropped {up['dropped']}"
        )

    def _access_request(self, incoming: Incoming[ProxyClient], now: float) -> None:
        client = incoming.client
        names = incoming.packet.all(USER_NAME)
        pending = _Pending(incoming, _printable(names[0]) if names else "")
        try:
            request = decode_access_request(incoming.packet)
        except RequestDecodeError as exc:
            self._answer_locally(pending, RejectReason.BAD_REQUEST, str(exc), "bad_request", now)
            return
        nai = request.nai
        for state in request.proxy_states:
            if len(state) == PROXY_STATE_LENGTH and state[:4] == self._instance:
                self.server.abandon(incoming, "proxy_loop", f"client {client.name}: our own Proxy-State came back")
                self._take_dropped()
                return
        realm = realm_of(nai)
        pending.realm = realm
        if self._handoff(pending, request, now):
            return
        pool = self._routes.get(realm) or (None if realm in self.diameter_realms else self._routes.get(DEFAULT_REALM))
        if pool is None:
            if realm in self.diameter_realms:
                message = f"realm {realm!r} is served over Diameter only"
            else:
                message = f"no route to realm {realm!r}" if realm else "no route: the NAI has no realm"
            self._answer_locally(pending, RejectReason.UNKNOWN_USER, message[:253], "no_route", now)
            return
        # Rule 6: the client's attributes in order, without its
        # Message-Authenticator (the seal puts a new one first), ours last.
        state = self._instance + struct.pack("!I", next(self._sequence) & 0xFFFFFFFF)
        upstream = b"".join(
            attribute(code, value) for code, value in incoming.packet.attributes if code != MESSAGE_AUTHENTICATOR_TYPE
        )
        upstream += attribute(PROXY_STATE, state)
        if HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(upstream) > MAX_PACKET_LENGTH:
            self._answer_locally(
                pending, RejectReason.BAD_REQUEST, "the request is too large to proxy", "bad_request", now
            )
            return
        tag = int.from_bytes(state[4:], "big")
        self._pending[tag] = pending
        self.counters["proxied"] += 1
        # RadiusClient rule 4a: client-balance by the FA, keyed-balance by the NAI.
        pool.client.request_attributes(upstream, now, tag, key=nai.encode(), client=incoming.source[0].encode())
        self._collect(pool, None, now)

    def handoff_entry(
        self,
        nai: str,
        previous_fa: IPv4Address | None,
        care_of: IPv4Address | None,
        client: ProxyClient,
        now: float,
    ) -> CachedSession | None:
        """Rule 9: the cached session a registration of ``nai`` through
        ``care_of`` (from ``client``) naming ``previous_fa`` moves, or None
        if it is no same-domain handoff this proxy can answer."""
        if previous_fa is None or care_of is None or care_of not in client.network:
            return None
        entry = self.cache.lookup(nai, previous_fa, now)
        if entry is None or care_of == entry.care_of_address:
            return None
        return entry

    def remember(self, nai: str, profile: VpnProfile, client: str, realm: str, server: str, now: float) -> None:
        """Rule 8: cache the session of an accepted registration (a relayed
        Access-Accept, or an AMA from a Diameter home AAA)."""
        self.cache.put(
            CachedSession(
                nai=nai,
                profile=profile,
                care_of_address=profile.care_of_address,
                client=client,
                realm=realm,
                server=server,
                created=now,
                expires=now + profile.lifetime,
            )
        )
        self.counters["sessions_cached"] += 1

    def _handoff(self, pending: _Pending, request: AccessRequest, now: float) -> bool:
        """Answer a same-domain handoff from the cache (rule 9); False if this
        request is not one."""
        if request.request_type not in (None, RequestType.FA_REGISTRATION):
            return False
        client = pending.client
        care_of = request.care_of_address or request.nas_ip_address
        entry = self.handoff_entry(request.nai, request.previous_fa, care_of, client, now)
        if entry is None or care_of is None:
            return False
        epoch = entry.profile.epoch + 1
        moved = moved_view(entry.profile, care_of, epoch, max(1, int(entry.expires - now)))
        budget = MAX_PACKET_LENGTH - HEADER_LENGTH - MESSAGE_AUTHENTICATOR_LENGTH - pending.reserved
        try:
            encoded = encode_profile(
                dataclasses.replace(moved, session_root_key=None),  # least privilege
                Flavour.AAA_VPN,
                client.secret,
                pending.authenticator,
                budget=budget,
            )
        except ProfileError:
            return False  # let the home AAA answer it
        self.cache.put(dataclasses.replace(entry, profile=moved, care_of_address=care_of, client=client.name))
        self.counters["handoffs_answered"] += 1
        event = Answered(request.nai, client.name, pending.realm, "handoff", f"{moved.session_id} epoch {epoch}", "")
        self._finish(pending, ACCESS_ACCEPT, list(encoded), now, event)
        return True

    def _answer_locally(
        self, pending: _Pending, reason: RejectReason, message: str, outcome: str, now: float, detail: str = ""
    ) -> None:
        self.counters[f"rejects.{outcome}"] += 1
        event = Answered(pending.nai, pending.client.name, pending.realm, outcome, detail or message)
        self._finish(pending, ACCESS_REJECT, _reject_attributes(reason, message), now, event)

    def _finish(self, pending: _Pending, code: int, attributes: list[bytes], now: float, event: Event) -> None:
        """Answer the client (its Proxy-States echoed, rule 7) and remember the reply."""
        reply = self.server.answer(pending.incoming, code, attributes, now)
        self._take_dropped()
        if reply is None:
            return
        self.counters["accepts" if code == ACCESS_ACCEPT else "rejects"] += 1
        self._send_to_client(reply, pending.incoming.source)
        self._events.append(event)

    # -- upstream side ----------------------------------------------------------------------
    def _collect(self, pool: _Pool, data: bytes | None, now: float) -> None:
        """Take the pool client's datagrams and events. ``data`` is the
        datagram just received from upstream: a verified reply event raised
        while handling it answers with exactly these octets."""
        for packet, address in pool.client.datagrams_to_send(now):
            self._outbox.append(Datagram(packet, address, pool.index))
        while (event := pool.client.next_event()) is not None:
            if isinstance(event, (RequestAccepted, RequestRejected, RequestFailed)):
                tag = event.tag
                pending = self._pending.pop(tag, None) if isinstance(tag, int) else None
                if pending is None:  # pragma: no cover - every tag is ours
                    continue
                if isinstance(event, RequestAccepted):
                    self._relay_accept(pending, event, now)
                elif isinstance(event, RequestRejected):
                    assert data is not None  # a reject is always a reply to a datagram
                    self._relay_reject(pending, event, data, now)
                else:
                    self.counters["upstream_failed"] += 1
                    message = f"no home AAA server of realm {pending.realm or DEFAULT_REALM} answered"
                    self._answer_locally(
                        pending, RejectReason.NO_RESOURCES, message, "no_resources", now, f"{message}: {event.reason}"
                    )
            elif isinstance(event, ServerZombie):
                self._events.append(UpstreamDown(pool.name, event.server, "zombie"))
            elif isinstance(event, ServerDown):
                self._events.append(UpstreamDown(pool.name, event.server, "dead"))
            elif isinstance(event, ServerUp):
                self._events.append(UpstreamUp(pool.name, event.server, event.reason))

    def _relay_reject(self, pending: _Pending, event: RequestRejected, data: bytes, now: float) -> None:
        try:
            split = split_attributes(data[HEADER_LENGTH : int.from_bytes(data[2:4], "big")])
        except RadiusDecodeError:  # pragma: no cover - the RadiusClient verified it
            split = []
        # The RadiusClient verified that every Proxy-State is echoed, ours last;
        # the client's own are echoed again by the plumbing.
        attributes = [
            attribute(code, value)
            for code, value in split
            if code not in (MESSAGE_AUTHENTICATOR_TYPE, TUNNEL_PASSWORD, PROXY_STATE)
        ]
        self.counters["rejects.relayed"] += 1
        outcome = Answered(pending.nai, pending.client.name, pending.realm, "reject", event.message, event.server)
        self._finish(pending, ACCESS_REJECT, attributes, now, outcome)

    def _relay_accept(self, pending: _Pending, event: RequestAccepted, now: float) -> None:
        # Other attributes of the Accept are copied, except the ones that may
        # be encrypted under the home server's secret (rule 7).
        extra: list[bytes] = []
        ours: list[bytes] = []
        for code, value in split_attributes(event.attributes):
            if code in (MESSAGE_AUTHENTICATOR_TYPE, PROXY_STATE):
                continue
            if _is_ours(code, value):
                ours.append(attribute(code, value))
                continue
            if code in (TUNNEL_PASSWORD, VENDOR_SPECIFIC):
                self.counters["accept_attributes_dropped"] += 1
                continue
            extra.append(attribute(code, value))
        profile = event.profile
        if profile is None:
            # A confirmation: no key inside, relayed as it is; the cache follows.
            confirmation = event.confirmation
            assert confirmation is not None
            entry = self.cache.get(confirmation.session_id, now)
            if entry is not None and entry.profile.epoch == confirmation.epoch:
                self.cache.put(
                    dataclasses.replace(
                        entry,
                        profile=dataclasses.replace(entry.profile, lifetime=confirmation.lifetime),
                        expires=now + confirmation.lifetime,
                    )
                )
            self.counters["confirmations_relayed"] += 1
            outcome = Answered(
                pending.nai, pending.client.name, pending.realm, "accept", confirmation.session_id, event.server
            )
            self._finish(pending, ACCESS_ACCEPT, [*ours, *extra], now, outcome)
            return
        budget = (
            MAX_PACKET_LENGTH - HEADER_LENGTH - MESSAGE_AUTHENTICATOR_LENGTH - pending.reserved - sum(map(len, extra))
        )
        fa_profile = dataclasses.replace(profile, session_root_key=None)  # least privilege
        try:
            encoded = encode_profile(
                fa_profile, Flavour.AAA_VPN, pending.client.secret, pending.authenticator, budget=budget
            )
        except ProfileError as exc:
            self._answer_locally(
                pending, RejectReason.PROFILE_TOO_LARGE, f"VPN profile does not fit: {exc}", "profile_too_large", now
            )
            return
        if profile.session_root_key is None:
            # A home AAA that does not treat us as its foreign AAA: relayed,
            # but a handoff cannot be answered here without the root key.
            self.counters["accepts_without_session_root_key"] += 1
        else:
            self.remember(pending.nai, profile, pending.client.name, pending.realm, event.server, now)
        outcome = Answered(pending.nai, pending.client.name, pending.realm, "accept", profile.session_id, event.server)
        self._finish(pending, ACCESS_ACCEPT, [*encoded, *extra], now, outcome)


__all__ = [
    "ACCOUNTING_SOCKET",
    "DEFAULT_REALM",
    "Answered",
    "CachedSession",
    "Datagram",
    "Dropped",
    "Event",
    "ForeignAaa",
    "ForeignAaaOptions",
    "ProxyClient",
    "Realm",
    "SessionCache",
    "UpstreamDown",
    "UpstreamUp",
    "realm_of",
]
