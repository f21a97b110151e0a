"""Diameter base protocol (RFC 6733), sans-IO: one peer connection's state
machine (:class:`PeerConnection`) and the node that owns its peers, routes by
realm and hands requests to the local application (:class:`DiameterNode`).

Rules (everything that decides what is sent, answered or closed lives here):

1. Framing (RFC 6733 section 3): a stream of messages, each with its 24-bit
   Message Length. A length the stream cannot be resynchronised after
   (below 20, not a multiple of 4, beyond the codec's limit) or a Version
   other than 1 closes the connection (``framing``). A request whose header
   reads but whose AVPs do not is answered with the E bit and the codec's
   Result-Code (5014 DIAMETER_INVALID_AVP_LENGTH, 3008 DIAMETER_INVALID_HDR_BITS
   ...) and a Failed-AVP where one is to blame (section 7.5); such an answer
   is dropped and counted.
2. Capabilities exchange (section 5.3). The initiator sends CER when the
   connection is made; the responder waits for it. Before it completes,
   anything but CER/CEA closes the connection (section 5.6: Wait-CER). A CER
   without Origin-Host, Origin-Realm, Host-IP-Address, Vendor-Id or
   Product-Name is answered 5005 DIAMETER_MISSING_AVP; one from a host the
   node does not accept (``accept_peer``), or over TLS from a host its
   certificate does not name (RFC 6733 section 13), 3010 DIAMETER_UNKNOWN_PEER; one
   with no application in common (the relay application 0xffffffff counts as
   all of them) 5010 DIAMETER_NO_COMMON_APPLICATION; each answer with the E
   bit and followed by a close. A second connection of an already open host
   is refused with 4003 DIAMETER_ELECTION_LOST (no election: the first one
   stays). A CEA other than 2001 closes. No CEA within ``open_timeout``: closed.
3. Watchdog (RFC 3539 section 3.4): every ``watchdog_interval`` (Tw, at
   least 6 s, jittered by up to +-2 s with the injected ``jitter``) without
   a message received, a DWR is sent; a second Tw without a DWA makes the
   peer SUSPECT (no new requests are routed to it, its pending ones fail
   over, rule 8); a third closes it (DOWN). Any DWA makes it OKAY again. DWR
   is always answered 2001.
4. Disconnect (section 5.4): :meth:`DiameterNode.disconnect` sends DPR and
   waits ``open_timeout`` for the DPA, then closes; a DPR received is
   answered 2001 and the connection closed once the DPA is out.
5. Identifiers (section 3): each connection numbers its requests' Hop-by-Hop
   Identifiers from a random start; End-to-End Identifiers are the node's,
   the low 12 bits of ``now`` in the high 12 bits and a counter from a
   random start below. An answer whose Hop-by-Hop names no pending request is
   dropped and counted (section 6.2).
6. Routing of a request received (section 6.1): Destination-Host our host,
   or no Destination-Host and Destination-Realm our realm (or one of the
   ``local_realms`` a proxy serves): local; then an
   application we do not serve is 3007 DIAMETER_APPLICATION_UNSUPPORTED, a
   command it does not know 3001 DIAMETER_COMMAND_UNSUPPORTED, an AVP with
   the M bit it does not know 5001 DIAMETER_AVP_UNSUPPORTED with a Failed-AVP
   (section 4.1). Another realm in the routing table: relayed (rule 7). Our
   host in a Route-Record: 3005 DIAMETER_LOOP_DETECTED. Anything else: 3003
   DIAMETER_REALM_NOT_SERVED.
7. Relaying (section 6.1.9): the request goes to an OKAY peer of the realm
   with a Route-Record naming the peer it came from and a new Hop-by-Hop
   Identifier; the answer comes back with the original one. No OKAY peer:
   3002 DIAMETER_UNABLE_TO_DELIVER. A proxy agent (section 2.8.3) relays a
   local request the same way when its application hands it on
   (:meth:`DiameterNode.forward`): Route-Record, a new Hop-by-Hop
   Identifier, the End-to-End Identifier, the T bit and every Proxy-Info
   kept; its answer comes back to the application (:class:`AnswerReceived`,
   or :class:`RequestFailed` after rule 8), which answers the request with
   it. Our own host already in a Route-Record: 3005 DIAMETER_LOOP_DETECTED.
   Every answer to a local request leaves with that request's Hop-by-Hop and
   End-to-End Identifiers (section 6.2).
8. Failover (RFC 3539 section 5.5, RFC 6733 section 5.5.4): requests pending
   on a connection that closes or turns SUSPECT are sent again, with the T
   bit, to another OKAY peer of their realm, else answered 3002 (relayed) or
   reported as :class:`RequestFailed` (our own).
9. Duplicates (section 6.5): a local request whose (Origin-Host, End-to-End)
   was answered within ``duplicate_seconds`` is answered again with the same
   answer (counted ``duplicates``), never handed to the application twice;
   one still being decided is dropped (its answer will go out).

Theory of operation (the aioquic shape): inputs are
:meth:`DiameterNode.connection_made`, :meth:`~DiameterNode.data_received`,
:meth:`~DiameterNode.connection_lost`, :meth:`~DiameterNode.handle_timer`,
:meth:`~DiameterNode.answer`, :meth:`~DiameterNode.send_request` and
:meth:`~DiameterNode.disconnect`, each with ``now``; outputs are
:meth:`~DiameterNode.data_to_send`, :meth:`~DiameterNode.get_timer` and
:meth:`~DiameterNode.next_event`. No sockets, no clock; randomness only
through ``random_u32`` and ``jitter``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Command, Message, ResultCode

#: RFC 3539 section 3.4.1: Tw defaults to 30 s and must not be below 6 s.
DEFAULT_WATCHDOG = 30.0
MIN_WATCHDOG = 6.0
#: At most this many answers are remembered for duplicate detection.
_DUPLICATE_LIMIT = 100_000
_BASE_COMMANDS = frozenset({Command.CAPABILITIES_EXCHANGE, Command.DEVICE_WATCHDOG, Command.DISCONNECT_PEER})


class PeerState(enum.Enum):
    """A connection's place in RFC 6733 section 5.6, folded to one connection."""

    WAIT_CER = "wait-cer"  # responder, before the CER
    WAIT_CEA = "wait-cea"  # initiator, CER sent
    OPEN = "open"
    CLOSING = "closing"  # DPR sent, or DPA sent and about to close
    CLOSED = "closed"


