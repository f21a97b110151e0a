#!/usr/bin/env python3
"""Throughput of the ``userspace`` ESP data plane between two network namespaces.

Topology (created here, prefix ``aub_<pid>_``, deleted at the end, also on
Ctrl-C / SIGTERM)::

    namespace a: 192.0.2.1 (veth) + 198.51.100.10 (lo)  ==  namespace b: 192.0.2.2 (veth) + 203.0.113.5 (lo)

Node A and node B each run a :class:`~aaa_vpn.sa.userspace.UserspaceBackend`
with the mirrored views of one path (198.51.100.10/32 <-> 203.0.113.5/32),
keys as the AAA would issue them. A sender in namespace a sends UDP datagrams
that make **1400-octet inner IPv4 packets** from 198.51.100.10 to
203.0.113.5; they go through A's TUN device, are sealed, cross the veth as ESP,
are opened by B and delivered to a receiver in namespace b. One direction,
no replies.

Each step offers a rate (a paced sender) or, for ``max``, as much as one
Python sender can push (the data plane then drops at its TUN queue, and the
sender takes a core from the nodes: on a 2-vCPU machine ``max`` measures the
nodes under that contention). Reported per step: offered and delivered
packets/s, delivered Mbit/s (inner octets), loss, and the CPU of each node's
data plane (share of one core). The headline is the highest delivered rate
with loss under ``--max-loss`` (default 1 %), and the ``max`` step.

Layouts (``--layout``):

* ``process`` (default, as deployed: every agent is its own process): each
  node in a child process of its own, so each has its own interpreter lock.
* ``threads``: both nodes' data planes in this one process (as the tests run
  them): they share one interpreter lock, so this shows what the lock costs.

``--traffic-only`` measures any existing tunnel instead (for example
strongSwan with kernel-libipsec, reference/test-environment.md section 2):
no namespaces or nodes are created; ``--send NETNS:ADDRESS`` and
``--receive NETNS:ADDRESS`` say where the sender and receiver run, and
``--cpu-pid`` (repeatable) names the processes whose CPU to account (e.g. the
two charon PIDs). ``--compare LABEL=PKTS`` adds another measurement's best
delivered packets/s to the summary with the ratio (ours / theirs).

Usage (root; from the repository root):

    .venv/bin/python bench/userspace_esp.py                            # GCM-128 and CBC-128, process layout
    .venv/bin/python bench/userspace_esp.py --layout threads
    .venv/bin/python bench/userspace_esp.py --rates 20000,40000,max --seconds 3
    .venv/bin/python bench/userspace_esp.py --traffic-only --send envx_sa:198.51.100.1 \\
        --receive envx_sb:203.0.113.1 --cpu-pid 1234 --cpu-pid 1235 --label strongswan-libipsec
    .venv/bin/python bench/userspace_esp.py --compare strongswan-libipsec=25000
    .venv/bin/python bench/userspace_esp.py --no-record                # print only

Results are printed and appended to ``bench/results/userspace-esp.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402

from aaa_vpn.model import EspTransform, KeyMode  # noqa: E402
from aaa_vpn.sa.tun import call_in_netns  # noqa: E402
from aaa_vpn.sa.userspace import UserspaceBackend  # noqa: E402
from aaa_vpn.secret import Secret  # noqa: E402
from aaa_vpn.wire.profile import PathProfile, PathRole  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "userspace-esp.md"
INNER_SIZE = 1400
UDP_PAYLOAD = INNER_SIZE - 28
PORT = 40999
A_NODE, B_NODE = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
A_INNER, B_INNER = IPv4Address("198.51.100.10"), IPv4Address("203.0.113.5")
TRANSFORMS = {"gcm128": EspTransform.AES_GCM_16_128, "cbc128": EspTransform.AES_CBC_128_HMAC_SHA256}
TICKS = os.sysconf("SC_CLK_TCK")


# -- plumbing ---------------------------------------------------------------------------


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def namespaces(prefix: str) -> Iterator[tuple[str, str]]:
    a, b = prefix + "a", prefix + "b"
    created: list[str] = []
    try:
        for ns in (a, b):
            run("ip", "netns", "add", ns)
            created.append(ns)
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        tag = prefix.replace("_", "")[:10]
        run("ip", "link", "add", tag + "a", "netns", a, "type", "veth", "peer", "name", tag + "b", "netns", b)
        for ns, dev, node, inner in ((a, tag + "a", A_NODE, A_INNER), (b, tag + "b", B_NODE, B_INNER)):
            run("ip", "-n", ns, "addr", "add", f"{node}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{inner}/32", "dev", "lo")
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def mirrored(transform: EspTransform) -> tuple[PathProfile, PathProfile]:
    up, down = Secret(os.urandom(transform.keymat_length)), Secret(os.urandom(transform.keymat_length))
    a_ts, b_ts = (IPv4Network(f"{A_INNER}/32"),), (IPv4Network(f"{B_INNER}/32"),)
    view_a = PathProfile(
        role=PathRole.FA_HA,
        local=A_NODE,
        peer=B_NODE,
        local_ts=a_ts,
        remote_ts=b_ts,
        key_mode=KeyMode.MANUAL,
        esp_transform=transform,
        spi_in=0x1001,
        spi_out=0x2002,
        key_in=down,
        key_out=up,
        lifetime=3600,
    )
    view_b = dataclasses.replace(
        view_a, local=B_NODE, peer=A_NODE, local_ts=b_ts, remote_ts=a_ts, spi_in=0x2002, spi_out=0x1001
    )
    view_b = dataclasses.replace(view_b, key_in=up, key_out=down)
    return view_a, view_b


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads) or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- the processes ----------------------------------------------------------------------


def node_main(netns: str, view: PathProfile, tun: str, conn: Connection) -> None:
    """A node in a child process: its backend, one path, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    backend = UserspaceBackend(view.local, tun_name=tun, netns=netns)
    try:
        backend.install(view, "bench/FA_HA")
        conn.send(("ready", os.getpid(), backend.thread_id))
        while True:
            command = conn.recv()
            if command == "stats":
                conn.send(dataclasses.asdict(backend.stats()))
            else:
                break
    finally:
        backend.close()


