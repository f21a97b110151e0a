"""A whole aaa_vpn system in one process: real UDP sockets on loopback
(distinct 127.0.0.x addresses), a fake clock, the home AAA on a real SQLite
database, and every agent with a memory SA backend that really encrypts.

Time only moves when a test says so (:meth:`Network.advance`), so timeouts and
retransmissions are deterministic; datagrams still cross the kernel's
loopback like in production.
"""

from __future__ import annotations

import functools
import heapq
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from aaa_vpn.lab.topology import HOME_ADDRESS, LOOPBACK, NAI, add_gateways, add_user_vpn, free_port
from aaa_vpn.model import Client, ClientRole, KeyMode
from aaa_vpn.roles.agent import Agent, Channel, Event, RegistrationDone
from aaa_vpn.roles.fa import FaConfig, ForeignAgent
from aaa_vpn.roles.foreign_aaa import ForeignAaa, ProxyClient, Realm
from aaa_vpn.roles.gw import CorrespondentGateway, GwConfig
from aaa_vpn.roles.ha import HaConfig, HomeAgent
from aaa_vpn.roles.mn import MnConfig, MobileNode
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.secret import Secret
from aaa_vpn.service.agents import SaExecutor, run_events
from aaa_vpn.service.home import HomeAaa, HomeAaaOptions
from aaa_vpn.store import init_store
from aaa_vpn.store.sqlite import SqliteStore
from aaa_vpn.wire.radius import load_dictionary

AAA, HA, AAAF = LOOPBACK.aaa, LOOPBACK.ha, LOOPBACK.aaaf
FA1, FA2 = LOOPBACK.fa1, LOOPBACK.fa2
FA3 = LOOPBACK.fa3  # another visited domain: no foreign AAA, asks the home AAA directly
GW_STATIC, GW_DYNAMIC = LOOPBACK.gw_static, LOOPBACK.gw_dynamic
MN_SOCKET = "127.0.0.100"
CN_STATIC = "203.0.113.5"  # behind the static gateway
CN_DYNAMIC = "203.0.113.130"  # behind the dynamic gateway
MN_AAA = Secret(b"mn1-aaa-secret")
MN_HA = Secret(bytes(range(16)))
GATEWAY_KEYS = {GW_STATIC: Secret(b"static-gateway-key-0123"), GW_DYNAMIC: Secret(b"dynamic-gateway-key-456")}
SECRETS = {
    FA1: Secret(b"fa1-secret-xyz"),
    FA2: Secret(b"fa2-secret-xyz"),
    FA3: Secret(b"fa3-secret-xyz"),
    HA: Secret(b"ha-secret-xyzw"),
    AAAF: Secret(b"aaaf-home-secret"),
}


def provision_network(store: SqliteStore) -> None:
    """The agents as RADIUS clients and the two gateways (shared with bench/)."""
    agents = (
        (FA1, ClientRole.FA),
        (FA2, ClientRole.FA),
        (FA3, ClientRole.FA),
        (HA, ClientRole.HA),
        (AAAF, ClientRole.PROXY),
    )
    for address, role in agents:
        store.add_client(Client(f"c-{address.replace('.', '-')}", IPv4Network(f"{address}/32"), SECRETS[address], role))
    add_gateways(store, LOOPBACK, {"gw-static": GATEWAY_KEYS[GW_STATIC], "gw-dynamic": GATEWAY_KEYS[GW_DYNAMIC]})


def provision(
    store: SqliteStore, gateways: tuple[str, ...] = ("static", "dynamic"), key_mode: KeyMode = KeyMode.MANUAL
) -> None:
    """The user, the agents as RADIUS clients, the gateways and the VPN records."""
    provision_network(store)
    add_user_vpn(store, LOOPBACK, MN_AAA, MN_HA, key_mode, gateways)


@dataclass
class Node:
    name: str
    agent: Agent
    address: str
    sockets: dict[Channel, socket.socket]
    backend: MemoryBackend | None = None
    executor: SaExecutor | None = None
    events: list[Event] = field(default_factory=list)

    def done(self) -> list[RegistrationDone]:
        return [e for e in self.events if isinstance(e, RegistrationDone)]