class Watchdog(enum.Enum):
    """RFC 3539 section 3.4.1."""

    OKAY = "okay"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True)
class PeerOptions:
    """Tunables of the base protocol."""

    watchdog_interval: float = DEFAULT_WATCHDOG
    """Tw (rule 3)."""
    open_timeout: float = 10.0
    """Seconds to wait for CER, CEA or DPA (rules 2 and 4)."""
    duplicate_seconds: float = 240.0
    """How long answers are kept for duplicate detection (rule 9; RFC 6733
    section 3 keeps End-to-End Identifiers unique for at least 4 minutes)."""

    def __post_init__(self) -> None:
        if self.watchdog_interval < MIN_WATCHDOG:
            raise ValueError(f"watchdog interval {self.watchdog_interval}: RFC 3539 says at least {MIN_WATCHDOG} s")


# --- events --------------------------------------------------------------------------------


class Event:
    """Base class of what :meth:`DiameterNode.next_event` reports."""


@dataclass(frozen=True)
class PeerUp(Event):
    """A capabilities exchange completed."""

    connection: int
    """The transport connection's id."""
    host: str
    """The peer's Origin-Host."""
    realm: str
    """Its Origin-Realm."""
    applications: frozenset[int]
    """The applications it advertised."""


@dataclass(frozen=True)
class PeerDown(Event):
    """A connection ended (the transport closes it if it has not)."""

    connection: int
    host: str
    """'' if it never completed the capabilities exchange."""
    reason: str
    """``closed`` (by the transport), ``framing``, ``watchdog``, ``refused``
    (rule 2), ``disconnected`` (DPR/DPA), ``timeout``."""


@dataclass(frozen=True)
class RequestReceived(Event):
    """A request for the local application: answer it with :meth:`DiameterNode.answer`."""

    handle: int
    """Names the request in the answer."""
    message: Message
    """The request, decoded (its M-bit AVPs all known, rule 6)."""
    peer: str
    """The Origin-Host of the peer it came from (a relay's, if relayed)."""
    secure: bool
    """Whether that peer's connection is protected (TLS, or declared so)."""


@dataclass(frozen=True)
class AnswerReceived(Event):
    """The answer to a request sent with :meth:`DiameterNode.send_request`."""

    tag: object
    message: Message


@dataclass(frozen=True)
class RequestFailed(Event):
    """A request sent with :meth:`DiameterNode.send_request` could not be delivered."""

    tag: object
    reason: str


@dataclass(frozen=True)
class Dropped(Event):
    """Something received was dropped (for logs and counters)."""

    connection: int
    reason: str
    detail: str = ""


# --- helpers -------------------------------------------------------------------------------


