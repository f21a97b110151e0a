"""The foreign AAA's Diameter front end (``[diameter]`` in ``serve foreign``'s
file): the visited realm's FAs send their AMRs (RFC 4004) to it, and it acts
for them exactly as for their RADIUS Access-Requests -- a same-domain handoff
answered from its cache (flow C), anything else proxied to the home AAA over
RADIUS (flow D) -- because each AMR becomes the FA's Access-Request and goes
through the same sans-IO foreign AAA role (roles/foreign_aaa.py).

A realm of ``protocol = "diameter"`` is reached over Diameter instead: the
foreign AAA is then a Diameter proxy agent (roles/diameter_proxy.py). Its
AMRs that are no same-domain handoff, and its STRs, go to the realm's home
peers (``[[realms.peers]]``, connections kept open from here and made again
a second after they drop; TLS with the file's ``tls_cert``/``tls_key``/
``tls_ca`` where ``tls = true``, the peer's certificate naming its
``host``); the AMA goes back to the FA without the session root key, and
the session it brings is cached for the realm's same-domain handoffs, which
are then answered here as for RADIUS. A home peer whose CEA names another
Origin-Host than its ``host`` is disconnected.

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

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from aaa_vpn.model import Client, ClientRole, ValidationError
from aaa_vpn.net.diameter import RECONNECT, DiameterTransport, until_reconnect
from aaa_vpn.roles import diameter_peer as peer
from aaa_vpn.roles.diameter_home import KNOWN_AVPS, DiameterHome
from aaa_vpn.roles.diameter_proxy import DEFAULT_TIMEOUT, DiameterPeerConfig, DiameterProxy, DiameterRealm, Reply
from aaa_vpn.roles.foreign_aaa import ForeignAaa, ProxyClient, realm_of
from aaa_vpn.service.logging import fields
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire import mip
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Command, Message, ResultCode
from aaa_vpn.wire.mip_vpn import previous_fa
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
        aaa: ForeignAaa | None = None,
        diameter_realms: tuple[DiameterRealm, ...] = (),
        timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``aaa``: the worker's foreign AAA role (its cache, for the
        Diameter realms' handoffs); ``diameter_realms`` with their home
        peers, reached with ``tls`` where a peer asks for it."""
        self.clock = clock
        self.inject = inject
        self.aaa = aaa
        self.tls = tls
        self.identity = d.Identity(host, realm, (IPv4Address("127.0.0.1"),))
        clients = _clients(proxy_clients)
        names = {c.name.lower() for c in clients}
        self._proxy_clients = {c.name.lower(): c for c in proxy_clients}
        self.proxy = DiameterProxy(self.identity, diameter_realms, timeout or DEFAULT_TIMEOUT)
        self.node = peer.DiameterNode(
            self.identity,
            [d.MOBILE_IPV4_APPLICATION],
            {d.MOBILE_IPV4_APPLICATION: KNOWN_AVPS},
            routes=self.proxy.routes(),
            accept_peer=lambda peer_host, _realm: peer_host.lower() in names,
            random_u32=lambda: int.from_bytes(os.urandom(4), "big"),
            jitter=lambda: (os.urandom(1)[0] - 128) / 64.0,
            local_realms=(*served_realms, *(r.name for r in diameter_realms)),
        )
        self.home = DiameterHome(self.identity, lambda: clients, os.urandom)
        self.transport = DiameterTransport(self.node, self._event, plain_is_secure=plain_is_secure, clock=clock)
        self._waiting: dict[tuple[str, int], tuple[int, float]] = {}  # reply address -> (handle, since)
        self._requests: dict[int, Message] = {}  # handle -> the AMR, until answered
        self._upstream = [p for r in diameter_realms for p in r.peers]
        self._dialled: dict[int, DiameterPeerConfig] = {}  # connection id -> the home peer it is to
        self._lost: dict[int, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def counters(self) -> dict[str, int]:
        """For the log: ``diameter_*`` and ``diameter_proxy_*``."""
        return {k.replace(".", "_"): v for k, v in self.events().items()}

    def events(self) -> dict[str, int]:
        """For the metrics (``aaa_vpn_role_events_total``): ``diameter.*`` (the
        node and the translated AMRs) and ``diameter_proxy.*`` (roles/diameter_proxy.py)."""
        out = {f"diameter.{k}": v for k, v in self.node.counters.items()}
        out.update({f"diameter.{k}": v for k, v in self.home.counters.items()})
        out.update({f"diameter_proxy.{k}": v for k, v in self.proxy.counters.items()})
        return out

    async def listen(self, listen: str | None) -> None:
        """Listen on ``listen`` (ADDR[:PORT], port 3868 by default), and keep
        a connection to every home peer of the Diameter realms."""
        host, sep, port = (listen or "").rpartition(":")
        if not sep:
            host, port = listen or "127.0.0.1", str(d.DIAMETER_PORT)
        server = await self.transport.listen(host, int(port))
        bound = server.sockets[0].getsockname()
        log.info(
            "diameter listening",
            extra=fields(address=f"{bound[0]}:{bound[1]}", origin_host=self.identity.host, realm=self.identity.realm),
        )
        for upstream in self._upstream:
            self._tasks.append(asyncio.ensure_future(self._keep(upstream)))

    async def _keep(self, upstream: DiameterPeerConfig) -> None:
        """One home peer's connection, made again :data:`RECONNECT` seconds after it drops."""
        failing = False
        while not self._stop.is_set():
            lost = asyncio.Event()
            try:
                conn_id = await self.transport.connect(
                    str(upstream.address), upstream.port, self.tls if upstream.tls else None, upstream.host
                )
            except (OSError, ssl.SSLError) as exc:
                if not failing:  # once per outage, not every second
                    log.warning(
                        "diameter home peer unreachable",
                        extra=fields(peer=upstream.host, address=f"{upstream.address}:{upstream.port}", error=str(exc)),
                    )
                failing = True
                lost.set()
            else:
                failing = False
                self._dialled[conn_id] = upstream
                self._lost[conn_id] = lost
                if conn_id not in self.transport.connections:  # gone before we could watch it
                    lost.set()
            await until_reconnect(lost, self._stop)

    async def close(self) -> None:
        """DPR the peers, stop reconnecting, close."""
        self._stop.set()
        for task in self._tasks:
            await task
        if self._timer is not None:
            self._timer.cancel()
        await self.transport.close()

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
        elif isinstance(event, peer.AnswerReceived):
            self._reply(self.proxy.answered(event.tag, event.message), now)
        elif isinstance(event, peer.RequestFailed):
            self._reply(self.proxy.failed(event.tag, event.reason), now)
        elif isinstance(event, peer.PeerUp):
            dialled = self._dialled.get(event.connection)
            log.info("diameter peer up", extra=fields(peer=event.host, realm=event.realm, home=dialled is not None))
            if dialled is not None and dialled.host.lower() != event.host.lower():
                log.warning(
                    "diameter home peer names itself otherwise: disconnected",
                    extra=fields(expected=dialled.host, peer=event.host),
                )
                self.node.disconnect(event.connection, now)
        elif isinstance(event, peer.PeerDown):
            log.info("diameter peer down", extra=fields(peer=event.host or "-", reason=event.reason))
            self._dialled.pop(event.connection, None)
            lost = self._lost.pop(event.connection, None)
            if lost is not None:
                lost.set()
        elif isinstance(event, peer.Dropped):
            log.debug("diameter message dropped", extra=fields(reason=event.reason, detail=event.detail[:200]))

    def _handoff_here(self, message: Message, nai: str, now: float) -> bool:
        """roles/diameter_proxy.py rule 1: whether the foreign AAA role answers
        this AMR from its cache (a same-domain handoff)."""
        client = self._proxy_clients.get((message.origin_host or "").lower())
        registration = message.find(C.MIP_REG_REQUEST)
        if self.aaa is None or client is None or registration is None:
            return False
        try:
            rrq = mip.decode_message(registration.value)  # DiameterHome.amr read it already
        except mip.MipDecodeError:
            return False
        if not isinstance(rrq, mip.RegistrationRequest):
            return False
        entry = self.aaa.handoff_entry(nai, previous_fa(rrq.extensions), rrq.care_of_address, client, now)
        return entry is not None

    def _forward(self, event: peer.RequestReceived, nai: str, realm: str, now: float) -> None:
        """roles/diameter_proxy.py rule 1: to the realm's home peers."""
        started = self.proxy.start(event.handle, event.message, nai, event.message.origin_host or "", realm, now)
        if isinstance(started, Message):
            self._log_failure(event.message, nai, "too many requests on their way home")
            self.node.answer(event.handle, started, now)
            return
        code = self.node.forward(event.handle, now, started, realm)  # the NAI's realm (RFC 4004 section 5.1)
        if code is not None:
            self._reply(self.proxy.not_sent(started, code), now)
        self._arm()

    def _reply(self, reply: Reply | None, now: float) -> None:
        if reply is None:
            return
        if reply.learned is not None and self.aaa is not None:
            learned = reply.learned
            self.aaa.remember(learned.nai, learned.profile, learned.client, learned.realm, learned.server, now)
            log.debug(
                "session cached from a Diameter home AAA",
                extra=fields(nai=learned.nai, session=learned.profile.session_id, server=learned.server),
            )
        if reply.failure:
            self._log_failure(reply.answer, "", reply.failure)
        else:
            # As the RADIUS path logs its decisions: an accept at debug, anything else at info.
            result = reply.answer.result_code or 0
            level = logging.DEBUG if result == ResultCode.SUCCESS else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "diameter answer relayed from home",
                    extra=fields(
                        session=reply.answer.session_id or "",
                        command=reply.answer.name,
                        result=result,
                        cached=reply.learned is not None,
                    ),
                )
        self.node.answer(reply.handle, reply.answer, now)

    @staticmethod
    def _log_failure(message: Message, nai: str, reason: str) -> None:
        log.warning(
            "diameter request not delivered home",
            extra=fields(
                session=message.session_id or "", nai=nai, result=message.result_code or 0, reason=reason[:200]
            ),
        )

    def _arm(self) -> None:
        when = self.proxy.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(when, self._expire_forwarded)

    def _expire_forwarded(self) -> None:
        self._timer = None
        now = self.clock()
        for reply in self.proxy.expire(now):
            self._reply(reply, now)
        self.transport.pump()
        self._arm()

    def _request(self, event: peer.RequestReceived, now: float) -> None:
        message = event.message
        if message.command == Command.AA_MOBILE_NODE:
            first = self.home.amr(event.handle, message, event.secure, event.peer)
            if isinstance(first, Message):
                self.node.answer(event.handle, first, now)
                return
            nai = message.text(C.USER_NAME) or ""
            realm = realm_of(nai)
            if self.proxy.serves(realm) and not self._handoff_here(message, nai, now):
                self.home.forget(event.handle)
                self._forward(event, nai, realm, now)
                return
            self._waiting[first.source] = (event.handle, now)
            self._requests[event.handle] = message
            self.inject(first.datagram, first.source, now)
        elif message.command == Command.SESSION_TERMINATION and self.proxy.serves(
            message.text(C.DESTINATION_REALM) or ""
        ):
            self._forward(event, message.text(C.USER_NAME) or "", message.text(C.DESTINATION_REALM) or "", now)
        elif message.command == Command.SESSION_TERMINATION:
            _, answer = self.home.str_(message)
            if answer.result_code == ResultCode.UNKNOWN_SESSION_ID:
                answer = peer.answer_to(message, self.identity, ResultCode.SUCCESS)
            self.node.answer(event.handle, answer, now)
        else:
            self.node.answer(event.handle, peer.answer_to(message, self.identity, ResultCode.COMMAND_UNSUPPORTED), now)


__all__ = ["RECONNECT", "WAIT", "ForeignDiameterFront"]
