"""A whole aaa_vpn system in one process, without sockets or a database: a
fake link carries datagrams between the home AAA (the real role and service
layer on an in-memory store), a foreign AAA, and every agent with a memory SA
backend that really encrypts; the clock is fake.

Time only moves when a test says so (:meth:`Network.advance`), so timeouts and
retransmissions are deterministic. Each node's "sockets" are
:class:`FakeSocket` endpoints on the link: ``sendto`` queues a datagram,
``recvfrom`` reads what reached it, as with UDP; a datagram to an address and
port where nobody listens is lost. :attr:`Network.drop` decides, per
datagram, whether the link loses it (loss tests). In real-time mode
(:meth:`Network.run_until`) datagrams between the visited domains and the
home domain are held ``wan_delay`` seconds each way.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from aaa_vpn.lab.topology import HOME_ADDRESS, LOOPBACK, NAI, add_gateways, add_user_vpn
from aaa_vpn.model import Client, ClientRole, KeyMode
from aaa_vpn.net import coa_client
from aaa_vpn.net.coa_client import TargetResult
from aaa_vpn.roles.agent import Agent, Channel, Event, RegistrationDone
from aaa_vpn.roles.fa import FaConfig, ForeignAgent
from aaa_vpn.roles.foreign_aaa import ForeignAaa, ProxyClient, Realm
from aaa_vpn.roles.gw import CorrespondentGateway, GwConfig
from aaa_vpn.roles.ha import HaConfig, HomeAgent
from aaa_vpn.roles.home_aaa import CoaTarget, HomeAaaOptions
from aaa_vpn.roles.mn import MnConfig, MobileNode
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.secret import Secret
from aaa_vpn.service.agents import SaExecutor, finish_installs, run_events
from aaa_vpn.service.home import HomeService
from aaa_vpn.store.base import Store
from aaa_vpn.store.memory import MemoryStore
from aaa_vpn.wire import coa

Address = tuple[str, int]

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


def provision_network(store: Store) -> None:
    """The agents as RADIUS clients and the two gateways (shared with bench/)."""
    agents = (
        (FA1, ClientRole.FA),
        (FA2, ClientRole.FA),
        (FA3, ClientRole.FA),
        (HA, ClientRole.HA),
        (AAAF, ClientRole.FOREIGN_AAA),
    )
    for address, role in agents:
        store.add_client(Client(f"c-{address.replace('.', '-')}", IPv4Network(f"{address}/32"), SECRETS[address], role))
    add_gateways(store, LOOPBACK, {"gw-static": GATEWAY_KEYS[GW_STATIC], "gw-dynamic": GATEWAY_KEYS[GW_DYNAMIC]})


def provision(
    store: Store, gateways: tuple[str, ...] = ("static", "dynamic"), key_mode: KeyMode = KeyMode.MANUAL
) -> None:
    """The user, the agents as RADIUS clients, the gateways and the VPN records."""
    provision_network(store)
    add_user_vpn(store, LOOPBACK, MN_AAA, MN_HA, key_mode, gateways)


class FakeLink:
    """Datagrams between endpoints by (address, port); see the module docstring."""

    def __init__(self) -> None:
        self.endpoints: dict[Address, Callable[[bytes, Address], None]] = {}
        self._queue: list[tuple[float, int, Address, Address, bytes]] = []
        self._count = itertools.count()
        self._ports = itertools.count(40000)
        #: Called for every datagram sent: True loses it.
        self.drop: Callable[[Address, Address, bytes], bool] | None = None
        #: One-way delay (seconds) for datagrams that ``delayed`` says cross the WAN.
        self.delay = 0.0
        self.delayed: Callable[[Address, Address], bool] = lambda source, destination: False
        self.sent = 0
        self.lost = 0
        self.undeliverable = 0

    def ephemeral(self) -> int:
        return next(self._ports)

    def send(self, source: Address, destination: Address, data: bytes) -> None:
        self.sent += 1
        destination = (str(destination[0]), int(destination[1]))
        if self.drop is not None and self.drop(source, destination, data):
            self.lost += 1
            return
        at = time.time() + self.delay if self.delay and self.delayed(source, destination) else 0.0
        heapq.heappush(self._queue, (at, next(self._count), source, destination, bytes(data)))

    def deliver_due(self, wall: float) -> bool:
        """Deliver what is due (everything, unless held for the WAN); True if anything was."""
        delivered = False
        while self._queue and self._queue[0][0] <= wall:
            _at, _n, source, destination, data = heapq.heappop(self._queue)
            receiver = self.endpoints.get(destination)
            if receiver is None:
                self.undeliverable += 1  # nobody listens there: UDP loses it
                continue
            receiver(data, source)
            delivered = True
        return delivered

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None


class FakeSocket:
    """A UDP endpoint on the :class:`FakeLink`."""

    def __init__(self, link: FakeLink, address: str, port: int = 0) -> None:
        self.link = link
        self.address = (address, port or link.ephemeral())
        self.inbox: collections.deque[tuple[bytes, Address]] = collections.deque()
        self.receiver: Callable[[bytes, Address], None] = lambda data, source: self.inbox.append((data, source))
        link.endpoints[self.address] = lambda data, source: self.receiver(data, source)
        self.closed = False

    def getsockname(self) -> Address:
        return self.address

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        if self.closed:
            raise OSError("the socket is closed")
        self.link.send(self.address, (str(address[0]), int(address[1])), bytes(data))
        return len(data)

    def recvfrom(self, _size: int = 65535) -> tuple[bytes, Address]:
        if not self.inbox:
            raise BlockingIOError("nothing received")
        return self.inbox.popleft()

    def close(self) -> None:
        if not self.closed and self.link.endpoints.get(self.address) is not None:
            del self.link.endpoints[self.address]
        self.closed = True


@dataclass
class Node:
    name: str
    agent: Agent
    address: str
    sockets: dict[Channel, FakeSocket]
    backend: MemoryBackend | None = None
    executor: SaExecutor | None = None
    events: list[Event] = field(default_factory=list)

    def done(self) -> list[RegistrationDone]:
        return [e for e in self.events if isinstance(e, RegistrationDone)]


MIP_PORT = 434
RADIUS_PORT = 1812
COA_PORT = 3799


def memory_store() -> Store:
    return MemoryStore()


#: What a :class:`Network`'s home AAA stores in: the in-memory store, unless a
#: test module makes it a real one (tests/test_flows.py runs on every engine).
new_store: Callable[[], Store] = memory_store


class Network:
    """The agents, the home AAA and the link between them."""

    def __init__(
        self,
        tmp_path: Path | None = None,
        provisioner: Callable[[Store], None] = provision,
        foreign: bool = False,
        options: HomeAaaOptions | None = None,
    ) -> None:
        """With ``foreign`` the FAs ask a foreign AAA (visited.example) that
        proxies to the home AAA; the HA always asks the home AAA.
        ``tmp_path`` is accepted for symmetry with the live harnesses and unused."""
        self.clock = time.time()  # timestamps (RFC 5944 section 5.7) are wall-clock based
        self.link = FakeLink()
        self.link.delayed = lambda source, destination: _home(source[0]) != _home(destination[0])
        self.mip_port = MIP_PORT
        self.radius_port = RADIUS_PORT
        self.store = new_store()
        provisioner(self.store)
        self.home = HomeService(self.store, options, now=self.clock)
        self.aaa_socket = FakeSocket(self.link, AAA, self.radius_port)
        self._home_batch: list[tuple[bytes, Address]] = []
        self.aaa_socket.receiver = lambda data, source: self._home_batch.append((data, source))
        self.nodes: dict[str, Node] = {}
        self.aaa_up = True
        self.foreign: ForeignAaa | None = None
        if foreign:
            self.foreign_port = RADIUS_PORT
            self.foreign = ForeignAaa(
                [ProxyClient(f"fa-{a}", IPv4Network(f"{a}/32"), SECRETS[a]) for a in (FA1, FA2)],
                [Realm("home.example", (ServerConfig(AAA, self.radius_port, SECRETS[AAAF]),))],
                now=self.clock,
            )
            self.foreign_socket = FakeSocket(self.link, AAAF, self.foreign_port)
            self.foreign_upstream = FakeSocket(self.link, AAAF)
            self.foreign_socket.receiver = self._to_foreign(None)
            self.foreign_upstream.receiver = self._to_foreign(0)

    def _to_foreign(self, pool: int | None) -> Callable[[bytes, Address], None]:
        def receive(data: bytes, source: Address) -> None:
            assert self.foreign is not None  # the foreign AAA in place now (a test may replace it)
            if pool is None:
                self.foreign.receive_from_client(data, source, self.clock)
            else:
                self.foreign.receive_from_upstream(data, source, pool, self.clock)

        return receive

    def restart_home(self) -> None:
        """A new home AAA on the same store: empty caches, nothing but what the
        store holds (the process restarted)."""
        self.home = HomeService(self.store, self.home.role.options, now=self.clock)

    @property
    def wan_delay(self) -> float:
        """One way, between the visited domains and the home domain (real-time runs)."""
        return self.link.delay

    @wan_delay.setter
    def wan_delay(self, seconds: float) -> None:
        self.link.delay = seconds

    @property
    def drop(self) -> Callable[[Address, Address, bytes], bool] | None:
        """Decides, per datagram (source, destination, data), whether the link loses it."""
        return self.link.drop

    @drop.setter
    def drop(self, decide: Callable[[Address, Address, bytes], bool] | None) -> None:
        self.link.drop = decide

    def socket(self, address: str, port: int = 0) -> FakeSocket:
        """An endpoint of the test's own (a stranger, a forger) on the link."""
        return FakeSocket(self.link, address, port)

    # -- building -------------------------------------------------------------------------------
    def _add(self, name: str, agent: Agent, address: str, mip_port: int, radius: bool, backend: bool) -> Node:
        sockets = {Channel.MIP: FakeSocket(self.link, address, mip_port)}
        if radius:
            sockets[Channel.RADIUS] = FakeSocket(self.link, address)
        node = Node(name, agent, address, sockets)
        for channel, sock in sockets.items():
            sock.receiver = self._receiver(node, channel)
        if backend:
            node.backend = MemoryBackend(IPv4Address(address))
            node.executor = SaExecutor(node.backend, name)
        self.nodes[name] = node
        return node

    def _receiver(self, node: Node, channel: Channel) -> Callable[[bytes, Address], None]:
        def receive(data: bytes, source: Address) -> None:
            node.agent.receive_datagram(channel, data, source, self.clock)  # type: ignore[attr-defined]

        return receive

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
        """Take a node off the network (its endpoints closed): an agent that is gone."""
        node = self.nodes.pop(name)
        for sock in node.sockets.values():
            sock.close()
        return node

    def enable_coa(self) -> int:
        """Give every FA and HA a Dynamic Authorization endpoint (RFC 5176) on
        one port, and make that port the clients' CoA port in the database;
        return the port."""
        import dataclasses

        if getattr(self, "coa_port", None) is None:
            self.coa_port = COA_PORT
            for client in self.store.list_clients():
                self.store.update_client(dataclasses.replace(client, coa_port=self.coa_port))
        for node in self.nodes.values():
            if Channel.RADIUS in node.sockets and Channel.COA not in node.sockets:
                sock = FakeSocket(self.link, node.address, self.coa_port)
                sock.receiver = self._receiver(node, Channel.COA)
                node.sockets[Channel.COA] = sock
        return self.coa_port

    def fa_address(self, address: str) -> tuple[str, int]:
        return (address, self.mip_port)

    # -- Dynamic Authorization from the home AAA's address ------------------------------------------
    def coa_exchange(
        self,
        requests: list[tuple[CoaTarget, bytes | None]] | tuple[tuple[CoaTarget, bytes | None], ...],
        timeout: float = 1.0,
        retries: int = 2,
    ) -> list[TargetResult]:
        """What net/coa_client.exchange does, over the link from the home AAA's
        address: send, let the network settle, resend what is unanswered
        (byte-identical) after ``timeout`` seconds, ``retries`` times, each
        wait twice the one before (coa_client.waits)."""
        results = [
            TargetResult(t, error="" if r is not None else "no RADIUS client holds this address") for t, r in requests
        ]
        waiting = {i: r for i, (_t, r) in enumerate(requests) if r is not None}
        sock = FakeSocket(self.link, AAA)
        try:
            schedule = coa_client.waits(timeout, retries)
            for attempt, wait in enumerate(schedule):
                for i, data in waiting.items():
                    results[i].attempts += 1
                    target = requests[i][0]
                    sock.sendto(data, (str(target.address), target.port))
                self.settle()
                while sock.inbox:
                    data, sender = sock.recvfrom()
                    for i, request in list(waiting.items()):
                        target = requests[i][0]
                        if sender != (str(target.address), target.port) or target.secret is None:
                            continue
                        try:
                            answer = coa.decode_answer(data, request, target.secret.value)
                        except coa.CoaDecodeError:
                            answer = None
                        if answer is None:
                            results[i].ignored += 1
                            continue
                        results[i].answer = answer
                        del waiting[i]
                        break
                if not waiting:
                    break
                if attempt < retries:
                    self.advance(wait)
            for i in waiting:
                results[i].error = f"no answer after {results[i].attempts} attempts"
        finally:
            sock.close()
        return results

    # -- running --------------------------------------------------------------------------------
    def _pump(self, wall: float) -> bool:
        """One round: every node's events and datagrams out, what is due in,
        the home AAA's batch handled. True if anything moved."""
        moved = False
        if self.foreign is not None:
            for out in self.foreign.datagrams_to_send():
                sock = self.foreign_socket if out.pool is None else self.foreign_upstream
                sock.sendto(out.data, out.address)
                moved = True
        for node in list(self.nodes.values()):
            if node.executor is not None and node.executor.pending:
                # Installs a staged backend left negotiating finish one round later.
                finish_installs(node.agent, node.executor, self.clock)  # type: ignore[arg-type]
                moved = True
            node.events += run_events(node.agent, node.executor, self.clock)  # type: ignore[arg-type]
            for datagram in node.agent.datagrams_to_send(self.clock):
                sock = node.sockets.get(datagram.channel)
                if sock is not None and not sock.closed:
                    sock.sendto(datagram.data, datagram.address)
                moved = True
        moved = self.link.deliver_due(wall) or moved
        if self._home_batch:
            batch, self._home_batch = self._home_batch, []
            if self.aaa_up:
                for reply, destination in self.home.handle_batch(batch, self.clock):
                    self.aaa_socket.sendto(reply, destination)
            moved = True
        return moved

    def settle(self, rounds: int = 10_000) -> None:
        """Exchange datagrams until nothing moves (without advancing the clock)."""
        for _ in range(rounds):
            if not self._pump(float("inf") if not self.link.delay else time.time()):
                return
        raise RuntimeError("the network does not settle")  # a message loop

    def run_until(self, done: Callable[[], bool], timeout: float = 30.0) -> float:
        """Real-time mode: run on the wall clock until ``done()``; return the
        seconds it took. Datagrams between the visited domains and the home
        domain are held for ``wan_delay`` seconds each way."""
        start = time.time()
        while not done():
            self.clock = now = time.time()
            if now - start > timeout:
                raise TimeoutError("nothing happened in time")
            for node in list(self.nodes.values()):
                timer = node.agent.get_timer()
                if timer is not None and timer <= now:
                    node.agent.handle_timer(now)
            if self.foreign is not None and (t := self.foreign.get_timer()) is not None and t <= now:
                self.foreign.handle_timer(now)
            if not self._pump(now):
                due = self.link.next_due()
                time.sleep(max(0.0, min(0.001, (due - time.time()) if due is not None else 0.001)))
        return time.time() - start

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
            for node in list(self.nodes.values()):
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
    import socket
    import struct

    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0, socket.inet_aton(source), socket.inet_aton(destination)
    )
    return header + udp


def random_payload() -> bytes:
    return os.urandom(32)
