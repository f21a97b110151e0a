"""RadSec (RFC 6614) over asyncio: the TLS contexts, a listener for the AAA
servers and a connector for the AAA clients. The rules -- identity by
certificate, the ``radsec`` secret, framing, idle timeouts, the watchdog,
reconnecting -- live in :mod:`aaa_vpn.roles.radsec`; this module moves
octets, time and TLS.

TLS (RFC 6614 section 2.3): TLS 1.2 or later, mutual authentication with
certificates that chain to the configured CA (``--tls-ca``); the client
also checks the server's name (its IP address, or the configured
``tls_name``) against the server certificate's subjectAltName.

:class:`RadsecListener` accepts TCP connections, runs the TLS handshake
itself (``loop.start_tls``: a failed handshake -- an unknown CA, no client
certificate, an old TLS version -- is counted ``radsec.refused.handshake``
and logged, not left to asyncio's default handler), maps the certificate to
a client with the owner's ``identify`` and hands every packet of the
connection to the owner's ``handle`` with that client. Replies reach the
connection through :meth:`RadsecListener.deliver`, by the peer's (address,
port) -- the source the role saw.

:class:`RadsecConnector` keeps one connection per RadSec server of a
RADIUS client (an agent, or the foreign AAA's upstream): the sans-IO
RADIUS client's datagrams for a RadSec server's (address, port) go to
:meth:`RadsecConnector.send` instead of a UDP socket, and the packets the
connection brings back are handed to ``deliver`` as if they were datagrams
from that (address, port).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any, Generic, TypeVar

from aaa_vpn.roles.radsec import (
    DEFAULT_CLIENT_IDLE_TIMEOUT,
    DEFAULT_RECONNECT_DELAY,
    DEFAULT_RECONNECT_MAX,
    DEFAULT_SERVER_IDLE_TIMEOUT,
    DEFAULT_WATCHDOG_INTERVAL,
    DEFAULT_WATCHDOG_TIMEOUT,
    CertificateIdentity,
    ClientConnection,
    Close,
    Connect,
    NamedClient,
    Refused,
    ServerConnection,
    Write,
    match_client,
    parse_pin,
    radsec_view,
)
from aaa_vpn.service.logging import fields
from aaa_vpn.wire.radius_stream import StreamFramingError

log = logging.getLogger("aaa_vpn.radsec")

Address = tuple[str, int]
#: Seconds a TLS handshake may take.
HANDSHAKE_TIMEOUT = 10.0
#: Connections (identified or in their handshake) one listener keeps; more are closed at once.
MAX_CONNECTIONS = 4096
_LOG_BURST = 20


class TlsError(Exception):
    """The TLS credentials cannot be loaded (a missing or unreadable file, a
    key that does not match its certificate, ...)."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one RadSec endpoint."""

    cert: Path
    """Its certificate (and any intermediates after it)."""
    key: Path
    """Its private key."""
    ca: Path
    """The CA certificate(s) its peers' certificates must chain to."""


