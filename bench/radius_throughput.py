#!/usr/bin/env python3
"""RADIUS throughput of the aaa_vpn home AAA server against FreeRADIUS, same run, same machine.

What is measured: Access-Requests per second that produce a full two-path VPN profile
(an FA-Registration for ``mn1@home.example``, CHAP-authenticated in the 3GPP2 manner,
answered with an Access-Accept carrying the FA's paths FA-HA and FA-GW), driven by
``radclient`` on loopback. The anchor is FreeRADIUS 3.x with a minimal site (``files``
answering the same request with a static reply of the same attributes, ``chap``
verifying the same CHAP proof). Both servers get the same request file and the same
load shape (K radclient processes, 64 requests in flight each); rounds are interleaved
(ours, FreeRADIUS, ours, ...) and medians are reported with server CPU per request.

Usage (from the repository root):

    .venv/bin/python bench/radius_throughput.py --rounds 3 --requests 20000 --workers 2
    .venv/bin/python bench/radius_throughput.py --freeradius-only      # anchor alone
    .venv/bin/python bench/radius_throughput.py --with-module          # + FreeRADIUS hosting aaa_vpn

``--with-module`` adds a third server to the same run: FreeRADIUS with aaa_vpn's home AAA
as its ``rlm_python3`` module (aaa_vpn/freeradius, docs/freeradius-module.md) on the
database our server uses, answering the same requests with the profile it decides.
    .venv/bin/python bench/radius_throughput.py --profile              # + py-spy profile

Results are printed and appended to bench/results/radius-throughput.md. Everything runs
on 127.0.0.1; every process started here is stopped by its PID (or its own process
group), temporary files are removed, also on Ctrl-C. Needs root only to install
FreeRADIUS (scripts/setup.sh) when it is missing; the configuration it writes comes from
tests/freeradius.py, shared with the FreeRADIUS proxy interop test.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import freeradius as freeradius_conf  # noqa: E402  (the configuration shared with the interop test)

DICT_DIR = ROOT / "aaa_vpn" / "dictionaries"
VENDOR_DICT = DICT_DIR / "dictionary.aaa_vpn"
RESULTS = ROOT / "bench" / "results" / "radius-throughput.md"

SECRET = "testing123"  # RADIUS shared secret of the bench FA (loopback only)
NAI = "mn1@home.example"
MN_AAA_SECRET = "mn-aaa-bench-secret"
MN_AAA_SPI = 2  # RFC 4721 section 8 CHAP_SPI
MN_HA_SPI = 256
MN_HA_KEY = "00112233445566778899aabbccddeeff"
HOME_AGENT = "127.0.0.2"  # all node addresses are loopback: nothing is ever sent elsewhere
HOME_ADDRESS = "198.51.100.10"
CARE_OF = "127.0.0.1"  # the FA (= radclient's address)
GW_STATIC = "127.0.0.3"
GW_DYNAMIC = "127.0.0.4"
PREFIX_STATIC = "203.0.113.0/25"
PREFIX_DYNAMIC = "203.0.113.128/25"
IN_FLIGHT = 64  # requests in the file = requests in flight per radclient (-p)
HOSTED = "FreeRADIUS+aaa_vpn"  # the --with-module server's name in the results


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------- the request


def chap_request(challenge: bytes) -> tuple[bytes, bytes]:
    """CHAP-Challenge and CHAP-Password for the MN-AAA authenticator (RFC 4721 s8, 3GPP2).

    ``preceding`` is a Mobile IPv4 Registration Request up to and including the MN-AAA
    extension's Type, Subtype, Length and SPI; any fixed bytes would do for the bench,
    so this is a plausible fake RRQ.
    """
    nai = NAI.encode()
    rrq = bytes([1, 0x02, 0x07, 0x08])  # type 1 RRQ, flags (D=0, encaps), lifetime 1800
    rrq += socket.inet_aton(HOME_ADDRESS) + socket.inet_aton(HOME_AGENT)
    rrq += socket.inet_aton(CARE_OF) + bytes(range(8))  # identification
    rrq += bytes([131, len(nai)]) + nai  # NAI extension (RFC 2794)
    rrq += bytes([132, len(challenge)]) + challenge  # MN-FA challenge (RFC 4721)
    # generalized MN-AAA authentication extension (type 36, subtype 1), length covers
    # subtype(1)+length(2)+SPI(4)+authenticator(16)
    preceding = rrq + bytes([36, 1]) + (23).to_bytes(2, "big") + MN_AAA_SPI.to_bytes(4, "big")
    chap_challenge = hashlib.md5(preceding).digest() + challenge[-237:]
    chap_id = challenge[0]
    response = hashlib.md5(bytes([chap_id]) + MN_AAA_SECRET.encode() + chap_challenge).digest()
    return chap_challenge, bytes([chap_id]) + response


def fa_challenge() -> bytes:
    """A random 16-byte MN-FA challenge whose CHAP-Password radclient sends unchanged.

    radclient (3.2.x) treats a 17-octet CHAP-Password whose octets are all >= 32 as a
    *cleartext* password and CHAP-encodes it again with a random identifier (its
    "ASCII or hex CHAP-Password" heuristic), which breaks ~10% of random proofs
    ((7/8)^17). Draw challenges until the proof has an octet below 32.
    """
    while True:
        challenge = os.urandom(16)
        if min(chap_request(challenge)[1]) < 32:
            return challenge


def request_text(challenge: bytes) -> str:
    chap_challenge, chap_password = chap_request(challenge)
    one = "\n".join(
        [
            f'User-Name = "{NAI}"',
            f"CHAP-Password = 0x{chap_password.hex()}",
            f"CHAP-Challenge = 0x{chap_challenge.hex()}",
            "NAS-IP-Address = 127.0.0.1",
            "Aaa-Vpn-Request-Type = FA-Registration",
            f"Aaa-Vpn-Home-Agent = {HOME_AGENT}",
            f"Aaa-Vpn-Care-Of-Address = {CARE_OF}",
            "Message-Authenticator = 0x00",
        ]
    )
    return one + "\n"


# --------------------------------------------------------------------------- processes

ALL_STARTED: list[subprocess.Popen[bytes]] = []


def start(argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own process group (so its workers can be stopped with it)."""
    out = log_path.open("ab")
    proc = subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    out.close()
    ALL_STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], name: str, sig: int = signal.SIGTERM) -> None:
    """Stop a process we started, and its process group (which it leads), by PID."""
    if proc.poll() is None:
        log(f"stopping {name} (pid {proc.pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    # workers that outlived their parent (same process group, pgid == proc.pid)
    for pid in pids_in_group(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ValueError):
        ALL_STARTED.remove(proc)


def pids_in_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and int(stat[4]) == pgid:
                found.append(int(entry))
    return found


def read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat, with the command name removed (index 0 = state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return [raw[: raw.index(" ")], *raw[raw.rindex(")") + 2 :].split()]


TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root_pid: int) -> tuple[float, dict[int, float]]:
    """utime+stime (s) of a process and all its descendants (each /proc/PID/stat already
    sums that process's threads, including exited ones)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_stat(int(entry))
        if stat is None:
            continue
        # after the name: [0]=pid [1]=state [2]=ppid ... utime=[12] stime=[13]
        children[int(stat[2])].append(int(entry))
        cpu[int(entry)] = (int(stat[12]) + int(stat[13])) / TICK
    per: dict[int, float] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        if pid in cpu:
            per[pid] = cpu[pid]
        todo.extend(children.get(pid, []))
    return sum(per.values()), per


def pin_tree(root_pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process and of its descendants to ``cpus`` (children forked
    later, e.g. restarted workers, inherit it)."""
    _, per = tree_cpu(root_pid)
    for pid in per:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


def cpu_split() -> tuple[set[int], set[int]]:
    """(server CPUs, load-generator CPUs): the first half for the server, at least one each."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- radclient


@dataclasses.dataclass
class Load:
    dict_dir: Path
    req_file: Path
    clients: int
    in_flight: int = IN_FLIGHT
    nice: int = 0
    cpus: str = ""  # taskset CPU list for radclient ("" = no pinning)

    def argv(self, port: int, count: int) -> list[str]:
        prefix = ["taskset", "-c", self.cpus] if self.cpus else []
        prefix += ["nice", "-n", str(self.nice)] if self.nice else []
        return [
            *prefix,
            "radclient",
            "-c",
            str(count),
            "-p",
            str(self.in_flight),
            "-q",
            "-s",
            "-r",
            "3",
            "-t",
            "2",
            "-d",
            str(self.dict_dir),
            "-f",
            str(self.req_file),
            f"127.0.0.1:{port}",
            "auth",
            SECRET,
        ]


@dataclasses.dataclass
class RoundResult:
    server: str
    round: int
    requests: int
    elapsed: float
    accepted: int
    rejected: int
    lost: int
    server_cpu: float
    client_cpu: float
    per_process_cpu: list[float]
    rc: list[int]

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_us_per_req(self) -> float:
        return 1e6 * self.server_cpu / self.accepted if self.accepted else float("nan")

    @property
    def server_util(self) -> float:
        """Server CPU time / wall time: 1.0 = one core busy for the whole round."""
        return self.server_cpu / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.accepted == self.requests and self.lost == 0 and self.rejected == 0 and not any(self.rc)


SUMMARY_RE = re.compile(r"^\s*(Accepted|Rejected|Lost)\s*:\s*(\d+)", re.MULTILINE)


def run_load(load: Load, server: str, rnd: int, port: int, total: int, server_pid: int) -> RoundResult:
    per_client = max(1, -(-total // (load.clients * load.in_flight)))  # ceil
    requests = per_client * load.in_flight * load.clients
    cpu0, per0 = tree_cpu(server_pid)
    t0 = time.perf_counter()
    procs = []
    for _ in range(load.clients):
        p = subprocess.Popen(
            load.argv(port, per_client),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        procs.append(p)
    client_cpu = 0.0
    outputs = []
    rcs = []
    try:
        for p in procs:
            assert p.stdout is not None
            out = p.stdout.read().decode(errors="replace")
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            client_cpu += usage.ru_utime + usage.ru_stime
            outputs.append(out)
            rcs.append(p.returncode)
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
    elapsed = time.perf_counter() - t0
    cpu1, per1 = tree_cpu(server_pid)
    counts = collections.Counter[str]()
    for out in outputs:
        for key, value in SUMMARY_RE.findall(out):
            counts[key] += int(value)
    per_process = sorted((per1.get(pid, 0.0) - per0.get(pid, 0.0) for pid in per1), reverse=True)
    res = RoundResult(
        server=server,
        round=rnd,
        requests=requests,
        elapsed=elapsed,
        accepted=counts["Accepted"],
        rejected=counts["Rejected"],
        lost=counts["Lost"],
        server_cpu=cpu1 - cpu0,
        client_cpu=client_cpu,
        per_process_cpu=[round(c, 2) for c in per_process if c > 0.005],
        rc=rcs,
    )
    if not res.ok:
        tail = "\n".join(o.strip()[-600:] for o in outputs if o.strip())
        log(f"WARNING {server} round {rnd}: not all requests accepted:\n{tail}")
    return res


def probe(load: Load, port: int, *, attempts: int = 50) -> str | None:
    """One verbose request; returns radclient's output once the server answers."""
    one = load.req_file.with_name("probe.txt")
    one.write_text(load.req_file.read_text().split("\n\n")[0] + "\n")
    out = ""
    for _ in range(attempts):
        cp = subprocess.run(
            [
                "radclient",
                "-x",
                "-r",
                "1",
                "-t",
                "0.2",
                "-d",
                str(load.dict_dir),
                "-f",
                str(one),
                f"127.0.0.1:{port}",
                "auth",
                SECRET,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        out = cp.stdout + cp.stderr
        if "Received Access-" in out:
            return out
        time.sleep(0.2)
    log(f"no answer on 127.0.0.1:{port}; last radclient output:\n{out[-1500:]}")
    return None


def reply_shape(radclient_x: str) -> tuple[str, int, list[str]]:
    """(code, length, attribute lines) of the reply in a `radclient -x` transcript."""
    m = re.search(r"Received (Access-\w+) Id \d+ from \S+ to \S+ length (\d+)", radclient_x)
    if not m:
        return "?", 0, []
    attrs = []
    for line in radclient_x[m.end() :].splitlines()[1:]:
        if not line.startswith(("\t", " ")) or "=" not in line:
            break
        attrs.append(line.strip())
    return m.group(1), int(m.group(2)), attrs


# --------------------------------------------------------------------------- FreeRADIUS

# The FA's view of a two-path profile (FA-HA and FA-GW), as our server builds it. Used
# for FreeRADIUS's static reply when our server is not available to copy from.
TEMPLATE_REPLY = f"""\
Session-Timeout = 1800,
Aaa-Vpn-Session-Id = "3f2c9a1e6b7d4c08a5e1f2d3c4b5a697",
Aaa-Vpn-Home-Address = {HOME_ADDRESS},
Aaa-Vpn-Home-Agent = {HOME_AGENT},
Aaa-Vpn-Care-Of-Address = {CARE_OF},
Aaa-Vpn-Lifetime = 1800,
Aaa-Vpn-Key-Epoch = 1,
Aaa-Vpn-FA-HA-SPI = 4660,
Aaa-Vpn-FA-HA-Key = 0x8f1e2d3c4b5a69788796a5b4c3d2e1f0,
Aaa-Vpn-Path-Role:1 = FA-HA,
Aaa-Vpn-Path-Local:1 = "{CARE_OF}",
Aaa-Vpn-Path-Peer:1 = "{HOME_AGENT}",
Aaa-Vpn-Path-Local-TS:1 = "{CARE_OF}/32",
Aaa-Vpn-Path-Remote-TS:1 = "{HOME_AGENT}/32,{PREFIX_STATIC}",
Aaa-Vpn-Path-Key-Mode:1 = Manual,
Aaa-Vpn-Path-ESP-Transform:1 = AES-GCM-16-256,
Aaa-Vpn-Path-SPI-In:1 = 1048577,
Aaa-Vpn-Path-SPI-Out:1 = 1048578,
Aaa-Vpn-Path-Key-In:1 = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f00a0b0c0d",
Aaa-Vpn-Path-Key-Out:1 = "1f2e3d4c5b6a79889786b5a4d3c2f1e01f2e3d4c5b6a79889786b5a4d3c2f1e01a1b1c1d",
Aaa-Vpn-Path-Lifetime:1 = 3600,
Aaa-Vpn-Path-QoS-Class:1 = "video",
Aaa-Vpn-Path-DSCP:1 = 34,
Aaa-Vpn-Path-Rate-Limit:1 = 10000,
Aaa-Vpn-Path-Gateway-Mode:1 = Static,
Aaa-Vpn-Path-Role:2 = FA-GW,
Aaa-Vpn-Path-Local:2 = "{CARE_OF}",
Aaa-Vpn-Path-Peer:2 = "{GW_DYNAMIC}",
Aaa-Vpn-Path-Local-TS:2 = "{HOME_ADDRESS}/32",
Aaa-Vpn-Path-Remote-TS:2 = "{PREFIX_DYNAMIC}",
Aaa-Vpn-Path-Key-Mode:2 = Manual,
Aaa-Vpn-Path-ESP-Transform:2 = AES-GCM-16-256,
Aaa-Vpn-Path-SPI-In:2 = 1048579,
Aaa-Vpn-Path-SPI-Out:2 = 1048580,
Aaa-Vpn-Path-Key-In:2 = "2f3e4d5c6b7a89988796c5b4e3d2f1002f3e4d5c6b7a89988796c5b4e3d2f1002a2b2c2d",
Aaa-Vpn-Path-Key-Out:2 = "3f4e5d6c7b8a99a89786d5c4f3e201103f4e5d6c7b8a99a89786d5c4f3e201103a3b3c3d",
Aaa-Vpn-Path-Lifetime:2 = 3600,
Aaa-Vpn-Path-QoS-Class:2 = "video",
Aaa-Vpn-Path-DSCP:2 = 34,
Aaa-Vpn-Path-Rate-Limit:2 = 10000,
Aaa-Vpn-Path-Gateway-Mode:2 = Dynamic"""


def ensure_freeradius() -> str:
    """The freeradius binary; installed by scripts/setup.sh (which leaves no daemon running) if missing."""
    found = freeradius_conf.find_freeradius()
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("freeradius is not installed and this is not root: run scripts/setup.sh as root")
    log("installing freeradius (scripts/setup.sh)")
    subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True)
    found = freeradius_conf.find_freeradius()
    if not found:
        raise SystemExit("scripts/setup.sh did not install freeradius")
    return found


def reply_from_ours(attrs: list[str]) -> str | None:
    """FreeRADIUS `users` reply items copied from our server's decoded reply."""
    items = [a for a in attrs if not a.startswith(("Message-Authenticator", "Proxy-State"))]
    return ",\n".join(items) if items else None


def write_raddb(base: Path, port: int, reply: str) -> Path:
    """The anchor's raddb: tests/freeradius.py's minimal radiusd.conf with one
    client (radclient), ``chap`` and ``files`` answering NAI with ``reply``."""
    raddb = base / "raddb"
    raddb.mkdir(parents=True, exist_ok=True)
    # Message-Authenticator in the reply makes FreeRADIUS sign it as ours does (3.2.1
    # does not sign Access-Accepts on its own); radclient verifies both.
    reply_items = "Message-Authenticator = 0x00,\n" + reply
    (raddb / "users").write_text(
        f'{NAI} Cleartext-Password := "{MN_AAA_SECRET}"\n' + "".join(f"\t{line}\n" for line in reply_items.splitlines())
    )
    for name in ("users.acct", "users.preproxy"):
        (raddb / name).write_text("")
    return freeradius_conf.write_raddb(
        base,
        f"""\
client bench_fa {{
    ipaddr = 127.0.0.1
    secret = {SECRET}
    require_message_authenticator = yes
}}
modules {{
    files {{
        filename = {raddb}/users
        acctusersfile = {raddb}/users.acct
        preproxy_usersfile = {raddb}/users.preproxy
    }}
    chap {{
    }}
}}
server bench {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {port}
    }}
    authorize {{
        chap
        files
    }}
    authenticate {{
        Auth-Type CHAP {{
            chap
        }}
    }}
    post-auth {{
    }}
}}
""",
    )


def write_module_raddb(base: Path, port: int, db: Path, key: Path) -> Path:
    """FreeRADIUS hosting aaa_vpn's home AAA (aaa_vpn/freeradius/config.py's
    configuration): the same client, deciding in ``authorize`` on ``db``."""
    from aaa_vpn.freeradius.config import CLIENT_POLICY, module_config

    return freeradius_conf.write_raddb(
        base,
        f"""\
client bench_fa {{
    ipaddr = 127.0.0.1
    secret = {SECRET}
    require_message_authenticator = yes
}}
policy {{
{CLIENT_POLICY}}}
modules {{
{module_config(db, key, log_level="warning")}
}}
server bench_module {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {port}
    }}
    authorize {{
        aaa_vpn_client
        aaa_vpn
    }}
    authenticate {{
    }}
    post-auth {{
    }}
}}
""",
    )


# --------------------------------------------------------------------------- our server


def aaa_vpn_cmd() -> list[str] | None:
    exe = Path(sys.executable).with_name("aaa-vpn")
    if exe.exists():
        return [str(exe)]
    if shutil.which("aaa-vpn"):
        return ["aaa-vpn"]
    return None


def provision_commands(db: Path, key: Path) -> list[list[str]]:
    """The CLI calls that build a user whose FA Accept carries two paths (FA-HA, FA-GW)."""
    g = ["--db", str(db), "--key-file", str(key)]
    return [
        [*g, "db", "init"],
        [*g, "client", "add", "bench-fa", "--address", "127.0.0.1", "--role", "fa", "--secret", SECRET],
        [*g, "client", "add", "bench-ha", "--address", HOME_AGENT, "--role", "ha", "--secret", SECRET],
        [
            *g,
            "user",
            "add",
            NAI,
            "--home-agent",
            HOME_AGENT,
            "--home-address",
            HOME_ADDRESS,
            "--mn-aaa-secret",
            MN_AAA_SECRET,
            "--mn-ha-spi",
            str(MN_HA_SPI),
            "--mn-ha-key-hex",
            MN_HA_KEY,
        ],
        [
            *g,
            "gateway",
            "add",
            "gw-static",
            "--address",
            GW_STATIC,
            "--mode",
            "static",
            "--protects",
            PREFIX_STATIC,
            "--generate-gateway-key",
        ],
        [
            *g,
            "gateway",
            "add",
            "gw-dynamic",
            "--address",
            GW_DYNAMIC,
            "--mode",
            "dynamic",
            "--protects",
            PREFIX_DYNAMIC,
            "--generate-gateway-key",
        ],
        [*g, "service", "add", "gold", "--key-mode", "manual", "--esp-transform", "aes256gcm16"],
        [*g, "qos", "add", "video", "--dscp", "34", "--rate-kbps", "10000"],
        [
            *g,
            "vpn",
            "add",
            "--user",
            NAI,
            "--correspondent",
            PREFIX_STATIC,
            "--gateway",
            "gw-static",
            "--service",
            "gold",
            "--qos",
            "video",
        ],
        [
            *g,
            "vpn",
            "add",
            "--user",
            NAI,
            "--correspondent",
            PREFIX_DYNAMIC,
            "--gateway",
            "gw-dynamic",
            "--service",
            "gold",
            "--qos",
            "video",
        ],
    ]


def provision(cli: list[str], base: Path, commands_log: list[str]) -> tuple[Path, Path] | str:
    db, key = base / "aaa.db", base / "server.key"
    for argv in provision_commands(db, key):
        cp = subprocess.run([*cli, *argv], capture_output=True, text=True, check=False)
        commands_log.append(shlex.join(["aaa-vpn", *argv]).replace(str(base), "$T"))
        if cp.returncode != 0:
            return f"`aaa-vpn {shlex.join(argv[4:])}` failed: {(cp.stderr or cp.stdout).strip()[-400:]}"
    return db, key


def serve_argv(cli: list[str], db: Path, key: Path, port: int, workers: int, memo: bool = True) -> list[str]:
    return [
        *cli,
        "--db",
        str(db),
        "--key-file",
        str(key),
        "serve",
        "home",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        *(() if memo else ("--no-renewal-memo",)),
    ]


# --------------------------------------------------------------------------- profile


def ensure_py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    if exe.exists():
        return str(exe)
    found = shutil.which("py-spy")
    if found:
        return found
    log("installing py-spy into the virtualenv (pip)")
    cp = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=False)
    return str(exe) if cp.returncode == 0 and exe.exists() else None


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function, and self share per file, from
    py-spy's collapsed-stack output ("frame;frame;frame count"; a frame is
    "function (file:line)"; lines of one function are merged)."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    file_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        file_c[_frame_file(frames[-1])] += n
        for f in set(frames):
            incl_c[f] += n
    if not total:
        return "(no samples)\n"
    lines = [f"{total} samples (all server processes). Self time by file:", "", "| self % | file |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in file_c.most_common(15)]
    lines += ["", "Top functions by self time:", "", "| self % | incl % | function |", "|---:|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | {100 * incl_c[f] / total:.1f} | `{f}` |" for f, n in self_c.most_common(top)]
    # frames present in (nearly) every sample are scaffolding: main, click, the event loop
    inner = [(f, n) for f, n in incl_c.most_common() if n < 0.95 * total][:top]
    lines += ["", "Top functions by inclusive time (below the event loop):", "", "| incl % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in inner]
    return "\n".join(lines) + "\n"


def _function(frame: str) -> str:
    """ "f (path/to/x.py:123)" -> "f (x.py relative)"; merges the lines of one function."""
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({_short_path(m.group(2))})"


def _frame_file(frame: str) -> str:
    m = re.search(r"\(([^()]+)\)$", frame)
    return m.group(1) if m else frame


def _short_path(p: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in p:
            return p.split(marker, 1)[1]
    return p


# --------------------------------------------------------------------------- main


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} vCPU ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def version_of(argv: list[str]) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, check=False)
    first = (cp.stdout or cp.stderr).strip().splitlines()
    return first[0] if first else "?"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    old = {sig: signal.signal(sig, on_term) for sig in sigs}
    try:
        yield
    finally:
        while ALL_STARTED:
            stop(ALL_STARTED[-1], "leftover process")
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per server (default 3)")
    ap.add_argument("--requests", type=int, default=40000, help="requests per round per server (default 40000)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of our server (default 2)")
    ap.add_argument(
        "--clients",
        type=int,
        default=0,
        help="parallel radclient processes, each with 64 in flight (default 2 x workers: "
        "SO_REUSEPORT balances by source port, so more clients than workers keeps "
        "one unlucky hash from pinning the load to one worker)",
    )
    ap.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="run radclient under `nice -n N` (radclient busy-polls while it waits for "
        "replies, which steals CPU from a slow server on a small machine)",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin the server under test (all processes and threads) to the first half of "
        "the CPUs and radclient to the other half, as in the reference measurement",
    )
    ap.add_argument("--warmup", type=int, default=2000, help="unmeasured requests before the rounds")
    ap.add_argument("--freeradius-only", action="store_true", help="measure the FreeRADIUS anchor alone")
    ap.add_argument(
        "--with-module",
        action="store_true",
        help="also measure FreeRADIUS hosting aaa_vpn's home AAA (rlm_python3, aaa_vpn.freeradius) on our"
        " server's database, in the same interleaved rounds",
    )
    ap.add_argument(
        "--profile", action="store_true", help="after the measured rounds, one more round on our server under py-spy"
    )
    ap.add_argument(
        "--profile-idle",
        action="store_true",
        help="with --profile: also sample waiting threads (py-spy --idle), to see time "
        "spent blocked (locks, I/O) rather than on the CPU",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (for debugging)")
    ap.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    ap.add_argument(
        "--full-renewals",
        action="store_true",
        help="renewals name the session but not the digest of the view (as a third-party FA would):"
        " every Accept carries the whole profile again",
    )
    ap.add_argument(
        "--no-renewal-memo",
        action="store_true",
        help="run our server with --no-renewal-memo: every renewal is decided in full (store read,"
        " plan, write when the expiry moves) instead of answered from the renewal memo",
    )
    ap.add_argument(
        "--kind",
        choices=("renewal", "initial"),
        default="renewal",
        help="renewal: every request renews the session the probe created (it names the session,"
        " as an FA does for its current visitor); initial: every request is a first registration"
        " and creates a new session (default renewal)",
    )
    ap.add_argument(
        "--print-request",
        action="store_true",
        help="print one bench Access-Request in radclient's format and exit (used by scripts/demo.sh)",
    )
    args = ap.parse_args(argv)
    if args.print_request:
        sys.stdout.write(request_text(fa_challenge()))
        return 0
    clients = args.clients or max(2, 2 * args.workers)

    if not shutil.which("radclient"):
        raise SystemExit("radclient not found: run scripts/setup.sh (freeradius-utils)")
    freeradius = ensure_freeradius()

    base = Path(tempfile.mkdtemp(prefix="aaa_vpn-bench-"))
    log(f"work dir {base}")
    with cleanup_on_signals():
        try:
            return run(args, clients, base, freeradius)
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            return 130
        finally:
            if args.keep:
                log(f"kept {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace, clients: int, base: Path, freeradius: str) -> int:
    # radclient's dictionary dir: the project's, or a private one that includes the vendor file
    shipped = DICT_DIR / "freeradius"
    if (shipped / "dictionary").exists():
        dict_dir = shipped
    else:
        dict_dir = base / "dict"
        dict_dir.mkdir()
        (dict_dir / "dictionary").write_text(f"$INCLUDE {VENDOR_DICT}\n")
    req = base / "req64.txt"
    req.write_text("\n".join([request_text(fa_challenge())] * IN_FLIGHT))
    server_cpus, client_cpus = cpu_split() if args.pin else (set(), set())
    load = Load(
        dict_dir=dict_dir,
        req_file=req,
        clients=clients,
        nice=args.client_nice,
        cpus=",".join(map(str, sorted(client_cpus))),
    )
    commands: list[str] = []
    notes: list[str] = []

    # ---- our server
    ours = None
    ours_port = free_udp_port()
    ours_reply = None
    provisioned_db: tuple[Path, Path] | None = None
    cli = None if args.freeradius_only else aaa_vpn_cmd()
    if args.freeradius_only:
        notes.append("our server: not run (--freeradius-only)")
    elif cli is None:
        notes.append("our server: not run (no `aaa-vpn` command in the virtualenv)")
    else:
        provisioned = provision(cli, base, commands)
        if isinstance(provisioned, str):
            notes.append(f"our server: not run ({provisioned})")
        else:
            db, key = provisioned
            provisioned_db = (db, key)
            argv = serve_argv(cli, db, key, ours_port, args.workers, memo=not args.no_renewal_memo)
            commands.append(shlex.join(["aaa-vpn", *argv[len(cli) :]]).replace(str(base), "$T"))
            ours = start(argv, log_path=base / "ours.log")
            out = probe(load, ours_port)
            code, _, _ = reply_shape(out or "")
            if code != "Access-Accept":
                log_tail = (base / "ours.log").read_text(errors="replace")[-800:]
                notes.append(f"our server: not measured (probe got {code}; log tail: {log_tail!r})")
                log(notes[-1])
                stop(ours, "our server")
                ours = None
            else:
                ours_reply = out
                if args.kind == "renewal":
                    # An FA renewing for its current visitor names the session
                    # and the digest of the view it holds (docs/protocol.md
                    # section 1): from now on every request renews the session
                    # the probe created, and is answered with a confirmation.
                    # FreeRADIUS then returns a copy of that renewal's Accept.
                    found = re.search(r'Aaa-Vpn-Session-Id = "([0-9a-f]+)"', out)
                    digest = re.search(r"Aaa-Vpn-Profile-Digest = (0x[0-9a-f]+)", out)
                    if found:
                        line = f'Aaa-Vpn-Session-Id = "{found.group(1)}"\n'
                        if digest and not args.full_renewals:
                            line += f"Aaa-Vpn-Profile-Digest = {digest.group(1)}\n"
                        req.write_text(req.read_text().replace("Message-Authenticator", line + "Message-Authenticator"))
                        renewal = probe(load, ours_port)
                        if renewal is not None and reply_shape(renewal)[0] == "Access-Accept":
                            ours_reply = renewal
                        what = "the session and the digest of its view" if "Digest" in line else "the session"
                        notes.append(f"requests: renewals of one session, naming {what} (from the probe's Accept)")
                else:
                    notes.append("requests: initial registrations (every request creates a new session)")

    # ---- FreeRADIUS, with the same reply attributes as ours when we have them
    fr_port = free_udp_port()
    reply = reply_from_ours(reply_shape(ours_reply)[2]) if ours_reply else None
    if reply:
        notes.append("FreeRADIUS reply: a copy of the attributes of our server's Accept (same values)")
    else:
        reply = TEMPLATE_REPLY
        notes.append("FreeRADIUS reply: the built-in template of an FA two-path profile")
    raddb = write_raddb(base, fr_port, reply)
    try:
        freeradius_conf.check_raddb(freeradius, raddb)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    fr_argv = [freeradius, "-f", "-d", str(raddb)]
    commands.append("freeradius -f -d $T/raddb")
    fr = start(fr_argv, log_path=base / "freeradius.out")
    fr_probe = probe(load, fr_port)
    if fr_probe is None or reply_shape(fr_probe)[0] != "Access-Accept":
        print(fr_probe or "", (base / "log" / "radius.log").read_text(errors="replace")[-2000:])
        raise SystemExit("FreeRADIUS did not accept the bench request")

    shapes = {"FreeRADIUS": reply_shape(fr_probe)}
    if ours_reply:
        shapes["aaa_vpn"] = reply_shape(ours_reply)
    for name, (code, length, attrs) in shapes.items():
        log(f"{name}: {code}, {length} bytes, {len(attrs)} attributes")

    # ---- FreeRADIUS hosting aaa_vpn (rlm_python3) on our server's database
    hosted = None
    hosted_port = free_udp_port()
    if args.with_module:
        if ours is None or provisioned_db is None:
            notes.append("FreeRADIUS + aaa_vpn module: not run (our server's database is not provisioned)")
        else:
            mod_raddb = write_module_raddb(base / "module", hosted_port, *provisioned_db)
            try:
                freeradius_conf.check_raddb(freeradius, mod_raddb)
            except RuntimeError as exc:
                raise SystemExit(str(exc)) from None
            commands.append("freeradius -f -d $T/module/raddb    # python -m aaa_vpn.freeradius --db $T/aaa.db")
            hosted = start([freeradius, "-f", "-d", str(mod_raddb)], log_path=base / "module.out")
            hosted_probe = probe(load, hosted_port)
            if hosted_probe is None or reply_shape(hosted_probe)[0] != "Access-Accept":
                log_tail = (base / "module" / "log" / "radius.log").read_text(errors="replace")[-1500:]
                notes.append(f"FreeRADIUS + aaa_vpn module: not measured (probe: {log_tail!r})")
                log(notes[-1])
                stop(hosted, "FreeRADIUS + aaa_vpn module")
                hosted = None
            else:
                shapes[HOSTED] = reply_shape(hosted_probe)
                notes.append(
                    f"{HOSTED}: FreeRADIUS with aaa_vpn.freeradius.module (rlm_python3, thread-unsafe: one"
                    " request at a time) deciding in authorize on our server's database"
                )

    servers: list[tuple[str, int, subprocess.Popen[bytes]]] = []
    if ours is not None:
        servers.append(("aaa_vpn", ours_port, ours))
    servers.append(("FreeRADIUS", fr_port, fr))
    if hosted is not None:
        servers.append((HOSTED, hosted_port, hosted))
    commands.append(
        shlex.join(load.argv(0, 0))
        .replace(str(base), "$T")
        .replace(str(ROOT) + "/", "")
        .replace("-c 0", "-c <n>")
        .replace("127.0.0.1:0", "127.0.0.1:<port>")
        + f"    # x{clients} in parallel, n = requests / ({clients} x {IN_FLIGHT})"
    )

    if args.pin:
        for _name, _, proc in servers:
            pin_tree(proc.pid, server_cpus)
        notes.append(f"pinned: servers on CPUs {sorted(server_cpus)}, radclient on CPUs {sorted(client_cpus)}")
        log(notes[-1])
    for name, port, proc in servers:
        log(f"warm-up {name}: {args.warmup} requests")
        run_load(load, name, 0, port, args.warmup, proc.pid)

    results: list[RoundResult] = []
    for rnd in range(1, args.rounds + 1):
        order = servers if rnd % 2 else list(reversed(servers))
        for name, port, proc in order:
            r = run_load(load, name, rnd, port, args.requests, proc.pid)
            results.append(r)
            log(
                f"round {rnd} {name}: {r.rate:,.0f} req/s, {r.accepted}/{r.requests} accepted, "
                f"lost {r.lost}, server CPU {r.cpu_us_per_req:.1f} us/req ({r.server_util:.2f} cores busy), "
                f"per process {r.per_process_cpu}, radclient CPU {r.client_cpu:.1f} s"
            )

    profile_md = ""
    if args.profile:
        if ours is None:
            notes.append("profile: skipped (our server is not running)")
        else:
            profile_md = profile_ours(load, ours_port, ours.pid, args.requests, base, commands, idle=args.profile_idle)

    stop(fr, "FreeRADIUS")
    if hosted is not None:
        stop(hosted, "FreeRADIUS + aaa_vpn module")
    if ours is not None:
        stop(ours, "our server")

    report = render(args, clients, results, shapes, commands, notes, profile_md)
    print()
    print(report)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(report + "\n")
        log(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0 if results and all(r.ok for r in results) else 1


def profile_ours(
    load: Load,
    port: int,
    pid: int,
    requests: int,
    base: Path,
    commands: list[str],
    *,
    idle: bool,
) -> str:
    spy = ensure_py_spy()
    if spy is None:
        return "py-spy could not be installed: no profile.\n"
    out = base / "ours.collapsed"
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        *(["--idle"] if idle else []),
    ]
    commands.append(shlex.join(["py-spy", *argv[1:]]).replace(str(base), "$T").replace(str(pid), "<server pid>"))
    log("profiling our server with py-spy for one round")
    rec = start(argv, log_path=base / "py-spy.log")
    time.sleep(1.0)  # let py-spy attach to every process
    r = run_load(load, "aaa_vpn (profiled)", 0, port, requests, pid)
    log(f"profiled round: {r.rate:,.0f} req/s (slowed by sampling)")
    stop(rec, "py-spy", signal.SIGINT)
    if not out.exists():
        spy_log = (base / "py-spy.log").read_text(errors="replace")[-500:]
        return f"py-spy wrote no profile (see its log): {spy_log}\n"
    return summarize_collapsed(out)


def render(
    args: argparse.Namespace,
    clients: int,
    results: list[RoundResult],
    shapes: dict[str, tuple[str, int, list[str]]],
    commands: list[str],
    notes: list[str],
    profile_md: str,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    by: dict[str, list[RoundResult]] = collections.defaultdict(list)
    for r in results:
        by[r.server].append(r)
    med = {s: (median([r.rate for r in rs]), median([r.cpu_us_per_req for r in rs])) for s, rs in by.items()}
    out = [f"## {now}: aaa_vpn home AAA vs FreeRADIUS, Access-Request -> two-path FA profile", ""]
    out += [
        f"- machine: {machine()}",
        (
            f"- {version_of(['freeradius', '-v']).removeprefix('radiusd: ')}; load: radclient "
            f"{version_of(['radclient', '-v']).removeprefix('radclient version ')}"
        ),
        (
            f"- load: {clients} radclient processes x {IN_FLIGHT} in flight, {args.requests} requests "
            f"per round per server, {args.rounds} interleaved rounds, {args.warmup} warm-up requests; "
            f"our server: {args.workers} worker processes (SO_REUSEPORT); FreeRADIUS: thread pool 5..32"
        ),
        (
            "- request: FA-Registration of mn1@home.example, CHAP (3GPP2 MN-AAA mapping), "
            "Message-Authenticator; both servers sign their replies"
        ),
    ]
    out += [f"- {n}" for n in notes]
    for name, (code, length, attrs) in shapes.items():
        out.append(f"- {name} reply: {code}, {length} bytes, {len(attrs)} attributes")
    out += ["", "| server | median req/s | median server CPU us/req | rounds |", "|---|---:|---:|---:|"]
    for s, (rate, cpu) in med.items():
        out.append(f"| {s} | {rate:,.0f} | {cpu:.1f} | {len(by[s])} |")
    if "aaa_vpn" in med and "FreeRADIUS" in med:
        ratio = med["aaa_vpn"][0] / med["FreeRADIUS"][0]
        cpu_ratio = med["aaa_vpn"][1] / med["FreeRADIUS"][1]
        # The targets: renewals at least FreeRADIUS's throughput, first
        # registrations (a session, its keys and a database write each) half.
        target = 0.5 if args.kind == "initial" else 1.0
        verdict = f"{'meets' if ratio >= target else 'BELOW'} the {target}x target for {args.kind} requests"
        out += [
            "",
            (
                f"**Ratio aaa_vpn / FreeRADIUS: {ratio:.2f}x throughput ({verdict}); "
                f"{cpu_ratio:.2f}x server CPU per request.**"
            ),
        ]
    if HOSTED in med and "aaa_vpn" in med:
        out += [
            "",
            (
                f"**{HOSTED} / aaa_vpn: {med[HOSTED][0] / med['aaa_vpn'][0]:.2f}x throughput, "
                f"{med[HOSTED][1] / med['aaa_vpn'][1]:.2f}x server CPU per request.**"
            ),
        ]
    out += [
        "",
        (
            "server cores busy = server CPU / elapsed. Well below the cores the server may use "
            "means the load generator, not the server, set the pace: that rate is a lower bound "
            "(radclient busy-polls while it waits, so on a small machine it competes with the server)."
        ),
        "",
        "Raw rounds:",
        "",
        (
            "| server | round | requests | accepted | rejected | lost | elapsed s | req/s | server CPU s "
            "| us/req | server cores busy | CPU per server process s | radclient CPU s |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        out.append(
            f"| {r.server} | {r.round} | {r.requests} | {r.accepted} | {r.rejected} | {r.lost} "
            f"| {r.elapsed:.3f} | {r.rate:,.0f} | {r.server_cpu:.2f} | {r.cpu_us_per_req:.1f} "
            f"| {r.server_util:.2f} | {r.per_process_cpu} | {r.client_cpu:.2f} |"
        )
    out += ["", "Commands (`$T` = the temporary work directory):", "", "```", *commands, "```"]
    if profile_md:
        out += ["", "Profile of our server (py-spy, one extra round, all worker processes):", "", profile_md]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
