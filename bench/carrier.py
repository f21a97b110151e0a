#!/usr/bin/env python3
"""Carrier deployment on PostgreSQL: two home AAA nodes against one, and
accounting against FreeRADIUS's rlm_sql, same run, same machine, same load.

``nodes``: one throw-away PostgreSQL cluster (durable: fsync and synchronous
commits on), the bench user of bench/radius_throughput.py; one ``aaa-vpn
serve home --workers 1`` node, then two on the same database, each given
the same radclient load in total (half of the radclient processes per node
with two). Kind ``initial``: every request creates a session (a database
write on the node that got it); ``renewal``: every request renews the
probe's session naming its view (answered from the renewal memo, which the
nodes keep true through LISTEN/NOTIFY). Reported: requests/s, server CPU
per request, and how the two nodes split the requests and the CPU.

``accounting``: Accounting-Requests stored per second -- for each of N
sessions a Start, an Interim-Update and a Stop (distinct Acct-Session-Ids,
radclient ``acct``, 64 in flight per process) -- by ``aaa-vpn serve home``
(its accounting port, records in its ``accounting`` table) and by FreeRADIUS
3.2 with ``rlm_sql`` writing FreeRADIUS's own ``radacct`` schema
(mods-config/sql/main/postgresql), each in its own database of the same
cluster. Both answer only after the row is committed.

Usage (from the repository root):

    .venv/bin/python bench/carrier.py nodes --kind initial --requests 20000
    .venv/bin/python bench/carrier.py nodes --kind renewal --requests 50000
    .venv/bin/python bench/carrier.py accounting --sessions 5000

Results are printed and appended to bench/results/carrier.md with the
commands. Everything runs on 127.0.0.1 and a Unix socket; every process is
stopped by its PID, the cluster and temporary files are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import radius_throughput as rt  # noqa: E402  (the same request, load generator and process handling)

from tests import freeradius as freeradius_conf  # noqa: E402
from tests.postgres import Cluster  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "carrier.md"
SCHEMA = Path("/etc/freeradius/3.0/mods-config/sql/main/postgresql/schema.sql")
QUERIES = Path("/etc/freeradius/3.0/mods-config/sql/main/postgresql/queries.conf")


def log(message: str) -> None:
    print(f"[carrier] {message}", flush=True)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    made = Cluster(durable=True)
    try:
        yield made
    finally:
        made.stop()


def cli() -> list[str]:
    found = rt.aaa_vpn_cmd()
    if found is None:
        raise SystemExit("no aaa-vpn in the virtualenv: run scripts/setup.sh")
    return found


def provision(url: str, key: Path, commands: list[str]) -> None:
    for argv in rt.provision_commands(url, key):  # type: ignore[arg-type]
        done = subprocess.run([*cli(), *argv], capture_output=True, text=True, check=False)
        commands.append(shlex.join(["aaa-vpn", *argv]).replace(url, "$PG").replace(str(key), "$KEY"))
        if done.returncode != 0:
            raise SystemExit(f"aaa-vpn {shlex.join(argv)}: {(done.stderr or done.stdout).strip()[-400:]}")


def start_node(url: str, key: Path, base: Path, number: int, *extra: str) -> tuple[rt.subprocess.Popen[bytes], int]:
    port = rt.free_udp_port()
    argv = [*rt.serve_argv(cli(), url, key, port, 1), *extra]  # type: ignore[arg-type]
    process = rt.start(argv, log_path=base / f"node{number}.log")
    return process, port


# --------------------------------------------------------------------------- nodes


def load_for(base: Path, clients: int) -> rt.Load:
    req = base / "req64.txt"
    req.write_text("\n".join([rt.request_text(rt.fa_challenge())] * rt.IN_FLIGHT))
    return rt.Load(dict_dir=rt.DICT_DIR / "freeradius", req_file=req, clients=clients)


def renewals(load: rt.Load, port: int) -> None:
    """From now on the request file renews the probe's session, naming its view."""
    out = rt.probe(load, port) or ""
    found = re.search(r'Aaa-Vpn-Session-Id = "([0-9a-f]+)"', out)
    digest = re.search(r"Aaa-Vpn-Profile-Digest = (0x[0-9a-f]+)", out)
    if not (found and digest):
        raise SystemExit(f"the probe's Accept names no session: {out[-600:]}")
    line = f'Aaa-Vpn-Session-Id = "{found.group(1)}"\nAaa-Vpn-Profile-Digest = {digest.group(1)}\n'
    load.req_file.write_text(load.req_file.read_text().replace("Message-Authenticator", line + "Message-Authenticator"))


