"""RadSec (RADIUS over TLS, RFC 6614) without the TLS: who a certificate is,
and the life of a connection on either side, sans-IO.

Rules:

1. Identity (RFC 6614 section 2.4; section 3.4 leaves the mapping to the
   implementation): a peer is known by its certificate, which must chain to
   the configured CA (the TLS layer checks that). The certificate names a
   provisioned RADIUS client, the first of these that matches:

   a. a pin ``NAME=sha256:HEX``: the client ``NAME`` is this certificate
      whose SHA-256 fingerprint is HEX; a pinned client is never matched by
      (b) or (c), so a certificate merely carrying its name is refused;
   b. a subjectAltName dNSName, or the subject's commonName, equal to a
      client's name (case-insensitively);
   c. a subjectAltName iPAddress inside a client's network (the longest
      prefix winning, as over UDP).

   A certificate that names no client (or, by (b), two) is refused: the
   connection is closed, counted (``radsec.refused.<reason>``) and logged.
2. The shared secret (RFC 6614 section 2.3): every packet on a RadSec
   connection is sealed and checked with the secret ``radsec``, and salt
   encryption (RFC 2868 section 3.5) uses it too. The role sees the
   provisioned client record with that secret (:func:`radsec_view`): the
   same name, network, role, domain and flavour as over UDP.
3. Framing (RFC 6613 section 2.2, :mod:`aaa_vpn.wire.radius_stream`): a
   Length outside 20..4096 closes the connection (counted
   ``radsec.closed.framing``, logged); anything else wrong inside a packet
   is the RADIUS plumbing's to drop, as for a datagram.
4. Server side (:class:`ServerConnection`): a connection that sends nothing
   for ``idle_timeout`` seconds is closed (RFC 6614 section 2.6 lets a
   server close idle connections; a client's watchdog keeps a wanted one
   busy).
5. Client side (:class:`ClientConnection`, one per server), states in
   :data:`TRANSITIONS`:

   a. a packet for a server without a connection opens one (CLOSED ->
      CONNECTING); packets wait for the handshake, at most
      :data:`MAX_QUEUED`, and are written in order when it completes;
   b. over a stream a packet is never written twice on one connection
      (RFC 6613 section 2.6.1): a retransmission the RADIUS client makes
      (the identical Identifier and Request Authenticator while the first is
      unanswered) is absorbed, counted ``duplicates_absorbed``; after a
      reconnect it is written, since the new connection never carried it;
   c. watchdog (RFC 6614 section 2.6, RFC 3539 section 3.4): when nothing
      was received for ``watchdog_interval`` seconds an open connection
      sends a Status-Server (RFC 5997, with Message-Authenticator) on an
      Identifier no request uses; no reply within ``watchdog_timeout``
      closes the connection as failed. The answer (:func:`answers_status`)
      is consumed here, never passed to the RADIUS client;
   d. a connection that carried no request for ``idle_timeout`` seconds
      and waits for no answer is closed (-> CLOSED; the next packet opens a
      new one);
   e. a connection that fails -- the connect or handshake, an error, the
      peer closing while answers are owed, framing, the watchdog -- enters
      BACKOFF: packets are dropped (counted ``dropped.unreachable``; the
      RADIUS client's timeouts fail over) until ``reconnect_delay`` passes;
      the delay doubles on each failure up to ``reconnect_max`` and is reset
      by a connection that opens. The peer closing a connection that owes
      nothing is not a failure (-> CLOSED).

Theory of operation: inputs are :meth:`ClientConnection.send`,
:meth:`~ClientConnection.connected`, :meth:`~ClientConnection.failed`,
:meth:`~ClientConnection.closed`, :meth:`~ClientConnection.received` and
:meth:`~ClientConnection.handle_timer`, each with ``now``; outputs are the
actions of :meth:`~ClientConnection.actions` (:class:`Connect`,
:class:`Write`, :class:`Close`) and :meth:`~ClientConnection.get_timer`.
``net/radsec.py`` carries the actions out over TLS. Randomness (the
watchdog's authenticators) only through ``random_bytes``.
"""

from __future__ import annotations

import collections
import copy
import enum
import hmac
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol, TypeVar