def _context(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    for what, path in (("certificate", files.cert), ("key", files.key), ("CA file", files.ca)):
        if not path.is_file():
            raise TlsError(f"TLS {what} {path} does not exist or is not a file")
    try:
        context = ssl.create_default_context(purpose, cafile=str(files.ca))
        context.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load the TLS files ({files.cert}, {files.key}, CA {files.ca}): {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 6614 section 2.3 (and RFC 8996)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A RadSec server's context: client certificates required."""
    return _context(ssl.Purpose.CLIENT_AUTH, files)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A RadSec client's context: the server's certificate and name checked."""
    context = _context(ssl.Purpose.SERVER_AUTH, files)
    context.check_hostname = True
    return context


def certificate_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> CertificateIdentity:
    """What the verified peer certificate of ``ssl_object`` says."""
    if ssl_object is None:
        raise Refused("no_certificate", "the connection is not TLS")
    der = ssl_object.getpeercert(binary_form=True)
    info: Any = ssl_object.getpeercert()
    if not der or not info:
        raise Refused("no_certificate", "the peer sent no certificate")
    names: list[str] = []
    addresses: list[IPv4Address] = []
    for kind, value in info.get("subjectAltName", ()):
        if kind == "DNS":
            names.append(str(value))
        elif kind == "IP Address":
            try:
                address = ip_address(str(value).strip())
            except ValueError:
                continue
            if isinstance(address, IPv4Address):
                addresses.append(address)
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(str(value))
    return CertificateIdentity(hashlib.sha256(der).hexdigest(), tuple(names), tuple(addresses))


def bind_listener(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket (``SO_REUSEPORT`` for worker processes); OSError if it cannot be bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Limiter:
    """At most :data:`_LOG_BURST` warnings per reason and minute."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}

    def allowed(self, reason: str, now: float) -> bool:
        start, count = self._windows.get(reason, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        self._windows[reason] = (start, count + 1)
        return count < _LOG_BURST


# --- the server side ---------------------------------------------------------------------------

C = TypeVar("C")
N = TypeVar("N", bound=NamedClient)


def listen_address(text: str) -> Address:
    """``ADDR:PORT`` (as service/config.py's ``parse_radsec_listen`` writes it) as a pair."""
    host, _sep, port = text.rpartition(":")
    return (host, int(port)) if _sep else (text, 2083)


def server_tls(settings: Any) -> ssl.SSLContext:
    """The server context of a server's settings (``tls_cert``, ``tls_key``, ``tls_ca``); raises :class:`TlsError`."""
    if settings.tls_cert is None or settings.tls_key is None or settings.tls_ca is None:
        raise TlsError("RadSec needs --tls-cert, --tls-key and --tls-ca")
    return server_context(TlsFiles(Path(settings.tls_cert), Path(settings.tls_key), Path(settings.tls_ca)))


class CertificateClients(Generic[N]):
    """The ``identify`` of a :class:`RadsecListener`: roles/radsec.py rules 1
    and 2 over the provisioned clients, remembered per provisioning
    generation and certificate."""

    def __init__(
        self,
        clients: Callable[[], Sequence[N]],
        generation: Callable[[], object],
        pins: Iterable[str] = (),
    ) -> None:
        self.clients = clients
        self.generation = generation
        self.pins = tuple(parse_pin(pin) for pin in pins)
        self._cache: dict[str, N | Refused] = {}
        self._generation: object = None

    def __call__(self, identity: CertificateIdentity) -> N:
        clients = self.clients()  # refreshes the provisioning
        generation = self.generation()
        if generation != self._generation:
            self._generation = generation
            self._cache.clear()
        found = self._cache.get(identity.fingerprint)
        if found is None:
            try:
                found = radsec_view(match_client(identity, clients, self.pins))
            except Refused as refused:
                found = refused
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[identity.fingerprint] = found
        if isinstance(found, Refused):
            raise found
        return found


class RadsecListener(Generic[C]):
    """RadSec connections on one listening socket; see the module docstring.

    ``identify(identity)`` returns the client a certificate names (raising
    :class:`~aaa_vpn.roles.radsec.Refused`); ``handle(packets, source,
    client)`` decides a connection's packets and sends the replies (through
    :meth:`deliver` for RadSec peers). ``counters`` gets ``radsec.*``."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        identify: Callable[[CertificateIdentity], C],
        handle: Callable[[list[bytes], Address, C], None],
        counters: collections.Counter[str],
        *,
        idle_timeout: float = DEFAULT_SERVER_IDLE_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.sock = sock
        self.max_connections = max_connections
        self.handshakes = 0
        self.context = context
        self.identify = identify
        self.handle = handle
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.connections: dict[Address, _ServerProtocol[C]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._limiter = _Limiter()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerProtocol(self), sock=self.sock)

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return (str(host), int(port))

    def deliver(self, data: bytes, destination: Address) -> bool:
        """Write a reply to the RadSec peer ``destination``; False if there is none."""
        connection = self.connections.get(destination)
        if connection is None:
            return False
        connection.write(data)
        return True

    def route(self, replies: Iterable[tuple[bytes, Address]], otherwise: Callable[[bytes, Address], None]) -> None:
        """Each reply to its RadSec peer, or to ``otherwise`` (a UDP socket)."""
        for data, destination in replies:
            if not self.deliver(data, destination):
                otherwise(data, destination)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections.values()):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def note(self, reason: str, source: Address, detail: str, *, counted: str | None = None) -> None:
        self.counters[counted or f"radsec.{reason}"] += 1
        loop_time = asyncio.get_running_loop().time()
        if self._limiter.allowed(reason, loop_time):
            log.warning(
                f"radsec connection {reason.replace('_', ' ').replace('.', ': ')}",
                extra=fields(peer=f"{source[0]}:{source[1]}", detail=detail),
            )


P = TypeVar("P")


class _ServerProtocol(asyncio.Protocol, Generic[P]):
    def __init__(self, listener: RadsecListener[P]) -> None:
        self.listener = listener
        self.transport: asyncio.BaseTransport | None = None
        self.source: Address = ("", 0)
        self.client: P | None = None
        self.identity: CertificateIdentity | None = None
        self.state: ServerConnection | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closed = False
        self.handshake: asyncio.Future[None] | None = None
        # What arrives between the handshake's end and the certificate's
        # check (the client writes at once): kept, then read in order.
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.source = (str(peer[0]), int(peer[1]))
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # nothing is read before start_tls takes over
        self.transport = transport
        listener = self.listener
        listener.counters["radsec.accepted"] += 1
        if len(listener.connections) + listener.handshakes >= listener.max_connections:
            listener.note("refused.too_many", self.source, f"{listener.max_connections} connections already")
            self._closed = True
            transport.abort()
            return
        listener.handshakes += 1
        self.handshake = asyncio.ensure_future(self._handshake(transport))
        self.handshake.add_done_callback(lambda _done: setattr(listener, "handshakes", listener.handshakes - 1))

    async def _handshake(self, plain: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        listener = self.listener
        try:
            tls = await loop.start_tls(
                plain, self, listener.context, server_side=True, ssl_handshake_timeout=listener.handshake_timeout
            )
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            listener.note("refused.handshake", self.source, f"{type(exc).__name__}: {exc}")
            plain.abort()
            return
        if tls is None or self._closed:
            plain.abort()
            return
        self.transport = tls
        try:
            identity = certificate_identity(tls.get_extra_info("ssl_object"))
            self.identity = identity
            self.client = listener.identify(identity)
        except Refused as refused:
            listener.note(f"refused.{refused.reason}", self.source, refused.detail)
            tls.abort()
            return
        except Exception:  # a bug must cost this connection, never the daemon
            listener.counters["radsec.internal_errors"] += 1
            log.exception("internal error identifying a RadSec peer")
            tls.abort()
            return
        self.state = ServerConnection(loop.time(), listener.idle_timeout)
        listener.connections[self.source] = self
        listener.counters["radsec.connections"] += 1
        log.info(
            "radsec connection",
            extra=fields(
                peer=f"{self.source[0]}:{self.source[1]}",
                client=getattr(self.client, "name", "?"),
                certificate=str(identity),
                tls=str(tls.get_extra_info("ssl_object").version()),
            ),
        )
        self._arm(loop)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        state, client = self.state, self.client
        if self._closed:
            return
        if state is None or client is None:
            if sum(map(len, self._early)) < 65536:
                self._early.append(data)
            return
        loop = asyncio.get_running_loop()
        try:
            packets = state.received(data, loop.time())
        except StreamFramingError as exc:
            self.listener.note("closed.framing", self.source, str(exc))
            self.close()
            return
        if not packets:
            return
        self.listener.counters["radsec.packets"] += len(packets)
        try:
            # Provisioning may have changed since the handshake: the
            # certificate is matched again (the owner caches the answer).
            assert self.identity is not None
            client = self.client = self.listener.identify(self.identity)
        except Refused as refused:
            self.listener.note(f"refused.{refused.reason}", self.source, refused.detail)
            self.close()
            return
        except Exception:  # a store error, a bug: these packets are lost, the daemon goes on
            self.listener.counters["radsec.internal_errors"] += 1
            log.exception("internal error identifying a RadSec peer")
            return
        try:
            self.listener.handle(packets, self.source, client)
        except Exception:  # a bug must cost these packets, never the daemon
            self.listener.counters["radsec.internal_errors"] += 1
            log.exception("internal error handling RadSec packets")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(data)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.state is not None and not self._closed:
            self._idle = loop.call_at(self.state.deadline(), self._check_idle)

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        if self.state is None or self._closed:
            return
        if self.state.idle(loop.time()):
            self.listener.note("closed.idle", self.source, f"nothing received for {self.state.idle_timeout} s")
            self.close()
            return
        self._arm(loop)

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()
        self._forget()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def _forget(self) -> None:
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.listener.connections.get(self.source) is self:
            del self.listener.connections[self.source]
            self.listener.counters["radsec.closed"] += 1


# --- the client side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RadsecServer:
    """One RadSec server of a RADIUS client."""

    address: Address
    """(IP address, port): the destination the RADIUS client sends to."""
    tls_name: str = ""
    """The name its certificate must carry; default: its IP address."""
    name: str = ""


class RadsecConnector:
    """The connections of one RADIUS client to its RadSec servers; see the
    module docstring. ``deliver(packet, address, now)`` gets every packet a
    server sends (``now`` on the loop's clock)."""

    def __init__(
        self,
        servers: Sequence[RadsecServer],
        context: ssl.SSLContext,
        deliver: Callable[[bytes, Address], None],
        *,
        local_address: str | None = None,
        idle_timeout: float = DEFAULT_CLIENT_IDLE_TIMEOUT,
        watchdog_interval: float | None = DEFAULT_WATCHDOG_INTERVAL,
        watchdog_timeout: float = DEFAULT_WATCHDOG_TIMEOUT,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
        reconnect_max: float = DEFAULT_RECONNECT_MAX,
    ) -> None:
        self.context = context
        self.deliver = deliver
        self.local_address = local_address
        self.peers: dict[Address, _Peer] = {}
        for server in servers:
            state = ClientConnection(
                server.name or f"{server.address[0]}:{server.address[1]}",
                idle_timeout=idle_timeout,
                watchdog_interval=watchdog_interval,
                watchdog_timeout=watchdog_timeout,
                reconnect_delay=reconnect_delay,
                reconnect_max=reconnect_max,
            )
            self.peers[server.address] = _Peer(self, server, state)

    def handles(self, address: Address) -> bool:
        return address in self.peers

    def send(self, data: bytes, address: Address) -> bool:
        """Send ``data`` to the RadSec server ``address``; False if it is none."""
        peer = self.peers.get(address)
        if peer is None:
            return False
        loop = asyncio.get_running_loop()
        peer.state.send(data, loop.time())
        peer.service()
        return True

    def counters(self) -> collections.Counter[str]:
        """Every connection's counters, summed, under ``radsec.``."""
        total: collections.Counter[str] = collections.Counter()
        for peer in self.peers.values():
            total.update({f"radsec.{k}": v for k, v in peer.state.counters.items()})
        return total

    def close(self) -> None:
        for peer in self.peers.values():
            peer.shut()


class _Peer:
    """One RadSec server: its sans-IO connection state and the current link."""

    def __init__(self, owner: RadsecConnector, server: RadsecServer, state: ClientConnection) -> None:
        self.owner = owner
        self.server = server
        self.state = state
        self.link: _Link | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.shut_down = False

    # -- the sans-IO connection's actions --------------------------------------------------------
    def service(self) -> None:
        if self.shut_down:
            return
        loop = asyncio.get_running_loop()
        for action in self.state.actions():
            if isinstance(action, Connect):
                self.link = _Link(self)
                self.task = loop.create_task(self._connect(self.link))
            elif isinstance(action, Write):
                if self.link is not None and self.link.transport is not None:
                    self.link.transport.write(action.data)
            elif isinstance(action, Close):
                log.info(
                    "radsec connection closed",
                    extra=fields(server=self.state.name, reason=action.reason, detail=self.state.last_error),
                )
                self._drop_link()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = self.state.get_timer()
        if when is not None:
            self.timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.state.handle_timer(asyncio.get_running_loop().time())
        self.service()

    async def _connect(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.server.address
        local = (self.owner.local_address, 0) if self.owner.local_address else None
        try:
            await loop.create_connection(
                lambda: link,
                host,
                port,
                ssl=self.owner.context,
                server_hostname=self.server.tls_name or host,
                local_addr=local,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            if self.link is not link:
                return
            self.link = None
            self.state.failed(f"{type(exc).__name__}: {exc}", loop.time())
            log.warning(
                "radsec connection failed",
                extra=fields(
                    server=self.state.name,
                    error=self.state.last_error,
                    retry_in=round(self.state.retry_at - loop.time(), 3),
                ),
            )
            self.service()

    def _drop_link(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            link.abandon()

    def shut(self) -> None:
        self.shut_down = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._drop_link()


class _Link(asyncio.Protocol):
    """One TLS connection of a :class:`_Peer`; once abandoned, it reports nothing."""

    def __init__(self, peer: _Peer) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.abandoned = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.abandoned:
            transport.close()
            return
        peer = self.peer
        ssl_object = transport.get_extra_info("ssl_object")
        log.info(
            "radsec connected",
            extra=fields(server=peer.state.name, tls=str(ssl_object.version() if ssl_object else "")),
        )
        peer.state.connected(asyncio.get_running_loop().time())
        peer.service()

    def data_received(self, data: bytes) -> None:
        if self.abandoned:
            return
        peer = self.peer
        for packet in peer.state.received(data, asyncio.get_running_loop().time()):
            try:
                peer.owner.deliver(packet, peer.server.address)
            except Exception:  # a bug must cost this packet, never the client
                log.exception("internal error delivering a RadSec packet")
        peer.service()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.abandoned:
            return
        self.abandoned = True
        peer = self.peer
        if peer.link is self:
            peer.link = None
        now = asyncio.get_running_loop().time()
        if exc is not None:
            peer.state.failed(f"{type(exc).__name__}: {exc}", now)
        else:
            peer.state.closed(now)
        if peer.state.last_error:
            log.info("radsec connection lost", extra=fields(server=peer.state.name, detail=peer.state.last_error))
        peer.service()

    def abandon(self) -> None:
        self.abandoned = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None


__all__ = [
    "RadsecConnector",
    "RadsecListener",
    "RadsecServer",
    "TlsError",
    "TlsFiles",
    "bind_listener",
    "certificate_identity",
    "client_context",
    "server_context",
]
