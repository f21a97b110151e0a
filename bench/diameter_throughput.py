#!/usr/bin/env python3
"""Diameter AMR/AMA per second over one peer connection against RADIUS
Access-Request/Accept for the same registration, on the same home AAA server, same run.

The server is the real ``aaa-vpn serve home --workers 1 --diameter-listen ...
--diameter-plain-is-secure`` on a temporary SQLite database provisioned as the tests'
mobility network (tests/mobility.py: the FA, the HA, two gateways, the user and two
VPN records). The registration is a renewal of one session by the FA (the same
Registration Request shape, a fresh MN-AAA proof each time, the session named), so
every answer carries the FA's whole view (two paths, keys) and the store is written
at most once a second (home_aaa rule 6):

* Diameter: one TCP connection (our DiameterNode as the FA), ``--window`` AMRs in
  flight, each with the Session-Id of the first;
* RADIUS: one UDP socket bound to the FA's address, ``--window`` Access-Requests in
  flight, each naming the session (Aaa-Vpn-Session-Id) and no profile digest (so the
  Accept carries the whole view, as the AMA does).

Rounds alternate (Diameter, RADIUS, ...); medians are printed and appended to
bench/results/diameter-throughput.md. The Diameter front end runs in one process; the
RADIUS side in one worker: both one core's worth. Loopback only; the server is stopped
by its PID, the temporary directory removed, also on Ctrl-C.

    .venv/bin/python bench/diameter_throughput.py --rounds 3 --requests 2000 --window 32
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aaa_vpn.net.diameter import DiameterTransport  # noqa: E402
from aaa_vpn.roles import diameter_peer as peer  # noqa: E402
from aaa_vpn.store import open_store  # noqa: E402
from aaa_vpn.wire import diameter as d  # noqa: E402
from aaa_vpn.wire.mip_auth import mn_aaa_proof  # noqa: E402
from aaa_vpn.wire.profile import RequestType  # noqa: E402
from aaa_vpn.wire.radius import ACCESS_ACCEPT  # noqa: E402
from aaa_vpn.wire.radius_request import Accepted, AccessRequest, decode_access_reply, encode_access_request  # noqa: E402
from tests.diameter_lab import FA_HOST, HOME_HOST, HOME_REALM, amr, rrq  # noqa: E402
from tests.mobility import FA1, HA, SECRETS, provision  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "diameter-throughput.md"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_server(base: Path, diameter_port: int) -> tuple[subprocess.Popen[bytes], Path]:
    db = base / "vpn.db"
    cli = [sys.executable, "-m", "aaa_vpn.cli", "--db", str(db)]
    subprocess.run([*cli, "db", "init"], check=True, capture_output=True, cwd=ROOT, timeout=60)
    with open_store(db) as store:
        provision(store)
    server_log = base / "server.log"
    with server_log.open("wb") as out:
        process = subprocess.Popen(
            [*cli, "serve", "home", "--listen", "127.0.0.1", "--port", "0", "--workers", "1",
             "--diameter-listen", f"127.0.0.1:{diameter_port}", "--diameter-realm", HOME_REALM,
             "--diameter-host", HOME_HOST, "--diameter-plain-is-secure"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, server_log


def wait_ports(process: subprocess.Popen[bytes], server_log: Path) -> int:
    """The RADIUS port, once both front ends listen."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = server_log.read_text(errors="replace")
        match = re.search(r"worker listening .*address=127\.0\.0\.1:(\d+)", text)
        if match and "diameter listening" in text:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"the server did not start:\n{server_log.read_text(errors='replace')}")


async def diameter_round(port: int, total: int, window: int) -> tuple[float, int]:
    """AMRs per second over one connection; returns (rate, non-2001 answers)."""
    counter = itertools.count(int.from_bytes(os.urandom(2), "big"))
    node = peer.DiameterNode(
        d.Identity(FA_HOST, "visited.example", (IPv4Address("127.0.0.1"),)),
        [d.MOBILE_IPV4_APPLICATION],
        {d.MOBILE_IPV4_APPLICATION: frozenset(d.AVPS)},
        routes={HOME_REALM: [HOME_HOST]},
        random_u32=lambda: next(counter),
    )
    up = asyncio.Event()
    done = asyncio.Event()
    answered = 0
    failed = 0
    sent = 0
    measuring = False
    session_id = f"{FA_HOST};bench;{os.getpid()};{time.monotonic_ns()}"
    requests = [amr(session_id, rrq()) for _ in range(min(total, 256))]

    def send_one() -> None:
        nonlocal sent
        node.send_request(requests[sent % len(requests)], time.time(), tag=sent)
        sent += 1

    def on_event(event: peer.Event) -> None:
        nonlocal answered, failed
        if isinstance(event, peer.PeerUp):
            up.set()
        elif isinstance(event, peer.AnswerReceived):
            answered += 1
            if event.message.result_code != d.ResultCode.SUCCESS:
                failed += 1
            if measuring and sent < total:
                send_one()
            if measuring and answered >= total:
                done.set()

    transport = DiameterTransport(node, on_event)
    await transport.connect("127.0.0.1", port)
    await asyncio.wait_for(up.wait(), 10)
    # The first AMR creates the session; the measured ones renew it.
    node.send_request(requests[0], time.time(), tag="first")
    transport.pump()
    while answered == 0:
        await asyncio.sleep(0.001)
    answered = failed = 0
    measuring = True
    start = time.perf_counter()
    for _ in range(min(window, total)):
        send_one()
    transport.pump()
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    await transport.close()
    return total / elapsed, failed


