"""The userspace SA backend (aaa_vpn.sa.userspace) and its QoS (aaa_vpn.sa.qos).

* The token bucket, with an injected clock: no timing in these assertions.
* The backend for real, in network namespaces this module creates (prefix
  ``aau_<pid>_``) and deletes in a finalizer, even when a test fails:

      h (198.51.100.10, .11) -- A (192.0.2.1) ==== B (192.0.2.2) -- k (203.0.113.5)
                                   \\
                                    ==== C (192.0.2.3, 203.0.113.5 on lo: "the moved host")

  A, B and C are nodes with a userspace backend each; h and k are hosts
  behind A and B. Traffic between h and k goes through the tunnel; the
  capture on B's wire link must show ESP only, which tshark decrypts with the
  SAs (esp_sa UAT, reference/test-environment.md section 3.1) with every ICV
  good and the inner addresses visible.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from aaa_vpn.model import EspTransform, KeyMode
from aaa_vpn.sa import SaBackend, SaConflict, SaError, SaUnsupported
from aaa_vpn.sa.esp import EspSa, OuterHeader, encapsulate, internet_checksum
from aaa_vpn.sa.qos import MIN_BURST, TokenBucket, burst_octets
from aaa_vpn.sa.tun import call_in_netns
from aaa_vpn.sa.userspace import UserspaceBackend
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import PathProfile, PathRole, QosSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_polices_at_the_rate() -> None:
    clock = FakeClock()  # steps are powers of two: exact in floating point
    bucket = TokenBucket(128, burst=10_000, clock=clock)  # 128 kbit/s = 16,000 octets/s
    # It starts full: 10,000 octets pass at once, the next packet does not.
    assert [bucket.allow(1000) for _ in range(11)] == [True] * 10 + [False]
    assert (bucket.passed, bucket.dropped, bucket.dropped_octets) == (10, 1, 1000)
    clock.now += 1 / 32  # 500 octets: not enough for 1000
    assert not bucket.allow(1000)
    clock.now += 1 / 32  # 1000 octets in all
    assert bucket.allow(1000)
    assert not bucket.allow(1)
    # A long pause refills to the depth, not beyond it.
    clock.now += 60
    assert [bucket.allow(1000) for _ in range(11)] == [True] * 10 + [False]
    # Over 1 s of steady offered load (64,000 octets) the empty bucket passes the rate, no more.
    passed = 0
    for _ in range(64):
        clock.now += 1 / 64
        passed += bucket.allow(1000)
    assert passed == 16  # 16,000 octets


def test_token_bucket_edges() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8, clock=clock)  # 1000 octets/s
    assert bucket.burst == MIN_BURST, "the depth never falls below two full-size packets"
    assert bucket.allow(1500) and bucket.allow(1500) and not bucket.allow(1500)
    clock.now -= 5  # a clock going back adds nothing (and takes nothing)
    assert not bucket.allow(1)
    clock.now += 5 + 1.5
    assert bucket.allow(1500)
    assert burst_octets(80_000, 100) == 1_000_000  # 100 ms of 80 Mbit/s
    assert burst_octets(80_000, 0) == MIN_BURST
    for bad in (0, -1):
        with pytest.raises(ValueError):
            TokenBucket(bad)
    with pytest.raises(ValueError):
        burst_octets(-1)
    assert "8 kbit/s" in repr(bucket)


# -- the backend in network namespaces ------------------------------------------------

FA = IPv4Address("192.0.2.1")  # node A
HA = IPv4Address("192.0.2.2")  # node B
NEW = IPv4Address("192.0.2.3")  # node C
H = IPv4Address("198.51.100.10")  # host behind A
H2 = IPv4Address("198.51.100.11")  # a second address of that host
K = IPv4Address("203.0.113.5")  # host behind B (and, later, C)
H_NET = IPv4Network("198.51.100.0/24")
K_NET = IPv4Network("203.0.113.0/24")
GCM = EspTransform.AES_GCM_16_128
CBC = EspTransform.AES_CBC_128_HMAC_SHA256
MARKER = b"aau-inner-marker-"  # in every test payload: must never be seen in clear on the wire


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


@dataclass
class Topology:
    """Names of the namespaces and links of one test module."""

    prefix: str
    a: str
    b: str
    c: str
    h: str
    k: str
    wire_b: str  # B's end of the A-B link (captured)
    wire_c: str  # C's end of the A-C link

    def ip(self, netns: str, *args: str) -> str:
        return _run("ip", "-n", netns, *args)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    missing = "network namespaces need root" if os.geteuid() != 0 else ""
    if not missing and shutil.which("ip") is None:
        missing = "ip (iproute2) is not installed"
    if missing:  # as conftest's require_tool: CI must not skip these silently
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {missing}")
        pytest.skip(missing)
    tag = f"{os.getpid() % 100000}"
    prefix = f"aau_{tag}_"
    t = Topology(prefix, *(prefix + n for n in "abchk"), wire_b=f"aau{tag}b", wire_c=f"aau{tag}c")
    created: list[str] = []
    try:
        for ns in (t.a, t.b, t.c, t.h, t.k):
            _run("ip", "netns", "add", ns)
            created.append(ns)
            for knob in ("all", "default"):
                _run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{knob}.disable_ipv6=1")
                # Strict reverse-path filtering on every node: decrypted packets must pass it.
                _run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{knob}.rp_filter=1")
            t.ip(ns, "link", "set", "lo", "up")

        def link(ns1: str, dev1: str, ns2: str, dev2: str) -> None:
            _run("ip", "link", "add", dev1, "netns", ns1, "type", "veth", "peer", "name", dev2, "netns", ns2)
            t.ip(ns1, "link", "set", dev1, "up")
            t.ip(ns2, "link", "set", dev2, "up")

        link(t.a, f"aau{tag}ab", t.b, t.wire_b)
        link(t.a, f"aau{tag}ac", t.c, t.wire_c)
        link(t.a, f"aau{tag}ah", t.h, f"aau{tag}h")
        link(t.b, f"aau{tag}bk", t.k, f"aau{tag}k")
        # The wire: A is 192.0.2.1 on both of its links, B and C are its neighbours.
        t.ip(t.a, "addr", "add", f"{FA}/24", "dev", f"aau{tag}ab")
        t.ip(t.a, "addr", "add", f"{FA}/32", "dev", f"aau{tag}ac")
        t.ip(t.a, "route", "add", f"{NEW}/32", "dev", f"aau{tag}ac")
        t.ip(t.b, "addr", "add", f"{HA}/24", "dev", t.wire_b)
        t.ip(t.c, "addr", "add", f"{NEW}/24", "dev", t.wire_c)
        t.ip(t.c, "addr", "add", f"{K}/32", "dev", "lo")
        # The inner networks.
        t.ip(t.a, "addr", "add", "198.51.100.1/24", "dev", f"aau{tag}ah")
        t.ip(t.h, "addr", "add", f"{H}/24", "dev", f"aau{tag}h")
        t.ip(t.h, "addr", "add", f"{H2}/24", "dev", f"aau{tag}h")
        t.ip(t.h, "route", "add", "default", "via", "198.51.100.1")
        t.ip(t.b, "addr", "add", "203.0.113.1/24", "dev", f"aau{tag}bk")
        t.ip(t.k, "addr", "add", f"{K}/24", "dev", f"aau{tag}k")
        t.ip(t.k, "route", "add", "default", "via", "203.0.113.1")
        for ns in (t.a, t.b, t.c):
            _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield t
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


_tun_names = itertools.count()


@pytest.fixture
def backend(topology: Topology) -> Iterator[Callable[..., UserspaceBackend]]:
    """``backend(netns, node, **options)``: a started backend, closed after the test."""
    started: list[UserspaceBackend] = []

    def start(netns: str, node: IPv4Address, **options: Any) -> UserspaceBackend:
        options.setdefault("tun_name", f"aaut{os.getpid() % 10000}x{next(_tun_names)}")
        created = UserspaceBackend(node, netns=netns, **options)
        started.append(created)
        return created

    yield start
    for created in started:
        created.close()


def mirrored(
    transform: EspTransform,
    a: IPv4Address,
    b: IPv4Address,
    a_ts: tuple[IPv4Network, ...],
    b_ts: tuple[IPv4Network, ...],
    spi_a: int = 0x1001,
    spi_b: int = 0x2002,
    qos: QosSpec | None = None,
    role: PathRole = PathRole.FA_HA,
) -> tuple[PathProfile, PathProfile]:
    """Both ends' views of one path with fresh random keys, as the AAA issues them:
    A's key_out is B's key_in and the other way round. ``spi_a`` is A's inbound SPI."""
    a_to_b = Secret(os.urandom(transform.keymat_length))
    b_to_a = Secret(os.urandom(transform.keymat_length))
    view_a = PathProfile(
        role=role,
        local=a,
        peer=b,
        local_ts=a_ts,
        remote_ts=b_ts,
        key_mode=KeyMode.MANUAL,
        esp_transform=transform,
        spi_in=spi_a,
        spi_out=spi_b,
        key_in=b_to_a,
        key_out=a_to_b,
        lifetime=3600,
        qos=qos,
    )
    view_b = dataclasses.replace(
        view_a,
        local=b,
        peer=a,
        local_ts=b_ts,
        remote_ts=a_ts,
        spi_in=spi_b,
        spi_out=spi_a,
        key_in=a_to_b,
        key_out=b_to_a,
    )
    return view_a, view_b


