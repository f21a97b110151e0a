#!/usr/bin/env python3
"""Provisioning API latency: ``aaa-vpn serve api`` on a temporary SQLite
database with ``--users`` users (one VPN record each), on loopback, one
client connection at a time; per kind of call the median and 99th percentile
of ``--requests`` calls, and the cost of one web sign-in (a scrypt
verification, by design tens of milliseconds). Appends its results to
bench/results/api_requests.txt. The server is stopped by its PID.

    python bench/api_requests.py --users 200 --requests 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aaa_vpn.lab.processes import listening_port  # noqa: E402
from aaa_vpn.model import Gateway, GatewayMode, Service, User, VpnRecord  # noqa: E402
from aaa_vpn.secret import Secret  # noqa: E402
from aaa_vpn.service.webauth import Role, hash_password, new_token, token_line, verify_password  # noqa: E402
from aaa_vpn.store import init_store  # noqa: E402


def provision(directory: Path, users: int) -> tuple[Path, Path, str]:
    db, key = directory / "vpn.db", directory / "vpn.key"
    store, _ = init_store(db, key)
    with store, store.transaction():
        store.add_gateway(
            Gateway(
                "gw1", IPv4Address("203.0.113.1"), GatewayMode.DYNAMIC, (IPv4Network("10.0.0.0/8"),), Secret(b"k" * 32)
            )
        )
        store.add_service(Service("gold"))
        for n in range(users):
            nai = f"user{n}@home.example"
            store.add_user(User(nai, IPv4Address("192.0.2.2"), Secret(b"secret"), 256 + n, Secret(b"h" * 16)))
            store.add_vpn_record(VpnRecord(nai, IPv4Network(f"10.{n // 256}.{n % 256}.0/24"), "gw1", "gold"))
    token = new_token()
    tokens = directory / "tokens"
    tokens.write_text(token_line("bench", frozenset({Role.PROVISIONING}), token) + "\n")
    tokens.chmod(0o600)
    return db, key, token


def timed(conn: http.client.HTTPConnection, method: str, path: str, token: str, body: object = None) -> float:
    data = None if body is None else json.dumps(body).encode()
    started = time.perf_counter()
    conn.request(
        method, path, body=data, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200, (method, path, response.status)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        db, key, token = provision(directory, args.users)
        log = directory / "api.log"
        command = [sys.executable, "-m", "aaa_vpn.cli", "--db", str(db), "--key-file", str(key), "serve", "api"]
        command += ["--port", "0", "--tokens-file", str(directory / "tokens"), "--log-level", "info"]
        with log.open("wb") as out:
            server = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while (port := listening_port(log)) is None:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"serve api did not start:\n{log.read_text()}")
                time.sleep(0.05)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            results: dict[str, list[float]] = {}
            calls = {
                "GET /api/v1/users/{nai}": lambda i: ("GET", f"/api/v1/users/user{i % args.users}@home.example", None),
                "GET /api/v1/vpn?user=": lambda i: ("GET", f"/api/v1/vpn?user=user{i % args.users}@home.example", None),
                "PATCH /api/v1/vpn/{id} (+ audit)": lambda i: (
                    "PATCH",
                    f"/api/v1/vpn/{i % args.users + 1}",
                    {"service": "gold"},
                ),
                "GET /api/v1/users (all)": lambda i: ("GET", "/api/v1/users", None),
            }
            for name, make in calls.items():
                count = args.requests if "(all)" not in name else max(10, args.requests // 10)
                results[name] = [timed(conn, *make(i)[:2], token, make(i)[2]) for i in range(count)]
            conn.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
    verifier = hash_password("a bench password")
    started = time.perf_counter()
    for _ in range(5):
        verify_password(verifier, "a bench password")
    sign_in = (time.perf_counter() - started) / 5
    lines = [
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {platform.node()} python {platform.python_version()}",
        f"  python bench/api_requests.py --users {args.users} --requests {args.requests}",
    ]
    for name, samples in results.items():
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        lines.append(
            f"  {name:34} n={len(samples):4} median {statistics.median(samples) * 1e3:7.2f} ms p99 {p99 * 1e3:7.2f} ms"
        )
    lines.append(f"  scrypt verification (one sign-in)        {sign_in * 1e3:7.1f} ms")
    text = "\n".join(lines)
    print(text)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    with (results_dir / "api_requests.txt").open("a") as out:
        out.write(text + "\n")


if __name__ == "__main__":
    main()