def answer_to(
    request: Message,
    identity: d.Identity,
    result_code: int,
    avps: Iterable[d.Avp] = (),
    error_message: str = "",
    failed_avp: bytes = b"",
) -> Message:
    """The answer to ``request``: Session-Id first if the request had one
    (RFC 6733 section 8.8), Result-Code, Origin-Host, Origin-Realm, ``avps``,
    Error-Message and Failed-AVP; the E bit for a protocol error (3xxx);
    the request's Proxy-Info AVPs copied (section 6.2)."""
    out: list[d.Avp] = []
    session = request.find(C.SESSION_ID)
    if session is not None:
        out.append(session)
    out += [
        d.avp_u32(C.RESULT_CODE, result_code),
        d.avp_text(C.ORIGIN_HOST, identity.host),
        d.avp_text(C.ORIGIN_REALM, identity.realm),
        *avps,
    ]
    if error_message:
        out.append(d.avp_text(C.ERROR_MESSAGE, error_message[:200]))
    if failed_avp:
        out.append(d.avp_octets(C.FAILED_AVP, failed_avp))
    out += request.find_all(C.PROXY_INFO)
    return Message(
        request.command,
        False,
        request.application,
        request.hop_by_hop,
        request.end_to_end,
        tuple(out),
        proxiable=request.proxiable,
        error=3000 <= result_code < 4000,
    )


def _capabilities(identity: d.Identity, applications: Iterable[int]) -> list[d.Avp]:
    out = [
        d.avp_text(C.ORIGIN_HOST, identity.host),
        d.avp_text(C.ORIGIN_REALM, identity.realm),
        *(d.avp_address(C.HOST_IP_ADDRESS, a) for a in identity.addresses),
        d.avp_u32(C.VENDOR_ID, identity.vendor_id),
        d.avp_text(C.PRODUCT_NAME, identity.product_name),
        d.avp_u32(C.ORIGIN_STATE_ID, identity.origin_state_id),
        *(d.avp_u32(C.AUTH_APPLICATION_ID, a) for a in sorted(applications)),
    ]
    if identity.firmware_revision is not None:
        out.append(d.avp_u32(C.FIRMWARE_REVISION, identity.firmware_revision))
    return out


def advertised_applications(message: Message) -> frozenset[int]:
    """Auth-/Acct-Application-Id, also inside Vendor-Specific-Application-Id."""
    out: set[int] = set()
    for avp in message.avps:
        if avp.vendor:
            continue
        if avp.code in (C.AUTH_APPLICATION_ID, C.ACCT_APPLICATION_ID):
            out.add(avp.as_u32())
        elif avp.code == C.VENDOR_SPECIFIC_APPLICATION_ID:
            for inner in avp.as_grouped():
                if inner.code in (C.AUTH_APPLICATION_ID, C.ACCT_APPLICATION_ID) and not inner.vendor:
                    out.add(inner.as_u32())
    return frozenset(out)


# --- one connection ------------------------------------------------------------------------


@dataclass
class _Pending:
    """A request sent on a connection, waiting for its answer."""

    message: Message
    """As sent (with this connection's Hop-by-Hop)."""
    realm: str
    tag: object = None
    """Our own request: the caller's tag."""
    relay_from: tuple[int, int] | None = None
    """A relayed request: (connection, Hop-by-Hop) it came in with."""


@dataclass
class PeerConnection:
    """One transport connection and its peer (rules 1-5). Created and driven
    by :class:`DiameterNode`."""

    id: int
    initiator: bool
    secure: bool
    state: PeerState
    watchdog: Watchdog = Watchdog.OKAY
    host: str = ""
    realm: str = ""
    applications: frozenset[int] = frozenset()
    buffer: bytearray = field(default_factory=bytearray)
    outgoing: bytearray = field(default_factory=bytearray)
    next_hop: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    dwr_pending: bool = False
    deadline: float = 0.0
    """When the watchdog or the open/close timer fires next."""
    close_after_send: bool = False
    closed: bool = False
    names: frozenset[str] | None = None
    """The names of the peer's TLS certificate, when it presented one (rule 2)."""


# --- the node ------------------------------------------------------------------------------


@dataclass
class _Local:
    """A request handed to the application, not yet answered."""

    connection: int
    message: Message
    key: tuple[str, int]


