#!/usr/bin/env python3
"""Traffic lost during a handoff: the whole system in network namespaces
(:class:`aaa_vpn.lab.netns.Lab`: home AAA, foreign AAA, HA, FA1-3, a static and a
dynamic gateway, correspondents ch1 and ch2, the mobile node, every element a
real ``aaa-vpn`` process with real IPsec) while both correspondents stream to
the mobile node and it moves.

Per configuration (one fresh lab each):

* backend ``userspace`` (the project's ESP on TUN devices) or ``strongswan``
  (a charon-systemd with kernel-libipsec per agent, IKEv2 with the AAA's PSKs);
* smooth handoff on (``forwarding_lifetime = 10``: the new FA notifies the
  previous one, which forwards to it through an FA-FA path) or off (0).
  strongSwan runs only with it off: kernel-libipsec picks the newest of two
  policies with equal selectors and ignores priorities, so at the new FA the
  forwarding path's receiving end would take the node's own outbound traffic
  (docs/sa-backends.md; tests/test_netns_e2e.py runs it the same way);
* the link switch: ``break`` (the lab driver: the old link goes down, the
  new one comes up, then the node registers -- a hard handoff) or, with
  ``--overlap``, also ``overlap`` (a soft handoff, make before break: the new
  link comes up and the default route moves to it, the node registers, and the
  old link goes down ``--overlap-ms`` after the accepted reply; the lab
  driver's ``soft`` move).

The node registers at FA1, then ch2 (behind the dynamic gateway, no QoS
limit) sends ``--rate`` datagrams/s (200 octets) and ch1 (behind the static
gateway, whose path has a 512 kbit/s QoS class) ``--static-rate``; then
``--rounds`` rounds of three moves, ``--gap`` seconds apart: FA1 -> FA2 (same
visited domain, flow C: the foreign AAA answers), FA2 -> FA3 (other domain,
flow D: through the home AAA), FA3 -> FA1 (flow D). Every datagram sent and
never received is charged to the move whose interval (from the move command
to the next one) its send time falls in. Reported per configuration and
handoff type, median and max over the rounds: datagrams lost per handoff on
each stream, the outage (lost / rate, in ms), the longest gap between two
arrivals around the move (from the move command until 0.3 s after the reply,
or after the old link went down; ms; at 500/s the normal gap is 2 ms), the
registration time at the node (``seconds``: first Registration Request to
the accepted reply, including the MN-FA challenge round trip: the node has
no agent advertisements, so its first request to an FA gets code 105 with a
challenge), and how many moves needed a retransmission.

The loss count and the gap measure different things: a datagram that was
delayed (queued in an agent that had no CPU while the others worked on the
registration, then sent on the new path) adds to the gap but is not lost. On
a small machine both depend on the scheduler; read them together.

Revisits: the node comes back to each FA three moves later. Without smooth
handoff nothing tells the previous FA that the node left, so it keeps the
visitor, its SAs and its host route to the node until the registration
lifetime ends (600 s by default): when the node comes back, the FA's routing
is already in place (installs are cheaper, and datagrams that reach it before
the HA's reply are delivered). With smooth handoff the previous FA drops the
visitor when notified. ``--lifetime 3`` (with ``--gap 1.5``) lets that stale
state expire before each revisit, so every move meets an FA without it (the
node's registrations then ask for that lifetime).

Usage (root; from the repository root):

    .venv/bin/python bench/handoff_outage.py --quick                  # smoke run, < 60 s
    .venv/bin/python bench/handoff_outage.py --rounds 10 --overlap --json /tmp/handoff.json
    .venv/bin/python bench/handoff_outage.py --rounds 10 --overlap --lifetime 3   # no stale state at revisits
    .venv/bin/python bench/handoff_outage.py --backends userspace --smooth on --rate 1000
    .venv/bin/python bench/handoff_outage.py --smooth off --lifetime 3 --rounds 5 --repeat 3   # the backends in turn

With both backends and a configuration they share (smooth handoff off), the
report ends with strongswan's median ch2 outage as a multiple of userspace's,
per handoff type. ``--repeat N`` runs the configurations N times in turn and
pools each one's moves: on a shared machine whose load changes during the run,
both backends then meet the same load.

The markdown table goes to stdout (``--json PATH`` writes every move's raw
numbers). Namespaces are ``aab<pid><k>_*``; every process is stopped by its
PID and every namespace deleted at the end, also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from netns_cleanup import shield, sweep  # noqa: E402  (bench/netns_cleanup.py)

from aaa_vpn.lab.netns import Lab  # noqa: E402
from aaa_vpn.lab.topology import HOME_ADDRESS, LabError  # noqa: E402

STATIC_PORT, DYNAMIC_PORT = 9001, 9002
DEFAULT_LIFETIME = 600  # the node's registration lifetime (MnConfig's default, as the lab driver)
MOVES = (("fa2", "fa1", "FA1->FA2 (C, same domain)"), ("fa3", "fa2", "FA2->FA3 (D)"), ("fa1", "fa3", "FA3->FA1 (D)"))


@dataclass(frozen=True)
class Config:
    backend: str
    smooth: bool
    overlap: bool

    @property
    def label(self) -> str:
        smooth = "smooth" if self.smooth else "no smooth"
        return f"{self.backend}, {smooth}, {'overlap' if self.overlap else 'break'}"


@dataclass
class Move:
    kind: str
    round: int
    command: float  # wall clock when the move was asked for
    code: int | None
    seconds: float
    link_switched: float
    finished: float
    old_link_down: float | None = None  # overlap only
    exchange: list[dict[str, Any]] = field(default_factory=list)  # the node's Mobile IP datagrams
    lost_at_ms: dict[str, list[float]] = field(default_factory=dict)  # stream -> send times of the lost, from command
    lost: dict[str, int] = field(default_factory=dict)  # stream -> datagrams
    outage_ms: dict[str, float] = field(default_factory=dict)  # stream -> lost / rate
    gap_ms: dict[str, float] = field(default_factory=dict)  # stream -> longest gap between arrivals


# -- measuring -----------------------------------------------------------------------------------------


def charge(sent: dict[str, Any], received: dict[str, Any], moves: list[Move], stream: str, rate: float) -> int:
    """Fill in ``stream``'s losses and longest gaps of every move; return the datagrams
    lost before the first move (the warm-up, charged to no move)."""
    got = set(received["seqs"])
    starts = [m.command for m in moves]
    ends = [*starts[1:], float("inf")]
    counts = [0] * len(moves)
    at: list[list[float]] = [[] for _ in moves]
    before = 0
    for seq, when in enumerate(sent["times"]):
        if seq in got:
            continue
        if when < starts[0]:
            before += 1
            continue
        for index in range(len(moves)):
            if starts[index] <= when < ends[index]:
                counts[index] += 1
                at[index].append(round(1000 * (when - starts[index]), 1))
                break
    arrivals = sorted(received["arrivals"])
    for move, start, end, count, times in zip(moves, starts, ends, counts, at, strict=True):
        move.lost[stream] = count
        move.lost_at_ms[stream] = times
        move.outage_ms[stream] = round(1000 * count / rate, 1)
        # around the move: from the command until 0.3 s after the reply (overlap: after the old link went down)
        until = min(end, max(move.finished, move.old_link_down or 0.0) + 0.3)
        gaps = [b - a for a, b in itertools.pairwise(arrivals) if b > start and a < until]
        move.gap_ms[stream] = round(1000 * max(gaps, default=0.0), 1)
    return before


def run_config(config: Config, args: argparse.Namespace, index: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="aab_"))  # short: charon's VICI socket path
    lab = Lab(
        directory,
        backend=config.backend,
        forwarding_lifetime=10 if config.smooth else 0,
        prefix=f"aab{os.getpid() % 10000}{index}_",
        python=sys.executable,
    )
    started = time.monotonic()
    try:
        lab.create()
        lab.start()
        lab.start_driver(args.lifetime or DEFAULT_LIFETIME)

        def move(fa: str, previous: str | None) -> dict[str, Any]:
            return lab.move(fa, previous, overlap_ms=args.overlap_ms if config.overlap else None)

        first = move("fa1", None)
        if first.get("code") != 0:
            raise LabError(f"the first registration at FA1 failed: {first.get('code')} {first.get('detail')}")
        lab_ready = time.monotonic() - started
        receivers = {"ch2": lab.receive("mn", DYNAMIC_PORT), "ch1": lab.receive("mn", STATIC_PORT)}
        senders = {
            "ch2": lab.send("ch2", HOME_ADDRESS, args.rate, port=DYNAMIC_PORT),
            "ch1": lab.send("ch1", HOME_ADDRESS, args.static_rate, port=STATIC_PORT),
        }
        time.sleep(args.gap)
        moves: list[Move] = []
        for round_ in range(args.rounds):
            for fa, previous, kind in MOVES:
                command = time.time()
                result = move(fa, previous)
                moves.append(
                    Move(
                        kind,
                        round_,
                        command,
                        result.get("code"),
                        float(result.get("seconds", float("nan"))),
                        float(result.get("link_switched", command)),
                        float(result.get("finished", command)),
                        result.get("old_link_down"),
                        result.get("exchange", []),
                    )
                )
                if result.get("code") != 0:
                    print(f"  {config.label}: {kind} round {round_}: code {result.get('code')}", file=sys.stderr)
                time.sleep(args.gap)
        sent = {name: lab.stop_traffic(process) for name, process in senders.items()}
        time.sleep(0.5)  # what is in flight arrives
        received = {name: lab.stop_traffic(process) for name, process in receivers.items()}
        # Datagrams sent in the last 0.5 s (after the last gap) are charged to nobody.
        rates = {"ch2": args.rate, "ch1": args.static_rate}
        warmup = {name: charge(sent[name], received[name], moves, name, rates[name]) for name in sent}
        totals = {
            name: {
                "sent": len(sent[name]["times"]),
                "received": len(set(received[name]["seqs"])),
                "send_errors": sent[name].get("send_errors", 0),
                "lost_before_first_move": warmup[name],
            }
            for name in sent
        }
        return {
            "config": asdict(config),
            "label": config.label,
            "lab_ready_seconds": round(lab_ready, 2),
            "streams": totals,
            "moves": [asdict(m) for m in moves],
        }
    finally:
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        shield()  # the lab goes down completely, also when Ctrl-C is pressed again
        lab.close()
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        if args.keep:
            print(f"  kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


def pool(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per configuration from several passes (``--repeat``): the
    moves of all passes (rounds numbered on), the streams' counts summed."""
    pooled: dict[str, dict[str, Any]] = {}
    for result in results:
        into = pooled.get(result["label"])
        if into is None:
            first = copy.deepcopy(result)
            pooled[result["label"]] = {**first, "lab_ready_seconds": [result["lab_ready_seconds"]], "passes": 1}
            continue
        offset = 1 + max((m["round"] for m in into["moves"]), default=-1)
        into["moves"] += [{**m, "round": m["round"] + offset} for m in result["moves"]]
        into["lab_ready_seconds"].append(result["lab_ready_seconds"])
        into["passes"] += 1
        for name, counts in result["streams"].items():
            for what, value in counts.items():
                into["streams"][name][what] += value
    return list(pooled.values())