def udp_socket(netns: str, address: IPv4Address, port: int = 0) -> socket.socket:
    """A UDP socket bound to ``address:port`` inside ``netns``."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for every datagram of a test (they are read after sending); SO_RCVBUFFORCE (root)
        # does not depend on net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
        sock.bind((str(address), port))
        return sock

    return call_in_netns(netns, make)


def send_udp(sender: socket.socket, to: IPv4Address, port: int, count: int, size: int = 200, pace: int = 0) -> None:
    """``count`` datagrams numbered in their payload; a 1 ms pause after every ``pace`` of them."""
    for n in range(count):
        payload = MARKER + n.to_bytes(4, "big")
        sender.sendto(payload + bytes(max(0, size - len(payload))), (str(to), port))
        if pace and n % pace == pace - 1:
            time.sleep(0.001)


def receive_udp(receiver: socket.socket, timeout: float = 1.0, expect: int | None = None) -> list[int]:
    """The numbers of the datagrams that arrive until ``timeout`` passes without
    one (or, with ``expect``, until that many have arrived)."""
    receiver.settimeout(timeout)
    numbers: list[int] = []
    try:
        while expect is None or len(numbers) < expect:
            data = receiver.recv(65535)
            if data.startswith(MARKER):
                numbers.append(int.from_bytes(data[len(MARKER) : len(MARKER) + 4], "big"))
    except TimeoutError:
        pass
    return numbers


@pytest.mark.netns
def test_is_an_sa_backend(topology: Topology, backend: Callable[..., UserspaceBackend]) -> None:
    a = backend(topology.a, FA)
    assert isinstance(a, SaBackend)
    assert a.stats().running
    assert a.tun_name in topology.ip(topology.a, "link", "show", "dev", a.tun_name)
    # A name in use, or a node address that is not there, is refused before anything starts.
    with pytest.raises(SaError, match="already exists"):
        backend(topology.a, FA, tun_name=a.tun_name, table=4400, priority=4400, fwmark=0x4400)
    with pytest.raises(SaError, match="not configured"):
        backend(topology.a, NEW, table=4400, priority=4400, fwmark=0x4400)
    for bad in ("tun%d", "a/b", "x" * 16, ""):
        with pytest.raises(SaError, match="invalid interface name"):
            backend(topology.a, FA, tun_name=bad, table=4400, priority=4400, fwmark=0x4400)
    with pytest.raises(SaError, match="no network namespace"):
        backend(topology.prefix + "missing", FA)
    assert "4400" not in topology.ip(topology.a, "rule", "show")


class Capture:
    """tcpdump on one interface of a namespace, into a pcap, stopped by PID."""

    def __init__(self, tcpdump: str, netns: str, interface: str, pcap: Path) -> None:
        self.pcap = pcap
        argv = ["ip", "netns", "exec", netns, tcpdump, "-i", interface, "-n", "--immediate-mode", "-U"]
        # `ip netns exec` execs, so this PID is tcpdump's own.
        self.process = subprocess.Popen([*argv, "-w", str(pcap)], stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "listening on ...": the capture is open
        assert "listening on" in line, line

    def stop(self) -> None:
        if self.process.poll() is None:
            time.sleep(0.2)  # let the last frames in flight reach the capture
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def capture(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Callable[[str, str], Capture]]:
    tcpdump = require_tool("tcpdump")
    running: list[Capture] = []

    def start(netns: str, interface: str) -> Capture:
        started = Capture(tcpdump, netns, interface, tmp_path / f"{interface}-{len(running)}.pcap")
        running.append(started)
        return started

    yield start
    for started in running:
        started.stop()


# tshark's literal algorithm labels (reference/test-environment.md section 3.1).
_TSHARK_ENCRYPTION = {True: "AES-GCM with 16 octet ICV [RFC4106]", False: "AES-CBC [RFC3602]"}
_TSHARK_AUTH = {True: "NULL", False: "HMAC-SHA-256-128 [RFC4868]"}


def esp_sa_uat(src: str, dst: str, spi: int, encryption: bytes, integrity: bytes) -> str:
    """tshark's ``esp_sa`` UAT record of one SA (``integrity`` empty: AES-GCM)."""
    aead = not integrity
    fields = ["IPv4", src, dst, f"0x{spi:08x}", _TSHARK_ENCRYPTION[aead], "0x" + encryption.hex()]
    fields += [_TSHARK_AUTH[aead], "" if aead else "0x" + integrity.hex()]
    return ",".join(f'"{field}"' for field in fields)


