"""Registration and handoff latency (p50/p99) for many mobile nodes: initial
registration, same-domain handoff (flow C, answered by the foreign AAA from its
cache) and inter-domain handoff (flow D, through the home AAA), in one run.

What runs: the home AAA (on a real SQLite database), a foreign AAA for the
visited domain, the HA, two FAs of the visited domain (FA1, FA2), one FA of
another domain without a foreign AAA (FA3), a static and a dynamic gateway,
all as sans-IO agents in this one process with real UDP sockets on loopback
(tests/mobility.py) and memory SA backends that really install the keys. Each
datagram between the visited domains and the home domain is held ``--wan-ms``
milliseconds (one way): loopback has no distance, so the home domain's is
emulated where it matters, in the delivery of those datagrams (the kernel here
has no netem).

Each mobile node, one after the other: registers through FA1 (via the foreign
AAA to the home AAA), moves to FA2 (flow C), then to FA3 (flow D). The time is
measured at the mobile node, from its first Registration Request to the
accepted reply, including the MN-FA challenge round trip every first contact
with an FA costs (RFC 4721: the FA answers 105 with a challenge).

Usage (from the repository root):

    .venv/bin/python bench/registration_latency.py --mns 1000 --wan-ms 10
    .venv/bin/python bench/registration_latency.py --mns 200 --wan-ms 5 --no-record

Results are printed and appended to bench/results/registration-latency.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aaa_vpn.model import (  # noqa: E402
    EspTransform,
    Service,
    User,
    VpnRecord,
)
from aaa_vpn.roles.agent import RegistrationDone  # noqa: E402
from aaa_vpn.roles.mn import MnConfig, MobileNode  # noqa: E402
from aaa_vpn.store.sqlite import SqliteStore  # noqa: E402
from tests.mobility import (  # noqa: E402
    FA1,
    FA2,
    FA3,
    GW_DYNAMIC,
    GW_STATIC,
    HA,
    MN_AAA,
    MN_HA,
    Network,
    provision_network,
)


def home_address(index: int) -> IPv4Address:
    return IPv4Address(int(IPv4Address("198.18.0.1")) + index)  # RFC 2544 benchmarking range


def provisioner(count: int):  # type: ignore[no-untyped-def]
    def provision(store: SqliteStore) -> None:
        with store.transaction():
            provision_network(store)
            store.add_service(Service("gold", esp_transform=EspTransform.AES_GCM_16_256))
            for i in range(count):
                nai = f"mn{i}@home.example"
                store.add_user(User(nai, IPv4Address(HA), MN_AAA, 256, MN_HA, home_address=home_address(i)))
                store.add_vpn_record(VpnRecord(nai, IPv4Network("203.0.113.0/25"), "gw-static", "gold"))
                store.add_vpn_record(VpnRecord(nai, IPv4Network("203.0.113.128/25"), "gw-dynamic", "gold"))

    return provision


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mns", type=int, default=1000, help="mobile nodes (default 1000)")
    parser.add_argument("--wan-ms", type=float, default=10.0, help="one-way delay visited <-> home domain (ms)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aaa_vpn-latency-") as tmp:
        net = Network(Path(tmp), provisioner(args.mns), foreign=True)
        net.wan_delay = args.wan_ms / 1000
        net.add_ha()
        for name, address in (("fa1", FA1), ("fa2", FA2), ("fa3", FA3)):
            net.add_fa(name, address)
        net.add_gw("gw-static", GW_STATIC)
        net.add_gw("gw-dynamic", GW_DYNAMIC)
        results: dict[str, list[float]] = {
            "registration": [],
            "handoff C (same domain)": [],
            "handoff D (other domain)": [],
        }
        failures = 0
        started = time.time()
        try:
            for i in range(args.mns):
                config = MnConfig(f"mn{i}@home.example", home_address(i), IPv4Address(HA), 256, MN_HA, MN_AAA)
                mn = MobileNode(config)
                name = f"mn{i}"
                net._add(name, mn, f"127.0.1.{i % 250 + 1}", 0, radius=False, backend=False)
                node = net.nodes[name]
                steps = (
                    ("registration", FA1, None),
                    ("handoff C (same domain)", FA2, FA1),
                    ("handoff D (other domain)", FA3, FA2),
                )
                for label, fa, previous in steps:
                    before = len(node.done())
                    previous_fa = IPv4Address(previous) if previous else None
                    mn.register(net.fa_address(fa), time.time(), previous_fa=previous_fa)
                    elapsed = net.run_until(lambda node=node, before=before: len(node.done()) > before)
                    result: RegistrationDone = node.done()[-1]
                    if result.code != 0:
                        failures += 1
                    else:
                        results[label].append(elapsed * 1000)
                for sock in node.sockets.values():
                    sock.close()
                del net.nodes[name]
        finally:
            net.close()
        wall = time.time() - started

    foreign = net.foreign
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: registration and handoff latency",
        "",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"- {args.mns} mobile nodes, one after the other; one-way delay visited <-> home domain: {args.wan_ms} ms"
        f" (round trip {2 * args.wan_ms} ms); all agents in one process on loopback, memory SA backends",
        f"- failures: {failures}; foreign AAA: {foreign.counters['proxied'] if foreign else 0} proxied,"
        f" {foreign.counters['handoffs_answered'] if foreign else 0} handoffs answered locally; run took {wall:.1f} s",
        f"- command: `.venv/bin/python bench/registration_latency.py --mns {args.mns} --wan-ms {args.wan_ms}`",
        "",
        "| step | n | p50 ms | p99 ms | mean ms | in home-domain round trips (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, values in results.items():
        if not values:
            continue
        p50 = percentile(values, 0.5)
        lines.append(
            f"| {label} | {len(values)} | {p50:.1f} | {percentile(values, 0.99):.1f} | {statistics.fmean(values):.1f}"
            + (f" | {p50 / (2 * args.wan_ms):.2f} |" if args.wan_ms else " | - |")
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_record:
        out = ROOT / "bench" / "results" / "registration-latency.md"
        with out.open("a") as handle:
            handle.write(report + "\n")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
