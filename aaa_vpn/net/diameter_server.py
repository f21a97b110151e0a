"""The home AAA's Diameter front end (``aaa-vpn serve home --diameter-listen``):
the Mobile IPv4 application (RFC 4004) over TCP or TLS, beside RADIUS, on the
same store and sessions.

One process of the home AAA's supervised set (net/home_server.py) runs it:
a :class:`~aaa_vpn.roles.diameter_peer.DiameterNode` (capabilities exchange,
watchdogs, routing, duplicates), its transport (net/diameter.py), a
:class:`~aaa_vpn.roles.diameter_home.DiameterHome` (AMR/AMA, HAR/HAA,
STR/STA, ASR) and a :class:`~aaa_vpn.service.home.HomeService` of its own
that decides each AMR's Access-Request in the same role and store as the
RADIUS workers. Everything runs in one asyncio loop; a request is decided
synchronously in the loop (the store waits at most ``--db-busy-timeout``).

Who may connect: a peer whose Origin-Host is the name of a provisioned
RADIUS client (an FA, an HA) or one of ``--diameter-peer`` (relays such as
freeDiameter); others get 3010 DIAMETER_UNKNOWN_PEER.

Every ``housekeeping`` seconds the Diameter sessions are checked against
the store: one the operator ended (``aaa-vpn session disconnect/delete``:
gone from the store) is aborted with an ASR to its FA.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn.net.diameter import DiameterTransport
from aaa_vpn.roles import diameter_peer as peer
from aaa_vpn.roles.diameter_home import KNOWN_AVPS, Decide, DiameterHome
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService
from aaa_vpn.service.logging import fields
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.diameter import Command, Message, ResultCode
from aaa_vpn.wire.profile import VpnProfile

log = logging.getLogger("aaa_vpn.diameter")

#: Seconds between the checks for sessions the operator ended.
HOUSEKEEPING = 5.0


@dataclass(frozen=True)
class DiameterOptions:
    """How the Diameter front end runs."""

    host: str
    """Origin-Host (an FQDN)."""
    realm: str
    """Origin-Realm: the realm whose users this home AAA serves."""
    listen: str = "127.0.0.1"
    port: int = d.DIAMETER_PORT
    peers: tuple[str, ...] = ()
    """Origin-Hosts accepted besides the RADIUS clients' names (relays)."""
    plain_is_secure: bool = False
    """Plain TCP is protected below Diameter (IPsec, a loopback lab): keys may go on it."""
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    """With a certificate and key the port speaks TLS (RFC 6733 section 13);
    with a CA, peers must present a certificate it signed."""
    watchdog: float = peer.DEFAULT_WATCHDOG


