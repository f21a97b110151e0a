"""The foreign AAA's Diameter front end (``[diameter]`` in ``serve foreign``'s
file): the visited realm's FAs send their AMRs (RFC 4004) to it, and it acts
for them exactly as for their RADIUS Access-Requests -- a same-domain handoff
answered from its cache (flow C), anything else proxied to the home AAA over
RADIUS (flow D) -- because each AMR becomes the FA's Access-Request and goes
through the same sans-IO foreign AAA role (roles/foreign_aaa.py).

The translation is the home AAA's (roles/diameter_home.py, rules 1-7): the
FA is the foreign AAA's client whose name is the AMR's Origin-Host, the
Access-Request is signed with that client's secret as coming from the FA's
care-of address, and the reply the role sends back to that address is taken
here (:meth:`ForeignDiameterFront.claims`) and turned into the AMA. Requests
for the foreign AAA's realms (its ``[[realms]]``, the users' home realms) are
served here (roles/diameter_peer.py rule 6, ``local_realms``); keys leave only
on a protected connection (``plain_is_secure``, else 5025). A request whose
reply does not come within :data:`WAIT` seconds (every home server down) is
answered 3002 DIAMETER_UNABLE_TO_DELIVER. STR is answered 2001 (the cached
session expires with its lifetime).

Only the first worker runs it (net/foreign_server.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from aaa_vpn.model import Client, ClientRole, ValidationError
from aaa_vpn.net.diameter import DiameterTransport
from aaa_vpn.roles import diameter_peer as peer
from aaa_vpn.roles.diameter_home import KNOWN_AVPS, DiameterHome
from aaa_vpn.roles.foreign_aaa import ProxyClient
from aaa_vpn.service.logging import fields
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.diameter import Command, Message, ResultCode
from aaa_vpn.wire.profile import VpnProfile

log = logging.getLogger("aaa_vpn.diameter")

#: Seconds an AMR waits for the foreign AAA's reply.
WAIT = 30.0


def _clients(proxy_clients: tuple[ProxyClient, ...]) -> list[Client]:
    out = []
    for client in proxy_clients:
        try:
            out.append(Client(client.name, client.network, client.secret, ClientRole.FA))
        except ValidationError as exc:
            log.warning("client cannot speak Diameter", extra=fields(client=client.name, error=str(exc)))
    return out


class ForeignDiameterFront:
    """The foreign AAA worker's Diameter side (module docstring)."""

    def __init__(
        self,
        host: str,
        realm: str,
        served_realms: tuple[str, ...],
        proxy_clients: tuple[ProxyClient, ...],
        inject: Callable[[bytes, tuple[str, int], float], None],
        plain_is_secure: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.inject = inject
        self.identity = d.Identity(host, realm, (IPv4Address("127.0.0.1"),))
        clients = _clients(proxy_clients)
        names = {c.name.lower() for c in clients}
        self.node = peer.DiameterNode(
            self.identity,
            [d.MOBILE_IPV4_APPLICATION],
            {d.MOBILE_IPV4_APPLICATION: KNOWN_AVPS},
            accept_peer=lambda peer_host, _realm: peer_host.lower() in names,
            random_u32=lambda: int.from_bytes(os.urandom(4), "big"),
            jitter=lambda: (os.urandom(1)[0] - 128) / 64.0,
            local_realms=served_realms,
        )
        self.home = DiameterHome(self.identity, lambda: clients, os.urandom)
        self.transport = DiameterTransport(self.node, self._event, plain_is_secure=plain_is_secure, clock=clock)
        self._waiting: dict[tuple[str, int], tuple[int, float]] = {}  # reply address -> (handle, since)
        self._requests: dict[int, Message] = {}  # handle -> the AMR, until answered

    @property
    def counters(self) -> dict[str, int]:
        out = {f"diameter_{k.replace('.', '_')}": v for k, v in self.node.counters.items()}
        out.update({f"diameter_{k.replace('.', '_')}": v for k, v in self.home.counters.items()})
        return out

    async def listen(self, listen: str | None) -> None:
        """Listen on ``listen`` (ADDR[:PORT], port 3868 by default)."""
        host, sep, port = (listen or "").rpartition(":")
        if not sep:
            host, port = listen or "127.0.0.1", str(d.DIAMETER_PORT)
        server = await self.transport.listen(host, int(port))
        bound = server.sockets[0].getsockname()
        log.info(
            "diameter listening",
            extra=fields(address=f"{bound[0]}:{bound[1]}", origin_host=self.identity.host, realm=self.identity.realm),
        )

    def claims(self, address: tuple[str, int]) -> bool:
        """Whether a reply to ``address`` is one of ours."""
        return address in self._waiting

    def reply(self, address: tuple[str, int], data: bytes) -> None:
        """The foreign AAA's reply to an AMR's Access-Request: the AMA."""
        handle, _ = self._waiting.pop(address)
        self._requests.pop(handle, None)
        outcome = self.home.decided(handle, data, self.clock())
        if isinstance(outcome, VpnProfile):
            outcome = self.home.finish(handle)
        if outcome is not None:
            self.node.answer(handle, outcome, self.clock())
        self.transport.pump()

    def expire(self, now: float) -> None:
        """AMRs whose reply did not come within :data:`WAIT`: 3002."""
        for address, (handle, since) in list(self._waiting.items()):
            if now - since >= WAIT:
                del self._waiting[address]
                self.home.forget(handle)
                self.node.counters["unanswered"] += 1
                self.node.answer(handle, self._unable(handle), now)
        self.transport.pump()

    def _unable(self, handle: int) -> Message:
        request = self._requests.pop(handle, None)
        stub = request if request is not None else Message(Command.AA_MOBILE_NODE, True, d.MOBILE_IPV4_APPLICATION)
        return peer.answer_to(stub, self.identity, ResultCode.UNABLE_TO_DELIVER, error_message="no home AAA answered")

    def _event(self, event: peer.Event) -> None:
        now = self.clock()
        if isinstance(event, peer.RequestReceived):
            try:
                self._request(event, now)
            except Exception:  # a bug costs this request (5012), never the worker
                self.node.counters["internal_errors"] += 1
                log.exception("internal error answering a Diameter request")
                self.home.forget(event.handle)
                self.node.answer(
                    event.handle, peer.answer_to(event.message, self.identity, ResultCode.UNABLE_TO_COMPLY), now
                )
        elif isinstance(event, peer.PeerUp):
            log.info("diameter peer up", extra=fields(peer=event.host, realm=event.realm))
        elif isinstance(event, peer.PeerDown):
            log.info("diameter peer down", extra=fields(peer=event.host or "-", reason=event.reason))

    def _request(self, event: peer.RequestReceived, now: float) -> None:
        message = event.message
        if message.command == Command.AA_MOBILE_NODE:
            first = self.home.amr(event.handle, message, event.secure, event.peer)
            if isinstance(first, Message):
                self.node.answer(event.handle, first, now)
                return
            self._waiting[first.source] = (event.handle, now)
            self._requests[event.handle] = message
            self.inject(first.datagram, first.source, now)
        elif message.command == Command.SESSION_TERMINATION:
            _, answer = self.home.str_(message)
            if answer.result_code == ResultCode.UNKNOWN_SESSION_ID:
                answer = peer.answer_to(message, self.identity, ResultCode.SUCCESS)
            self.node.answer(event.handle, answer, now)
        else:
            self.node.answer(event.handle, peer.answer_to(message, self.identity, ResultCode.COMMAND_UNSUPPORTED), now)


__all__ = ["WAIT", "ForeignDiameterFront"]