def radius_round(port: int, total: int, window: int) -> tuple[float, int]:
    """Access-Requests per second from the FA's address; returns (rate, non-Accepts)."""
    secret = SECRETS[FA1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((FA1, 0))
    sock.settimeout(10)

    def request(session_id: str | None, identifier: int) -> bytes:
        proof = mn_aaa_proof(rrq())
        chap_password, chap_challenge = proof.chap_attributes()
        access = AccessRequest(
            nai="mn1@home.example",
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=IPv4Address(FA1),
            request_type=RequestType.FA_REGISTRATION,
            care_of_address=IPv4Address(FA1),
            home_agent=IPv4Address(HA),
            session_id=session_id,
        )
        return encode_access_request(access, identifier, os.urandom(16), secret)

    # The first request creates the session the measured ones renew.
    first = request(None, 0)
    sock.sendto(first, ("127.0.0.1", port))
    outcome = decode_access_reply(sock.recv(4096), first, secret)
    assert isinstance(outcome, Accepted) and outcome.profile is not None, outcome
    session_id = outcome.profile.session_id
    failed = 0
    received = 0
    sent = 0
    start = time.perf_counter()
    for identifier in range(min(window, total)):
        sock.sendto(request(session_id, identifier), ("127.0.0.1", port))
        sent += 1
    while received < total:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise SystemExit(f"RADIUS: {total - received} requests unanswered") from None
        received += 1
        if data[0] != ACCESS_ACCEPT:
            failed += 1
        if sent < total:
            # a fresh Request Authenticator for the identifier just answered
            identifier = data[1]
            packet = request(session_id, identifier)
            sock.sendto(packet, ("127.0.0.1", port))
            sent += 1
    elapsed = time.perf_counter() - start
    sock.close()
    return total / elapsed, failed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="answers measured per round and protocol")
    parser.add_argument("--window", type=int, default=32, help="requests in flight (at most 255)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results/")
    args = parser.parse_args()
    window = max(1, min(args.window, 255))
    with tempfile.TemporaryDirectory(prefix="aaa_vpn-diameter-bench-") as tmp:
        diameter_port = free_port()
        process, server_log = start_server(Path(tmp), diameter_port)
        try:
            radius_port = wait_ports(process, server_log)
            log(f"server pid {process.pid}: RADIUS 127.0.0.1:{radius_port}, Diameter 127.0.0.1:{diameter_port}")
            rates: dict[str, list[float]] = {"diameter": [], "radius": []}
            failures = {"diameter": 0, "radius": 0}
            for round_number in range(1, args.rounds + 1):
                rate, failed = asyncio.run(diameter_round(diameter_port, args.requests, window))
                rates["diameter"].append(rate)
                failures["diameter"] += failed
                log(f"round {round_number}: Diameter {rate:,.0f} AMR/AMA per second ({failed} not 2001)")
                rate, failed = radius_round(radius_port, args.requests, window)
                rates["radius"].append(rate)
                failures["radius"] += failed
                log(f"round {round_number}: RADIUS {rate:,.0f} Access-Request/Accept per second ({failed} not Accept)")
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    diameter, radius = statistics.median(rates["diameter"]), statistics.median(rates["radius"])
    summary = (
        f"Diameter {diameter:,.0f}/s vs RADIUS {radius:,.0f}/s (ratio {diameter / radius:.2f}); "
        f"failures: Diameter {failures['diameter']}, RADIUS {failures['radius']}"
    )
    print(summary)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(
                f"\n## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
                f"{os.cpu_count()} CPUs\n\n"
                f"`bench/diameter_throughput.py --rounds {args.rounds} --requests {args.requests} "
                f"--window {window}`\n\n"
                f"| protocol | per round | median |\n|---|---|---|\n"
                f"| Diameter AMR/AMA, one connection | {', '.join(f'{r:,.0f}' for r in rates['diameter'])} | "
                f"{diameter:,.0f}/s |\n"
                f"| RADIUS Access-Request/Accept | {', '.join(f'{r:,.0f}' for r in rates['radius'])} | "
                f"{radius:,.0f}/s |\n\n{summary}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
