"""``aaa-vpn agent fa|ha|gw`` and ``aaa-vpn mn``: the asyncio drivers of the
sans-IO mobility agents (:mod:`aaa_vpn.roles.fa`, ``ha``, ``gw``) and a
one-shot driver of the mobile-node simulator (:mod:`aaa_vpn.roles.mn`).

An agent process owns:

* a Mobile IP UDP socket bound to ``(address, mip_port)`` (RFC 5944 section
  1.8: 434 by default), which receives and sends every Mobile IP message --
  or, with ``--mip-socket-fd``, the socket the starting process bound there
  and handed over (the demo and the labs: a port they merely probed could be
  taken before the agent binds it);
* for an FA or HA, a RADIUS client socket bound to ``(address, 0)``: the home
  AAA recognises its clients by their source address, the port is ephemeral;
* for an FA or HA, a Dynamic Authorization socket bound to
  ``(address, coa_port)`` (RFC 5176: 3799 by default; 0: none; inherited
  with ``--coa-socket-fd``) for the Disconnect-/CoA-Requests of its AAA
  servers (:mod:`aaa_vpn.roles.coa`), bound before the ephemeral RADIUS
  socket, which could otherwise take its port;
* one timer following the role's ``get_timer()``;
* a :class:`~aaa_vpn.sa.memory.MemoryBackend` on which an
  :class:`~aaa_vpn.service.agents.SaExecutor` carries out the role's
  InstallPaths / DeletePaths events (all or nothing) and reports back with
  ``paths_installed``.

Time: the roles take ``now`` as wall-clock seconds (``time.time()``), because
the Mobile IP Identification is a timestamp (RFC 5944 section 5.7) and the
agents of a deployment compare each other's clocks. Timers are armed on the
loop with ``call_later(when - time.time())``.

Order of work after every input (a datagram or the timer): the role's events
are carried out first (SAs installed/removed, decisions logged), then the
state file is rewritten, and only then are the role's datagrams sent. So when
a node downstream sees a message, the sender's state file already shows what
led to it -- tests and the demo rely on that.

Signals: SIGTERM/SIGINT stop the agent gracefully (sockets closed, counters
logged, the state file marked ``running: false``); SIGUSR1 logs the counters
and the SA table (owner, role, peer, SPIs -- never keys).

The state file (``--state-file``, format in docs/agents.md) is JSON written
with an atomic rename: the node, its SAs without keys, its visitors (FA) or
bindings (HA, GW), its counters and the last events (messages sent and
received, SAs installed and removed, registrations decided).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import json
import logging
import os
import select
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn.net.datapath import VisitorRoutes
from aaa_vpn.net.metrics_server import MetricsError, MetricsHttp, bind_metrics
from aaa_vpn.net.radsec import RadsecConnector, RadsecServer, TlsError, TlsFiles, client_context
from aaa_vpn.net.systemd_notify import Notifier, keep_watchdog
from aaa_vpn.roles.accounting_client import AccountedSession, AccountingReporter, TerminateCause, Usage, usage_of
from aaa_vpn.roles.agent import Address, Channel, RegistrationDone
from aaa_vpn.roles.diameter_client import HaDiameterClient
from aaa_vpn.roles.fa import FaConfig, ForeignAgent
from aaa_vpn.roles.gw import CorrespondentGateway, GwConfig
from aaa_vpn.roles.ha import HaConfig, HomeAgent, fa_owner
from aaa_vpn.roles.mn import MnConfig, MobileNode, give_up_after
from aaa_vpn.roles.radius_client import RadiusClient, ServerConfig
from aaa_vpn.sa.base import InstalledPath, SaBackend, SaError
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.service.agent_config import AgentSettings, role_config
from aaa_vpn.service.agent_metrics import AgentMetrics
from aaa_vpn.service.agents import (
    SaExecutor,
    binding_status_name,
    finish_installs,
    path_fields,
    reply_code_name,
    run_events,
)
from aaa_vpn.service.journal import JournalError, Recovery, decode_journal, encode_journal, recover, write_journal
from aaa_vpn.service.logging import configure_logging, fields
from aaa_vpn.service.metrics import Snapshot
from aaa_vpn.wire import coa, mip
from aaa_vpn.wire.radius import ACCOUNTING_RESPONSE

log = logging.getLogger("aaa_vpn.agent")

RoleAgent = ForeignAgent | HomeAgent | CorrespondentGateway

_BATCH = 64  # datagrams per wake-up and socket before yielding to the loop
_FINAL_USAGE_KEPT = 4096  # counters of removed SA owners kept for their accounting Stop
#: RegistrationDone details that say why a registration ended (accounting Stop).
_ENDINGS = {
    "deregistration": TerminateCause.USER_REQUEST,
    "deregistered": TerminateCause.USER_REQUEST,
    "disconnected by AAA": TerminateCause.ADMIN_RESET,
    "revoked by the FA": TerminateCause.LOST_SERVICE,
}
_EVENTS_KEPT = 500  # events kept for the state file
_STATE_VERSION = 1
_RADIUS_CODES = {
    1: "Access-Request",
    2: "Access-Accept",
    3: "Access-Reject",
    4: "Accounting-Request",
    5: "Accounting-Response",
    11: "Access-Challenge",
    12: "Status-Server",
}


class AgentError(Exception):
    """The agent cannot start: address in use or not local, state file not writable, ..."""


# -- descriptions without secrets ------------------------------------------------------------------


def path_json(installed: InstalledPath) -> dict[str, Any]:
    """One installed path as the state file shows it: never a key."""
    path = installed.path
    return {
        "owner": installed.owner,
        "role": path.role.name,
        "local": str(path.local),
        "peer": str(path.peer),
        "spi_in": path.spi_in,
        "spi_out": path.spi_out,
        "esp_transform": path.esp_transform.value,
        "key_mode": path.key_mode.value,
        "local_ts": [str(n) for n in path.local_ts],
        "remote_ts": [str(n) for n in path.remote_ts],
        "lifetime": path.lifetime,
        "dscp": path.qos.dscp if path.qos is not None else None,
        "gateway_mode": path.gateway_mode.value if path.gateway_mode is not None else None,
    }


_KEY_REPLIES = {mip.ExtensionType.MN_FA_KEY_REPLY: "mn_fa", mip.ExtensionType.MN_HA_KEY_REPLY: "mn_ha"}
_AUTHENTICATIONS = {
    mip.ExtensionType.MN_HA_AUTH: "mn_ha",
    mip.ExtensionType.MN_FA_AUTH: "mn_fa",
    mip.ExtensionType.FA_HA_AUTH: "fa_ha",
}


def _authentications(extensions: tuple[mip.Extension, ...]) -> list[dict[str, Any]]:
    """The MN-HA, MN-FA and FA-HA extensions of a message: which, the SPI and
    the authenticator's length (16 octets HMAC-MD5, 20 HMAC-SHA-1), never its value."""
    return [
        {"extension": _AUTHENTICATIONS[e.type], "spi": e.spi, "octets": len(e.authenticator)}
        for e in extensions
        if isinstance(e, mip.AuthenticationExtension)
    ]


