"""An agent's Diameter link (``aaa-vpn agent fa|ha --aaa-protocol diameter``):
the TCP connection of its Diameter client (roles/diameter_client.py: the FA's
:class:`~aaa_vpn.roles.diameter_client.FaDiameterClient`, the HA's
:class:`~aaa_vpn.roles.diameter_client.HaDiameterClient`) to the home AAA or
the visited realm's relay, kept open (reconnected a second after it drops
or cannot be made), and what arrives on it handed back to the agent.

With ``--diameter-tls-ca`` the connection is TLS (the peer's certificate
must name ``--diameter-peer-host``; ``--diameter-tls-cert/-key`` are the
agent's own, for a server that asks for one). The FA sends AMRs through its
client, the HA answers HARs; the stream leaves when the agent collects its
datagrams (the client's ``flush`` pumps this transport). What arrives on the
stream is handled by the client, and ``on_answers`` (the agent node's) makes
the role act on it and carries out what follows.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from aaa_vpn.net.diameter import DiameterTransport, until_reconnect
from aaa_vpn.roles import diameter_peer as peer
from aaa_vpn.service.logging import fields

log = logging.getLogger("aaa_vpn.diameter")


class DiameterClientRole(Protocol):
    """What the link needs of an agent's Diameter client (roles/diameter_client.py)."""

    node: peer.DiameterNode
    flush: Callable[[], None]

    def node_event(self, event: peer.Event, now: float) -> None: ...


class DiameterLink:
    """One FA's connection to its Diameter peer (module docstring)."""

    def __init__(
        self,
        client: DiameterClientRole,
        server: str,
        clock: Callable[[], float],
        on_answers: Callable[[], None],
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.tls, self.server_name = tls, server_name
        host, _, port = server.rpartition(":")
        self.host, self.port = (host, int(port)) if host else (server, 3868)
        self.client = client
        self.on_answers = on_answers
        self.transport = DiameterTransport(client.node, self._event, clock=clock)
        client.flush = self.transport.pump
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        self._scheduled = False

    def _event(self, event: peer.Event) -> None:
        self.client.node_event(event, self.transport.clock())
        if isinstance(event, peer.PeerUp):
            log.info("diameter peer up", extra=fields(peer=event.host, realm=event.realm))
        elif isinstance(event, peer.PeerDown):
            log.info("diameter peer down", extra=fields(peer=event.host or "-", reason=event.reason))
            self._lost.set()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._answers)

    def _answers(self) -> None:
        self._scheduled = False
        self.on_answers()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._keep())

    async def _keep(self) -> None:
        while not self._stop.is_set():
            self._lost.clear()
            try:
                await self.transport.connect(self.host, self.port, self.tls, self.server_name)
            except OSError as exc:
                log.warning("diameter connect failed", extra=fields(server=f"{self.host}:{self.port}", error=str(exc)))
                self._lost.set()
            await until_reconnect(self._lost, self._stop)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.transport.close()


def client_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """TLS to the Diameter peer (RFC 6733 section 13): its certificate checked
    against ``ca`` for its Origin-Host; ``cert``/``key`` this FA's own."""
    if ca is None:
        return None
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


__all__ = ["DiameterLink", "client_tls"]
