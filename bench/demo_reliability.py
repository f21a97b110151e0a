#!/usr/bin/env python3
"""How dependable the demo is: ``aaa-vpn demo`` run N times in a row beside
CPU hogs, and ``aaa-vpn demo --netns --backend B`` M times per backend.

* **Loopback** (``--runs``, default 50): ``aaa-vpn demo --json``, one run after
  the other, while ``--hogs`` (default 2) processes ``yes > /dev/null`` keep
  the CPUs busy. The hogs are started by this script before the first run and
  stopped by their PIDs after the last (also on Ctrl-C / SIGTERM).
* **Network namespaces** (``--netns-runs``, default 10, root only): ``aaa-vpn
  demo --netns --backend B --json`` for each backend the netns demo supports
  (:data:`aaa_vpn.lab.netns.BACKENDS`), without hogs unless ``--netns-hogs``.

Every run gets ``--timeout`` seconds; a run that takes longer gets SIGTERM (the
demo then stops its processes and removes its namespaces itself), SIGKILL 30 s
later, and counts as failed. A run succeeds when it exits 0 and its JSON says
``ok``. For each failure the demo's own verdict is kept: the checks that
failed, with their figures (``verdict`` in the demo's report).

The counts, durations (median / max) and every failure's verdict are printed
and appended to ``bench/results/demo-reliability.md`` with the command
(``--no-record``: printed only). Each run's full report can be kept with
``--keep-reports DIR``.

Usage (from the repository root; the netns part needs root):

    .venv/bin/python bench/demo_reliability.py                      # 50 + 10 per backend, ~25 min
    .venv/bin/python bench/demo_reliability.py --runs 5 --netns-runs 2 --no-record
    .venv/bin/python bench/demo_reliability.py --runs 0 --backends strongswan

This is a benchmark-style script, not a test: it takes minutes and its
outcome depends on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aaa_vpn.lab.netns import BACKENDS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "demo-reliability.md"


@dataclass
class Run:
    """One demo run."""

    number: int
    exit_status: int | None  # None: killed after the timeout
    seconds: float
    ok: bool
    verdict: str  # the demo's verdict when it failed ("" when it succeeded)


@dataclass
class Series:
    """The runs of one kind (loopback, or netns with one backend)."""

    label: str
    arguments: list[str]  # after ``aaa-vpn``
    hogs: int
    runs: list[Run] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        return [*aaa_vpn_command(), *self.arguments]

    @property
    def successes(self) -> int:
        return sum(run.ok for run in self.runs)


def aaa_vpn_command() -> list[str]:
    """``aaa-vpn`` as this checkout's code: ``python -m aaa_vpn.cli`` run from the
    repository root (the venv's ``aaa-vpn`` script may belong to another checkout
    that shares the venv, e.g. a git worktree's)."""
    return [sys.executable, "-m", "aaa_vpn.cli"]


class Hogs:
    """``count`` processes ``yes`` writing to /dev/null, started and stopped by PID."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for _ in range(self.count):
            self.processes.append(subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL))

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def __enter__(self) -> Hogs:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def verdict_of(report: dict[str, Any] | None, exit_status: int | None, stderr: str) -> str:
    """The demo's own verdict, or what is known when there is none."""
    if exit_status is None:
        return "killed after the timeout"
    if report is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        return f"exit status {exit_status}, no JSON report: {tail}"
    verdict = str(report.get("verdict") or "")
    if not verdict:
        verdict = str(report.get("error") or "no verdict in the report")
    verdict = verdict.removeprefix("FAILED: ")
    if report.get("ok") and exit_status != 0:
        verdict = f"report ok but exit status {exit_status}"
    return verdict


def run_once(command: list[str], number: int, timeout: float, keep: Path | None, label: str) -> Run:
    started = time.monotonic()
    # The demo's own processes inherit the environment: this checkout first on their path too.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        exit_status: int | None = process.returncode
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the demo cleans up after itself on SIGTERM
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        exit_status = None
    except BaseException:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=30)
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    seconds = time.monotonic() - started
    try:
        report = json.loads(stdout)
        if not isinstance(report, dict):
            report = None
    except ValueError:
        report = None
    ok = exit_status == 0 and report is not None and report.get("ok") is True
    verdict = "" if ok else verdict_of(report, exit_status, stderr.decode(errors="replace"))
    if keep is not None:
        name = label.replace(" ", "_").replace("/", "_")
        (keep / f"{name}-{number:03d}.json").write_bytes(stdout)
        if not ok:
            (keep / f"{name}-{number:03d}.stderr").write_bytes(stderr)
    return Run(number, exit_status, round(seconds, 1), ok, verdict)