def describe_message(channel: Channel, data: bytes) -> dict[str, Any]:
    """What a datagram is, for logs and the state file: message name and the
    fields that say what it does (never an authenticator or a key; of its
    authentication extensions, the SPI and length)."""
    if channel is Channel.RADIUS or channel is Channel.ACCOUNTING:
        code = data[0] if data else -1
        return {"message": _RADIUS_CODES.get(code, f"RADIUS code {code}")}
    if channel is Channel.COA:
        code = data[0] if data else -1
        return {"message": coa.CODE_NAMES.get(code, f"RADIUS code {code}")}
    try:
        message = mip.decode_message(data)
    except mip.MipDecodeError as exc:
        return {"message": "malformed Mobile IP message", "error": str(exc)}
    if isinstance(message, mip.RegistrationRequest):
        nai = next((e.nai for e in message.extensions if isinstance(e, mip.NaiExtension)), "")
        return {
            "message": "Registration Request",
            "nai": nai,
            "lifetime": message.lifetime,
            "home_address": str(message.home_address),
            "care_of_address": str(message.care_of_address),
            "authentication": _authentications(message.extensions),
        }
    if isinstance(message, mip.RegistrationReply):
        described: dict[str, Any] = {
            "message": "Registration Reply",
            "code": int(message.code),
            "code_name": reply_code_name(int(message.code)),
            "lifetime": message.lifetime,
            "home_address": str(message.home_address),
            "authentication": _authentications(message.extensions),
        }
        # RFC 3957 Key Generation Nonce Replies: which keys, never the nonce.
        keys = [_KEY_REPLIES[e.type] for e in message.extensions if isinstance(e, mip.KeyReplyExtension)]
        if keys:
            described["keys"] = keys
        return described
    if isinstance(message, mip.BindingUpdate):
        return {
            "message": "Binding Update",
            "lifetime": message.lifetime,
            "home_address": str(message.home_address),
            "care_of_address": str(message.care_of_address),
        }
    if isinstance(message, mip.BindingRequest):
        return {"message": "Binding Request", "home_address": str(message.home_address)}
    if isinstance(message, mip.BindingAcknowledge):
        return {
            "message": "Binding Acknowledge",
            "status": int(message.status),
            "status_name": binding_status_name(int(message.status)),
            "lifetime": message.lifetime,
            "home_address": str(message.home_address),
        }
    words = "".join(f" {c}" if c.isupper() else c for c in type(message).__name__).strip()
    return {"message": words}