class DiameterNode:
    """A Diameter node: its connections, peer table, realm routes, duplicate
    cache and the local application's requests (module rules)."""

    def __init__(
        self,
        identity: d.Identity,
        applications: Iterable[int],
        known_avps: dict[int, frozenset[tuple[int, int]]],
        options: PeerOptions | None = None,
        routes: dict[str, list[str]] | None = None,
        accept_peer: Callable[[str, str], bool] = lambda _host, _realm: True,
        random_u32: Callable[[], int] = lambda: 0,
        jitter: Callable[[], float] = lambda: 0.0,
        now: float = 0.0,
        local_realms: Iterable[str] = (),
    ) -> None:
        self.identity = identity
        #: Realms whose requests the local application serves besides the
        #: node's own (a proxy for its realm's users, rule 6).
        self.local_realms = frozenset(r.lower() for r in (identity.realm, *local_realms))
        self.applications = frozenset(applications)
        #: The application commands each application knows, with the AVPs
        #: (vendor, code) it accepts with the M bit (rule 6).
        self.known_avps = known_avps
        self.options = options or PeerOptions()
        #: Realm -> the peers' Origin-Hosts that serve it (rule 7); ``*``: any
        #: other realm (a client's default route to its server or relay).
        self.routes: dict[str, list[str]] = {k.lower(): v for k, v in (routes or {}).items()}
        self.accept_peer = accept_peer
        self._random = random_u32
        self._jitter = jitter
        self.connections: dict[int, PeerConnection] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self._events: collections.deque[Event] = collections.deque()
        self._e2e = itertools.count(random_u32() & 0xFFFFF)
        self._handles = itertools.count(1)
        self._local: dict[int, _Local] = {}
        self._in_progress: set[tuple[str, int]] = set()
        self._answered: dict[tuple[str, int], tuple[float, Message]] = {}
        self._expiry: list[tuple[float, tuple[str, int]]] = []
        self._ids = itertools.count(1)
        del now

    # -- the peer table -------------------------------------------------------------------------
    def peer(self, host: str) -> PeerConnection | None:
        """The open connection of that Origin-Host, if any."""
        for conn in self.connections.values():
            if conn.state is PeerState.OPEN and conn.host.lower() == host.lower():
                return conn
        return None

    def peers(self) -> list[PeerConnection]:
        return [c for c in self.connections.values() if c.state is PeerState.OPEN]

    # -- inputs ---------------------------------------------------------------------------------
    def connection_made(
        self, now: float, initiator: bool, secure: bool = False, names: frozenset[str] | None = None
    ) -> int:
        """A transport connection is up; returns its id. The initiator sends CER
        (rule 2). ``names``: the identities the peer's TLS certificate holds
        (lower case), if it presented one: its CER's Origin-Host must be one."""
        conn_id = next(self._ids)
        conn = PeerConnection(
            conn_id,
            initiator,
            secure,
            PeerState.WAIT_CEA if initiator else PeerState.WAIT_CER,
            next_hop=self._random(),
            deadline=now + self.options.open_timeout,
            names=names,
        )
        self.connections[conn_id] = conn
        if initiator:
            cer = Message(
                Command.CAPABILITIES_EXCHANGE,
                True,
                avps=tuple(_capabilities(self.identity, self.applications)),
            )
            self._send_request(conn, cer, now, _Pending(cer, ""))
        return conn_id

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        conn = self.connections.get(conn_id)
        if conn is None or conn.closed:
            return
        conn.buffer += data
        while len(conn.buffer) >= 4 and not conn.closed:
            try:
                length = d.message_length(bytes(conn.buffer[:4]))
            except d.DiameterDecodeError as exc:
                self._drop(conn, "framing", str(exc))
                self._close(conn, "framing")
                return
            if len(conn.buffer) < length:
                return
            raw = bytes(conn.buffer[:length])
            del conn.buffer[:length]
            self._message(conn, raw, now)

    def connection_lost(self, conn_id: int, now: float) -> None:
        conn = self.connections.get(conn_id)
        if conn is not None and not conn.closed:
            self._close(conn, "closed", now)

    def handle_timer(self, now: float) -> None:
        for conn in list(self.connections.values()):
            if conn.closed or now < conn.deadline:
                continue
            if conn.state in (PeerState.WAIT_CER, PeerState.WAIT_CEA, PeerState.CLOSING):
                self._close(conn, "timeout", now)
            elif conn.state is PeerState.OPEN:
                self._watchdog_timeout(conn, now)
        while self._expiry and self._expiry[0][0] <= now:
            _, key = heapq.heappop(self._expiry)
            entry = self._answered.get(key)
            if entry is not None and entry[0] <= now:
                del self._answered[key]

    def answer(self, handle: int, answer: Message, now: float) -> None:
        """The local application's answer to :class:`RequestReceived` ``handle``."""
        local = self._local.pop(handle, None)
        if local is None:
            return
        self._in_progress.discard(local.key)
        answer = _with_ids(answer, local.message.hop_by_hop, local.message.end_to_end)  # rule 7
        if len(self._answered) < _DUPLICATE_LIMIT:
            expires = now + self.options.duplicate_seconds
            self._answered[local.key] = (expires, answer)
            heapq.heappush(self._expiry, (expires, local.key))
        conn = self.connections.get(local.connection)
        if conn is not None and not conn.closed:
            self._write(conn, answer)

    def send_request(self, message: Message, now: float, tag: object = None, via: str = "") -> None:
        """Send our own request, routed by Destination-Host, else
        Destination-Realm (rule 7), else through peer ``via`` (the one a
        session's requests came through); the answer comes as
        :class:`AnswerReceived` with ``tag``, or :class:`RequestFailed`.
        Hop-by-Hop and End-to-End Identifiers are filled in here."""
        message = _with_ids(message, 0, self.end_to_end(now))
        realm = (message.text(C.DESTINATION_REALM) or "").lower()
        host = message.text(C.DESTINATION_HOST)
        conn = self._route(host, realm) or (self._route(via, "") if via else None)
        if conn is None:
            self._events.append(RequestFailed(tag, f"no open peer for {host or realm or 'the request'}"))
            return
        self._send_request(conn, message, now, _Pending(message, realm, tag=tag))

    def forward(self, handle: int, now: float, tag: object = None, realm: str = "") -> int | None:
        """Rule 7, a proxy agent: relay local request ``handle`` to an OKAY
        peer of ``realm`` (default: its Destination-Realm) in ``routes``;
        its answer comes as :class:`AnswerReceived` with ``tag`` (or
        :class:`RequestFailed`), and the application answers ``handle`` with
        it (failover, rule 8, stays within ``realm``). Returns None when sent,
        else the Result-Code to answer with (3002 no OKAY peer or the
        requester went away, 3005 a loop)."""
        local = self._local.get(handle)
        source = self.connections.get(local.connection) if local is not None else None
        if local is None or source is None or source.closed:
            return ResultCode.UNABLE_TO_DELIVER
        message = local.message
        ours = self.identity.host.lower()
        if any(r.as_text().lower() == ours for r in message.find_all(C.ROUTE_RECORD)):
            self.counters["loops"] += 1
            return ResultCode.LOOP_DETECTED
        realm = (realm or message.text(C.DESTINATION_REALM) or "").lower()
        host = message.text(C.DESTINATION_HOST)
        target = self._route(host if host and host.lower() != ours else None, realm)
        if target is None or target is source:
            return ResultCode.UNABLE_TO_DELIVER
        relayed = dataclasses.replace(message, avps=(*message.avps, d.avp_text(C.ROUTE_RECORD, source.host)))
        self.counters["forwarded"] += 1
        self._send_request(target, relayed, now, _Pending(relayed, realm, tag=tag))
        return None

    def disconnect(self, conn_id: int, now: float, cause: int = d.DISCONNECT_REBOOTING) -> None:
        """Rule 4: DPR, then close on the DPA or after ``open_timeout``."""
        conn = self.connections.get(conn_id)
        if conn is None or conn.closed:
            return
        if conn.state is not PeerState.OPEN:
            self._close(conn, "disconnected", now)
            return
        dpr = Message(
            Command.DISCONNECT_PEER,
            True,
            avps=(
                d.avp_text(C.ORIGIN_HOST, self.identity.host),
                d.avp_text(C.ORIGIN_REALM, self.identity.realm),
                d.avp_u32(C.DISCONNECT_CAUSE, cause),
            ),
        )
        self._send_request(conn, dpr, now, _Pending(dpr, ""))
        conn.state = PeerState.CLOSING
        conn.deadline = now + self.options.open_timeout

    # -- outputs --------------------------------------------------------------------------------
    def data_to_send(self) -> list[tuple[int, bytes]]:
        out = []
        for conn in self.connections.values():
            if conn.outgoing:
                out.append((conn.id, bytes(conn.outgoing)))
                conn.outgoing.clear()
                if conn.close_after_send:
                    self._close(conn, "disconnected")
        return out

    def to_close(self) -> list[int]:
        """Connections the transport must close now (then forget them here)."""
        out = [c.id for c in self.connections.values() if c.closed and not c.outgoing]
        for conn_id in out:
            del self.connections[conn_id]
        return out

    def get_timer(self) -> float | None:
        deadlines = [c.deadline for c in self.connections.values() if not c.closed]
        if self._expiry:
            deadlines.append(self._expiry[0][0])
        return min(deadlines) if deadlines else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def end_to_end(self, now: float) -> int:
        """Rule 5: the low 12 bits of the time, then a 20-bit counter."""
        return ((int(now) & 0xFFF) << 20) | (next(self._e2e) & 0xFFFFF)

    # -- internals ------------------------------------------------------------------------------
    def _route(self, host: str | None, realm: str) -> PeerConnection | None:
        if host:
            conn = self.peer(host)
            if conn is not None and conn.watchdog is Watchdog.OKAY:
                return conn
        for name in self.routes.get(realm, self.routes.get("*", [])):
            conn = self.peer(name)
            if conn is not None and conn.watchdog is Watchdog.OKAY:
                return conn
        return None

    def _send_request(self, conn: PeerConnection, message: Message, now: float, pending: _Pending) -> None:
        hop = conn.next_hop
        conn.next_hop = (conn.next_hop + 1) & 0xFFFFFFFF
        message = _with_ids(message, hop, message.end_to_end)
        pending.message = message
        conn.pending[hop] = pending
        self._write(conn, message)

    def _write(self, conn: PeerConnection, message: Message) -> None:
        conn.outgoing += message.encode()
        self.counters[f"sent.{message.name}"] += 1

    def _drop(self, conn: PeerConnection, reason: str, detail: str = "") -> None:
        self.counters["dropped"] += 1
        self.counters[f"dropped.{reason}"] += 1
        self._events.append(Dropped(conn.id, reason, detail))

    def _close(self, conn: PeerConnection, reason: str, now: float = 0.0) -> None:
        if conn.closed:
            return
        conn.closed = True
        was_open = conn.state in (PeerState.OPEN, PeerState.CLOSING) and bool(conn.host)
        conn.state = PeerState.CLOSED
        self.counters[f"peer_down.{reason}"] += 1
        self._events.append(PeerDown(conn.id, conn.host if was_open else "", reason))
        self._fail_over(conn, now)
        for handle, local in list(self._local.items()):
            if local.connection == conn.id:  # answered later, to nobody: forget the duplicate key
                self._in_progress.discard(local.key)
                del self._local[handle]

    def _fail_over(self, conn: PeerConnection, now: float) -> None:
        """Rule 8."""
        pending, conn.pending = conn.pending, {}
        for item in pending.values():
            if item.message.command in _BASE_COMMANDS:
                continue
            other = self._route(None, item.realm) if item.realm else None
            if other is not None and other is not conn:
                self.counters["failed_over"] += 1
                again = dataclasses.replace(item.message, retransmit=True)
                self._send_request(other, again, now, _Pending(again, item.realm, item.tag, item.relay_from))
            elif item.relay_from is not None:
                self._relay_error(item, ResultCode.UNABLE_TO_DELIVER, "the next hop went away")
            else:
                self._events.append(RequestFailed(item.tag, f"peer {conn.host or conn.id} went away"))

    def _relay_error(self, item: _Pending, code: int, text: str) -> None:
        assert item.relay_from is not None
        in_conn_id, hop = item.relay_from
        source = self.connections.get(in_conn_id)
        if source is not None and not source.closed:
            self._write(
                source,
                answer_to(
                    _with_ids(item.message, hop, item.message.end_to_end), self.identity, code, error_message=text
                ),
            )

    def _watchdog_timeout(self, conn: PeerConnection, now: float) -> None:
        """Rule 3 (RFC 3539 section 3.4.1, TimeoutTw)."""
        if conn.watchdog is Watchdog.OKAY and not conn.dwr_pending:
            dwr = Message(
                Command.DEVICE_WATCHDOG,
                True,
                avps=(
                    d.avp_text(C.ORIGIN_HOST, self.identity.host),
                    d.avp_text(C.ORIGIN_REALM, self.identity.realm),
                    d.avp_u32(C.ORIGIN_STATE_ID, self.identity.origin_state_id),
                ),
            )
            self._send_request(conn, dwr, now, _Pending(dwr, ""))
            conn.dwr_pending = True
        elif conn.watchdog is Watchdog.OKAY:
            conn.watchdog = Watchdog.SUSPECT
            self.counters["watchdog.suspect"] += 1
            self._fail_over(conn, now)
        else:
            conn.watchdog = Watchdog.DOWN
            self._close(conn, "watchdog", now)
            return
        self._set_watchdog(conn, now)

    def _set_watchdog(self, conn: PeerConnection, now: float) -> None:
        jitter = max(-2.0, min(2.0, self._jitter()))
        conn.deadline = now + self.options.watchdog_interval + jitter

    def _message(self, conn: PeerConnection, raw: bytes, now: float) -> None:
        try:
            message = d.decode_message(raw)
        except d.DiameterDecodeError as exc:
            fields = d.header_fields(raw)
            if fields is not None and fields[0] & d.FLAG_REQUEST and conn.state is PeerState.OPEN:
                _flags, command, application, hop, end = fields
                stub = Message(command, True, application, hop, end)
                self._write(
                    conn,
                    answer_to(stub, self.identity, exc.result_code, error_message=str(exc), failed_avp=exc.failed_avp),
                )
                self.counters["malformed_answered"] += 1
            self._drop(conn, "malformed", str(exc))
            if conn.state is not PeerState.OPEN:
                self._close(conn, "framing", now)
            return
        self.counters[f"received.{message.name}"] += 1
        if conn.state is PeerState.OPEN:
            # RFC 3539 section 3.4.1: traffic received is as good as a DWA.
            if message.command == Command.DEVICE_WATCHDOG and not message.request:
                conn.dwr_pending = False
                if conn.watchdog is Watchdog.SUSPECT:
                    conn.watchdog = Watchdog.OKAY
            self._set_watchdog(conn, now)
        try:
            if message.request:
                self._request(conn, message, now)
            else:
                self._answer(conn, message, now)
        except d.DiameterDecodeError as exc:  # a typed read of an AVP the peer got wrong
            if message.request and conn.state is PeerState.OPEN:
                self._write(
                    conn,
                    answer_to(
                        message, self.identity, exc.result_code, error_message=str(exc), failed_avp=exc.failed_avp
                    ),
                )
            self._drop(conn, "malformed", str(exc))

    # -- requests -------------------------------------------------------------------------------
    def _request(self, conn: PeerConnection, message: Message, now: float) -> None:
        if conn.state is PeerState.WAIT_CER:
            if message.command != Command.CAPABILITIES_EXCHANGE:
                self._drop(conn, "before_cer", message.name)
                self._close(conn, "refused", now)
                return
            self._cer(conn, message, now)
            return
        if conn.state is not PeerState.OPEN:
            self._drop(conn, "not_open", message.name)
            return
        if message.command == Command.DEVICE_WATCHDOG:
            self._write(
                conn,
                answer_to(
                    message,
                    self.identity,
                    ResultCode.SUCCESS,
                    [d.avp_u32(C.ORIGIN_STATE_ID, self.identity.origin_state_id)],
                ),
            )
            return
        if message.command == Command.DISCONNECT_PEER:
            self._write(conn, answer_to(message, self.identity, ResultCode.SUCCESS))
            conn.state = PeerState.CLOSING
            conn.close_after_send = True
            return
        if message.command == Command.CAPABILITIES_EXCHANGE:
            self._write(
                conn, answer_to(message, self.identity, ResultCode.UNABLE_TO_COMPLY, error_message="already open")
            )
            return
        self._route_request(conn, message, now)

    def _cer(self, conn: PeerConnection, cer: Message, now: float) -> None:
        """Rule 2, responder side."""
        caps = _capabilities(self.identity, self.applications)
        missing = [
            name
            for code, name in (
                (C.ORIGIN_HOST, "Origin-Host"),
                (C.ORIGIN_REALM, "Origin-Realm"),
                (C.HOST_IP_ADDRESS, "Host-IP-Address"),
                (C.VENDOR_ID, "Vendor-Id"),
                (C.PRODUCT_NAME, "Product-Name"),
            )
            if cer.find(code) is None
        ]
        host, realm = cer.origin_host or "", cer.origin_realm or ""
        theirs = advertised_applications(cer)
        common = theirs & self.applications if d.RELAY_APPLICATION not in theirs else self.applications
        code, text = ResultCode.SUCCESS, ""
        if missing:
            code, text = ResultCode.MISSING_AVP, f"CER without {', '.join(missing)}"
        elif not self.accept_peer(host, realm):
            code, text = ResultCode.UNKNOWN_PEER, f"{host} is not a configured peer"
        elif conn.names is not None and host.lower() not in conn.names:
            code, text = ResultCode.UNKNOWN_PEER, f"{host} is not a name of the peer's certificate"
        elif not common:
            code, text = ResultCode.NO_COMMON_APPLICATION, f"no application in common (offered {sorted(theirs)})"
        elif self.peer(host) is not None:
            code, text = ResultCode.ELECTION_LOST, f"{host} is connected already"
        answer = answer_to(cer, self.identity, code, caps[2:], error_message=text)
        self._write(conn, answer)
        if code != ResultCode.SUCCESS:
            self._drop(conn, "refused", text)
            conn.close_after_send = True
            conn.state = PeerState.CLOSING
            return
        self._open(conn, host, realm, theirs, now)

    def _open(self, conn: PeerConnection, host: str, realm: str, applications: frozenset[int], now: float) -> None:
        conn.state = PeerState.OPEN
        conn.host, conn.realm, conn.applications = host, realm, applications
        self._set_watchdog(conn, now)
        self.counters["peer_up"] += 1
        self._events.append(PeerUp(conn.id, host, realm, applications))

    def _route_request(self, conn: PeerConnection, message: Message, now: float) -> None:
        """Rules 6 and 7."""
        dest_host = message.text(C.DESTINATION_HOST)
        dest_realm = (message.text(C.DESTINATION_REALM) or "").lower()
        ours = self.identity.host.lower()
        local = (dest_host or "").lower() == ours or (not dest_host and dest_realm in self.local_realms)
        if not local:
            if any(r.as_text().lower() == ours for r in message.find_all(C.ROUTE_RECORD)):
                self._write(conn, answer_to(message, self.identity, ResultCode.LOOP_DETECTED))
                return
            target = self._route(dest_host, dest_realm) if dest_realm in self.routes or dest_host else None
            if target is None or target is conn:
                code = ResultCode.UNABLE_TO_DELIVER if dest_realm in self.routes else ResultCode.REALM_NOT_SERVED
                self._write(conn, answer_to(message, self.identity, code, error_message=f"realm {dest_realm!r}"))
                return
            relayed = dataclasses.replace(message, avps=(*message.avps, d.avp_text(C.ROUTE_RECORD, conn.host)))
            self.counters["relayed"] += 1
            self._send_request(
                target, relayed, now, _Pending(relayed, dest_realm, relay_from=(conn.id, message.hop_by_hop))
            )
            return
        if message.application not in self.applications:
            self._write(conn, answer_to(message, self.identity, ResultCode.APPLICATION_UNSUPPORTED))
            return
        known = self.known_avps.get(message.application, frozenset())
        unknown = d.unknown_mandatory(message.avps, known)
        if unknown is not None:
            self._write(
                conn,
                answer_to(
                    message,
                    self.identity,
                    ResultCode.AVP_UNSUPPORTED,
                    error_message=f"{unknown.name} with the M bit is not supported",
                    failed_avp=d.encode_avp(unknown),
                ),
            )
            self.counters["avp_unsupported"] += 1
            return
        key = ((message.origin_host or "").lower(), message.end_to_end)
        cached = self._answered.get(key)
        if cached is not None and cached[0] > now:
            self.counters["duplicates"] += 1
            self._write(conn, _with_ids(cached[1], message.hop_by_hop, message.end_to_end))
            return
        if key in self._in_progress:
            self.counters["duplicates"] += 1
            self._drop(conn, "duplicate_in_progress", message.name)
            return
        self._in_progress.add(key)
        handle = next(self._handles)
        self._local[handle] = _Local(conn.id, message, key)
        self._events.append(RequestReceived(handle, message, conn.host, conn.secure))

    # -- answers --------------------------------------------------------------------------------
    def _answer(self, conn: PeerConnection, message: Message, now: float) -> None:
        pending = conn.pending.pop(message.hop_by_hop, None)
        if pending is None:
            self._drop(conn, "unknown_answer", f"{message.name} Hop-by-Hop {message.hop_by_hop:#x}")
            return
        if message.command != pending.message.command:
            self._drop(conn, "wrong_answer", message.name)
            return
        if message.command == Command.CAPABILITIES_EXCHANGE:
            if conn.state is PeerState.WAIT_CEA and message.result_code == ResultCode.SUCCESS:
                self._open(
                    conn, message.origin_host or "", message.origin_realm or "", advertised_applications(message), now
                )
            else:
                self._close(conn, "refused", now)
            return
        if message.command == Command.DISCONNECT_PEER:
            self._close(conn, "disconnected", now)
            return
        if message.command == Command.DEVICE_WATCHDOG:
            return
        if pending.relay_from is not None:
            in_conn_id, hop = pending.relay_from
            source = self.connections.get(in_conn_id)
            if source is not None and not source.closed:
                self._write(source, _with_ids(message, hop, message.end_to_end))
            return
        self._events.append(AnswerReceived(pending.tag, message))


def _with_ids(message: Message, hop: int, end: int) -> Message:
    return dataclasses.replace(message, hop_by_hop=hop, end_to_end=end)


__all__ = [
    "AnswerReceived",
    "DiameterNode",
    "Dropped",
    "PeerConnection",
    "PeerDown",
    "PeerOptions",
    "PeerState",
    "PeerUp",
    "RequestFailed",
    "RequestReceived",
    "Watchdog",
    "advertised_applications",
    "answer_to",
]