def esp_sa_record(view: PathProfile) -> str:
    """tshark's ``esp_sa`` UAT record of ``view``'s outbound SA."""
    key, k = view.key_out.value, view.esp_transform.encryption_key_length
    encryption, integrity = (key, b"") if view.esp_transform.is_aead else (key[:k], key[k:])
    return esp_sa_uat(str(view.local), str(view.peer), view.spi_out, encryption, integrity)


def tshark_rows(
    tshark: str, pcap: Path, config: Path, fields: list[str], records: list[str], timeout: float = 120
) -> list[list[str]]:
    """One row per frame; ESP decrypted with the ``esp_sa`` ``records`` if any."""
    config.mkdir(exist_ok=True)
    command = [tshark, "-n", "-r", str(pcap)]
    if records:
        command += ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
        for record in records:
            command += ["-o", f"uat:esp_sa:{record}"]
    command += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in fields:
        command += ["-e", field]
    # A private configuration directory: the user's own profile must not leak in.
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config), HOME=str(config))
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return [line.split("|") for line in done.stdout.splitlines()]


def tshark_fields(tshark: str, pcap: Path, config: Path, fields: list[str], sas: list[PathProfile]) -> list[list[str]]:
    """One row per frame; with ``sas``, ESP is decrypted with their outbound SAs."""
    return tshark_rows(tshark, pcap, config, fields, [esp_sa_record(view) for view in sas])