def _bind(address: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AgentError(f"cannot bind the {what} socket to {address}:{port}: address already in use") from None
        if exc.errno == errno.EACCES:
            raise AgentError(
                f"cannot bind the {what} socket to {address}:{port}: permission denied"
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise AgentError(
                f"cannot bind the {what} socket to {address}:{port}: not an address of this host"
            ) from None
        raise AgentError(f"cannot bind the {what} socket to {address}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _socket(address: str, port: int, what: str, inherited: int | None) -> socket.socket:
    """The ``what`` socket on ``(address, port)``: bound here, or the one the
    starting process bound and handed over as file descriptor ``inherited``
    (``--mip-socket-fd``, ``--coa-socket-fd``), which must be bound there."""
    if inherited is None:
        return _bind(address, port, what)
    try:
        sock = socket.socket(fileno=inherited)
    except OSError as exc:
        raise AgentError(f"the inherited {what} socket (file descriptor {inherited}): {exc.strerror}") from None
    if sock.family != socket.AF_INET or sock.type != socket.SOCK_DGRAM:
        sock.detach()  # not ours to close
        raise AgentError(f"the inherited {what} socket (file descriptor {inherited}) is not an IPv4 UDP socket")
    bound = sock.getsockname()
    if bound != (address, port):
        sock.detach()
        raise AgentError(
            f"the inherited {what} socket (file descriptor {inherited}) is bound to {bound[0]}:{bound[1]},"
            f" not {address}:{port}"
        )
    sock.setblocking(False)
    return sock


def build_backend(settings: AgentSettings) -> SaBackend:
    """The SA backend the settings name (docs/sa-backends.md); AgentError if it
    cannot be reached (charon down, no netlink)."""
    if settings.backend == "memory":
        return MemoryBackend(settings.address)
    try:
        if settings.backend == "strongswan":
            from aaa_vpn.sa.strongswan import StrongSwanBackend, initiator_for

            assert settings.vici_socket is not None  # checked by AgentSettings
            kind = {"fa": "fa", "ha": "ha", "gw": "gw"}[settings.role]
            backend: SaBackend = StrongSwanBackend(
                settings.address,
                settings.vici_socket,
                initiator=initiator_for(kind),  # type: ignore[arg-type]
                timeout=settings.ike_timeout,
                route_into=settings.route_into,
            )
        elif settings.backend == "userspace":
            from aaa_vpn.sa.userspace import UserspaceBackend

            backend = UserspaceBackend(settings.address, tun_name=settings.tun_name)
        else:
            from aaa_vpn.sa.xfrm import XfrmBackend

            backend = XfrmBackend(settings.address, table=settings.xfrm_table)
        backend.paths()  # reachable now, or a clear error at start rather than at the first registration
    except SaError as exc:
        raise AgentError(f"SA backend {settings.backend}: {exc}") from None
    return backend


def build_accounting(settings: AgentSettings) -> AccountingReporter | None:
    """An FA's or HA's accounting reporter, if ``--accounting``: its AAA
    servers at ``--accounting-port`` (default each one's port + 1, where
    FreeRADIUS and ``serve home`` listen), the same secrets and pool."""
    if not settings.accounting or settings.role not in ("fa", "ha"):
        return None
    port = settings.accounting_port
    servers = [
        # RadSec carries accounting on the same connection (RFC 6614 section 2.1)
        ServerConfig(s.address, s.port, s.secret, f"{s.name}/acct", s.transport, s.tls_name)
        if s.transport == "radsec"
        else ServerConfig(s.address, port or s.port + 1, s.secret, f"{s.name}/acct")
        for s in settings.aaa_servers
        if port or s.port < 65535 or s.transport == "radsec"
    ]
    if not servers:
        return None
    client = RadiusClient.for_agent(settings, servers=servers)
    return AccountingReporter(
        client,
        nas_ip_address=settings.address,
        nas_identifier=settings.node,
        interim_interval=settings.accounting_interim,
    )


def build_role(settings: AgentSettings) -> RoleAgent:
    """The sans-IO agent the settings describe."""
    config = role_config(settings)
    if isinstance(config, FaConfig):
        return ForeignAgent(config)
    if isinstance(config, HaConfig):
        return HomeAgent(config)
    assert isinstance(config, GwConfig)
    return CorrespondentGateway(config)


# -- one agent -------------------------------------------------------------------------------------


class AgentNode:
    """One agent with its sockets, SA backend, state file and event log.

    :meth:`open` binds the sockets; :meth:`serve` runs until ``stop`` is set;
    :meth:`close` releases everything. Without asyncio, :meth:`receive`,
    :meth:`fire_timer` and :meth:`service` drive it by hand."""

    def __init__(
        self, settings: AgentSettings, clock: Callable[[], float] = time.time, backend: SaBackend | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.agent: RoleAgent = build_role(settings)
        self.backend: SaBackend = backend if backend is not None else build_backend(settings)
        self.executor = SaExecutor(self.backend, settings.node)
        self.sockets: dict[Channel, socket.socket] = {}
        #: RadSec (docs/radsec.md): the connections to the AAA servers of
        #: transport ``radsec``, made when serving starts.
        self.radsec: RadsecConnector | None = None
        self._radsec_context: ssl.SSLContext | None = None
        self._rearm: Callable[[], None] = lambda: None
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=_EVENTS_KEPT)
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = clock()
        self.running = False
        self._sequence = 0
        self._dirty = True
        self._in_flight_written = -1  # the state file's in_flight, to rewrite it when that changes
        self._record_messages = settings.state_file is not None or log.isEnabledFor(logging.DEBUG)
        self._journaled: dict[str, Any] | None = None  # the state last written to the journal
        self.routes = (
            VisitorRoutes(keep_on_close=settings.journal is not None)
            if settings.data_path and settings.role == "fa"
            else None
        )
        self.recovery: Recovery | None = None
        self.metrics = AgentMetrics(settings.role, settings.backend, self.started)
        self.accounting = build_accounting(settings)
        self._final_usage: collections.OrderedDict[str, Usage] = collections.OrderedDict()
        self._accounting_dirty = True
        self._endings: dict[str, TerminateCause] = {}
        if self.accounting is not None:
            self.executor.before_delete = self._remember_usage

    # -- life cycle ---------------------------------------------------------------------------------
    def open(self) -> None:
        settings = self.settings
        address = str(settings.address)
        try:
            self.sockets[Channel.MIP] = _socket(address, settings.mip_port, "Mobile IP", settings.mip_socket_fd)
            if settings.role in ("fa", "ha"):
                if settings.coa_port:  # bound before the ephemeral RADIUS socket, which could take its port
                    self.sockets[Channel.COA] = _socket(address, settings.coa_port, "CoA", settings.coa_socket_fd)
                self.sockets[Channel.RADIUS] = _bind(address, 0, "RADIUS client")
                self._radsec_context = self._radsec_tls()
                if self.accounting is not None:
                    self.sockets[Channel.ACCOUNTING] = _bind(address, 0, "RADIUS accounting client")
            self.running = True
            self._dirty = True
            self.recover()
            if self.accounting is not None:
                self.accounting.starting(self.clock(), recovered=bool(self._accounted()))
                self.service()
            self.write_state()  # also the sign that the agent is ready
        except AgentError:
            self.running = False
            self.close_sockets()
            raise

    def close_sockets(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    def close(self) -> None:
        self.running = False
        self.close_sockets()
        if self.routes is not None:
            self.routes.close()
        self.backend.close()
        self._dirty = True
        try:
            self.write_state()
        except AgentError as exc:
            log.warning("cannot write the final state file", extra=fields(node=self.settings.node, error=str(exc)))

    # -- restart (docs/agents.md, "Restart") ---------------------------------------------------------------
    def recover(self) -> None:
        """Carry on from the journal (if any) with what the backend holds:
        keep the SAs of live state, remove the others, end live state whose
        SAs are gone (aaa_vpn.service.journal, rule 4)."""
        path = self.settings.journal
        if path is None:
            return
        node, now = self.settings.node, self.clock()
        state: dict[str, Any] | None = None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise AgentError(f"cannot read the journal {path}: {exc.strerror}") from None
        if data is not None:
            try:
                state = decode_journal(data, self.settings.role, self.settings.address, self.settings.credential)
            except JournalError as exc:
                # Never half-read: start without it (every SA the backend holds
                # goes), and keep the file for a look.
                self.counters["journal.unreadable"] += 1
                aside = path.with_name(path.name + ".unreadable")
                log.error(
                    "journal unreadable, starting without it",
                    extra=fields(node=node, journal=str(path), error=str(exc), moved_to=str(aside)),
                )
                try:
                    os.replace(path, aside)
                except OSError:
                    pass
        self.recovery = recover(self.agent, self.backend, state, now)
        for error in self.recovery.errors:
            log.warning("cannot remove a stale SA", extra=fields(node=node, error=error))
        log.info("recovered from the journal", extra=fields(node=node, **self.recovery.to_json()))
        self._note("recovered", now, **self.recovery.to_json())
        self._journaled = None
        self.service()

    def save_journal(self) -> None:
        """Write the journal if the live state changed since the last write."""
        path = self.settings.journal
        if path is None or not self.running:
            return
        state = self.agent.export_state()
        if state == self._journaled:
            return
        data = encode_journal(state, self.settings.role, self.settings.address, self.settings.credential, self.clock())
        try:
            write_journal(path, data)
        except JournalError as exc:
            self.counters["journal.write_errors"] += 1
            log.warning("cannot write the journal", extra=fields(node=self.settings.node, error=str(exc)))
            return
        self._journaled = state

    # -- inputs -------------------------------------------------------------------------------------
    def receive(self, channel: Channel) -> None:
        """Drain up to a batch of datagrams from ``channel``'s socket, then service."""
        sock = self.sockets.get(channel)
        if sock is None:
            return
        for _ in range(_BATCH):
            try:
                data, source = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier sendto
                self.counters["receive_errors"] += 1
                log.debug("recvfrom failed", extra=fields(node=self.settings.node, error=str(exc)))
                continue
            now = self.clock()
            address: Address = (str(source[0]), int(source[1]))
            self.counters[f"received.{channel.value}"] += 1
            self.metrics.received(channel.value, data, address, now)
            if self._record_messages:
                self._note(
                    "received",
                    now,
                    channel=channel.value,
                    peer=f"{address[0]}:{address[1]}",
                    **describe_message(channel, data),
                )
            try:
                if channel is Channel.ACCOUNTING:
                    if self.accounting is not None:
                        self.accounting.receive_datagram(data, address, now)
                else:
                    self.agent.receive_datagram(channel, data, address, now)
            except Exception:  # a bug must cost this datagram, never the agent
                self.counters["dropped.internal_error"] += 1
                log.exception("internal error handling a datagram", extra=fields(node=self.settings.node))
        self.service()

    def _radsec_connector(self) -> RadsecConnector | None:
        """The connector to the AAA servers of transport ``radsec``, if any."""
        settings = self.settings
        servers = [
            RadsecServer((s.address, s.port), s.tls_name, s.name)
            for s in settings.aaa_servers
            if s.transport == "radsec"
        ]
        if not servers:
            return None
        context = self._radsec_context or self._radsec_tls()
        assert context is not None
        return RadsecConnector(servers, context, self._radsec_packet, local_address=str(settings.address))

    def _radsec_tls(self) -> ssl.SSLContext | None:
        """The RadSec client context, if any server needs one; AgentError if the files are bad."""
        settings = self.settings
        if not any(s.transport == "radsec" for s in settings.aaa_servers):
            return None
        assert settings.tls_cert is not None and settings.tls_key is not None and settings.tls_ca is not None
        try:
            return client_context(TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_ca))
        except TlsError as exc:
            raise AgentError(str(exc)) from None

    def _radsec_packet(self, data: bytes, address: Address) -> None:
        """A packet from a RadSec server: handled as a datagram from it."""
        now = self.clock()
        self.counters[f"received.{Channel.RADIUS.value}"] += 1
        if self._record_messages:
            self._note(
                "received",
                now,
                channel=Channel.RADIUS.value,
                peer=f"{address[0]}:{address[1]}",
                **describe_message(Channel.RADIUS, data),
            )
        try:
            if data[0] == ACCOUNTING_RESPONSE and self.accounting is not None:
                # Accounting shares the connection (RFC 6614 section 2.1): its answers go to its client.
                self.accounting.receive_datagram(data, address, now)
            else:
                self.agent.receive_datagram(Channel.RADIUS, data, address, now)
        except Exception:  # a bug must cost this packet, never the agent
            self.counters["dropped.internal_error"] += 1
            log.exception("internal error handling a datagram", extra=fields(node=self.settings.node))
        self.service()
        self._rearm()

    def get_timer(self) -> float | None:
        """When :meth:`fire_timer` must be called next (the role's and accounting's timers)."""
        when = self.agent.get_timer()
        if self.accounting is not None:
            other = self.accounting.get_timer()
            if other is not None and (when is None or other < when):
                when = other
        return when

    def fire_timer(self, now: float) -> None:
        try:
            self.agent.handle_timer(now)
            if self.accounting is not None:
                self.accounting.handle_timer(now, self._usage)
        except Exception:
            self.counters["timer_errors"] += 1
            log.exception("internal error in a timer", extra=fields(node=self.settings.node))
        self.service()

    # -- outputs ------------------------------------------------------------------------------------
    def service(self) -> None:
        """Carry out the role's events, write the state file, send its datagrams;
        then, if installs were left negotiating with their peers (the HA on
        strongSwan: its Binding Updates are out meanwhile), wait for them and
        do it all again with their outcome."""
        self._service_once()
        while self.executor.pending:
            finish_installs(self.agent, self.executor, self.clock(), self._note)
            self._service_once()

    def _service_once(self) -> None:
        now = self.clock()
        self._run_events(now)
        if self.routes is not None and isinstance(self.agent, ForeignAgent):
            self.routes.sync(self.agent.node_routes())
        if self.accounting is not None:
            self._account(now)
        # Before anything leaves: an answer is never sent for state the
        # journal would not bring back after a crash.
        self.save_journal()
        datagrams = self.agent.datagrams_to_send(now)
        if self._record_messages:
            for datagram in datagrams:
                self._note(
                    "sent",
                    now,
                    channel=datagram.channel.value,
                    peer=f"{datagram.address[0]}:{datagram.address[1]}",
                    **describe_message(datagram.channel, datagram.data),
                )
        if self.settings.state_file is not None and self.agent.exchanges() != self._in_flight_written:
            self._dirty = True  # an exchange ended or began without an event (a withdrawal given up, say)
        if self._dirty:
            try:
                self.write_state()
            except AgentError as exc:
                self.counters["state_file_errors"] += 1
                log.warning("cannot write the state file", extra=fields(node=self.settings.node, error=str(exc)))
        for datagram in datagrams:
            if (
                datagram.channel is Channel.RADIUS
                and self.radsec is not None
                and self.radsec.send(datagram.data, datagram.address)
            ):
                self.counters[f"sent.{datagram.channel.value}"] += 1
                continue
            sock = self.sockets.get(datagram.channel)
            if sock is None:
                continue
            try:
                sock.sendto(datagram.data, datagram.address)
                self.counters[f"sent.{datagram.channel.value}"] += 1
                self.metrics.sent(datagram.channel.value, datagram.data, datagram.address, now)
            except OSError as exc:
                self.counters["send_errors"] += 1
                log.warning(
                    "sendto failed",
                    extra=fields(node=self.settings.node, destination=f"{datagram.address[0]}", error=str(exc)),
                )

    def _run_events(self, now: float) -> None:
        code_name = binding_status_name if isinstance(self.agent, CorrespondentGateway) else reply_code_name
        for event in run_events(self.agent, self.executor, now, self._note, code_name):
            if isinstance(event, RegistrationDone):
                self.counters["decisions"] += 1
                self._accounting_dirty = True
                ending = _ENDINGS.get(event.detail)
                if ending is not None and event.nai:
                    self._endings[event.nai] = ending

    # -- accounting (roles/accounting_client.py) ------------------------------------------------------
    def _accounted(self) -> list[AccountedSession]:
        """The registrations accounting sees: an FA's visitors, an HA's bindings."""
        agent = self.agent
        if isinstance(agent, ForeignAgent):
            return [
                AccountedSession(v.owner, v.nai, v.session_id, v.home_address, v.expires, (v.owner,))
                for v in agent.visitors.values()
            ]
        if isinstance(agent, HomeAgent):
            sessions = []
            for b in agent.bindings.values():
                owner = fa_owner(b.profile)
                sessions.append(AccountedSession(owner, b.nai, b.session_id, b.home_address, b.expires, (owner,)))
            return sessions
        return []

    def _account(self, now: float) -> None:
        accounting = self.accounting
        assert accounting is not None
        if self._accounting_dirty:
            self._accounting_dirty = False
            accounting.observe(self._accounted(), now, self._usage, self._endings)
            self._endings.clear()
        sock = self.sockets.get(Channel.ACCOUNTING)
        for data, address in accounting.datagrams_to_send(now):
            if self.radsec is not None and self.radsec.send(data, address):
                self.counters["sent.accounting"] += 1
                continue
            if sock is None:
                continue
            try:
                sock.sendto(data, address)
                self.counters["sent.accounting"] += 1
            except OSError as exc:
                self.counters["send_errors"] += 1
                log.warning(
                    "sendto failed", extra=fields(node=self.settings.node, destination=address[0], error=str(exc))
                )

    def _live_usage(self, owner: str) -> Usage | None:
        try:
            return usage_of((c.direction.value, c.packets, c.octets) for c in self.backend.counters(owner))
        except SaError:
            return None

    def _usage(self, owners: tuple[str, ...]) -> Usage | None:
        """The SA counters of ``owners``: live, or as they were when removed."""
        total: Usage | None = None
        for owner in owners:
            used = self._final_usage.pop(owner, None) if owner in self._final_usage else self._live_usage(owner)
            if used is not None:
                total = used if total is None else total + used
        return total

    def _remember_usage(self, owner: str) -> None:
        """Before an owner's SAs go: keep their counters for its Stop."""
        self._accounting_dirty = True
        used = self._live_usage(owner)
        if used is None:
            return
        self._final_usage[owner] = used
        self._final_usage.move_to_end(owner)
        while len(self._final_usage) > _FINAL_USAGE_KEPT:
            self._final_usage.popitem(last=False)

    def _note(self, kind: str, now: float, **values: Any) -> None:
        self._sequence += 1
        self.events.append({"seq": self._sequence, "time": round(now, 6), "kind": kind, **values})
        self._dirty = True
        if kind in ("sent", "received"):
            log.debug(f"{kind} {values.get('message', '')}", extra=fields(node=self.settings.node, **values))

    # -- state ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The state file's document (docs/agents.md)."""
        agent = self.agent
        coa_port = self._bound_port(Channel.COA, self.settings.coa_port) if self.settings.role in ("fa", "ha") else None
        document: dict[str, Any] = {
            "version": _STATE_VERSION,
            "node": self.settings.node,
            "role": self.settings.role,
            "address": str(self.settings.address),
            "mip_port": self._bound_port(Channel.MIP, self.settings.mip_port),
            "coa_port": coa_port,
            "pid": os.getpid(),
            "running": self.running,
            "started": round(self.started, 6),
            "updated": round(self.clock(), 6),
            "sas": [path_json(p) for p in self.backend.paths()] if self.running else [],
        }
        if isinstance(agent, ForeignAgent):
            document["visitors"] = (
                [
                    {
                        "nai": v.nai,
                        "home_address": str(v.home_address),
                        "home_agent": str(v.home_agent),
                        "mobile_node": f"{v.source[0]}:{v.source[1]}",
                        "session_id": v.session_id,
                        "owner": v.owner,
                        "expires": round(v.expires, 3),
                    }
                    for v in agent.visitors.values()
                ]
                if self.running
                else []
            )
            document["forwarding"] = (
                [
                    {
                        "nai": f.nai,
                        "home_address": str(f.home_address),
                        "new_fa": str(f.new_fa),
                        "owner": f.owner,
                        "expires": round(f.expires, 3),
                    }
                    for f in agent.forwarding.values()
                ]
                if self.running
                else []
            )
        elif isinstance(agent, HomeAgent):
            document["bindings"] = (
                [
                    {
                        "nai": b.nai,
                        "home_address": str(b.home_address),
                        "care_of_address": str(b.care_of_address),
                        "session_id": b.session_id,
                        "epoch": b.profile.epoch,
                        "expires": round(b.expires, 3),
                    }
                    for b in agent.bindings.values()
                ]
                if self.running
                else []
            )
        else:
            document["bindings"] = (
                [
                    {
                        "home_address": str(b.home_address),
                        "care_of_address": str(b.care_of_address),
                        "home_agent": str(b.home_agent),
                        "owner": b.owner,
                        "session_id": b.session[0] if b.session is not None else None,
                        "epoch": b.session[1] if b.session is not None else None,
                        "lifetime": b.lifetime,
                        "expires": round(b.expires, 3),
                        "binding_requests_sent": b.requests_sent,
                        "replaced_owner": b.replaced.owner if b.replaced is not None else None,
                    }
                    for b in agent.bindings.values()
                ]
                if self.running
                else []
            )
        document["in_flight"] = agent.exchanges() if self.running else 0
        counters = agent.counters + self.counters
        if self.accounting is not None:
            counters.update({f"accounting.{k}": v for k, v in self.accounting.counters.items()})
        document["counters"] = dict(sorted(counters.items()))
        document["events"] = list(self.events)
        return document

    def snapshot(self) -> Snapshot:
        """The agent's metrics now (docs/metrics.md)."""
        agent = self.agent
        entries = len(agent.visitors) if isinstance(agent, ForeignAgent) else len(agent.bindings)
        clients: dict[str, RadiusClient] = {}
        if isinstance(agent, ForeignAgent | HomeAgent):
            radius = agent.radius
            if isinstance(radius, HaDiameterClient):
                radius = radius.radius  # its RADIUS side; the Diameter peer is counted apart
            if isinstance(radius, RadiusClient):
                clients["radius_client"] = radius
        counters = dict(agent.counters + self.counters)
        if self.accounting is not None:
            clients["accounting_client"] = self.accounting.client
            counters.update({f"accounting.{k}": v for k, v in self.accounting.counters.items()})
        backend = self.backend if self.running else None
        return self.metrics.snapshot(counters, entries, backend, clients, self.clock())

    def _bound_port(self, channel: Channel, configured: int) -> int:
        """The port ``channel``'s socket is bound to (the configured one when closed)."""
        sock = self.sockets.get(channel)
        return int(sock.getsockname()[1]) if sock is not None else configured

    def write_state(self) -> None:
        """Write the state file (if any) atomically: a temporary file, then rename."""
        self._dirty = False
        path = self.settings.state_file
        if path is None:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        document = self.state()
        self._in_flight_written = document["in_flight"]
        try:
            temporary.write_text(json.dumps(document, indent=1) + "\n")
            os.replace(temporary, path)
        except OSError as exc:
            try:
                temporary.unlink()
            except OSError:
                pass
            raise AgentError(f"cannot write the state file {path}: {exc.strerror}") from None

    def log_table(self, message: str = "counters") -> None:
        """Counters, then one line per installed path (owner, role, peer, SPIs; never keys)."""
        node = self.settings.node
        counters = {k.replace(".", "_"): v for k, v in sorted((self.agent.counters + self.counters).items())}
        log.info(message, extra=fields(node=node, **counters))
        paths = self.backend.paths() if self.running else []
        entries = len(getattr(self.agent, "visitors", {}) or getattr(self.agent, "bindings", {}))
        log.info("SA table", extra=fields(node=node, paths=len(paths), visitors_or_bindings=entries))
        for installed in paths:
            log.info("SA", extra=fields(node=node, owner=installed.owner, **path_fields(installed.path)))

    # -- asyncio ------------------------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        timer_at: float | None = None

        def arm() -> None:
            nonlocal timer, timer_at
            when = self.get_timer()
            if when == timer_at and timer is not None:
                return
            if timer is not None:
                timer.cancel()
            timer, timer_at = None, when
            if when is not None:
                timer = loop.call_later(max(0.0, when - self.clock()), fired, when)

        def fired(when: float) -> None:
            nonlocal timer, timer_at
            timer, timer_at = None, None
            # call_later runs on the loop's monotonic clock: never hand the role
            # a "now" before the time it asked for.
            self.fire_timer(max(self.clock(), when))
            arm()

        def readable(channel: Channel) -> None:
            self.receive(channel)
            arm()

        self._rearm = arm
        self.radsec = self._radsec_connector()
        for channel, sock in self.sockets.items():
            loop.add_reader(sock.fileno(), readable, channel)
        link = self._diameter_link(arm)
        self.service()
        arm()
        try:
            await stop.wait()
        finally:
            if self.radsec is not None:
                self.radsec.close()
                self.radsec = None
            for sock in self.sockets.values():
                loop.remove_reader(sock.fileno())
            if timer is not None:
                timer.cancel()
            if link is not None:
                await link.close()

    def _diameter_link(self, arm: Callable[[], None]) -> Any:
        """An FA with ``--aaa-protocol diameter``: its connection (net/diameter_agent.py)."""
        client = getattr(self.agent, "diameter", None)
        server = self.settings.diameter_server
        if client is None or not server:
            return None
        from aaa_vpn.net.diameter_agent import DiameterLink, client_tls

        def answers() -> None:
            try:
                self.agent.aaa_events(self.clock())  # type: ignore[union-attr]
            except Exception:  # a bug must cost these answers, never the agent
                self.counters["dropped.internal_error"] += 1
                log.exception("internal error handling Diameter answers", extra=fields(node=self.settings.node))
            self.service()
            arm()

        settings = self.settings
        tls = client_tls(settings.diameter_tls_ca, settings.diameter_tls_cert, settings.diameter_tls_key)
        link = DiameterLink(client, server, self.clock, answers, tls, settings.diameter_peer_host)
        link.start()
        return link


#: Settings a running agent cannot change: they name its sockets, its peers,
#: its SA backend and its files. A reload keeps them (and logs that they changed).
RESTART_ONLY = frozenset(
    {
        "role",
        "address",
        "name",
        "mip_port",
        "aaa_servers",
        "coa_port",
        "backend",
        "vici_socket",
        "journal",
        "state_file",
        "metrics_listen",
        "accounting",
        "accounting_port",
        "tun_name",
        "route_into",
        "xfrm_table",
        "data_path",
        "mip_socket_fd",
        "coa_socket_fd",
    }
)


def reload_settings(node: AgentNode, new: AgentSettings) -> list[str]:
    """A reload (SIGHUP): everything but :data:`RESTART_ONLY` (and the
    Diameter and TLS settings) takes effect now -- logging, the role's timers,
    lifetimes and bounds, the RADIUS client's retransmission and pool, the
    accounting interval; returns the names of the changed settings that need
    a restart."""
    current = node.settings
    kept = {
        item.name
        for item in dataclasses.fields(AgentSettings)
        if item.name in RESTART_ONLY or "diameter" in item.name or item.name.startswith("tls_")
    }
    changed = sorted(name for name in kept if getattr(new, name) != getattr(current, name))
    merged = dataclasses.replace(new, **{name: getattr(current, name) for name in kept})
    configure_logging(merged.log_level, merged.log_format)
    agent = node.agent
    agent.config = role_config(merged)
    radius = getattr(agent, "radius", None)
    if isinstance(radius, HaDiameterClient):
        radius = radius.radius
    if isinstance(radius, RadiusClient):
        radius.retune(
            timeout=merged.radius_timeout,
            retries=merged.radius_retries,
            max_timeout=merged.radius_max_timeout,
            pool_type=merged.radius_pool,
            zombie_period=merged.radius_zombie_period,
            dead_time=merged.radius_dead_time,
        )
    if node.accounting is not None:
        node.accounting.interim_interval = merged.accounting_interim
    node.settings = merged
    return changed


def run_agent(settings: AgentSettings, reloader: Callable[[], AgentSettings] | None = None) -> int:
    """Entry point of ``aaa-vpn agent fa|ha|gw``; returns the process exit code.
    ``reloader`` reads the settings again on SIGHUP (None: SIGHUP is logged only)."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        node = AgentNode(settings)
    except AgentError as exc:
        log.error(str(exc), extra=fields(node=settings.node))
        return 1
    metrics_sock = None
    if settings.metrics_listen:
        try:
            metrics_sock = bind_metrics(settings.metrics_listen)
        except MetricsError as exc:
            log.error(str(exc), extra=fields(node=settings.node))
            node.backend.close()
            return 1
    # The state file says "running" as soon as open() returns, and whoever
    # waits for it may stop the agent at once: a stop asked for before the
    # loop handles signals is kept and honoured (a graceful stop, not death
    # by the default action); an early SIGUSR1 is ignored.
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: early.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: early.append(signum))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        node.open()
    except AgentError as exc:
        log.error(str(exc), extra=fields(node=settings.node))
        if metrics_sock is not None:
            metrics_sock.close()
        return 1
    mip_address = node.sockets[Channel.MIP].getsockname()
    radius = node.sockets.get(Channel.RADIUS)
    log.info(
        "agent started",
        extra=fields(
            node=settings.node,
            role=settings.role,
            mip=f"{mip_address[0]}:{mip_address[1]}",
            radius_client=f"{radius.getsockname()[0]}:{radius.getsockname()[1]}" if radius is not None else "",
            aaa=",".join(s.name for s in settings.aaa_servers),
            home_agents=",".join(sorted(str(a) for a in settings.home_agents)),
            state_file=str(settings.state_file or ""),
            backend=settings.backend,
            metrics="" if metrics_sock is None else "{}:{}".format(*metrics_sock.getsockname()[:2]),
        ),
    )
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    notifier = Notifier()
    http = MetricsHttp(metrics_sock, node.snapshot) if metrics_sock is not None else None

    async def main() -> None:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, node.log_table)

        def reload() -> None:
            if reloader is None:
                log.warning(
                    "SIGHUP: nothing to read again; restart the agent to change it", extra=fields(node=settings.node)
                )
                return
            try:
                new = reloader()
            except Exception as exc:  # noqa: BLE001 - a file that no longer reads keeps the running configuration
                log.error(
                    "reload failed: keeping the running configuration", extra=fields(node=settings.node, error=str(exc))
                )
                return
            notifier.reloading()
            for name in reload_settings(node, new):
                log.warning(
                    "changed setting needs a restart to take effect", extra=fields(node=settings.node, setting=name)
                )
            log.info("configuration reloaded", extra=fields(node=settings.node))
            notifier.ready(f"{settings.role} {settings.node}")

        loop.add_signal_handler(signal.SIGHUP, reload)
        if http is not None:
            await http.start()
            log.info(
                "metrics endpoint listening",
                extra=fields(node=settings.node, address="{}:{}".format(*http.sock.getsockname()[:2])),
            )
        if early:
            stop.set()
        notifier.ready(f"{settings.role} {settings.node} on {mip_address[0]}:{mip_address[1]}")
        keep_watchdog(loop, notifier)
        await node.serve(stop)
        notifier.stopping()
        if http is not None:
            await http.close()

    try:
        loop.run_until_complete(main())
    finally:
        node.log_table("agent stopped")
        node.close()
        loop.close()
        if metrics_sock is not None:
            metrics_sock.close()
    return 0


# -- the mobile node, once ---------------------------------------------------------------------------


@dataclass
class MnOutcome:
    """What one registration or deregistration of ``aaa-vpn mn`` ended with."""

    action: str
    """``register`` or ``deregister``."""
    nai: str
    fa: Address
    code: int
    lifetime: int
    detail: str
    started: float
    finished: float
    exchange: list[dict[str, Any]] = field(default_factory=list)
    """The messages sent and received, in order, with their times."""

    @property
    def accepted(self) -> bool:
        return mip.is_accepted(self.code)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "nai": self.nai,
            "fa": f"{self.fa[0]}:{self.fa[1]}",
            "accepted": self.accepted,
            "code": self.code,
            "code_name": reply_code_name(self.code),
            "lifetime": self.lifetime,
            "detail": self.detail,
            "started": round(self.started, 6),
            "finished": round(self.finished, 6),
            "seconds": round(self.finished - self.started, 4),
            "exchange": self.exchange,
        }


def run_mobile_node(
    config: MnConfig,
    fa: Address,
    *,
    deregister: bool = False,
    previous_fa: IPv4Address | None = None,
    source: str = "0.0.0.0",
    node: MobileNode | None = None,
) -> MnOutcome:
    """Register (or deregister) the simulated node once through the FA at
    ``fa`` and return the outcome. The simulator's own retransmissions
    (``config.retransmit`` x ``config.attempts``) bound the time it takes;
    without an answer the outcome is code 78 (registration timeout).
    ``node``: a node that lives on between calls (it keeps the challenges
    the FAs' replies gave it, as a real node does); by default a new one.

    Raises :class:`AgentError` if the socket cannot be bound."""
    sock = _bind(source, 0, "mobile node")
    node = node if node is not None else MobileNode(config)
    started = time.time()
    exchange: list[dict[str, Any]] = []
    # the node's own give-up ends every exchange; this only guards against a bug
    deadline = started + give_up_after(config, 0 if deregister else None) + 5.0
    try:
        if deregister:
            node.current_fa = fa  # deregister through the FA named
            node.deregister(started)
        else:
            node.register(fa, started, previous_fa=previous_fa)
        while True:
            now = time.time()
            for datagram in node.datagrams_to_send(now):
                exchange.append(
                    {
                        "time": round(now, 6),
                        "direction": "sent",
                        "peer": f"{datagram.address[0]}:{datagram.address[1]}",
                        **describe_message(Channel.MIP, datagram.data),
                    }
                )
                try:
                    sock.sendto(datagram.data, datagram.address)
                except OSError as exc:
                    exchange.append({"time": round(now, 6), "direction": "error", "error": str(exc)})
            while (event := node.next_event()) is not None:
                if isinstance(event, RegistrationDone):
                    return MnOutcome(
                        "deregister" if deregister else "register",
                        config.nai,
                        fa,
                        event.code,
                        event.lifetime,
                        event.detail,
                        started,
                        time.time(),
                        exchange,
                    )
            if now > deadline:  # a last guard
                return MnOutcome(
                    "deregister" if deregister else "register",
                    config.nai,
                    fa,
                    int(mip.ReplyCode.FA_REGISTRATION_TIMEOUT),
                    0,
                    "no reply",
                    started,
                    now,
                    exchange,
                )
            timer = node.get_timer()
            wait = 0.5 if timer is None else min(0.5, max(0.0, timer - now))
            readable, _, _ = select.select([sock], [], [], wait)
            if readable:
                try:
                    data, address = sock.recvfrom(65535)
                except OSError as exc:  # ICMP port unreachable from an earlier send
                    exchange.append({"time": round(time.time(), 6), "direction": "error", "error": str(exc)})
                    continue
                now = time.time()
                exchange.append(
                    {
                        "time": round(now, 6),
                        "direction": "received",
                        "peer": f"{address[0]}:{address[1]}",
                        **describe_message(Channel.MIP, data),
                    }
                )
                node.receive_datagram(Channel.MIP, data, (str(address[0]), int(address[1])), now)
            else:
                timer = node.get_timer()
                now = time.time()
                if timer is not None and timer <= now:
                    node.handle_timer(now)
    finally:
        sock.close()


__all__ = [
    "AgentError",
    "AgentNode",
    "MnOutcome",
    "describe_message",
    "path_json",
    "reply_code_name",
    "run_agent",
    "run_mobile_node",
]