from aaa_vpn.secret import Secret
from aaa_vpn.wire.radius import (
    ACCESS_ACCEPT,
    HEADER_LENGTH,
    RadiusDecodeError,
    check_message_authenticator,
    decode_packet,
    response_authenticator,
)
from aaa_vpn.wire.radius_request import build_status_server
from aaa_vpn.wire.radius_stream import StreamFramingError, StreamReader

#: The RadSec port (RFC 6614 section 2.1).
RADSEC_PORT = 2083
#: The shared secret of every RadSec connection (RFC 6614 section 2.3).
RADSEC_SECRET = Secret(b"radsec")

DEFAULT_SERVER_IDLE_TIMEOUT = 600.0
DEFAULT_CLIENT_IDLE_TIMEOUT = 300.0
DEFAULT_WATCHDOG_INTERVAL = 30.0
DEFAULT_WATCHDOG_TIMEOUT = 6.0
DEFAULT_RECONNECT_DELAY = 1.0
DEFAULT_RECONNECT_MAX = 60.0
#: Packets waiting for a connection's handshake (rule 5a).
MAX_QUEUED = 256


# --- identity (rules 1, 2) -------------------------------------------------------------------


class NamedClient(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def network(self) -> IPv4Network: ...
    @property
    def secret(self) -> Secret: ...


C = TypeVar("C", bound=NamedClient)


@dataclass(frozen=True)
class CertificateIdentity:
    """What a verified peer certificate says about its holder."""

    fingerprint: str
    """SHA-256 of the DER certificate, lowercase hex without separators."""
    names: tuple[str, ...] = ()
    """subjectAltName dNSNames, then the subject's commonName."""
    addresses: tuple[IPv4Address, ...] = ()
    """subjectAltName iPAddresses (IPv4)."""

    def __str__(self) -> str:
        shown = ",".join([*self.names, *map(str, self.addresses)]) or "no names"
        return f"certificate {shown} (sha256 {self.fingerprint[:16]}...)"


@dataclass(frozen=True)
class ClientPin:
    """Rule 1a: the client ``name`` is the certificate with this fingerprint."""

    name: str
    fingerprint: str
    """Lowercase hex, 64 digits."""


def parse_pin(text: str) -> ClientPin:
    """``NAME=sha256:HEX`` (``HEX`` may be written with colons, as
    ``openssl x509 -fingerprint -sha256`` prints it); ValueError otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{text!r}: expected NAME=sha256:FINGERPRINT")
    value = value.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    value = value.replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{text!r}: the fingerprint is 64 hex digits (SHA-256)")
    return ClientPin(name.strip(), value)


class Refused(Exception):
    """A verified certificate that names no client (rule 1)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        """Counter suffix: ``unknown_certificate``, ``ambiguous_certificate``, ``pin_mismatch``."""
        self.detail = detail


def match_client(identity: CertificateIdentity, clients: Iterable[C], pins: Sequence[ClientPin] = ()) -> C:
    """Rule 1: the client ``identity`` names; raises :class:`Refused`."""
    clients = list(clients)
    by_name = {c.name.lower(): c for c in clients}
    pinned = {pin.name.lower() for pin in pins}
    for pin in pins:
        if pin.fingerprint == identity.fingerprint:
            client = by_name.get(pin.name.lower())
            if client is None:
                raise Refused(
                    "unknown_certificate", f"{identity} is pinned to client {pin.name}, which is not provisioned"
                )
            return client
    named = {n.lower() for n in identity.names} & set(by_name)
    if named & pinned:
        raise Refused("pin_mismatch", f"{identity} names pinned client(s) {', '.join(sorted(named & pinned))}")
    if len(named) > 1:
        raise Refused("ambiguous_certificate", f"{identity} names clients {', '.join(sorted(named))}")
    if named:
        return by_name[named.pop()]
    best: C | None = None
    for address in identity.addresses:
        for client in clients:
            if client.name.lower() in pinned or address not in client.network:
                continue
            if best is None or client.network.prefixlen > best.network.prefixlen:
                best = client
    if best is not None:
        return best
    raise Refused("unknown_certificate", f"{identity} names no provisioned client")


def radsec_view(client: C) -> C:
    """Rule 2: ``client`` as the role sees it on a RadSec connection -- the
    same record with the secret ``radsec``. (Copied, not rebuilt: the fixed
    secret is shorter than the minimum a UDP secret is held to.)"""
    view = copy.copy(client)
    object.__setattr__(view, "secret", RADSEC_SECRET)
    return view


def is_radsec(client: NamedClient) -> bool:
    """Whether ``client`` is a :func:`radsec_view` (no UDP secret can be ``radsec``)."""
    return client.secret == RADSEC_SECRET


def answers_status(reply: bytes, probe: bytes) -> bool:
    """Rule 5c: whether ``reply`` answers the watchdog's Status-Server ``probe``:
    an Access-Accept (RFC 5997 section 3) with its Identifier and the
    Response Authenticator under ``radsec``; a Message-Authenticator, if
    present, must verify. Over TLS one is not required (the connection
    protects integrity, and RFC 6614 peers such as FreeRADIUS 3.2 answer
    without one)."""
    if len(reply) < HEADER_LENGTH or reply[0] != ACCESS_ACCEPT or reply[1] != probe[1]:
        return False
    secret = RADSEC_SECRET.value
    if not hmac.compare_digest(reply[4:20], response_authenticator(reply, probe[4:20], secret)):
        return False
    try:
        found = check_message_authenticator(decode_packet(reply), secret, probe[4:20])
    except RadiusDecodeError:
        return False
    return found is not False


# --- the server's connections (rules 3, 4) ---------------------------------------------------


class ServerConnection:
    """One accepted RadSec connection, after its client was identified."""

    __slots__ = ("idle_timeout", "last_received", "reader")

    def __init__(self, now: float, idle_timeout: float = DEFAULT_SERVER_IDLE_TIMEOUT) -> None:
        self.reader = StreamReader()
        self.idle_timeout = idle_timeout
        self.last_received = now

    def received(self, data: bytes, now: float) -> list[bytes]:
        """The packets ``data`` completes; raises
        :class:`~aaa_vpn.wire.radius_stream.StreamFramingError` (rule 3: close)."""
        self.last_received = now
        return self.reader.feed(data)

    def deadline(self) -> float:
        """When the connection is idle (rule 4) unless something arrives."""
        return self.last_received + self.idle_timeout

    def idle(self, now: float) -> bool:
        return now >= self.deadline()


# --- the client's connections (rule 5) -------------------------------------------------------


class State(enum.Enum):
    CLOSED = "closed"
    """No connection and none wanted."""
    CONNECTING = "connecting"
    """TCP connect and TLS handshake under way."""
    OPEN = "open"
    BACKOFF = "backoff"
    """The last connection failed; no new one before ``retry_at``."""


#: Every transition of :class:`ClientConnection` (rule 5): (state, input) -> state.
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.CLOSED, "send"): State.CONNECTING,
    (State.BACKOFF, "send after delay"): State.CONNECTING,
    (State.CONNECTING, "connected"): State.OPEN,
    (State.CONNECTING, "failed"): State.BACKOFF,
    (State.OPEN, "failed"): State.BACKOFF,
    (State.OPEN, "framing error"): State.BACKOFF,
    (State.OPEN, "watchdog timeout"): State.BACKOFF,
    (State.OPEN, "closed owing answers"): State.BACKOFF,
    (State.OPEN, "closed"): State.CLOSED,
    (State.OPEN, "idle"): State.CLOSED,
}