def ping(netns: str, source: IPv4Address, to: IPv4Address, count: int = 3) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1"]
    argv += ["-I", str(source), str(to)]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.parametrize("transform", [GCM, CBC], ids=lambda t: t.name)
def test_tunnel_carries_traffic_as_esp_only(
    transform: EspTransform,
    topology: Topology,
    backend: Callable[..., UserspaceBackend],
    capture: Callable[[str, str], Capture],
    require_tool: Callable[[str], str],
    tmp_path: Path,
) -> None:
    tshark = require_tool("tshark")
    require_tool("ping")
    t = topology
    gold = QosSpec("gold", 46, 0)
    view_a, view_b = mirrored(transform, FA, HA, (H_NET,), (K_NET,), qos=gold)
    a, b = backend(t.a, FA), backend(t.b, HA)
    a.install(view_a, "s1/FA_HA")
    b.install(view_b, "s1/FA_HA")
    assert a.routing() == ([(H_NET, K_NET)], [K_NET])
    assert f"from {H_NET} to {K_NET} lookup 4303" in t.ip(t.a, "rule", "show")
    assert f"{K_NET} dev {a.tun_name}" in t.ip(t.a, "route", "show", "table", "4303")

    wire = capture(t.b, t.wire_b)
    receiver = udp_socket(t.k, K, 40001)
    sender = udp_socket(t.h, H)
    with receiver, sender:
        assert ping(t.h, H, K), "ping h -> k through the tunnel"
        send_udp(sender, K, 40001, 20)
        assert sorted(receive_udp(receiver, expect=20)) == list(range(20))
    wire.stop()

    sa_a = {c.direction.value: c for c in a.counters()}
    sa_b = {c.direction.value: c for c in b.counters()}
    assert sa_a["out"].packets == 3 + 20 and sa_b["in"].packets == 3 + 20
    assert sa_b["out"].packets == 3 and sa_a["in"].packets == 3  # the echo replies
    for node in (a, b):
        stats = node.stats()
        assert stats.running and stats.drops == {}, stats

    # What the wire saw: ARP and ESP, nothing else, and never the payload in clear.
    assert MARKER not in wire.pcap.read_bytes()
    plain = tshark_fields(tshark, wire.pcap, tmp_path / "ws", ["frame.protocols", "ip.src", "ip.dst"], [])
    ip_frames = [row for row in plain if row[0] != "eth:ethertype:arp"]
    assert ip_frames and all(row[0] == "eth:ethertype:ip:esp" for row in ip_frames), plain
    assert {(row[1], row[2]) for row in ip_frames} == {(str(FA), str(HA)), (str(HA), str(FA))}

    # tshark decrypts every frame with the SAs the AAA issued, and every ICV is good.
    fields = ["esp.spi", "esp.icv_good", "esp.icv_bad", "ip.src", "ip.dst", "ip.dsfield.dscp", "ip.proto"]
    rows = tshark_fields(tshark, wire.pcap, tmp_path / "ws", [*fields, "data.data"], [view_a, view_b])
    esp_rows = [row for row in rows if row[0]]
    assert len(esp_rows) == len(ip_frames) == 3 * 2 + 20
    inner_pairs = set()
    for spi, good, bad, src, dst, dscp, proto, data in esp_rows:
        assert (good, bad) == ("1", "0"), f"ICV of SPI {spi} not verified by tshark"
        outer_src, inner_src = src.split(",")
        inner_dst = dst.split(",")[1]
        inner_pairs.add((inner_src, inner_dst, proto.split(",")[1]))
        assert dscp.split(",")[0] == "46", "the outer header carries the path's DSCP"
        assert int(spi, 16) == (view_a.spi_out if outer_src == str(FA) else view_b.spi_out)
        if proto.endswith(",17"):
            assert bytes.fromhex(data).startswith(MARKER), "the inner UDP payload decrypts"
    assert inner_pairs == {(str(H), str(K), "1"), (str(K), str(H), "1"), (str(H), str(K), "17")}


