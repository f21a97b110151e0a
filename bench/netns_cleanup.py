"""Clean-up for the benchmarks that build network namespaces
(handoff_outage.py, sa_setup_backends.py, tunnel_throughput.py): the last
resort after an interruption, and the shield that lets it finish."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path


def sweep(pattern: re.Pattern[str]) -> list[str]:
    """The last resort after an interruption: whatever still runs in this run's
    namespaces (names matching ``pattern``) is stopped by its PID (SIGTERM, then
    SIGKILL after 5 s) and the namespaces are deleted. Returns what it deleted."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    mine = [line.split()[0] for line in listed.splitlines() if line.strip() and pattern.match(line.split()[0])]
    pids: set[int] = set()
    for ns in mine:
        found = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        pids.update(int(pid) for pid in found.split())

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = {pid for pid in pids if alive(pid)}
        if not pids:
            break
    for ns in mine:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    return mine


def shield() -> None:
    """Ignore Ctrl-C and SIGTERM from now on (the cleanup must finish)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
