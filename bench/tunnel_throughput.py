#!/usr/bin/env python3
"""ESP tunnel throughput: the ``userspace`` backend's data plane against strongSwan's
kernel-libipsec, on the same link, with the same packets and transform, in one run.

Both tunnels join the same two-namespace topology (bench/userspace_esp.py's
``namespaces``: a veth between ``a`` 192.0.2.1 and ``b`` 192.0.2.2, the inner
addresses 198.51.100.10 and 203.0.113.5 on their loopbacks; a fresh pair per
tunnel, prefix ``aab<pid>t``) and carry one direction of UDP datagrams making
**1400-octet inner IPv4 packets** from a paced sender in ``a`` to a receiver
in ``b``, **AES-GCM-16-128** (RFC 4106):

* ``userspace``: one :class:`~aaa_vpn.sa.userspace.UserspaceBackend` per node,
  each in its own process (``process`` layout, as deployed), manual keys;
  raw ESP (IP protocol 50) on the veth. bench/userspace_esp.py's
  ``run_nodes``.
* ``strongswan``: one charon-systemd 5.9.8 with kernel-libipsec per node
  (aaa_vpn.sa.charon.Charon), the path installed through the project's
  :class:`~aaa_vpn.sa.strongswan.StrongSwanBackend` (IKEv2 PSK, ESP
  ``aes128gcm16``), charon's own routes (table 220 into ``ipsec0``). libipsec
  always encapsulates ESP in UDP 4500 (8 more octets per packet on the wire).
  Measured with bench/userspace_esp.py's ``measure`` (the ``--traffic-only``
  machinery), the CPU of both charons accounted.

Each step offers a rate for ``--seconds`` (``max``: an unpaced sender).
Reported per tunnel: delivered packets/s and Mbit/s (inner octets), loss, the
CPU of the two ends (share of one core), where the kernel dropped packets;
the headline is the highest delivered rate with loss <= ``--max-loss``
(1 %), and the ratio userspace / libipsec of those headlines, measured in the
same run. ``--repeat K`` alternates the two tunnels K times (userspace,
strongswan, userspace, ...) and reports the median of the headlines.

Usage (root; from the repository root):

    .venv/bin/python bench/tunnel_throughput.py --quick              # < 60 s
    .venv/bin/python bench/tunnel_throughput.py --repeat 2
    .venv/bin/python bench/tunnel_throughput.py --rates 5000,10000,20000,max --seconds 3 --json /tmp/t.json

Prints markdown. Every namespace is deleted and every charon and node
process stopped by PID at the end, also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from ipaddress import IPv4Network
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import userspace_esp as ue  # noqa: E402  (bench/userspace_esp.py)
from netns_cleanup import shield, sweep  # noqa: E402  (bench/netns_cleanup.py)

from aaa_vpn.model import EspTransform  # noqa: E402
from aaa_vpn.sa.charon import Charon  # noqa: E402
from aaa_vpn.sa.strongswan import StrongSwanBackend  # noqa: E402
from aaa_vpn.wire.profile import PathRole  # noqa: E402
from tests.test_sa_strongswan import views  # noqa: E402

TRANSFORM = EspTransform.AES_GCM_16_128
DEFAULT_RATES = "10000,20000,30000,35000,40000,45000,50000,60000,70000,max"
QUICK_RATES = "5000,20000,40000"


def run_userspace(rates: list[int], seconds: float, prefix: str) -> tuple[list[ue.Step], list[str]]:
    steps, stats = ue.run_nodes(TRANSFORM, "process", rates, seconds, prefix)
    drops = {node: {k: v for k, v in s["drops"].items() if v} for node, s in stats.items()}
    return steps, [f"node drops at the end (by reason): {drops}", "CPU: A, B = each node's process"]


def run_strongswan(rates: list[int], seconds: float, prefix: str) -> tuple[list[ue.Step], list[str]]:
    directory = Path(tempfile.mkdtemp(prefix="aab_"))  # short: the VICI socket path must fit sockaddr_un
    charons: list[Charon] = []
    try:
        with ue.namespaces(prefix) as (ns_a, ns_b):
            backends = []
            for name, ns, node in (("a", ns_a, ue.A_NODE), ("b", ns_b, ue.B_NODE)):
                charon = Charon(directory / name, netns=ns)
                charons.append(charon)
                charon.start()
                backends.append(StrongSwanBackend(node, charon.vici_socket))
            a_view, b_view = views(
                PathRole.FA_HA,
                ue.A_NODE,
                ue.B_NODE,
                IPv4Network(f"{ue.A_INNER}/32"),
                IPv4Network(f"{ue.B_INNER}/32"),
                0x1001,
                0x2002,
                seed=7,
                transform=TRANSFORM,
                lifetime=3600,
            )
            backends[0].install(a_view, "bench/FA_HA")  # the responder (lower address) first
            backends[1].install(b_view, "bench/FA_HA")  # initiates: IKE_SA + CHILD_SA
            sas = [c for sa in backends[0].sas() for c in sa.children if c.state == "INSTALLED"]
            if not sas:
                raise RuntimeError("strongSwan: no CHILD_SA installed")
            ping = subprocess.run(
                ["ip", "netns", "exec", ns_a, "ping", "-c", "1", "-W", "2", "-I", str(ue.A_INNER), str(ue.B_INNER)],
                capture_output=True,
                check=False,
            )
            if ping.returncode != 0:
                raise RuntimeError("strongSwan: no ping through the tunnel")
            version = backends[0].daemon_version()
            pids = {f"charon {name}": (charon.pid, None) for name, charon in zip("AB", charons, strict=True)}
            accounting = ue.Accounting({k: (pid, tid) for k, (pid, tid) in pids.items() if pid is not None})
            steps = ue.measure((ns_a, ue.A_INNER), (ns_b, ue.B_INNER), rates, seconds, accounting, "ipsec0")
            for backend in backends:
                backend.close()
            return steps, [
                f"{version}, kernel-libipsec, ESP-in-UDP 4500",
                "CPU: charon A, B = each daemon; 'A TUN queue' = ipsec0's drops in namespace a",
            ]
    finally:
        for charon in charons:
            charon.stop()
        shutil.rmtree(directory, ignore_errors=True)


TUNNELS = {"userspace": run_userspace, "strongswan": run_strongswan}


def cpu_per_packet(steps: list[ue.Step], max_loss: float) -> float | None:
    """The ends' CPU per delivered packet (us): median over the paced steps from 20,000 pkt/s within ``max_loss``."""
    values = [
        1e6 * sum(step.cpu.values()) / step.delivered
        for step in steps
        if step.offered != "max" and int(step.offered.replace(",", "")) >= 20_000 and step.loss <= max_loss
    ]
    return statistics.median(values) if values else None