def run_series(series: Series, count: int, timeout: float, keep: Path | None) -> None:
    print(f"{series.label}: {count} runs ({shlex.join(series.command)})", file=sys.stderr, flush=True)
    for number in range(1, count + 1):
        run = run_once(series.command, number, timeout, keep, series.label)
        series.runs.append(run)
        mark = "ok" if run.ok else f"FAILED: {run.verdict}"
        print(f"  {series.label} {number}/{count}: {run.seconds} s, {mark}", file=sys.stderr, flush=True)


def render(series_list: list[Series], command: str, load: float, elapsed: float, stamp: str) -> str:
    lines = [
        f"## {stamp}: demo reliability (bench/demo_reliability.py)",
        "",
        f"- machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()};"
        f" load average before: {load:.2f}; run took {elapsed / 60:.1f} min",
        f"- command: `{command}`",
        "",
        "| demo | hogs | runs | succeeded | failed | seconds per run (median / max) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for series in series_list:
        seconds = [run.seconds for run in series.runs]
        durations = f"{statistics.median(seconds):.1f} / {max(seconds):.1f}" if seconds else "-"
        lines.append(
            f"| `{shlex.join(['aaa-vpn', *series.arguments])}` | {series.hogs} | {len(series.runs)}"
            f" | {series.successes} | {len(series.runs) - series.successes} | {durations} |"
        )
    failures = [(series, run) for series in series_list for run in series.runs if not run.ok]
    lines.append("")
    if failures:
        lines.append("Failures (the demo's verdict):")
        lines.append("")
        for series, run in failures:
            status = "killed" if run.exit_status is None else f"exit {run.exit_status}"
            lines.append(f"- {series.label} run {run.number} ({status}, {run.seconds} s): {run.verdict}")
    else:
        lines.append("No failures.")
    lines.append("")
    counts = "; ".join(f"{s.label} {s.successes}/{len(s.runs)}" for s in series_list)
    lines.append(f"Counts: {counts}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=50, help="loopback demo runs (default 50)")
    parser.add_argument("--hogs", type=int, default=2, help="CPU hogs beside the loopback runs (default 2)")
    parser.add_argument("--netns-runs", type=int, default=10, help="netns demo runs per backend (default 10)")
    parser.add_argument("--netns-hogs", type=int, default=0, help="CPU hogs beside the netns runs (default 0)")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"netns backends, comma-separated (default {','.join(BACKENDS)})"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run before it is stopped (180)")
    parser.add_argument("--keep-reports", type=Path, help="write every run's JSON report (and a failure's stderr) here")
    parser.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if unknown := [b for b in backends if b not in BACKENDS]:
        parser.error(f"unknown backend(s) {', '.join(unknown)}: the netns demo supports {', '.join(BACKENDS)}")
    if args.netns_runs and backends and os.geteuid() != 0:
        parser.error("the netns demo needs root (or --netns-runs 0)")
    if args.keep_reports is not None:
        args.keep_reports.mkdir(parents=True, exist_ok=True)

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    series_list: list[Series] = []
    load = os.getloadavg()[0]
    began = time.monotonic()
    interrupted = False
    try:
        if args.runs > 0:
            series = Series("loopback", ["demo", "--json"], args.hogs)
            series_list.append(series)
            with Hogs(args.hogs):
                run_series(series, args.runs, args.timeout, args.keep_reports)
        if args.netns_runs > 0:
            for backend in backends:
                arguments = ["demo", "--netns", "--backend", backend, "--json"]
                series = Series(f"netns {backend}", arguments, args.netns_hogs)
                series_list.append(series)
                with Hogs(args.netns_hogs):
                    run_series(series, args.netns_runs, args.timeout, args.keep_reports)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: the counts so far", file=sys.stderr)
    elapsed = time.monotonic() - began
    command = shlex.join([".venv/bin/python", "bench/demo_reliability.py", *argv])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = render(series_list, command, load, elapsed, stamp)
    if interrupted:
        text += "\n(interrupted before the last run)\n"
    print(text)
    if not args.no_record and series_list:
        with RESULTS.open("a") as out:
            if out.tell() == 0:
                out.write("# Demo reliability (bench/demo_reliability.py)\n\nNewest last.\n\n")
            out.write(text + "\n")
        print(f"appended to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(s.successes == len(s.runs) for s in series_list) and not interrupted else 1


if __name__ == "__main__":
    raise SystemExit(main())