def tls_context(options: DiameterOptions) -> ssl.SSLContext | None:
    if not options.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.tls_cert, options.tls_key)
    if options.tls_ca:
        context.load_verify_locations(options.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class DiameterHomeServer:
    """The Diameter front end of one home AAA process (module docstring)."""

    def __init__(self, aaa: HomeService, options: DiameterOptions, now: float | None = None) -> None:
        self.aaa = aaa
        self.options = options
        addresses: list[IPv4Address] = []
        try:
            addresses.append(IPv4Address(options.listen))
        except ValueError:
            pass
        if not addresses or addresses[0].is_unspecified:
            addresses = [IPv4Address("127.0.0.1")]
        self.identity = d.Identity(
            options.host,
            options.realm,
            tuple(addresses),
            origin_state_id=int(time.time() if now is None else now) & 0xFFFFFFFF,
        )
        self.node = peer.DiameterNode(
            self.identity,
            [d.MOBILE_IPV4_APPLICATION],
            {d.MOBILE_IPV4_APPLICATION: KNOWN_AVPS},
            options=peer.PeerOptions(watchdog_interval=options.watchdog),
            accept_peer=self._accept,
            random_u32=lambda: int.from_bytes(os.urandom(4), "big"),
            jitter=lambda: (os.urandom(1)[0] - 128) / 64.0,
        )
        self.home = DiameterHome(self.identity, aaa.provisioning.clients, os.urandom, self._mn_aaa_secret)
        self.transport = DiameterTransport(self.node, self._event, plain_is_secure=options.plain_is_secure)
        self._peers = {p.lower() for p in options.peers}

    @property
    def counters(self) -> dict[str, int]:
        out = {f"diameter.{k}": v for k, v in self.node.counters.items()}
        out.update({f"diameter.{k}": v for k, v in self.home.counters.items()})
        return out

    def _mn_aaa_secret(self, nai: str) -> Secret | None:
        """roles/diameter_home.py rule 10: the user's MN-AAA secret."""
        context = self.aaa.provisioning.user_context(nai)
        return context.user.mn_aaa_secret if context is not None else None

    def _accept(self, host: str, _realm: str) -> bool:
        if host.lower() in self._peers:
            return True
        return any(c.name.lower() == host.lower() for c in self.aaa.provisioning.clients())

    async def start(self) -> asyncio.Server:
        return await self.transport.listen(self.options.listen, self.options.port, tls_context(self.options))

    # -- events ---------------------------------------------------------------------------------
    def _event(self, event: peer.Event) -> None:
        now = time.time()
        if isinstance(event, peer.RequestReceived):
            try:
                self._request(event, now)
            except Exception:  # a bug costs this request (answered 5012), never the others
                self.node.counters["internal_errors"] += 1
                log.exception("internal error answering a Diameter request", extra=fields(peer=event.peer))
                self.home.forget(event.handle)
                answer = peer.answer_to(event.message, self.identity, ResultCode.UNABLE_TO_COMPLY)
                self.node.answer(event.handle, answer, now)
        elif isinstance(event, peer.AnswerReceived):
            self._answer(event.tag, event.message, now)
        elif isinstance(event, peer.RequestFailed):
            self._answer(event.tag, None, now)
        elif isinstance(event, peer.PeerUp):
            log.info("diameter peer up", extra=fields(peer=event.host, realm=event.realm))
        elif isinstance(event, peer.PeerDown):
            log.info("diameter peer down", extra=fields(peer=event.host or "-", reason=event.reason))
        elif isinstance(event, peer.Dropped):
            log.warning("diameter message dropped", extra=fields(reason=event.reason, detail=event.detail[:200]))

    def _decide(self, decide: Decide, now: float) -> bytes | None:
        # handle() reads the provisioning generation first, as each RADIUS batch does.
        return self.aaa.handle(decide.datagram, decide.source, now)

    def _request(self, event: peer.RequestReceived, now: float) -> None:
        message = event.message
        if message.command == Command.AA_MOBILE_NODE:
            first = self.home.amr(event.handle, message, event.secure, event.peer)
            if isinstance(first, Message):
                self.node.answer(event.handle, first, now)
                return
            outcome = self.home.decided(event.handle, self._decide(first, now), now)
            if isinstance(outcome, VpnProfile):
                if self._through_home_agent(event.handle, outcome, now):
                    return
                outcome = self.home.finish(event.handle)
            if outcome is not None:
                self.node.answer(event.handle, outcome, now)
        elif message.command == Command.SESSION_TERMINATION:
            session_id, answer = self.home.str_(message)
            if session_id is not None:
                self.aaa.delete(session_id, now)
                log.info("diameter session ended", extra=fields(session=session_id, peer=event.peer))
            self.node.answer(event.handle, answer, now)
        else:
            self.node.answer(
                event.handle,
                peer.answer_to(message, self.identity, ResultCode.COMMAND_UNSUPPORTED),
                now,
            )

    def _through_home_agent(self, handle: int, view: VpnProfile, now: float) -> bool:
        """roles/diameter_home.py rule 8: True if a HAR went out."""
        ha = self.home.home_agent_client(view.home_agent)
        if ha is None or self.node.peer(ha.name) is None:
            return False
        decide = self.home.ha_request(handle, ha)
        if decide is None:
            return False
        har = self.home.har(handle, ha, self._decide(decide, now))
        if har is None:
            return False
        self.node.send_request(har, now, tag=("har", handle))
        return True

    def _answer(self, tag: object, message: Message | None, now: float) -> None:
        if isinstance(tag, tuple) and tag[0] == "har":
            handle = tag[1]
            ama = self.home.haa(handle, message)
            if ama is not None:
                self.node.answer(handle, ama, now)
        elif isinstance(tag, tuple) and tag[0] == "asr":
            code = message.result_code if message is not None else None
            log.info("diameter session aborted", extra=fields(session=tag[1], result=code))

    # -- housekeeping ---------------------------------------------------------------------------
    def check_sessions(self, now: float) -> int:
        """Send an ASR for each Diameter session the store no longer has; returns how many."""
        peers = {s.diameter_id: s.peer for s in self.home.sessions.values()}
        asrs = self.home.ended(now, lambda session_id: self.aaa.sessions.session(session_id) is None)
        for asr in asrs:
            session_id = asr.session_id or ""
            self.node.send_request(asr, now, tag=("asr", session_id), via=peers.get(session_id, ""))
        if asrs:
            self.transport.pump()
        return len(asrs)


def serve_diameter(aaa: HomeService, options: DiameterOptions) -> int:
    """Run the Diameter front end until SIGTERM/SIGINT (a process of its own)."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    server = DiameterHomeServer(aaa, options)

    async def main() -> None:
        listener = await server.start()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        host, port = listener.sockets[0].getsockname()[:2]
        log.info(
            "diameter listening",
            extra=fields(
                address=f"{host}:{port}",
                origin_host=options.host,
                realm=options.realm,
                tls=bool(options.tls_cert),
            ),
        )
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING)
            except TimeoutError:
                pass
            try:
                server.check_sessions(time.time())
            except Exception:
                log.exception("diameter housekeeping failed")
        await server.transport.close()

    try:
        loop.run_until_complete(main())
    finally:
        log.info(
            "diameter stopped", extra=fields(**{k.replace(".", "_"): v for k, v in sorted(server.counters.items())})
        )
        loop.close()
        aaa.store.close()
    return 0


def options_from_settings(settings: Any) -> DiameterOptions:
    """The front end's options from ``serve home``'s settings (service/config.py)."""
    listen = settings.diameter_listen
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        host, port_text = listen, str(d.DIAMETER_PORT)
    realm = settings.diameter_realm
    return DiameterOptions(
        host=settings.diameter_host or f"aaa.{realm}",
        realm=realm,
        listen=host,
        port=int(port_text),
        peers=tuple(settings.diameter_peers or ()),
        plain_is_secure=settings.diameter_plain_is_secure,
        tls_cert=str(settings.diameter_tls_cert) if settings.diameter_tls_cert else None,
        tls_key=str(settings.diameter_tls_key) if settings.diameter_tls_key else None,
        tls_ca=str(settings.diameter_tls_ca) if settings.diameter_tls_ca else None,
    )


__all__ = ["DiameterHomeServer", "DiameterOptions", "options_from_settings", "serve_diameter", "tls_context"]