def parallel(load: rt.Load, targets: list[tuple[int, int]], total: int) -> tuple[float, int, int]:
    """radclient processes against (port, processes) pairs at once; (seconds, accepted, not accepted)."""
    per = max(1, -(-total // (sum(n for _, n in targets) * load.in_flight)))
    started = time.perf_counter()
    procs = [
        subprocess.Popen(load.argv(port, per), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for port, count in targets
        for _ in range(count)
    ]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - started
    accepted = sum(int(v) for out in outputs for k, v in rt.SUMMARY_RE.findall(out) if k == "Accepted")
    other = sum(int(v) for out in outputs for k, v in rt.SUMMARY_RE.findall(out) if k != "Accepted")
    return elapsed, accepted, other


def run_nodes(args: argparse.Namespace) -> str:
    commands: list[str] = []
    rows: list[str] = []
    with cluster() as pg, tempfile.TemporaryDirectory(prefix="aaa_vpn-carrier.") as tmp:
        base = Path(tmp)
        key = base / "server.key"
        url = pg.create_database("bench")
        provision(url, key, commands)
        load = load_for(base, args.clients)
        for nodes in args.nodes:
            started = [start_node(url, key, base, n + 1) for n in range(nodes)]
            try:
                for _process, port in started:
                    if rt.probe(load, port) is None:
                        raise SystemExit(f"node on {port} does not answer: {(base / 'node1.log').read_text()[-800:]}")
                if args.kind == "renewal":
                    load = load_for(base, args.clients)
                    renewals(load, started[0][1])
                    for _process, port in started[1:]:
                        rt.probe(load, port)  # its memo learns the session
                share = [(port, max(1, args.clients // nodes)) for _process, port in started]
                rates, cpus, splits = [], [], []
                for _round in range(args.rounds):
                    before = [rt.tree_cpu(p.pid)[0] for p, _ in started]
                    elapsed, accepted, other = parallel(load, share, args.requests)
                    after = [rt.tree_cpu(p.pid)[0] for p, _ in started]
                    used = [a - b for a, b in zip(after, before, strict=True)]
                    rates.append(accepted / elapsed)
                    cpus.append(1e6 * sum(used) / max(1, accepted))
                    splits.append("/".join(f"{u:.1f}s" for u in used))
                    if other:
                        log(f"{nodes} node(s): {other} requests not accepted")
                rows.append(
                    f"| {nodes} | {args.kind} | {statistics.median(rates):,.0f} | {statistics.median(cpus):.0f} |"
                    f" {', '.join(splits)} |"
                )
                log(rows[-1])
            finally:
                for process, _port in started:
                    rt.stop(process, "node")
        commands.append(f".venv/bin/python bench/carrier.py {' '.join(sys.argv[1:])}")
    return "\n".join(
        [
            "| nodes | kind | requests/s (median) | server CPU us/request | CPU per node, each round |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Commands:",
            "",
            *(f"    {c}" for c in commands),
        ]
    )


# --------------------------------------------------------------------------- accounting


def accounting_file(base: Path, sessions: int) -> Path:
    """Start, Interim-Update and Stop of ``sessions`` sessions, FreeRADIUS's names:
    every Start, then every Interim-Update, then every Stop (many sessions open at
    once, as at a PDSN; no two requests in flight for one record)."""
    starts, interims, stops = [], [], []
    for n in range(sessions):
        common = (
            f'User-Name = "user{n:06d}@home.example"\nNAS-IP-Address = 127.0.0.1\n'
            f'Acct-Session-Id = "bench-{n:08d}"\nFramed-IP-Address = 10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}\n'
        )
        starts.append(common + "Acct-Status-Type = Start\n")
        interims.append(
            common + "Acct-Status-Type = Interim-Update\nAcct-Input-Octets = 1000\nAcct-Session-Time = 60\n"
        )
        stops.append(
            common + "Acct-Status-Type = Stop\nAcct-Input-Octets = 2000\nAcct-Session-Time = 120\n"
            "Acct-Terminate-Cause = User-Request\n"
        )
    path = base / "acct.txt"
    path.write_text("\n".join(starts + interims + stops))
    return path


def acct_radclient(path: Path, port: int) -> tuple[float, int, int]:
    argv = [
        "radclient",
        "-c",
        "1",
        "-p",
        str(rt.IN_FLIGHT),
        "-q",
        "-s",
        "-r",
        "3",
        "-t",
        "5",
        "-f",
        str(path),
        f"127.0.0.1:{port}",
        "acct",
        rt.SECRET,
    ]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    found = dict(rt.SUMMARY_RE.findall(done.stdout + done.stderr))
    return elapsed, int(found.get("Accepted", 0)), int(found.get("Lost", 0))


#: FreeRADIUS 3.x's acct_unique policy (policy.d/accounting), as aaa_vpn keys its records too.
UNIQUE = (
    "%{md5:%{User-Name},%{Acct-Session-ID},%{%{NAS-IPv6-Address}:-%{NAS-IP-Address}},"
    "%{NAS-Identifier},%{NAS-Port-ID},%{NAS-Port}}"
)


#: As many threads as database connections, all started at once: FreeRADIUS then never
#: waits on its pool to open a connection while requests queue.
THREADS = (
    "thread pool {\n    start_servers = 32\n    max_servers = 32\n    min_spare_servers = 0\n"
    "    max_spare_servers = 32\n    max_requests_per_server = 0\n    auto_limit_acct = no\n}\n"
)


def freeradius_sql(base: Path, url: str, port: int) -> Path:
    """FreeRADIUS with rlm_sql on ``url``'s database, its accounting on ``port``."""
    database, host = url.split("/")[3].split("?")[0], re.search(r"host=([^&]+)", url)
    pg_port = re.search(r"port=(\d+)", url)
    assert host is not None and pg_port is not None
    conninfo = f"dbname={database} host={host.group(1)} port={pg_port.group(1)} user=postgres"
    return freeradius_conf.write_raddb(
        base,
        pool=THREADS,
        body=f"""\
client bench_nas {{
    ipaddr = 127.0.0.1
    secret = {rt.SECRET}
}}
policy {{
    acct_unique {{
        update request {{
            &Acct-Unique-Session-Id := "{UNIQUE}"
        }}
    }}
}}
modules {{
    expr {{
    }}
    sql {{
        dialect = "postgresql"
        driver = "rlm_sql_postgresql"
        radius_db = "{conninfo}"
        acct_table1 = "radacct"
        acct_table2 = "radacct"
        postauth_table = "radpostauth"
        authcheck_table = "radcheck"
        groupcheck_table = "radgroupcheck"
        authreply_table = "radreply"
        groupreply_table = "radgroupreply"
        usergroup_table = "radusergroup"
        client_table = "nas"
        group_attribute = "SQL-Group"
        delete_stale_sessions = yes
        pool {{
            start = 32
            min = 32
            max = 32
            spare = 0
            uses = 0
            retry_delay = 1
            lifetime = 0
            idle_timeout = 0
        }}
        $INCLUDE {QUERIES}
    }}
}}
server bench_acct {{
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {port}
    }}
    preacct {{
        acct_unique
    }}
    accounting {{
        sql
    }}
}}
""",
    )


def run_accounting(args: argparse.Namespace) -> str:
    freeradius = freeradius_conf.find_freeradius()
    if freeradius is None or not Path("/usr/lib/freeradius/rlm_sql_postgresql.so").exists():
        raise SystemExit("FreeRADIUS with rlm_sql_postgresql is not installed (scripts/setup.sh)")
    commands: list[str] = []
    rows: list[str] = []
    with cluster() as pg, tempfile.TemporaryDirectory(prefix="aaa_vpn-carrier.") as tmp:
        base = Path(tmp)
        key = base / "server.key"
        ours_url, theirs_url = pg.create_database("ours"), pg.create_database("radacct")
        provision(ours_url, key, commands)
        psql = rt.shutil.which("psql") or "/usr/bin/psql"
        schema = subprocess.run(
            [psql, "-q", "-v", "ON_ERROR_STOP=1", theirs_url, "-f", str(SCHEMA)], capture_output=True, text=True
        )
        if schema.returncode != 0:
            raise SystemExit(f"radacct schema: {schema.stderr[-400:]}")
        commands.append(f"psql $PG_RADACCT -f {SCHEMA}")
        results: dict[str, list[float]] = {"aaa-vpn": [], "FreeRADIUS rlm_sql": []}
        for round_number in range(args.rounds):
            requests = accounting_file(base, args.sessions)
            # ours
            port = rt.free_udp_port()
            node, _ = start_node(ours_url, key, base, 1, "--accounting-port", str(port))
            node_port = None
            try:
                node_port = port
                time.sleep(1.0)
                elapsed, accepted, lost = acct_radclient(requests, node_port)
                results["aaa-vpn"].append(accepted / elapsed)
                log(f"round {round_number + 1} aaa-vpn: {accepted} stored in {elapsed:.2f} s, {lost} lost")
            finally:
                rt.stop(node, "aaa-vpn")
            subprocess.run([psql, "-q", ours_url, "-c", "DELETE FROM accounting"], capture_output=True, check=False)
            # FreeRADIUS
            fr_port = rt.free_udp_port()
            raddb = freeradius_sql(base / "fr", theirs_url, fr_port)
            freeradius_conf.check_raddb(freeradius, raddb)
            fr = rt.start([freeradius, "-f", "-d", str(raddb)], log_path=base / "freeradius.out")
            try:
                deadline = time.monotonic() + 20
                while freeradius_conf.READY not in freeradius_conf.log_file(raddb).read_text(errors="replace"):
                    if time.monotonic() > deadline or fr.poll() is not None:
                        raise SystemExit(freeradius_conf.log_file(raddb).read_text()[-1500:])
                    time.sleep(0.1)
                elapsed, accepted, lost = acct_radclient(requests, fr_port)
                results["FreeRADIUS rlm_sql"].append(accepted / elapsed)
                log(f"round {round_number + 1} FreeRADIUS: {accepted} stored in {elapsed:.2f} s, {lost} lost")
                if lost:
                    log(freeradius_conf.log_file(raddb).read_text(errors="replace")[-1500:])
            finally:
                rt.stop(fr, "FreeRADIUS")
            subprocess.run([psql, "-q", theirs_url, "-c", "DELETE FROM radacct"], capture_output=True, check=False)
        ours, theirs = statistics.median(results["aaa-vpn"]), statistics.median(results["FreeRADIUS rlm_sql"])
        rows = [
            f"| aaa-vpn serve home (accounting table) | {ours:,.0f} |",
            f"| FreeRADIUS 3.2 rlm_sql (radacct) | {theirs:,.0f} |",
            f"| ratio | **{ours / theirs:.2f}x** |",
        ]
        commands.append(f".venv/bin/python bench/carrier.py {' '.join(sys.argv[1:])}")
    return "\n".join(
        [
            f"{args.sessions} sessions x (Start, Interim-Update, Stop), radclient acct -p 64, median of {args.rounds}",
            "",
            "| server | Accounting-Requests stored/s |",
            "|---|---|",
            *rows,
            "",
            "Commands:",
            "",
            *(f"    {c}" for c in commands),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    nodes = sub.add_parser("nodes", help="two home AAA nodes vs one on one PostgreSQL")
    nodes.add_argument("--kind", choices=("initial", "renewal"), default="initial")
    nodes.add_argument("--requests", type=int, default=20000)
    nodes.add_argument("--rounds", type=int, default=3)
    nodes.add_argument("--clients", type=int, default=2, help="radclient processes in all")
    nodes.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    acct = sub.add_parser("accounting", help="accounting stored/s vs FreeRADIUS rlm_sql")
    acct.add_argument("--sessions", type=int, default=5000)
    acct.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("radclient") is None:
        raise SystemExit("radclient is not installed (scripts/setup.sh)")
    with rt.cleanup_on_signals():
        table = run_nodes(args) if args.what == "nodes" else run_accounting(args)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {args.what} -- {stamp}\n\nMachine: {rt.machine()}\n\n{table}\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text("# Carrier deployment: nodes on PostgreSQL, accounting (bench/carrier.py)\n")
    with RESULTS.open("a") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