def receiver_main(netns: str, address: IPv4Address, conn: Connection) -> None:
    """Counts datagrams between "start" and "stop"; answers (packets, octets, first, last)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        sock.bind((str(address), PORT))
        sock.setblocking(False)
        return sock

    sock = call_in_netns(netns, make)
    conn.send("ready")
    recv = sock.recv
    while True:
        command = conn.recv()
        if command != "start":
            return
        packets = octets = 0
        first = last = 0.0
        while True:
            ready, _, _ = select.select([sock.fileno(), conn.fileno()], [], [], 1.0)
            if conn.fileno() in ready:
                conn.recv()  # "stop"
                conn.send((packets, octets, first, last))
                break
            if sock.fileno() in ready:
                while True:
                    try:
                        data = recv(65535)
                    except BlockingIOError:
                        break
                    if not packets:
                        first = time.monotonic()
                    packets += 1
                    octets += len(data)
                last = time.monotonic()


def sender_main(netns: str, source: IPv4Address, to: IPv4Address, rate: int, seconds: float, conn: Connection) -> None:
    """Sends for ``seconds`` at ``rate`` packets/s (0: as fast as it can); answers (sent, elapsed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((str(source), 0))
        return sock

    sock = call_in_netns(netns, make)
    payload = os.urandom(UDP_PAYLOAD)
    address = (str(to), PORT)
    sendto, clock = sock.sendto, time.perf_counter
    sent = 0
    start = clock()
    end = start + seconds
    if rate <= 0:
        while True:
            for _ in range(256):
                try:
                    sendto(payload, address)
                    sent += 1
                except OSError:  # ENOBUFS: the device queue is full
                    pass
            if clock() >= end:
                break
    else:
        while True:
            now = clock()
            if now >= end:
                break
            due = int((now - start) * rate)
            while sent < due:
                try:
                    sendto(payload, address)
                except OSError:
                    pass
                sent += 1
            time.sleep(0.0005)
    conn.send((sent, clock() - start))


# -- measuring --------------------------------------------------------------------------


@dataclass
class Step:
    offered: str  # packets/s or "max"
    sent: int
    seconds: float
    received: int
    cpu: dict[str, float]  # name -> share of one core
    losses: dict[str, int]  # where the kernel dropped packets (a queue whose reader fell behind) -> count

    @property
    def delivered(self) -> float:
        return self.received / self.seconds

    @property
    def mbit(self) -> float:
        return self.delivered * INNER_SIZE * 8 / 1e6

    def losses_text(self) -> str:
        return ", ".join(f"{where} {count:,}" for where, count in self.losses.items() if count) or "-"

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0


class Accounting:
    """CPU of named processes or threads over one step."""

    def __init__(self, targets: dict[str, tuple[int, int | None]]) -> None:
        self.targets = targets
        self._before: dict[str, float] = {}
        self._start = 0.0

    def start(self) -> None:
        self._start = time.monotonic()
        self._before = {name: cpu_seconds(*target) for name, target in self.targets.items()}

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._start
        return {name: (cpu_seconds(*self.targets[name]) - before) / elapsed for name, before in self._before.items()}


def kernel_drops(ns_send: str, ns_receive: str, device: str | None) -> dict[str, int]:
    """Packets the kernel dropped so far, by queue: the sending node's TUN device queue
    (its data plane fell behind), the receiving namespace's raw sockets (the ESP
    socket: the receiving node fell behind) and UDP receive buffers (the receiver)."""
    drops = {}
    if device is not None:
        out = subprocess.run(["ip", "-n", ns_send, "-s", "-j", "link", "show", "dev", device], capture_output=True)
        drops["A TUN queue"] = int(json.loads(out.stdout)[0]["stats64"]["tx"]["dropped"])
    raw = subprocess.run(
        ["ip", "netns", "exec", ns_receive, "cat", "/proc/net/raw", "/proc/net/snmp"], capture_output=True
    )
    lines = raw.stdout.decode().splitlines()
    drops["B raw socket"] = sum(int(line.split()[-1]) for line in lines if line.strip()[:2].rstrip(":").isdigit())
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    drops["receiver UDP buffer"] = int(udp[1][udp[0].index("RcvbufErrors")])
    return drops


def measure(
    send: tuple[str, IPv4Address],
    receive: tuple[str, IPv4Address],
    rates: list[int],
    seconds: float,
    accounting: Accounting,
    device: str | None = None,
) -> list[Step]:
    fork = multiprocessing.get_context("fork")
    parent, child = fork.Pipe()
    receiver = fork.Process(target=receiver_main, args=(receive[0], receive[1], child), daemon=True)
    receiver.start()
    try:
        assert parent.recv() == "ready"
        steps = []
        for index, rate in enumerate([1000, *rates]):
            warmup = index == 0  # a short unmeasured step first: ARP, caches, the nodes' first packets
            parent.send("start")
            there, here = fork.Pipe()
            duration = 0.3 if warmup else seconds
            sender = fork.Process(target=sender_main, args=(send[0], send[1], receive[1], rate, duration, here))
            drops_before = kernel_drops(send[0], receive[0], device)
            accounting.start()
            sender.start()
            sent, elapsed = there.recv()
            sender.join()
            time.sleep(0.3)  # what is still in the queues arrives
            cpu = accounting.stop()
            parent.send("stop")
            received, _octets, _first, _last = parent.recv()
            if warmup:
                continue
            losses = {k: v - drops_before[k] for k, v in kernel_drops(send[0], receive[0], device).items()}
            step = Step("max" if rate == 0 else f"{rate:,}", sent, elapsed, received, cpu, losses)
            steps.append(step)
            cpu_text = ", ".join(f"{name} {share:.0%}" for name, share in cpu.items())
            print(
                f"  offered {step.offered:>8}: delivered {step.delivered:>9,.0f} pkt/s {step.mbit:>6,.0f} Mbit/s"
                f"  loss {step.loss:6.1%}  cpu: {cpu_text}" + f"  kernel drops: {step.losses_text()}",
                flush=True,
            )
        parent.send("quit")
        return steps
    finally:
        receiver.join(timeout=5)
        if receiver.is_alive():
            receiver.terminate()


def run_nodes(
    transform: EspTransform, layout: str, rates: list[int], seconds: float, prefix: str
) -> tuple[list[Step], dict[str, Any]]:
    """One transform: namespaces, both nodes, the sweep; returns the steps and the nodes' final stats."""
    view_a, view_b = mirrored(transform)
    with namespaces(prefix) as (ns_a, ns_b):
        if layout == "threads":
            node_a = UserspaceBackend(A_NODE, tun_name="aubtun", netns=ns_a)
            node_b = UserspaceBackend(B_NODE, tun_name="aubtun", netns=ns_b)
            try:
                node_a.install(view_a, "bench/FA_HA")
                node_b.install(view_b, "bench/FA_HA")
                assert node_a.thread_id is not None and node_b.thread_id is not None
                pid = os.getpid()
                accounting = Accounting({"A": (pid, node_a.thread_id), "B": (pid, node_b.thread_id)})
                steps = measure((ns_a, A_INNER), (ns_b, B_INNER), rates, seconds, accounting, "aubtun")
                stats = {"A": dataclasses.asdict(node_a.stats()), "B": dataclasses.asdict(node_b.stats())}
            finally:
                node_a.close()
                node_b.close()
            return steps, stats
        fork = multiprocessing.get_context("fork")
        nodes = {}
        try:
            for name, ns, view in (("A", ns_a, view_a), ("B", ns_b, view_b)):
                parent, child = fork.Pipe()
                process = fork.Process(target=node_main, args=(ns, view, "aubtun", child), daemon=True)
                process.start()
                message = parent.recv()
                assert message[0] == "ready", message
                nodes[name] = (process, parent, message[1], message[2])
            accounting = Accounting({name: (pid, tid) for name, (_p, _c, pid, tid) in nodes.items()})
            steps = measure((ns_a, A_INNER), (ns_b, B_INNER), rates, seconds, accounting, "aubtun")
            stats = {}
            for name, (_process, conn, _pid, _tid) in nodes.items():
                conn.send("stats")
                stats[name] = conn.recv()
            return steps, stats
        finally:
            for process, conn, _pid, _tid in nodes.values():
                with contextlib.suppress(OSError):
                    conn.send("stop")
                process.join(timeout=10)
                if process.is_alive():
                    process.terminate()
                    process.join()


# -- the report ---------------------------------------------------------------------------


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} vCPU ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def best(steps: list[Step], max_loss: float) -> Step | None:
    good = [step for step in steps if step.offered != "max" and step.loss <= max_loss]
    return max(good, key=lambda step: step.delivered) if good else None


