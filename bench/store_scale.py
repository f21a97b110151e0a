#!/usr/bin/env python3
"""The home AAA at carrier scale, on SQLite and on PostgreSQL: 1,000,000 users
and 100,000 live sessions in each store, in the same run.

What is measured, per store (the same steps, the same data):

1. **Provisioning**: users added through the store interface in transactions
   of 10,000 (what ``aaa-vpn import`` does per record: every user's MN-AAA
   secret and MN-HA key sealed under the key file), timed at 10,000 users and
   again at the full count.
2. **Lookups as users grow**: a user's whole provisioning (``user_context``:
   the user and its VPN records) and its session heads, for random users,
   at 10,000 users and at the full count: microseconds per lookup.
3. **First registrations**: ``--sessions`` FA registrations of distinct
   random users through the home AAA's service layer in process (decode,
   MN-AAA proof, plan, SPIs, keys, the view, the group-committed store
   write, the signed Accept), 64 per batch: requests/s and CPU us/request.
4. **Renewals** of ``--requests`` of those sessions a minute later (each
   names its session and its view's digest; the expiry moves, so each is a
   conditional write and a confirmation): requests/s and CPU us/request.
5. **Memory per session**: the worker's RSS growth per session it holds in
   its caches while renewing, and the database's bytes per session.

No sockets: this measures the AAA and the store, not UDP (bench/
radius_throughput.py does that). PostgreSQL runs in a durable throw-away
cluster (tests/postgres.py, fsync on) on a Unix socket. Results are appended
to bench/results/store-scale.md with the command.

Usage (from the repository root):

    .venv/bin/python bench/store_scale.py                      # 1M users, 100k sessions, both stores
    .venv/bin/python bench/store_scale.py --users 200000 --sessions 20000 --engines sqlite
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aaa_vpn.model import (  # noqa: E402
    Client,
    ClientRole,
    EspTransform,
    Gateway,
    GatewayMode,
    Service,
    User,
    VpnRecord,
)
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes  # noqa: E402
from aaa_vpn.secret import Secret  # noqa: E402
from aaa_vpn.service.home import HomeService, user_context  # noqa: E402
from aaa_vpn.store import init_store  # noqa: E402
from aaa_vpn.store.sql import SqlStore  # noqa: E402
from aaa_vpn.wire.profile import RequestType  # noqa: E402
from aaa_vpn.wire.radius_request import Accepted, AccessRequest, decode_access_reply, encode_access_request  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "store-scale.md"
FA, HA = "192.0.2.1", "192.0.2.2"
FA_SECRET = b"bench-fa-secret-1"
MN_AAA = Secret(b"bench-mn-aaa-secret")
PRECEDING = bytes(range(40))
BATCH = 64
SMALL = 10_000


def log(message: str) -> None:
    print(f"[store-scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def nai(n: int) -> str:
    return f"user{n:07d}@home.example"


def provision_base(store: SqlStore) -> None:
    store.add_client(Client("fa", IPv4Network(f"{FA}/32"), Secret(FA_SECRET), ClientRole.FA))
    store.add_client(Client("ha", IPv4Network(f"{HA}/32"), Secret(b"bench-ha-secret-1"), ClientRole.HA))
    store.add_gateway(
        Gateway(
            "gw", IPv4Address("192.0.2.10"), GatewayMode.STATIC, (IPv4Network("203.0.113.0/24"),), Secret(b"g" * 16)
        )
    )
    store.add_service(Service("gold", esp_transform=EspTransform.AES_GCM_16_256, sa_lifetime=7200))


def add_users(store: SqlStore, start: int, stop: int) -> None:
    """Users start..stop-1, each with one VPN record (a static gateway), in
    transactions of 10,000."""
    base = int(IPv4Address("10.0.0.0"))
    for chunk in range(start, stop, 10_000):
        with store.transaction():
            for n in range(chunk, min(stop, chunk + 10_000)):
                name = nai(n)
                store.add_user(
                    User(name, IPv4Address(HA), MN_AAA, 256, Secret(bytes(range(16))), IPv4Address(base + n))
                )
                store.add_vpn_record(VpnRecord(name, IPv4Network("203.0.113.0/24"), "gw", "gold"))


def lookups(store: SqlStore, users: int, count: int = 2000) -> tuple[float, float]:
    """us per user_context and per session_heads, random users."""
    picks = [nai(random.randrange(users)) for _ in range(count)]
    start = time.perf_counter()
    for name in picks:
        user_context(store, name)
    contexts = (time.perf_counter() - start) / count * 1e6
    start = time.perf_counter()
    for name in picks:
        store.session_heads(name)
    heads = (time.perf_counter() - start) / count * 1e6
    return contexts, heads


def registration(name: str, session: str | None = None, digest: bytes | None = None) -> AccessRequest:
    chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, MN_AAA)
    return AccessRequest(
        nai=name,
        chap_password=chap_password,
        chap_challenge=chap_challenge,
        nas_ip_address=IPv4Address(FA),
        request_type=RequestType.FA_REGISTRATION,
        care_of_address=IPv4Address(FA),
        home_agent=IPv4Address(HA),
        session_id=session,
        profile_digest=digest,
    )


def run_requests(
    service: HomeService, requests: list[AccessRequest], now: float
) -> tuple[float, float, list[Accepted]]:
    """(requests/s, CPU us/request, the Accepts) for ``requests`` in batches of 64."""
    packets = [encode_access_request(r, i % 256, os.urandom(16), FA_SECRET) for i, r in enumerate(requests)]
    accepted: list[Accepted] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(packets), BATCH):
        batch = packets[start : start + BATCH]
        replies = service.handle_batch([(p, (FA, 40000 + i)) for i, p in enumerate(batch)], now)
        by_port = {destination[1]: reply for reply, destination in replies}
        for i, packet in enumerate(batch):
            reply = by_port.get(40000 + i)
            answer = decode_access_reply(reply, packet, FA_SECRET) if reply is not None else None
            if isinstance(answer, Accepted):
                accepted.append(answer)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(packets) / wall, cpu / len(packets) * 1e6, accepted


def current_rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def measure(
    engine: str, open_store: Callable[[], tuple[SqlStore, Callable[[], int]]], args: argparse.Namespace
) -> dict[str, object]:
    store, size = open_store()
    out: dict[str, object] = {"engine": engine}
    try:
        provision_base(store)
        t = time.perf_counter()
        add_users(store, 0, SMALL)
        out["provision_small_s"] = time.perf_counter() - t
        out["lookup_small"] = lookups(store, SMALL)
        log(f"{engine}: {SMALL} users in {out['provision_small_s']:.1f} s; lookups {out['lookup_small']}")
        t = time.perf_counter()
        add_users(store, SMALL, args.users)
        out["provision_rest_s"] = time.perf_counter() - t
        out["users_per_s"] = (args.users - SMALL) / float(out["provision_rest_s"])  # type: ignore[arg-type]
        out["lookup_large"] = lookups(store, args.users)
        log(f"{engine}: {args.users} users ({out['users_per_s']:.0f}/s); lookups {out['lookup_large']}")
        now = 1_900_000_000.0
        service = HomeService(store, now=now)
        gc.set_threshold(20_000, 50, 100)  # as the server's workers (net/home_server.py)
        chosen = random.sample(range(args.users), args.sessions)
        rss0, size0 = current_rss_kib(), size()
        rate, cpu, accepted = run_requests(service, [registration(nai(n)) for n in chosen], now)
        out["create_rate"], out["create_cpu_us"] = rate, cpu
        out["created"] = len(accepted)
        log(f"{engine}: {len(accepted)}/{args.sessions} first registrations, {rate:.0f}/s, {cpu:.0f} us CPU each")
        # Accepts come back in request order: the n-th view is the n-th chosen user's.
        views = [a.profile for a in accepted if a.profile is not None]
        assert len(views) == len(chosen), "every first registration is accepted with a view"
        renewals = [registration(nai(n), v.session_id, v.digest) for n, v in zip(chosen, views, strict=True)]
        renewals = renewals[: args.requests]
        rate, cpu, renewed = run_requests(service, renewals, now + 60)
        out["renew_rate"], out["renew_cpu_us"], out["renewed"] = rate, cpu, len(renewed)
        out["rss_per_session_bytes"] = (current_rss_kib() - rss0) * 1024 / max(1, len(accepted))
        out["db_bytes_per_session"] = (size() - size0) / max(1, len(accepted))
        log(f"{engine}: {len(renewed)} renewals, {rate:.0f}/s, {cpu:.0f} us CPU each")
    finally:
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=20_000, help="renewals measured (of the sessions made)")
    ap.add_argument("--engines", default="sqlite,postgres")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL server setting for the throw-away cluster, e.g. shared_buffers=1GB (repeatable)",
    )
    args = ap.parse_args(argv)
    random.seed(1)
    results = []
    base = Path(tempfile.mkdtemp(prefix="aaa_vpn-scale-"))
    for engine in args.engines.split(","):
        if engine == "sqlite":

            def open_sqlite() -> tuple[SqlStore, Callable[[], int]]:
                db = base / "scale.db"
                store = init_store(db, base / "scale.db.key")[0]
                return store, lambda: sum(p.stat().st_size for p in base.glob("scale.db*") if p.suffix != ".key")

            results.append(measure("SQLite", open_sqlite, args))
        elif engine == "postgres":
            from tests.postgres import Cluster

            cluster = Cluster(durable=True, settings=tuple(args.pg_setting))
            try:

                def open_pg(cluster: Cluster = cluster) -> tuple[SqlStore, Callable[[], int]]:
                    url = cluster.create_database("scale")
                    store = init_store(url, base / "pg.key")[0]

                    def size() -> int:
                        import psycopg

                        with psycopg.connect(url) as conn:
                            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                            return int(row[0]) if row else 0

                    return store, size

                results.append(measure("PostgreSQL", open_pg, args))
            finally:
                cluster.stop()
    report = render(results, args, argv)
    print(report)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(report)
    return 0


def render(results: list[dict[str, object]], args: argparse.Namespace, argv: list[str] | None) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join([".venv/bin/python", "bench/store_scale.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"\n## {when}: {args.users:,} users, {args.sessions:,} sessions",
        "",
        f"- machine: {os.cpu_count()} vCPU, Linux {platform.release()}, Python {platform.python_version()};"
        f" load average {os.getloadavg()[0]:.2f} at the end (others' work on the machine counts in)",
        f"- command: `{command}`",
        "",
        "| | " + " | ".join(str(r["engine"]) for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]

    def row(label: str, render_one: Callable[[dict[str, object]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(render_one(r) for r in results) + " |")

    row(f"provision {SMALL:,} users, s", lambda r: f"{r['provision_small_s']:.1f}")
    row("provision the rest, users/s", lambda r: f"{r['users_per_s']:,.0f}")
    row(
        f"user_context lookup at {SMALL:,} / at all, us",
        lambda r: f"{r['lookup_small'][0]:.0f} / {r['lookup_large'][0]:.0f}",
    )  # type: ignore[index]
    row(
        f"session_heads lookup at {SMALL:,} / at all, us",
        lambda r: f"{r['lookup_small'][1]:.0f} / {r['lookup_large'][1]:.0f}",
    )  # type: ignore[index]
    row("first registrations, req/s (CPU us/req)", lambda r: f"{r['create_rate']:,.0f} ({r['create_cpu_us']:.0f})")
    row("renewals with a write, req/s (CPU us/req)", lambda r: f"{r['renew_rate']:,.0f} ({r['renew_cpu_us']:.0f})")
    row("accepted: created / renewed", lambda r: f"{r['created']:,} / {r['renewed']:,}")
    row("worker memory per cached session, bytes", lambda r: f"{r['rss_per_session_bytes']:,.0f}")
    row("database growth per session, bytes", lambda r: f"{r['db_bytes_per_session']:,.0f}")
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