def step_table(steps: list[ue.Step]) -> list[str]:
    lines = [
        "| offered pkt/s | sent | delivered pkt/s | Mbit/s | loss | kernel drops (where) | CPU (share of one core) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for step in steps:
        cpu = ", ".join(f"{name} {share:.0%}" for name, share in step.cpu.items()) or "-"
        lines.append(
            f"| {step.offered} | {step.sent:,} | {step.delivered:,.0f} | {step.mbit:,.0f} | {step.loss:.1%} "
            f"| {step.losses_text()} | {cpu} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rates", default=DEFAULT_RATES, help=f"offered pkt/s; max = unpaced (default {DEFAULT_RATES})"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per step (default 2)")
    parser.add_argument("--max-loss", type=float, default=0.01, help="loss allowed for the headline (default 0.01)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two tunnels this many times (default 1)")
    parser.add_argument("--tunnels", default="userspace,strongswan", help="comma-separated (default both)")
    parser.add_argument("--json", type=Path, help="write every step here")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_RATES}, 1 s per step")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.repeat = QUICK_RATES, 1.0, 1
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, TUN devices, raw sockets)")
    tunnels = args.tunnels.split(",")
    if unknown := [t for t in tunnels if t not in TUNNELS]:
        parser.error(f"unknown tunnel(s) {', '.join(unknown)}")
    rates = ue.parse_rates(args.rates)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # The first Ctrl-C / SIGTERM stops the run; later ones must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    load = os.getloadavg()[0]
    began = time.monotonic()
    runs: list[tuple[str, int, list[ue.Step], list[str]]] = []
    try:
        for repeat in range(args.repeat):
            for index, tunnel in enumerate(tunnels):
                print(f"{tunnel} (run {repeat + 1} of {args.repeat})", file=sys.stderr, flush=True)
                prefix = f"aab{os.getpid() % 10000}t{index}_"
                steps, notes = TUNNELS[tunnel](rates, args.seconds, prefix)
                runs.append((tunnel, repeat, steps, notes))
    finally:
        shield()
        if left := sweep(re.compile(rf"^aab{os.getpid() % 10000}t\d_")):
            print(f"cleaned up after an interruption: {len(left)} namespaces", file=sys.stderr)
    elapsed = time.monotonic() - began

    command = shlex.join([".venv/bin/python", "bench/tunnel_throughput.py", *argv])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {stamp}: ESP tunnel throughput, userspace vs strongSwan kernel-libipsec, 1400-octet inner packets",
        "",
        f"- machine: {ue.machine()}; load average before: {load:.2f}; run took {elapsed:.0f} s",
        f"- {TRANSFORM.name} both; {args.seconds:g} s per step; Mbit/s counts inner octets; one direction",
        f"- command: `{command}` (as root)",
        "",
    ]
    headlines: dict[str, list[float]] = {t: [] for t in tunnels}
    for tunnel, repeat, steps, notes in runs:
        top = ue.best(steps, args.max_loss)
        headlines[tunnel].append(top.delivered if top else 0.0)
        lines += [f"### {tunnel} (run {repeat + 1})", "", *(f"- {note}" for note in notes), "", *step_table(steps)]
        maxed = [s for s in steps if s.offered == "max"]
        summary = f"best with loss <= {args.max_loss:.0%}: " + (
            f"**{top.delivered:,.0f} pkt/s, {top.mbit:,.0f} Mbit/s** (offered {top.offered})" if top else "none"
        )
        if maxed:
            summary += f"; unpaced sender: {maxed[0].delivered:,.0f} pkt/s"
        lines += ["", summary, ""]
    cpu: dict[str, list[float]] = {t: [] for t in tunnels}
    for tunnel, _repeat, steps, _notes in runs:
        per_packet = cpu_per_packet(steps, args.max_loss)
        if per_packet is not None:
            cpu[tunnel].append(per_packet)
    lines += [
        "### Summary",
        "",
        "| tunnel | best pkt/s at <= 1 % loss (each run) | median pkt/s | Mbit/s | CPU us per packet, both ends "
        "(each run) |",
        "|---|---|---:|---:|---|",
    ]
    medians = {}
    for tunnel, values in headlines.items():
        medians[tunnel] = statistics.median(values)
        each = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(
            f"| {tunnel} | {each} | {medians[tunnel]:,.0f} | {medians[tunnel] * ue.INNER_SIZE * 8 / 1e6:,.0f} "
            f"| {', '.join(f'{v:.1f}' for v in cpu[tunnel]) or '-'} |"
        )
    lines += [
        "",
        "CPU per packet: the two ends' CPU (node processes, or charons) per delivered packet, median over the "
        f"paced steps from 20,000 pkt/s with loss <= {args.max_loss:.0%}.",
    ]
    if medians.get("strongswan") and "userspace" in medians:
        pairs = [u / s for u, s in zip(headlines["userspace"], headlines["strongswan"], strict=False) if s]
        lines += [
            "",
            f"**userspace / libipsec: {medians['userspace'] / medians['strongswan']:.2f}x** (medians; per run "
            + ", ".join(f"{p:.2f}x" for p in pairs)
            + ")",
        ]
        if cpu["userspace"] and cpu["strongswan"]:
            ratio = statistics.median(cpu["userspace"]) / statistics.median(cpu["strongswan"])
            lines.append(f"CPU per packet, userspace / libipsec: {ratio:.2f}x (medians)")
    print("\n".join(lines))
    if args.json:
        document = {
            "command": command,
            "when": stamp,
            "runs": [
                {"tunnel": t, "run": r, "notes": n, "steps": [{**asdict(s), "delivered": s.delivered} for s in steps]}
                for t, r, steps, n in runs
            ],
        }
        args.json.write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