@pytest.mark.netns
def test_delete_removes_the_routing_and_traffic_stops(
    topology: Topology, backend: Callable[..., UserspaceBackend], capture: Callable[[str, str], Capture]
) -> None:
    t = topology
    view_a, view_b = mirrored(GCM, FA, HA, (H_NET,), (K_NET,))
    a, b = backend(t.a, FA), backend(t.b, HA)
    a.install(view_a, "s1/FA_HA")
    b.install(view_b, "s1/FA_HA")
    with udp_socket(t.k, K, 40002) as receiver, udp_socket(t.h, H) as sender:
        send_udp(sender, K, 40002, 10)
        assert sorted(receive_udp(receiver, expect=10)) == list(range(10))

        assert a.delete("s1/FA_HA") == 1
        assert a.paths() == [] and a.routing() == ([], [])
        assert "lookup 4303" not in t.ip(t.a, "rule", "show").replace("fwmark 0x4303/0x4303 lookup main", "")
        assert t.ip(t.a, "route", "show", "table", "4303").strip() == ""
        wire = capture(t.b, t.wire_b)
        sent_before = a.stats().esp_out
        send_udp(sender, K, 40002, 10)
        assert receive_udp(receiver, timeout=0.5) == [], "nothing arrives once the path is deleted"
        wire.stop()
    assert a.stats().esp_out == sent_before
    # A has no other route to k's network: the packets stop at A, neither
    # tunnelled nor in clear; the capture on the wire is empty of IPv4.
    assert MARKER not in wire.pcap.read_bytes()
    (b_in, _) = b.counters()
    assert b_in.packets == 10
    assert a.delete("s1/FA_HA") == 0


@pytest.mark.netns
def test_handoff_make_before_break_moves_traffic(topology: Topology, backend: Callable[..., UserspaceBackend]) -> None:
    """A's path to k's address moves from B to C: the new path is installed first
    (make), the old one deleted after (break); traffic follows at once, and the
    routing into A's device stays in place throughout."""
    t = topology
    k_host = (IPv4Network(f"{K}/32"),)
    old_a, old_b = mirrored(CBC, FA, HA, (H_NET,), k_host)
    new_a, new_c = mirrored(CBC, FA, NEW, (H_NET,), k_host, spi_a=0x3003, spi_b=0x4004, role=PathRole.FA_HA)
    a, b, c = backend(t.a, FA), backend(t.b, HA), backend(t.c, NEW)
    a.install(old_a, "s1/FA_HA")
    b.install(old_b, "s1/FA_HA")
    with (
        udp_socket(t.k, K, 40003) as at_k,
        udp_socket(t.c, K, 40003) as at_c,
        udp_socket(t.h, H) as sender,
    ):
        send_udp(sender, K, 40003, 5)
        assert sorted(receive_udp(at_k, expect=5)) == list(range(5))

        c.install(new_c, "s1#2/FA_HA")
        a.install(new_a, "s1#2/FA_HA")  # make: the newest path wins at once
        assert a.routing() == ([(H_NET, k_host[0])], list(k_host)), "shared by both paths"
        send_udp(sender, K, 40003, 5)
        assert sorted(receive_udp(at_c, expect=5)) == list(range(5))
        assert receive_udp(at_k, timeout=0.2) == []

        assert a.delete("s1/FA_HA", peer=HA) == 1  # break
        assert [p.peer for p in a.paths()] == [NEW]
        assert a.routing() == ([(H_NET, k_host[0])], list(k_host)), "the route stays: the new path uses it"
        send_udp(sender, K, 40003, 5)
        assert sorted(receive_udp(at_c, expect=5)) == list(range(5))

        # Replies from C come back through the new path.
        reply = udp_socket(t.c, K)
        with reply, udp_socket(t.h, H, 40004) as at_h:
            send_udp(reply, H, 40004, 3)
            assert sorted(receive_udp(at_h, expect=3)) == list(range(3))
    assert {(s.direction.value, s.packets) for s in a.counters("s1#2/FA_HA")} == {("out", 10), ("in", 3)}
    assert sum(s.packets for s in b.counters() if s.direction.value == "in") == 5


