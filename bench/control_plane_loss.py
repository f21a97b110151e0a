"""Registration and handoff latency under random loss on every link, in
network namespaces: how long flows A to E take, and how many fail, with 0 %,
5 % and 20 % of the UDP datagrams dropped on every link.

What runs: the namespace lab (aaa_vpn.lab.netns) -- home AAA, foreign AAA,
HA, FA1 and FA2 (visited-a.example, behind the foreign AAA), FA3
(visited-b.example, asking the home AAA), a static and a dynamic gateway,
every one a real ``aaa-vpn`` process in its own namespace with the userspace
SA backend -- and nftables dropping ``numgen random mod 100 < N`` of the UDP
datagrams on every link (aaa_vpn.lab.loss: once per backbone hop in the
hub's bridge, once per access link at the node's and the correspondents'
end). The mobile node (one long-running simulator, ``retransmit`` 0.5 s,
``attempts`` 6) goes round after round: register at FA1, move to FA2 (flow
C, the foreign AAA answers; flow E), to FA3 (flow D; flow E), back to FA1
(flow D through the foreign AAA; flow E), deregister. A round has four
registrations or handoffs; ``--rounds 50`` makes the 200 of the issue.

After every step the agents settle (no exchange under way) and their state
files are checked (aaa_vpn.lab.loss.disagreements: the gateways' bindings
are the HA's, visitors only where the HA's binding is, every SA owned,
tables as the binding says); a failed step must leave the HA's binding as
it was. The latency is the node's: first Registration Request to the
accepted reply (challenge round trips, retransmissions included).

Usage (as root, from the repository root):

    .venv/bin/python bench/control_plane_loss.py --rounds 50
    .venv/bin/python bench/control_plane_loss.py --rounds 5 --levels 0,20 --no-record

Results are printed and appended to bench/results/control-plane-loss.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from netns_cleanup import shield, sweep  # noqa: E402  (bench/netns_cleanup.py)

from aaa_vpn.lab.loss import Step, dropped, run_rounds, set_loss  # noqa: E402
from aaa_vpn.lab.netns import Lab  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def distribution(steps: list[Step]) -> dict[str, Any]:
    times = [1000 * s.seconds for s in steps if s.ok]
    return {
        "n": len(steps),
        "ok": len(times),
        "p50": percentile(times, 0.50),
        "p90": percentile(times, 0.90),
        "p99": percentile(times, 0.99),
        "max": max(times, default=float("nan")),
        "mean": statistics.fmean(times) if times else float("nan"),
    }


def kind(step: Step) -> str:
    if step.action == "deregister":
        return "deregistration"
    return "registration" if step.previous is None else "handoff"


def interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="rounds per loss level (4 registrations/handoffs each)")
    parser.add_argument("--levels", default="0,5,20", help="loss percentages, comma-separated")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results/")
    parser.add_argument("--json", type=Path, help="also write every step here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)  # the lab is removed on the way out
    started = time.monotonic()
    load_before = os.getloadavg()
    results: dict[int, dict[str, Any]] = {}
    every: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="aaa-vpn-loss-") as directory:
        lab = Lab(Path(directory), backend="userspace", prefix=f"abl{os.getpid() % 10000}_", forwarding_lifetime=3)
        try:
            lab.create()
            lab.start()
            lab.start_driver()
            for level in levels:
                set_loss(lab, level)
                level_started = time.monotonic()
                try:
                    steps = run_rounds(lab, args.rounds, progress=lambda s: print(".x"[not s.ok], end="", flush=True))
                    lost = dropped(lab)
                finally:
                    set_loss(lab, 0)
                print()
                moves = [s for s in steps if kind(s) != "deregistration"]
                results[level] = {
                    "seconds": time.monotonic() - level_started,
                    "dropped": lost,
                    "all": distribution(moves),
                    "by_kind": {
                        k: distribution([s for s in steps if kind(s) == k])
                        for k in ("registration", "handoff", "deregistration")
                    },
                    "failures": Counter(str(s.code) for s in steps if not s.ok),
                    "problems": [(s.action, s.fa, s.code, p) for s in steps for p in s.problems],
                    "notes": [(s.action, s.fa, s.code, n) for s in steps for n in s.notes],
                }
                every[level] = [s.to_json() for s in steps]
                r = results[level]
                print(
                    f"{level:>3} % loss: {r['all']['ok']}/{r['all']['n']} registrations and handoffs succeeded,"
                    f" p50 {r['all']['p50']:.0f} ms, p99 {r['all']['p99']:.0f} ms, max {r['all']['max']:.0f} ms;"
                    f" failures {dict(r['failures'])}; disagreements {len(r['problems'])}; dropped {lost}"
                )
                for problem in r["problems"] + r["notes"]:
                    print("   ", problem)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 1
        finally:
            shield()  # the lab goes down completely, also when Ctrl-C is pressed again
            lab.close()
            if left := sweep(re.compile(rf"^{lab.prefix}")):
                print(f"cleaned up after an interruption: {len(left)} namespaces", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(every, indent=1))
    total = time.monotonic() - started
    text = report(args, results, total, load_before, os.getloadavg())
    print(text)
    if not args.no_record:
        with (ROOT / "bench" / "results" / "control-plane-loss.md").open("a") as out:
            out.write(text + "\n")
    return 0 if all(not r["problems"] for r in results.values()) else 1


def report(
    args: argparse.Namespace,
    results: dict[int, dict[str, Any]],
    total: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: control plane under random loss (namespaces)",
        "",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()};"
        f" load average {load_before[0]:.1f} before, {load_after[0]:.1f} after",
        f"- {args.rounds} rounds per level (register FA1, move FA2 (C+E), FA3 (D+E), FA1 (D+E), deregister):"
        f" {4 * args.rounds} registrations and handoffs; userspace backend; every element its own process and"
        " namespace; UDP dropped with `numgen random mod 100 < N` on every link; run took"
        f" {total:.0f} s",
        f"- command: `.venv/bin/python bench/control_plane_loss.py --rounds {args.rounds} --levels {args.levels}`",
        "",
        "| loss | registrations + handoffs ok | p50 ms | p90 ms | p99 ms | max ms | mean ms"
        " | first reg. p50 / p99 ms | handoff p50 / p99 ms | deregistrations ok | failures (code: n)"
        " | disagreements | deregistrations done, reply lost | datagrams dropped |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for level, r in results.items():
        a, reg, hand, dereg = (
            r["all"],
            r["by_kind"]["registration"],
            r["by_kind"]["handoff"],
            r["by_kind"]["deregistration"],
        )
        failures = ", ".join(f"{c}: {n}" for c, n in sorted(r["failures"].items())) or "-"
        lines.append(
            f"| {level} % | {a['ok']}/{a['n']} | {a['p50']:.0f} | {a['p90']:.0f} | {a['p99']:.0f} | {a['max']:.0f}"
            f" | {a['mean']:.0f} | {reg['p50']:.0f} / {reg['p99']:.0f} | {hand['p50']:.0f} / {hand['p99']:.0f}"
            f" | {dereg['ok']}/{dereg['n']} | {failures} | {len(r['problems'])} | {len(r['notes'])}"
            f" | {sum(r['dropped'].values())} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