def report(label: str, steps: list[Step], max_loss: float, extra: list[str]) -> tuple[list[str], float]:
    lines = [f"### {label}", "", *extra]
    lines += [
        "",
        "| offered pkt/s | sent | delivered pkt/s | Mbit/s | loss | kernel drops (where) | CPU (share of one core) |",
    ]
    lines.append("|---:|---:|---:|---:|---:|---:|---|")
    for step in steps:
        cpu = ", ".join(f"{name} {share:.0%}" for name, share in step.cpu.items()) or "-"
        lines.append(
            f"| {step.offered} | {step.sent:,} | {step.delivered:,.0f} | {step.mbit:,.0f} | {step.loss:.1%} "
            f"| {step.losses_text()} | {cpu} |"
        )
    top = best(steps, max_loss)
    saturated = [step for step in steps if step.offered == "max"]
    headline = top.delivered if top else 0.0
    summary = f"best with loss <= {max_loss:.0%}: " + (
        f"**{top.delivered:,.0f} pkt/s, {top.mbit:,.0f} Mbit/s** (offered {top.offered})" if top else "none"
    )
    if saturated:
        summary += f"; unpaced sender: {saturated[0].delivered:,.0f} pkt/s, {saturated[0].mbit:,.0f} Mbit/s"
    lines += ["", summary, ""]
    return lines, headline


