#!/usr/bin/env python3
"""The home AAA's CPU per Access-Request in one process: no socket, no load generator.

The same database, request and reply as ``bench/radius_throughput.py`` (its
provisioning commands and its FA-Registration of ``mn1@home.example``), fed
straight into ``HomeService.handle_batch`` in batches of 64 -- the worker's
code from the decoded datagram to the encoded reply, the SQLite write
included. It answers "where does a request's CPU go" without radclient's
busy-polling on the same cores; ``bench/radius_throughput.py`` stays the
measure against FreeRADIUS.

Usage (from the repository root):

    .venv/bin/python bench/home_inprocess.py --kind initial --requests 12288
    .venv/bin/python bench/home_inprocess.py --kind initial --profile    # + py-spy, by function

``--kind initial``: every request creates a session (new root key, SPIs, key
derivations, a database write); ``renewal``: every request names the session
the first one created and the digest of its view, as an FA renews. Prints the
CPU per request (process time, median of ``--rounds``); with ``--profile``
the run is repeated under py-spy and the functions below ``handle_batch``
are listed by inclusive and self time. Nothing is recorded; runs in a
temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import radius_throughput as rt  # noqa: E402

from aaa_vpn.roles.home_aaa import HomeAaaOptions  # noqa: E402
from aaa_vpn.service.home import HomeService  # noqa: E402
from aaa_vpn.store import open_store  # noqa: E402
from aaa_vpn.wire import radius as rc  # noqa: E402
from aaa_vpn.wire.profile import VENDOR_ID, RequestType  # noqa: E402
from aaa_vpn.wire.radius_profile import AaaVpnAttr, decode_profile  # noqa: E402

BATCH = 64
SOURCE = (rt.CARE_OF, 40000)


def request(identifier: int, session: tuple[str, bytes] | None) -> bytes:
    """The bench's FA-Registration as raw bytes, signed with the bench secret."""
    chap_challenge, chap_password = rt.chap_request(os.urandom(16))
    attributes = [
        rc.attribute(rc.USER_NAME, rt.NAI.encode()),
        rc.attribute(rc.CHAP_PASSWORD, chap_password),
        rc.attribute(rc.CHAP_CHALLENGE, chap_challenge),
        rc.attribute(rc.NAS_IP_ADDRESS, bytes(map(int, rt.CARE_OF.split(".")))),
        rc.vendor_attribute(VENDOR_ID, AaaVpnAttr.REQUEST_TYPE, int(RequestType.FA_REGISTRATION).to_bytes(4, "big")),
        rc.vendor_attribute(VENDOR_ID, AaaVpnAttr.HOME_AGENT, bytes(map(int, rt.HOME_AGENT.split(".")))),
        rc.vendor_attribute(VENDOR_ID, AaaVpnAttr.CARE_OF_ADDRESS, bytes(map(int, rt.CARE_OF.split(".")))),
    ]
    if session is not None:
        attributes.append(rc.vendor_attribute(VENDOR_ID, AaaVpnAttr.SESSION_ID, session[0].encode()))
        attributes.append(rc.vendor_attribute(VENDOR_ID, AaaVpnAttr.PROFILE_DIGEST, session[1]))
    secret = rt.SECRET.encode()
    return rc.seal_request(rc.ACCESS_REQUEST, identifier & 0xFF, os.urandom(16), secret, b"".join(attributes))


def run(service: HomeService, datagrams: Sequence[bytes]) -> int:
    accepted = 0
    now = time.time()
    for start in range(0, len(datagrams), BATCH):
        batch = [(d, (SOURCE[0], SOURCE[1] + start + i)) for i, d in enumerate(datagrams[start : start + BATCH])]
        accepted += sum(1 for reply, _ in service.handle_batch(batch, now) if reply[0] == rc.ACCESS_ACCEPT)
    return accepted


def measure(args: argparse.Namespace, base: Path) -> None:
    cli = rt.aaa_vpn_cmd()
    if cli is None:
        raise SystemExit("aaa-vpn is not installed: run scripts/setup.sh")
    provisioned = rt.provision(cli, base, [])
    if isinstance(provisioned, str):
        raise SystemExit(provisioned)
    db, key = provisioned
    store = open_store(db, key)
    service = HomeService(store, HomeAaaOptions())
    first = request(0, None)
    (reply, _), *_ = service.handle_batch([(first, SOURCE)], time.time())
    if reply[0] != rc.ACCESS_ACCEPT:
        raise SystemExit(f"the probe request was not accepted (code {reply[0]})")
    profile = decode_profile(reply[20:], rt.SECRET.encode(), first[4:20])
    session = (profile.session_id, profile.digest) if args.kind == "renewal" and profile.digest else None
    # As the worker does (net/home_server.py): young collections rarely, start-up frozen.
    gc.set_threshold(20000, 10, 10)
    gc.freeze()
    rounds = [[request(i, session) for i in range(args.requests)] for _ in range(args.rounds + 1)]
    run(service, rounds[0][: args.requests // 8])  # warm the caches
    cpu: list[float] = []
    for datagrams in rounds[1:]:
        begin = time.process_time()
        accepted = run(service, datagrams)
        cpu.append((time.process_time() - begin) / len(datagrams) * 1e6)
        if accepted != len(datagrams):
            raise SystemExit(f"{len(datagrams) - accepted} of {len(datagrams)} requests were not accepted")
    print(
        f"{args.kind}: {statistics.median(cpu):.1f} us CPU per request (median of {len(cpu)} rounds: "
        f"{', '.join(f'{c:.1f}' for c in cpu)})"
    )
    store.close()


def profiled(args: argparse.Namespace) -> None:
    spy = rt.ensure_py_spy()
    if spy is None:
        raise SystemExit("py-spy is not installed (scripts/setup.sh installs it)")
    raw = Path(tempfile.mkdtemp(prefix="aaa-vpn-inprocess-")) / "raw.txt"
    argv = [sys.executable, __file__, "--kind", args.kind, "--requests", str(args.requests), "--rounds", "1"]
    try:
        subprocess.run([spy, "record", "-r", "2000", "-f", "raw", "-o", str(raw), "--", *argv], check=True)
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not any("handle_batch" in f for f in frames):
                continue
            n = int(count)
            total += n
            for name in {rt._function(f) for f in frames} - {
                rt._function(f) for f in frames if "home_inprocess.py" in f
            }:
                inclusive[name] += n
            own[rt._function(frames[-1])] += n
        print(f"\n{total} samples below HomeService.handle_batch (py-spy, 2000 per second)")
        print("\n| incl % | function |\n|---:|---|")
        for name, n in inclusive.most_common(args.top):
            print(f"| {100 * n / total:.1f} | `{name}` |")
        print("\n| self % | function |\n|---:|---|")
        for name, n in own.most_common(args.top):
            print(f"| {100 * n / total:.1f} | `{name}` |")
    finally:
        shutil.rmtree(raw.parent, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("initial", "renewal"), default="initial", help="default: initial")
    parser.add_argument("--requests", type=int, default=12288, help="requests per round (default 12288)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--profile", action="store_true", help="one more run under py-spy, by function")
    parser.add_argument("--top", type=int, default=30, help="functions listed with --profile (default 30)")
    args = parser.parse_args(argv)
    if args.requests < BATCH or args.rounds < 1:
        parser.error(f"--requests is at least {BATCH} and --rounds at least 1")
    base = Path(tempfile.mkdtemp(prefix="aaa-vpn-inprocess-"))
    try:
        measure(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.profile:
        profiled(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
