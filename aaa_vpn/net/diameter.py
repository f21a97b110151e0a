"""Diameter over TCP (and TLS over TCP) with asyncio: the transport of a
:class:`~aaa_vpn.roles.diameter_peer.DiameterNode`.

RFC 6733 section 2.1 runs Diameter over TCP or SCTP, port 3868 (TLS: 5658).
SCTP is not offered: this machine's kernel has no SCTP (``/proc/net/sctp``
is absent and ``socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)`` fails with
EPROTONOSUPPORT), and the standard library's asyncio has no SCTP transport
of its own; :func:`sctp_available` says what the running kernel does.

A connection is *secure* (keys may be sent on it, roles/diameter_home.py)
when it runs TLS, or when the operator declared plain TCP protected below
Diameter (IPsec, a loopback lab): ``plain_is_secure``. A TLS peer that
presented a certificate (a server requires one with a CA) must name itself
in it: its CER's Origin-Host is checked against the certificate's DNS names
and common name (roles/diameter_peer.py rule 2).

Every input goes to the node with the clock's time (``time.time`` unless given); after each one the
transport delivers the node's events to ``on_event``, writes what the node
has to send, closes what it asks to close and arms one timer for
:meth:`DiameterNode.handle_timer`. A bug in ``on_event`` costs that event,
never the loop (counted ``internal_errors``, logged).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable

from aaa_vpn.roles.diameter_peer import DiameterNode, Event

log = logging.getLogger("aaa_vpn.diameter")


#: Seconds between attempts to connect to a Diameter peer that went away.
RECONNECT = 1.0


async def until_reconnect(lost: asyncio.Event, stop: asyncio.Event) -> None:
    """Wait until a kept connection is ``lost`` or the keeper is told to
    ``stop``; after a loss, :data:`RECONNECT` seconds more before the next
    attempt."""
    waits = {asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())}
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if not stop.is_set():
        await asyncio.sleep(RECONNECT)


def sctp_available() -> bool:
    """Whether this kernel opens SCTP sockets (RFC 4960)."""
    proto = getattr(socket, "IPPROTO_SCTP", 132)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    except OSError:
        return False
    sock.close()
    return True


def _certificate_names(certificate: object) -> frozenset[str] | None:
    """The DNS names and common names of a verified peer certificate (lower
    case), or None if the peer presented none."""
    if not isinstance(certificate, dict) or not certificate:
        return None
    names = {value.lower() for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"}
    for rdn in certificate.get("subject", ()):
        names.update(value.lower() for key, value in rdn if key == "commonName")
    return frozenset(names)


class _Connection(asyncio.Protocol):
    def __init__(self, owner: DiameterTransport, initiator: bool) -> None:
        self.owner = owner
        self.initiator = initiator
        self.id = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        tls = transport.get_extra_info("sslcontext") is not None
        secure = tls or self.owner.plain_is_secure
        names = _certificate_names(transport.get_extra_info("peercert")) if tls and not self.initiator else None
        self.id = self.owner.node.connection_made(self.owner.clock(), self.initiator, secure, names)
        self.owner.connections[self.id] = self
        self.owner.pump()

    def data_received(self, data: bytes) -> None:
        self.owner.node.data_received(self.id, data, self.owner.clock())
        self.owner.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connections.pop(self.id, None)
        self.owner.node.connection_lost(self.id, self.owner.clock())
        self.owner.pump()


class DiameterTransport:
    """TCP/TLS connections of one :class:`DiameterNode` (module docstring)."""

    def __init__(
        self,
        node: DiameterNode,
        on_event: Callable[[Event], None],
        plain_is_secure: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.node = node
        self.on_event = on_event
        self.plain_is_secure = plain_is_secure
        self.connections: dict[int, _Connection] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._servers: list[asyncio.Server] = []

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self, False), host, port, ssl=tls, reuse_address=True)
        self._servers.append(server)
        return server

    async def connect(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, server_hostname: str | None = None
    ) -> int:
        """Open a connection (this side sends CER); returns its id. With
        ``tls``, the server's certificate must name ``server_hostname``
        (default: ``host``)."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: _Connection(self, True),
            host,
            port,
            ssl=tls,
            server_hostname=(server_hostname or host) if tls else None,
        )
        return protocol.id

    def pump(self) -> None:
        """Deliver events, write, close, re-arm the timer."""
        while (event := self.node.next_event()) is not None:
            try:
                self.on_event(event)
            except Exception:  # a bug must cost this event, never the loop
                self.node.counters["internal_errors"] += 1
                log.exception("internal error handling a Diameter event")
        for conn_id, data in self.node.data_to_send():
            conn = self.connections.get(conn_id)
            if conn is not None and conn.transport is not None:
                conn.transport.write(data)
        for conn_id in self.node.to_close():
            conn = self.connections.pop(conn_id, None)
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.node.get_timer()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, deadline - self.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.node.handle_timer(self.clock())
        self.pump()

    async def close(self) -> None:
        """DPR every open peer, give them a moment, then close everything."""
        now = self.clock()
        for peer in self.node.peers():
            self.node.disconnect(peer.id, now)
        self.pump()
        for _ in range(20):
            if not self.node.peers() and not any(c.state.value == "closing" for c in self.node.connections.values()):
                break
            await asyncio.sleep(0.05)
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        if self._timer is not None:
            self._timer.cancel()


__all__ = ["DiameterTransport", "sctp_available"]