@dataclass(frozen=True)
class Connect:
    """Open a connection to the server (TCP, then the TLS handshake)."""


@dataclass(frozen=True)
class Write:
    """Write ``data`` on the open connection."""

    data: bytes


@dataclass(frozen=True)
class Close:
    """Close the connection (after writing what was written)."""

    reason: str
    """``idle``, ``watchdog``, ``framing``... for logs."""


Action = Connect | Write | Close


class ClientConnection:
    """The connection to one RadSec server (rule 5)."""

    def __init__(
        self,
        name: str,
        *,
        idle_timeout: float = DEFAULT_CLIENT_IDLE_TIMEOUT,
        watchdog_interval: float | None = DEFAULT_WATCHDOG_INTERVAL,
        watchdog_timeout: float = DEFAULT_WATCHDOG_TIMEOUT,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
        reconnect_max: float = DEFAULT_RECONNECT_MAX,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``watchdog_interval=None``: no watchdog."""
        if idle_timeout <= 0 or watchdog_timeout <= 0 or reconnect_delay <= 0 or reconnect_max < reconnect_delay:
            raise ValueError("RadSec timers: positive, and reconnect_max >= reconnect_delay")
        if watchdog_interval is not None and watchdog_interval <= 0:
            raise ValueError(f"watchdog interval {watchdog_interval}: expected > 0, or None for no watchdog")
        self.name = name
        self.idle_timeout = idle_timeout
        self.watchdog_interval = watchdog_interval
        self.watchdog_timeout = watchdog_timeout
        self.reconnect_delay = reconnect_delay
        self.reconnect_max = reconnect_max
        self.random_bytes = random_bytes
        self.state = State.CLOSED
        self.counters: collections.Counter[str] = collections.Counter()
        """``connects``, ``connected``, ``failures``, ``closed.<reason>``,
        ``written``, ``duplicates_absorbed``, ``dropped.unreachable``,
        ``dropped.queue_full``, ``watchdog_sent``, ``watchdog_answered``,
        ``received``."""
        self.last_error = ""
        """Why the latest connection failed (for logs)."""
        self.retry_at = 0.0
        self._delay = reconnect_delay
        self._reader = StreamReader()
        self._queue: collections.deque[bytes] = collections.deque()
        self._actions: list[Action] = []
        self._outstanding: dict[int, bytes] = {}  # Identifier -> Request Authenticator, written and unanswered
        self._last_request = 0.0
        self._last_received = 0.0
        self._probe: bytes | None = None
        self._probe_deadline = 0.0

    # -- inputs ----------------------------------------------------------------------------------
    def send(self, packet: bytes, now: float) -> None:
        """A packet the RADIUS client wants on this server's connection."""
        if len(packet) < HEADER_LENGTH:
            raise ValueError("a RADIUS packet has at least 20 octets")  # the caller's bug
        if self.state is State.BACKOFF:
            if now < self.retry_at:
                self.counters["dropped.unreachable"] += 1
                return
            self._go("send after delay")
            self._connect(now)
        elif self.state is State.CLOSED:
            self._go("send")
            self._connect(now)
        self._last_request = now
        if self.state is State.CONNECTING:
            if len(self._queue) >= MAX_QUEUED:
                self.counters["dropped.queue_full"] += 1
                return
            self._queue.append(packet)
            return
        self._write(packet)

    def connected(self, now: float) -> None:
        """The handshake completed."""
        if self.state is not State.CONNECTING:
            return
        self._go("connected")
        self.counters["connected"] += 1
        self._delay = self.reconnect_delay
        self._reader = StreamReader()
        self._outstanding.clear()
        self._probe = None
        self._last_received = now
        while self._queue:
            self._write(self._queue.popleft())

    def failed(self, reason: str, now: float) -> None:
        """The connect, the handshake or the connection failed."""
        if self.state in (State.CONNECTING, State.OPEN):
            self._fail("failed", reason, now)

    def closed(self, now: float) -> None:
        """The peer closed the connection."""
        if self.state is not State.OPEN:
            if self.state is State.CONNECTING:
                self._fail("failed", "closed during the handshake", now)
            return
        if self._outstanding:
            self._fail("closed owing answers", f"closed by the server with {len(self._outstanding)} answers owed", now)
            return
        self._go("closed")
        self.counters["closed.by_peer"] += 1
        self._reset()

    def received(self, data: bytes, now: float) -> list[bytes]:
        """Octets from the connection; returns the packets for the RADIUS
        client (the watchdog's answer is kept)."""
        if self.state is not State.OPEN:
            return []
        self._last_received = now
        try:
            packets = self._reader.feed(data)
        except StreamFramingError as exc:
            self.counters["closed.framing"] += 1
            self._actions.append(Close("framing"))
            self._fail("framing error", str(exc), now)
            return []
        out: list[bytes] = []
        for packet in packets:
            self.counters["received"] += 1
            identifier = packet[1]
            if self._probe is not None and identifier == self._probe[1] and answers_status(packet, self._probe):
                self._probe = None
                self.counters["watchdog_answered"] += 1
                continue
            self._outstanding.pop(identifier, None)
            out.append(packet)
        return out

    def handle_timer(self, now: float) -> None:
        if self.state is not State.OPEN:
            return
        if self._probe is not None and now >= self._probe_deadline:
            self.counters["closed.watchdog"] += 1
            self._actions.append(Close("watchdog"))
            self._fail(
                "watchdog timeout", f"no answer to the watchdog's Status-Server in {self.watchdog_timeout} s", now
            )
            return
        if not self._outstanding and self._probe is None and now >= self._last_request + self.idle_timeout:
            self.counters["closed.idle"] += 1
            self._actions.append(Close("idle"))
            self._go("idle")
            self._reset()
            return
        interval = self.watchdog_interval
        if interval is not None and self._probe is None and now >= self._last_received + interval:
            self._send_probe(now)

    # -- outputs ---------------------------------------------------------------------------------
    def actions(self) -> list[Action]:
        """What to do now, in order."""
        out, self._actions = self._actions, []
        return out

    def get_timer(self) -> float | None:
        if self.state is not State.OPEN:
            return None
        times = []
        if self._probe is not None:
            times.append(self._probe_deadline)
        elif self.watchdog_interval is not None:
            times.append(self._last_received + self.watchdog_interval)
        if not self._outstanding and self._probe is None:
            times.append(self._last_request + self.idle_timeout)
        return min(times) if times else None

    @property
    def outstanding(self) -> int:
        """Requests written on the open connection and not answered."""
        return len(self._outstanding)

    # -- internals -------------------------------------------------------------------------------
    def _go(self, event: str) -> None:
        self.state = TRANSITIONS[(self.state, event)]

    def _connect(self, now: float) -> None:
        self.counters["connects"] += 1
        self._actions.append(Connect())

    def _write(self, packet: bytes) -> None:
        identifier, authenticator = packet[1], packet[4:20]
        if self._outstanding.get(identifier) == authenticator:
            self.counters["duplicates_absorbed"] += 1  # rule 5b
            return
        self._outstanding[identifier] = authenticator
        self.counters["written"] += 1
        self._actions.append(Write(packet))

    def _send_probe(self, now: float) -> None:
        start = self.random_bytes(1)[0]
        identifier = next(
            ((start + step) % 256 for step in range(256) if (start + step) % 256 not in self._outstanding), None
        )
        if identifier is None:
            return  # 256 answers owed: the connection is anything but idle
        self._probe = build_status_server(identifier, self.random_bytes(16), RADSEC_SECRET)
        self._probe_deadline = now + self.watchdog_timeout
        self.counters["watchdog_sent"] += 1
        self._actions.append(Write(self._probe))

    def _fail(self, event: str, reason: str, now: float) -> None:
        self._go(event)
        self.counters["failures"] += 1
        self.counters["dropped.unreachable"] += len(self._queue)
        self.last_error = reason
        self.retry_at = now + self._delay
        self._delay = min(self._delay * 2, self.reconnect_max)
        self._reset()

    def _reset(self) -> None:
        self._queue.clear()
        self._outstanding.clear()
        self._probe = None
        self._reader = StreamReader()


__all__ = [
    "DEFAULT_CLIENT_IDLE_TIMEOUT",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_RECONNECT_MAX",
    "DEFAULT_SERVER_IDLE_TIMEOUT",
    "DEFAULT_WATCHDOG_INTERVAL",
    "DEFAULT_WATCHDOG_TIMEOUT",
    "MAX_QUEUED",
    "RADSEC_PORT",
    "RADSEC_SECRET",
    "TRANSITIONS",
    "CertificateIdentity",
    "ClientConnection",
    "ClientPin",
    "Close",
    "Connect",
    "Refused",
    "ServerConnection",
    "State",
    "Write",
    "answers_status",
    "is_radsec",
    "match_client",
    "parse_pin",
    "radsec_view",
]