def raw_sender(netns: str) -> socket.socket:
    """An IP_HDRINCL socket in ``netns``: sends outer packets exactly as given."""
    return call_in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))


def ip_udp(src: IPv4Address, dst: IPv4Address, payload: bytes, dport: int) -> bytes:
    """An inner IPv4/UDP packet (UDP checksum 0: none, RFC 768)."""
    total = 28 + len(payload)
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0, src.packed, dst.packed)
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + struct.pack(">HHHH", 40000, dport, 8 + len(payload), 0) + payload


@pytest.mark.netns
def test_garbage_is_counted_and_the_loop_survives(topology: Topology, backend: Callable[..., UserspaceBackend]) -> None:
    t = topology
    view_a, view_b = mirrored(GCM, FA, HA, (H_NET,), (K_NET,))
    a, b = backend(t.a, FA), backend(t.b, HA)
    a.install(view_a, "s1/FA_HA")
    b.install(view_b, "s1/FA_HA")
    # The test holds B's outbound key, as B does: it can forge B's packets.
    forger = EspSa(view_b.spi_out, GCM, view_b.key_out)
    outer = OuterHeader(HA, FA)

    def valid(payload: bytes, src: IPv4Address = K) -> bytes:
        return outer.wrap(forger.seal(ip_udp(src, H, MARKER + payload, 40005)))

    spi = view_a.spi_in.to_bytes(4, "big")
    first = valid(b"\x00\x00\x00\x01")
    tampered = bytearray(valid(b"\x00\x00\x00\x02"))
    tampered[-1] ^= 0x01
    garbage = {
        "malformed": [encapsulate(HA, FA, b""), encapsulate(HA, FA, b"\x01" * 7)],  # no SPI at all
        "unknown_spi": [encapsulate(HA, FA, b"\xde\xad\xbe\xef" + os.urandom(60))],
        "bad_icv": [encapsulate(HA, FA, spi + os.urandom(60)), bytes(tampered)],
        "replay": [first],  # the second copy, below
        "wrong_peer": [encapsulate(IPv4Address("192.0.2.99"), FA, valid(b"x")[20:])],
        "policy": [valid(b"y", src=IPv4Address("10.0.0.1"))],  # inner source outside B's selectors
        "next_header": [outer.wrap(forger.seal(b"\x00" * 40, next_header=59))],  # a dummy packet
        "too_old": [],
    }
    with raw_sender(t.b) as raw, udp_socket(t.h, H, 40005) as at_h:
        raw.sendto(first, (str(FA), 0))
        assert receive_udp(at_h, expect=1) == [1], "a forged-but-valid packet is accepted"
        for packets in garbage.values():
            for packet in packets:
                raw.sendto(packet, (str(FA), 0))
        # 70 more valid packets move the window past `first`'s neighbour: too old.
        late = valid(b"\x00\x00\x00\x03")
        for n in range(70):
            raw.sendto(valid((100 + n).to_bytes(4, "big")), (str(FA), 0))
        raw.sendto(late, (str(FA), 0))
        garbage["too_old"].append(late)
        assert len(receive_udp(at_h, expect=70)) == 70
        expected = {reason: len(packets) for reason, packets in garbage.items()}
        deadline = time.monotonic() + 5
        while sum(a.stats().drops.values()) < sum(expected.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.stats().drops == expected

        # Fuzz: random outer payloads, half of them with the path's SPI in front.
        rng = random.Random(4303)
        for n in range(400):
            body = rng.randbytes(rng.randrange(0, 1400))
            raw.sendto(encapsulate(HA, FA, (spi + body) if n % 2 else body), (str(FA), 0))
        raw.sendto(valid(b"\x00\x00\x00\x04"), (str(FA), 0))
        assert receive_udp(at_h, expect=1) == [4], "the data plane still works after the fuzz"
    stats = a.stats()
    assert stats.running and "internal" not in stats.drops
    assert stats.esp_in == 1 + sum(expected.values()) + 70 + 400 + 1
    assert stats.tun_out == 1 + 70 + 1
    assert sum(stats.drops.values()) == stats.esp_in - stats.tun_out

    # And traffic the other way still flows too.
    with udp_socket(t.k, K, 40006) as at_k, udp_socket(t.h, H) as sender:
        send_udp(sender, K, 40006, 5)
        assert sorted(receive_udp(at_k, expect=5)) == list(range(5))


@pytest.mark.netns
def test_rate_limit_polices_a_bronze_path_and_not_a_gold_one(
    topology: Topology, backend: Callable[..., UserspaceBackend]
) -> None:
    t = topology
    gold, bronze = QosSpec("gold", 46, 0), QosSpec("bronze", 10, 400)  # 400 kbit/s = 50,000 octets/s
    gold_a, gold_b = mirrored(GCM, FA, HA, (IPv4Network(f"{H}/32"),), (K_NET,), qos=gold)
    bronze_a, bronze_b = mirrored(
        GCM, FA, HA, (IPv4Network(f"{H2}/32"),), (K_NET,), spi_a=0x1101, spi_b=0x2202, qos=bronze
    )
    a, b = backend(t.a, FA), backend(t.b, HA)
    for view, node in ((gold_a, a), (gold_b, b), (bronze_a, a), (bronze_b, b)):
        node.install(view, "s1/" + view.qos.name if view.qos else "s1")
    count, size = 400, 1000
    results = {}
    with udp_socket(t.k, K, 40007) as at_k:
        for source, name in ((H, "gold"), (H2, "bronze")):
            with udp_socket(t.h, source) as sender:
                started = time.monotonic()
                send_udp(sender, K, 40007, count, size=size, pace=10)  # ~10 packets per ms at most
                results[name] = receive_udp(at_k, timeout=1.0)
                results[name + " elapsed"] = [int((time.monotonic() - started) * 1000)]
    stats = a.stats()
    (meter,) = stats.qos
    assert (meter.qos, meter.rate_kbps, meter.spi_out) == ("bronze", 400, 0x2202)
    assert meter.burst == 5000  # 100 ms of the rate
    # Gold: unlimited, everything arrives (a wide margin for losses that are not QoS).
    assert len(results["gold"]) >= 0.95 * count, results["gold"]
    # Bronze: at most the bucket's depth plus the rate over the whole time the
    # bucket could have refilled (sending and receiving, an upper bound), plus one packet.
    outer = 20 + 16 + size + 28 + 2 + 2 + 16  # ESP header+IV, inner, trailer, ICV (GCM, 4-octet alignment)
    elapsed = results["bronze elapsed"][0] / 1000
    ceiling = (meter.burst + 50_000 * elapsed) // outer + 1
    delivered = len(results["bronze"])
    assert meter.burst // outer <= delivered <= ceiling, (delivered, ceiling, elapsed)
    assert delivered < 0.5 * count
    assert meter.passed == delivered and meter.dropped == count - delivered
    assert stats.drops == {"rate_limited": meter.dropped}
    assert meter.dropped_octets == meter.dropped * outer
    # The receiver saw no gaps the policer did not make.
    assert b.stats().drops == {}


def path_rules(topology: Topology, netns: str) -> list[str]:
    """The path rules (priority 4304) in ``netns``, as ``ip rule`` prints them."""
    return [
        line.split(":", 1)[1].strip() for line in topology.ip(netns, "rule", "show").splitlines() if "4304:" in line
    ]


@pytest.mark.netns
def test_install_and_delete_rules_hold_with_routing(
    topology: Topology, backend: Callable[..., UserspaceBackend]
) -> None:
    t = topology
    a = backend(t.a, FA, transforms=[CBC, GCM])
    view, _ = mirrored(GCM, FA, HA, (H_NET,), (K_NET,))
    installed = a.install(view, "s1/FA_HA")
    assert a.install(view, "s1/FA_HA") is installed, "idempotent: same entry, no second rule"
    assert path_rules(t, t.a) == [f"from {H_NET} to {K_NET} lookup 4303"]

    # A conflicting SPI, an unsupported transform, a path for another node:
    # refused, and the routing is exactly as before.
    other_net = IPv4Network("10.20.0.0/16")
    conflicting = dataclasses.replace(mirrored(GCM, FA, NEW, (H_NET,), (other_net,))[0], spi_in=view.spi_in)
    with pytest.raises(SaConflict):
        a.install(conflicting, "s2/FA_HA")
    with pytest.raises(SaConflict):
        a.install(view, "someone-else")
    with pytest.raises(SaError, match="not for this node"):
        a.install(mirrored(GCM, HA, NEW, (K_NET,), (other_net,))[0], "s2/FA_HA")
    narrow = backend(t.b, HA, transforms=[CBC])
    with pytest.raises(SaUnsupported):
        narrow.install(mirrored(GCM, HA, FA, (K_NET,), (H_NET,))[0], "s1/FA_HA")
    assert path_rules(t, t.b) == [] and narrow.paths() == []
    # Keys are never installed twice (GCM nonces would repeat); the refusal
    # after the routing was added takes the routing back.
    assert a.delete("s1/FA_HA") == 1
    reused = dataclasses.replace(view, remote_ts=(other_net,))
    with pytest.raises(SaError, match="already used"):
        a.install(reused, "s1/FA_HA")
    assert a.paths() == [] and a.routing() == ([], []) and path_rules(t, t.a) == []
    assert t.ip(t.a, "route", "show", "table", "4303").strip() == ""

    # A routing failure (here: a rule already there that is not ours) leaves nothing
    # installed, and the keys unused.
    fresh, _ = mirrored(CBC, FA, HA, (H_NET,), (other_net,), spi_a=0x5005)
    t.ip(t.a, "rule", "add", "pref", "4304", "from", str(H_NET), "to", str(other_net), "lookup", "4303")
    try:
        with pytest.raises(SaError, match="cannot route"):
            a.install(fresh, "s3/FA_HA")
        assert a.paths() == [] and a.routing() == ([], [])
    finally:
        t.ip(t.a, "rule", "del", "pref", "4304", "from", str(H_NET), "to", str(other_net), "lookup", "4303")
    assert t.ip(t.a, "route", "show", "table", "4303").strip() == ""
    assert a.install(fresh, "s3/FA_HA").spi_in == 0x5005
    assert path_rules(t, t.a) == [f"from {H_NET} to {other_net} lookup 4303"]

    # close: rules, routes and the device are gone, and the backend refuses further calls.
    a.close()
    assert path_rules(t, t.a) == [] and "4303" not in t.ip(t.a, "rule", "show")
    assert a.tun_name not in t.ip(t.a, "link", "show")
    assert not a.stats().running
    for call in (a.paths, lambda: a.install(fresh, "s3/FA_HA"), lambda: a.delete("s3/FA_HA")):
        with pytest.raises(SaError, match="closed"):
            call()
    a.close()  # twice is fine
    assert "redacted" not in repr(a) and fresh.key_out.value.hex() not in repr(a)


@pytest.mark.netns
def test_host_to_host_path_does_not_loop(
    request: pytest.FixtureRequest,
    topology: Topology,
    backend: Callable[..., UserspaceBackend],
    capture: Callable[[str, str], Capture],
    require_tool: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The selectors cover the nodes themselves: the outer ESP packets to the
    peer must bypass the tunnel (fwmark rule), or they would loop into the device.

    Strict reverse-path filtering cannot work here: the reverse route to the
    peer now points into the device, so the peer's ESP and ARP would fail it.
    The nodes use loose filtering for this test (docs/sa-backends.md)."""
    require_tool("ping")
    t = topology

    def rp_filter(mode: int) -> None:  # the effective value is max(all, device)
        for ns in (t.a, t.b):
            _run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.all.rp_filter={mode}")

    rp_filter(2)
    request.addfinalizer(lambda: rp_filter(1))
    view_a, view_b = mirrored(GCM, FA, HA, (IPv4Network(f"{FA}/32"),), (IPv4Network(f"{HA}/32"),))
    a, b = backend(t.a, FA), backend(t.b, HA)
    a.install(view_a, "s1/FA_HA")
    b.install(view_b, "s1/FA_HA")
    wire = capture(t.b, t.wire_b)
    assert ping(t.a, FA, HA)
    wire.stop()
    assert (a.stats().tun_in, a.stats().esp_out, b.stats().tun_out, b.stats().esp_out) == (3, 3, 3, 3)
    assert a.stats().drops == {} and b.stats().drops == {}
    rows = tshark_fields(require_tool("tshark"), wire.pcap, tmp_path / "ws", ["frame.protocols"], [])
    assert [row[0] for row in rows if row[0] != "eth:ethertype:arp"] == ["eth:ethertype:ip:esp"] * 6