def parse_rates(text: str) -> list[int]:
    rates = []
    for item in text.split(","):
        item = item.strip().lower()
        rates.append(0 if item == "max" else int(item.replace("_", "")))
    return rates


def parse_endpoint(text: str) -> tuple[str, IPv4Address]:
    netns, _, address = text.rpartition(":")
    if not netns:
        raise argparse.ArgumentTypeError(f"expected NETNS:ADDRESS, not {text!r}")
    return netns, IPv4Address(address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--transform", action="append", choices=sorted(TRANSFORMS), help="repeatable (default: both)")
    parser.add_argument("--layout", choices=("process", "threads"), default="process")
    parser.add_argument(
        "--rates", default="10000,20000,30000,40000,50000,60000,70000,80000,max", help="offered pkt/s; max = unpaced"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per step (default 2)")
    parser.add_argument("--max-loss", type=float, default=0.01, help="loss allowed for the headline (default 0.01)")
    parser.add_argument("--traffic-only", action="store_true", help="measure an existing tunnel (--send, --receive)")
    parser.add_argument("--send", type=parse_endpoint, help="NETNS:ADDRESS of the sender (--traffic-only)")
    parser.add_argument("--receive", type=parse_endpoint, help="NETNS:ADDRESS of the receiver (--traffic-only)")
    parser.add_argument("--cpu-pid", type=int, action="append", default=[], help="account this PID's CPU (repeatable)")
    parser.add_argument("--label", default="", help="name of the measured tunnel (--traffic-only)")
    parser.add_argument("--compare", action="append", default=[], help="LABEL=PKTS: another result for the summary")
    parser.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, TUN devices, raw sockets)")
    rates = parse_rates(args.rates)
    compare = {}
    for item in args.compare:
        label, _, value = item.partition("=")
        compare[label] = float(value.replace(",", "").replace("_", ""))

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join([Path(sys.executable).name, "bench/userspace_esp.py", *(argv or sys.argv[1:])])
    lines = [
        f"## {now}: ESP tunnel throughput between two namespaces, {INNER_SIZE}-octet inner packets",
        "",
        f"- machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}",
        f"- cryptography {cryptography.__version__}",
        f"- {args.seconds:g} s per step; Mbit/s counts inner octets; CPU = data-plane thread (threads) "
        "or node process (process)",
        f"- command: `{command}`",
        "",
    ]
    headlines: dict[str, float] = {}
    prefix = f"aub_{os.getpid() % 100000}_"

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if args.traffic_only:
        if args.send is None or args.receive is None:
            parser.error("--traffic-only needs --send and --receive")
        label = args.label or "existing tunnel"
        print(f"{label}: {args.send[0]}:{args.send[1]} -> {args.receive[0]}:{args.receive[1]}", flush=True)
        accounting = Accounting({f"pid {pid}": (pid, None) for pid in args.cpu_pid})
        steps = measure(args.send, args.receive, rates, args.seconds, accounting)
        section, headlines[label] = report(label, steps, args.max_loss, [])
        lines += section
    else:
        for name in args.transform or list(TRANSFORMS):
            transform = TRANSFORMS[name]
            label = f"userspace, {transform.name}, {args.layout} layout"
            print(label, flush=True)
            steps, stats = run_nodes(transform, args.layout, rates, args.seconds, prefix)
            drops = {node: dict(s["drops"]) for node, s in stats.items()}
            extra = [f"- node drops at the end (by reason): {drops}"]
            section, headlines[label] = report(label, steps, args.max_loss, extra)
            lines += section
    if compare:
        lines += ["### Comparison", "", "| measurement | pkt/s | Mbit/s | ours / it |", "|---|---:|---:|---|"]
        for label, value in headlines.items():
            lines.append(f"| {label} | {value:,.0f} | {value * INNER_SIZE * 8 / 1e6:,.0f} | |")
        for label, value in compare.items():
            ratios = ", ".join(f"{mine / value:.2f}x" for mine in headlines.values() if value)
            lines.append(f"| {label} (given) | {value:,.0f} | {value * INNER_SIZE * 8 / 1e6:,.0f} | {ratios} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        header = "" if RESULTS.exists() else "# Userspace ESP data plane throughput (bench/userspace_esp.py)\n\n"
        with RESULTS.open("a") as out:
            out.write(header + text + "\n")
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