class Network:
    """The agents, the home AAA and the sockets between them."""

    def __init__(
        self, tmp_path: Path, provisioner: Callable[[SqliteStore], None] = provision, foreign: bool = False
    ) -> None:
        """With ``foreign`` the FAs ask a foreign AAA (visited.example) that
        proxies to the home AAA; the HA always asks the home AAA."""
        self.clock = time.time()  # timestamps (RFC 5944 section 5.7) are wall-clock based
        self.mip_port = free_port((AAA,))
        self.radius_port = free_port((AAA,))
        self.store, _ = init_store(tmp_path / "vpn.db", tmp_path / "vpn.key")
        provisioner(self.store)
        self.home = HomeAaa(self.store, load_dictionary(), HomeAaaOptions())
        self.aaa_socket = self._socket(AAA, self.radius_port)
        self.nodes: dict[str, Node] = {}
        self.aaa_up = True
        self.wan_delay = 0.0  # one way, between the visited domains and the home domain (real-time runs)
        self._deferred: list[tuple[float, int, Callable[[], None]]] = []
        self._deferred_count = 0
        self.foreign: ForeignAaa | None = None
        if foreign:
            self.foreign_port = free_port((AAA,))
            self.foreign = ForeignAaa(
                [ProxyClient(f"fa-{a}", IPv4Network(f"{a}/32"), SECRETS[a]) for a in (FA1, FA2)],
                [Realm("home.example", (ServerConfig(AAA, self.radius_port, SECRETS[AAAF]),))],
                now=self.clock,
            )
            self.foreign_socket = self._socket(AAAF, self.foreign_port)
            self.foreign_upstream = self._socket(AAAF, 0)

    # -- building -------------------------------------------------------------------------------
    def _socket(self, address: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
        sock.setblocking(False)
        return sock

    def _add(self, name: str, agent: Agent, address: str, mip_port: int, radius: bool, backend: bool) -> Node:
        sockets = {Channel.MIP: self._socket(address, mip_port)}
        if radius:
            sockets[Channel.RADIUS] = self._socket(address, 0)
        node = Node(name, agent, address, sockets)
        if backend:
            node.backend = MemoryBackend(IPv4Address(address))
            node.executor = SaExecutor(node.backend, name)
        self.nodes[name] = node
        return node

    def aaa_servers(self, address: str) -> list[ServerConfig]:
        if self.foreign is not None and address in (FA1, FA2):
            return [ServerConfig(AAAF, self.foreign_port, SECRETS[address])]
        return [ServerConfig(AAA, self.radius_port, SECRETS[address])]

    def add_fa(self, name: str, address: str, **options: object) -> ForeignAgent:
        config = FaConfig(IPv4Address(address), self.aaa_servers(address), mip_port=self.mip_port, **options)  # type: ignore[arg-type]
        agent = ForeignAgent(config)
        self._add(name, agent, address, self.mip_port, radius=True, backend=True)
        return agent

    def add_ha(self, **options: object) -> HomeAgent:
        config = HaConfig(IPv4Address(HA), self.aaa_servers(HA), mip_port=self.mip_port, **options)  # type: ignore[arg-type]
        agent = HomeAgent(config)
        self._add("ha", agent, HA, self.mip_port, radius=True, backend=True)
        return agent

    def add_gw(self, name: str, address: str) -> CorrespondentGateway:
        agent = CorrespondentGateway(GwConfig(IPv4Address(address), GATEWAY_KEYS[address]))
        self._add(name, agent, address, self.mip_port, radius=False, backend=True)
        return agent

    def add_mn(self, **options: object) -> MobileNode:
        config = MnConfig(NAI, IPv4Address(HOME_ADDRESS), IPv4Address(HA), 256, MN_HA, MN_AAA, **options)  # type: ignore[arg-type]
        agent = MobileNode(config)
        self._add("mn", agent, MN_SOCKET, 0, radius=False, backend=False)
        return agent

    def standard(self) -> None:
        """HA, two FAs, both gateways and the mobile node."""
        self.add_ha()
        self.add_fa("fa1", FA1)
        self.add_fa("fa2", FA2)
        self.add_gw("gw-static", GW_STATIC)
        self.add_gw("gw-dynamic", GW_DYNAMIC)
        self.add_mn()

    def remove(self, name: str) -> Node:
        """Take a node off the network (its sockets closed): an agent that is gone."""
        node = self.nodes.pop(name)
        for sock in node.sockets.values():
            sock.close()
        return node

    def enable_coa(self) -> int:
        """Give every FA and HA a Dynamic Authorization socket (RFC 5176) on
        one free port, and make that port the clients' CoA port in the
        database; return the port."""
        import dataclasses

        if getattr(self, "coa_port", None) is None:
            self.coa_port = free_port((AAA,))
            for client in self.store.list_clients():
                self.store.update_client(dataclasses.replace(client, coa_port=self.coa_port))
        for node in self.nodes.values():
            if Channel.RADIUS in node.sockets and Channel.COA not in node.sockets:
                node.sockets[Channel.COA] = self._socket(node.address, self.coa_port)
        return self.coa_port

    def fa_address(self, address: str) -> tuple[str, int]:
        return (address, self.mip_port)

    # -- running --------------------------------------------------------------------------------
    def _flush(self) -> bool:
        sent = False
        if self.foreign is not None:
            for out in self.foreign.datagrams_to_send():
                sock = self.foreign_socket if out.pool is None else self.foreign_upstream
                sock.sendto(out.data, out.address)
                sent = True
        for node in self.nodes.values():
            node.events += run_events(node.agent, node.executor, self.clock)  # type: ignore[arg-type]
            for datagram in node.agent.datagrams_to_send(self.clock):
                sock = node.sockets[datagram.channel]
                try:
                    sock.sendto(datagram.data, datagram.address)
                except OSError:
                    pass  # e.g. ECONNREFUSED reported for an earlier datagram: UDP
                sent = True
        return sent

    def _receive(self, timeout: float) -> bool:
        sockets = [self.aaa_socket] + [s for n in self.nodes.values() for s in n.sockets.values()]
        if self.foreign is not None:
            sockets += [self.foreign_socket, self.foreign_upstream]
        readable, _, _ = select.select(sockets, [], [], timeout)
        for sock in readable:
            while True:
                try:
                    data, source = sock.recvfrom(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                deliver = functools.partial(self._deliver, sock, data, source)
                if self.wan_delay and _home(source[0]) != _home(sock.getsockname()[0]):
                    self._deferred_count += 1
                    heapq.heappush(self._deferred, (time.time() + self.wan_delay, self._deferred_count, deliver))
                else:
                    deliver()
        return bool(readable)

    def _deliver(self, sock: socket.socket, data: bytes, source: tuple[str, int]) -> None:
        if self.foreign is not None and sock is self.foreign_socket:
            self.foreign.receive_from_client(data, source, self.clock)
            return
        if self.foreign is not None and sock is self.foreign_upstream:
            self.foreign.receive_from_upstream(data, source, 0, self.clock)
            return
        if sock is self.aaa_socket:
            if self.aaa_up:
                reply = self.home.handle(data, source, self.clock)
                if reply is not None:
                    sock.sendto(reply, source)
            return
        for node in self.nodes.values():
            for channel, own in node.sockets.items():
                if own is sock:
                    node.agent.receive_datagram(channel, data, source, self.clock)  # type: ignore[attr-defined]

    def run_until(self, done: Callable[[], bool], timeout: float = 30.0) -> float:
        """Real-time mode: run on the wall clock until ``done()``; return the
        seconds it took. Datagrams between the visited domains and the home
        domain are held for ``wan_delay`` seconds each way."""
        start = time.time()
        while not done():
            self.clock = now = time.time()
            if now - start > timeout:
                raise TimeoutError("nothing happened in time")
            while self._deferred and self._deferred[0][0] <= now:
                heapq.heappop(self._deferred)[2]()
            for node in self.nodes.values():
                timer = node.agent.get_timer()
                if timer is not None and timer <= now:
                    node.agent.handle_timer(now)
            if self.foreign is not None and (t := self.foreign.get_timer()) is not None and t <= now:
                self.foreign.handle_timer(now)
            sent = self._flush()
            wait = 0.0 if sent else 0.002
            if self._deferred:
                wait = max(0.0, min(wait, self._deferred[0][0] - time.time()))
            self._receive(wait)
        return time.time() - start

    def settle(self, rounds: int = 200) -> None:
        """Exchange datagrams until nothing moves (without advancing the clock)."""
        quiet = 0
        for _ in range(rounds):
            sent = self._flush()
            received = self._receive(0.02 if sent else 0.005)
            quiet = 0 if (sent or received) else quiet + 1
            if quiet >= 3:
                return

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every timer that falls due on the way."""
        target = self.clock + seconds
        while True:
            due = [t for n in self.nodes.values() if (t := n.agent.get_timer()) is not None and t <= target]
            if self.foreign is not None and (t := self.foreign.get_timer()) is not None and t <= target:
                due.append(t)
            if not due:
                break
            self.clock = max(self.clock, min(due))
            for node in self.nodes.values():
                timer = node.agent.get_timer()
                if timer is not None and timer <= self.clock:
                    node.agent.handle_timer(self.clock)
            if self.foreign is not None and (t := self.foreign.get_timer()) is not None and t <= self.clock:
                self.foreign.handle_timer(self.clock)
            self.settle()
        self.clock = target
        self.settle()

    def close(self) -> None:
        for node in self.nodes.values():
            for sock in node.sockets.values():
                sock.close()
        self.aaa_socket.close()
        if self.foreign is not None:
            self.foreign_socket.close()
            self.foreign_upstream.close()
        self.store.close()


def _home(address: str) -> bool:
    """Whether ``address`` is in the home domain (home AAA, HA, gateways)."""
    return address in (AAA, HA, GW_STATIC, GW_DYNAMIC)


def inner_packet(source: str, destination: str, payload: bytes = b"hello through the VPN") -> bytes:
    """A minimal IPv4/UDP packet (checksums as a kernel would not check them here)."""
    import struct

    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0, socket.inet_aton(source), socket.inet_aton(destination)
    )
    return header + udp


def random_payload() -> bytes:
    return os.urandom(32)
