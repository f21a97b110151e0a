"""The home AAA over RadSec (RFC 6614) against the same server over UDP:
Access-Requests per second and their latency (p50/p99) with a fixed window of
requests in flight, from one client.

What runs: ``aaa-vpn serve home`` (one or more workers) on a temporary SQLite
database provisioned through the CLI (tests/test_home_server.py's
``provision``), listening on 127.0.0.1 for UDP and RadSec, with a throw-away
CA (tests/radsec_pki.py). The load is FA-Registrations of ``mn1@home.example``
for FA fa1 (each one a full decision: MN-AAA proof, the user's VPN records, a
session write, a two-path profile with salt-encrypted keys):

* RadSec: one TLS connection (net/radsec.py's connector, fa1's certificate),
  ``--window`` requests written before their answers come back, each new one
  written as an answer arrives;
* UDP: the same requests, sealed with fa1's UDP secret, the same window, from
  one socket.

The server is stopped by its PID. Usage (from the repository root):

    .venv/bin/python bench/radsec_throughput.py --requests 2000 --window 32 --workers 1
    .venv/bin/python bench/radsec_throughput.py --requests 300 --no-record

Results are printed and appended to bench/results/radsec-throughput.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aaa_vpn.net.radsec import RadsecConnector, RadsecServer, TlsFiles, client_context  # noqa: E402
from aaa_vpn.roles.radsec import RADSEC_SECRET  # noqa: E402
from tests.radius_client import access_request, served_port, wait_until_serving  # noqa: E402
from tests.radsec_pki import Authority  # noqa: E402
from tests.test_home_server import MN_SECRET, NAI, SECRET, provision, start_server, stop  # noqa: E402
from tests.test_radsec_live import radsec_port  # noqa: E402


def requests(secret: bytes, count: int) -> list[bytes]:
    return [
        bytes(
            access_request(
                secret, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2", identifier=i % 256
            ).RequestPacket()
        )
        for i in range(count)
    ]


async def run_window(send: object, packets: list[bytes], window: int, replies: asyncio.Queue[bytes]) -> list[float]:
    """Keep ``window`` requests in flight; the latency of each, in seconds."""
    assert callable(send)
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    next_index = 0
    free_ids = list(range(256))

    def launch() -> None:
        nonlocal next_index
        packet = packets[next_index]
        identifier = free_ids.pop(0)
        packet = packet[:1] + bytes([identifier]) + packet[2:]
        sent_at[identifier] = time.perf_counter()
        send(packet)
        next_index += 1

    while next_index < min(window, len(packets)):
        launch()
    while sent_at:
        reply = await asyncio.wait_for(replies.get(), 30)
        started = sent_at.pop(reply[1], None)
        if started is None:
            continue
        latencies.append(time.perf_counter() - started)
        free_ids.append(reply[1])
        if next_index < len(packets):
            launch()
    return latencies


async def over_radsec(address: tuple[str, int], files: TlsFiles, packets: list[bytes], window: int) -> list[float]:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    connector = RadsecConnector(
        [RadsecServer(address, tls_name="home-aaa.example")],
        client_context(files),
        lambda packet, _address: replies.put_nowait(packet),
        local_address="127.0.0.1",
    )
    try:
        return await run_window(lambda p: connector.send(p, address), packets, window, replies)
    finally:
        connector.close()


async def over_udp(address: tuple[str, int], packets: list[bytes], window: int) -> list[float]:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _addr: object) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
    try:
        return await run_window(lambda p: transport.sendto(p, address), packets, window, replies)
    finally:
        transport.close()


def summary(name: str, latencies: list[float], seconds: float) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"| {name} | {len(latencies)} | {len(latencies) / seconds:.0f} | "
        f"{statistics.median(ordered) * 1000:.2f} | {p99 * 1000:.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/results")
    args = parser.parse_args()
    if not 1 <= args.window <= 200:
        parser.error("--window: 1..200")
    with tempfile.TemporaryDirectory(prefix="aaa-vpn-radsec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pki = Authority(tmp / "pki")
        server = pki.issue("home", "home-aaa.example", dns=("home-aaa.example",))
        fa1 = pki.issue("fa1", "fa1")
        db = tmp / "vpn.db"
        provision(db)
        log = tmp / "server.log"
        process = start_server(
            db, 0, args.workers, log, "--radsec-listen", "127.0.0.1:0", "--tls-cert", str(server.cert),
            "--tls-key", str(server.key), "--tls-ca", str(pki.cert), "--log-level", "info",
        )  # fmt: skip
        try:
            udp = ("127.0.0.1", served_port(process, log))
            wait_until_serving(udp, SECRET)
            radsec = ("127.0.0.1", radsec_port(log))
            rows = []
            for name, run in (
                ("RadSec (TLS 1.3, one connection)", lambda: over_radsec(radsec, TlsFiles(fa1.cert, fa1.key, pki.cert),
                                                                          requests(RADSEC_SECRET.value, args.requests),
                                                                          args.window)),
                ("UDP (one socket)", lambda: over_udp(udp, requests(SECRET, args.requests), args.window)),
            ):  # fmt: skip
                started = time.perf_counter()
                latencies = asyncio.run(run())
                rows.append(summary(name, latencies, time.perf_counter() - started))
        finally:
            stop(process)
    header = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.requests} FA-Registrations,"
        f" window {args.window}, {args.workers} worker(s)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()};"
        f" command: `bench/radsec_throughput.py --requests {args.requests} --window {args.window}"
        f" --workers {args.workers}`",
        "",
        "| transport | answered | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    text = "\n".join([*header, *rows, ""])
    print(text)
    if not args.no_record:
        results = ROOT / "bench" / "results" / "radsec-throughput.md"
        with results.open("a") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