# -- the report ----------------------------------------------------------------------------------------


def _stat(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    fmt = f"{{:.{digits}f}}"
    return f"{fmt.format(statistics.median(values))} / {fmt.format(max(values))}"


def retransmitted(move: dict[str, Any]) -> bool:
    """The node sent a Registration Request again (no reply within 0.5 s)."""
    exchange = move["exchange"]
    requests = sum(1 for e in exchange if e.get("direction") == "sent")
    replies = sum(1 for e in exchange if e.get("direction") == "received")
    return requests > replies


def table(results: list[dict[str, Any]], rate: float, static_rate: float) -> str:
    lines = [
        f"| configuration | handoff | n | ch2 lost ({rate:g}/s) | ch2 outage ms | ch2 longest gap ms "
        f"| ch1 lost ({static_rate:g}/s) | ch1 longest gap ms | registration ms | retransmitted | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for _fa, _previous, kind in MOVES:
            moves = [m for m in result["moves"] if m["kind"] == kind]
            ok = [m for m in moves if m["code"] == 0]
            lines.append(
                f"| {result['label']} | {kind} | {len(moves)} "
                f"| {_stat([m['lost']['ch2'] for m in ok])} | {_stat([m['outage_ms']['ch2'] for m in ok])} "
                f"| {_stat([m['gap_ms']['ch2'] for m in ok])} | {_stat([m['lost']['ch1'] for m in ok])} "
                f"| {_stat([m['gap_ms']['ch1'] for m in ok])} | {_stat([1000 * m['seconds'] for m in ok])} "
                f"| {sum(retransmitted(m) for m in moves)} | {len(moves) - len(ok)} |"
            )
    lines.append("")
    lines.append(
        "Each cell: median / max over the rounds; retransmitted: moves in which the node sent a Registration "
        "Request again after 0.5 s without a reply; failed: moves not accepted (left out of the other columns)."
    )
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """Per strongswan configuration with a userspace twin (same smooth handoff
    and link switch) in this run: the median ch2 outage of each, per handoff
    type and over all moves, and strongswan's as a multiple of userspace's."""
    lines = []
    by_config = {(r["config"]["backend"], r["config"]["smooth"], r["config"]["overlap"]): r for r in results}
    for (backend, smooth, overlap), result in by_config.items():
        twin = by_config.get(("userspace", smooth, overlap))
        if backend != "strongswan" or twin is None:
            continue
        cells = []
        for kind in [k for _fa, _previous, k in MOVES] + ["all moves"]:
            medians = []
            for r in (result, twin):
                outages = [
                    m["outage_ms"]["ch2"] for m in r["moves"] if m["code"] == 0 and kind in (m["kind"], "all moves")
                ]
                medians.append(statistics.median(outages) if outages else float("nan"))
            ratio = medians[0] / medians[1] if medians[1] else float("nan")
            cells.append(f"{kind}: {medians[0]:.0f} / {medians[1]:.0f} ms = {ratio:.2f}x")
        lines.append(f"- ch2 outage, strongswan / userspace ({result['label'].split(', ', 1)[1]}): " + "; ".join(cells))
    return lines


def configurations(args: argparse.Namespace) -> tuple[list[Config], list[str]]:
    configs: list[Config] = []
    skipped: list[str] = []
    smooth_choices = {"on": (True,), "off": (False,), "both": (True, False)}[args.smooth or "both"]
    links = (False, True) if args.overlap else (False,)
    for backend in args.backends.split(","):
        for smooth in smooth_choices:
            if backend == "strongswan" and smooth:
                skipped.append(
                    "strongswan with smooth handoff: kernel-libipsec picks the newest of two policies with equal "
                    "selectors (priorities ignored), so the forwarding path's receiving end at the new FA would "
                    "take the node's own outbound traffic"
                )
                continue
            for overlap in links:
                configs.append(Config(backend, smooth, overlap))
    return configs, skipped


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of three moves (default 10)")
    parser.add_argument("--rate", type=float, default=500, help="ch2 datagrams/s, no QoS limit (default 500)")
    parser.add_argument("--static-rate", type=float, default=150, help="ch1 datagrams/s (default 150)")
    parser.add_argument("--backends", default="userspace,strongswan", help="comma-separated (default both)")
    parser.add_argument("--smooth", choices=("on", "off", "both"), help="smooth handoff (default both)")
    parser.add_argument("--overlap", action="store_true", help="also run every configuration with a soft handoff")
    parser.add_argument("--overlap-ms", type=int, default=500, help="old link kept after the reply (default 500)")
    parser.add_argument("--gap", type=float, default=1.5, help="seconds between moves (default 1.5)")
    parser.add_argument(
        "--lifetime",
        type=int,
        help="registration lifetime in s (default 600, the lab driver); below 3 x --gap the previous FAs' "
        "visitor state expires before the node comes back",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the configurations this many times in turn (A, B, A, B, ...) and pool each one's moves, "
        "so that load which changes during the run weighs on all of them alike (default 1)",
    )
    parser.add_argument("--json", type=Path, help="write every move's numbers here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, userspace smooth and strongswan")
    parser.add_argument("--keep", action="store_true", help="keep each lab's directory (logs, state files)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if args.quick:
        args.rounds, args.gap, args.repeat = 1, 1.0, 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    backends = args.backends.split(",")
    if unknown := [b for b in backends if b not in ("userspace", "strongswan")]:
        parser.error(f"unknown backend(s) {', '.join(unknown)}")

    def stop(signum: int, _frame: object) -> None:
        # The first Ctrl-C / SIGTERM stops the run; later ones must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    configs, skipped = configurations(args)
    if args.quick and args.smooth is None:  # per backend the end-to-end test's configuration
        configs = [c for c in configs if c.smooth == (c.backend == "userspace")]
    if args.quick:
        configs = [c for c in configs if not c.overlap or c.backend == "userspace"]
    began = time.monotonic()
    load = os.getloadavg()[0]
    if len(configs) > 10:
        parser.error("at most 10 configurations in one run")
    results = []
    try:
        for turn in range(args.repeat):
            for index, config in enumerate(configs):
                passes = "" if args.repeat == 1 else f" (pass {turn + 1} of {args.repeat})"
                print(f"{config.label}: {args.rounds} rounds{passes} ...", file=sys.stderr, flush=True)
                results.append(run_config(config, args, index))
        results = pool(results)
    finally:
        shield()
        if left := sweep(re.compile(rf"^aab{os.getpid() % 10000}\d_")):
            print(f"cleaned up after an interruption: {len(left)} namespaces", file=sys.stderr)
    elapsed = time.monotonic() - began
    command = shlex.join([".venv/bin/python", "bench/handoff_outage.py", *argv])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## {stamp}: datagrams lost per handoff (bench/handoff_outage.py)\n")
    print(
        f"- machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average before: {load:.2f}; run took {elapsed:.0f} s"
    )
    print(
        f"- ch2 -> node {args.rate:g}/s, ch1 -> node {args.static_rate:g}/s, 200 octets; {args.rounds} rounds, "
        f"moves {args.gap:g} s apart"
        + (f"; overlap: old link down {args.overlap_ms} ms after the reply" if args.overlap else "")
        + f"; registration lifetime {args.lifetime or DEFAULT_LIFETIME} s"
        + ("" if args.lifetime is None else " (this script's node driver for every move)")
    )
    print(f"- command: `{command}`")
    for reason in dict.fromkeys(skipped):
        print(f"- skipped: {reason}")
    for result in results:
        streams = ", ".join(
            f"{name} sent {s['sent']} received {s['received']} "
            f"(lost before the first move {s['lost_before_first_move']})"
            for name, s in result["streams"].items()
        )
        ready = ", ".join(f"{seconds}" for seconds in result["lab_ready_seconds"])
        passes = "" if result["passes"] == 1 else f" ({result['passes']} passes)"
        print(f"- {result['label']}{passes}: lab up in {ready} s; {streams}")
    print()
    print(table(results, args.rate, args.static_rate))
    if compared := ratios(results):
        print()
        print("\n".join(compared))
    if args.json:
        document = {"command": command, "when": stamp, "args": {k: str(v) for k, v in vars(args).items()}}
        args.json.write_text(json.dumps({**document, "skipped": skipped, "results": results}, indent=1))
        print(f"\nraw numbers: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
