#!/usr/bin/env python3
"""SA set-up and teardown time of the ``strongswan`` backend (:mod:`aaa_vpn.sa.strongswan`).

Two network namespaces on a bridge (``tests/sswan_lab.py``: ``aas_<pid>_*``), one
charon-systemd 5.9.8 with kernel-libipsec in each, driven through the backend
as the agents drive it. Per run a fresh FA-HA path (new SPIs, new PSK; the
FA's view has the node's home address, the HA's 0.0.0.0/0):

* ``setup``: ``install`` on the FA (the responder: load key + connection),
  then on the HA (the initiator: load, ``initiate``, return with its CHILD_SA
  installed), until the FA's ``list-sas`` shows its CHILD_SA INSTALLED;
  ``responder`` and ``initiator`` are the two ``install`` calls alone;
* ``teardown``: ``delete`` on the HA (DELETE exchange, unload) until the FA's
  ``list-sas`` has no SA of the path, then ``delete`` on the FA (unload).

IKEv2 with the model's default proposal (aes256gcm16-prfsha256-x25519, PSK),
ESP AES-GCM-16-128 in UDP (libipsec), through the backend as the agents use it
(one VICI connection per backend object, kept open). Medians over ``-n`` runs after one
warm-up run. Everything stays in the namespaces; the charons are stopped by
PID and the namespaces deleted at the end (also on Ctrl-C / SIGTERM). Needs root.

Usage (from the repository root):

    .venv/bin/python bench/sa_setup.py              # n = 50
    .venv/bin/python bench/sa_setup.py -n 200 --no-record

Results are printed and appended to bench/results/sa-setup.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import signal
import statistics
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aaa_vpn.sa.strongswan import StrongSwanBackend  # noqa: E402
from tests.sswan_lab import Lab  # noqa: E402
from tests.test_sa_strongswan import CN, MN1, fa_ha  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sa-setup.md"


def responder_installed(backend: StrongSwanBackend, owner: str) -> bool:
    return any(c.state == "INSTALLED" for sa in backend.sas(owner) for c in sa.children)


def run(n: int) -> tuple[dict[str, list[float]], str]:
    times: dict[str, list[float]] = {"responder": [], "initiator": [], "setup": [], "teardown": []}
    with Lab(2) as lab:
        ha_node, fa_node = lab[0], lab[1]
        ha_node.add_address(f"{CN}/24")
        fa_node.add_address(f"{MN1}/32")
        ha, fa = ha_node.backend(), fa_node.backend()
        for i in range(n + 1):
            owner = f"s{i}/FA_HA"
            fa_view, ha_view = fa_ha(fa_node.address, ha_node.address, MN1, 0x10000 + i, 0x20000 + i, seed=i % 100)
            t0 = time.perf_counter()
            fa.install(fa_view, owner)
            t1 = time.perf_counter()
            ha.install(ha_view, owner)
            t2 = time.perf_counter()
            while not responder_installed(fa, owner):  # normally already true at the first look
                pass
            t3 = time.perf_counter()
            ha.delete(owner)
            while fa.sas(owner):  # normally already empty at the first look
                pass
            fa.delete(owner)
            t4 = time.perf_counter()
            if i == 0:
                continue  # warm-up
            times["responder"].append(t1 - t0)
            times["initiator"].append(t2 - t1)
            times["setup"].append(t3 - t0)
            times["teardown"].append(t4 - t3)
        version = ha.daemon_version()
    return times, version


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50, help="measured runs (after one warm-up)")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    times, version = run(args.n)
    lines = [
        f"| {name} | {1000 * statistics.median(v):.2f} | {1000 * min(v):.2f} | "
        f"{1000 * quantile(v, 0.9):.2f} | {1000 * max(v):.2f} |"
        for name, v in times.items()
    ]
    table = "\n".join([f"| ms (n = {args.n}) | median | min | p90 | max |", "|---|---|---|---|---|", *lines])
    print(f"{version}, kernel-libipsec, two network namespaces")
    print(table)
    if not args.no_record:
        command = ".venv/bin/python bench/sa_setup.py " + shlex.join(sys.argv[1:])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as out:
            if out.tell() == 0:
                out.write("# strongswan backend: SA set-up and teardown\n\nWritten by `bench/sa_setup.py`.\n")
            out.write(
                f"\n## {stamp}, {platform.machine()}, {version} (kernel-libipsec)\n\n`{command.strip()}` (as root)\n\n"
                f"{table}\n"
            )
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
