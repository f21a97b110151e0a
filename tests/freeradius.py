"""A FreeRADIUS 3.x server from a private, minimal configuration: what the
FreeRADIUS proxy interop test (tests/test_freeradius_proxy.py) and the
throughput benchmark (bench/radius_throughput.py) share.

:func:`write_raddb` writes ``<base>/raddb`` -- ``radiusd.conf`` (every path
inside ``base``: logs in ``<base>/log``, the pid file in ``<base>/run``; no
stock module, site or client), ``dictionary`` (our vendor dictionary, with
``$INCLUDE`` of ``aaa_vpn/dictionaries/freeradius/dictionary``, so FreeRADIUS
decodes our attributes and re-encrypts the salt-encrypted ones for its own
clients) and, for a proxy, ``proxy.conf``. The caller supplies the clients,
modules and virtual servers. Nothing outside ``base`` is read or written
except FreeRADIUS's own dictionaries and libraries in /usr.

The system's FreeRADIUS is installed by scripts/setup.sh, which leaves no
daemon running; everything started from here runs in the foreground (``-f``)
and is stopped by its PID by whoever started it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The vendor dictionary as radclient and FreeRADIUS read it (it includes ../dictionary.aaa_vpn).
VENDOR_DICTIONARY = ROOT / "aaa_vpn" / "dictionaries" / "freeradius" / "dictionary"
#: Where Debian's freeradius package puts the server (not on every PATH).
DEFAULT_BINARY = "/usr/sbin/freeradius"
#: What FreeRADIUS logs once every listener is open.
READY = "Ready to process requests"


def find_freeradius() -> str | None:
    """The path of the freeradius binary, or None."""
    return shutil.which("freeradius") or (DEFAULT_BINARY if Path(DEFAULT_BINARY).exists() else None)


def write_raddb(base: Path, body: str, *, proxy: str | None = None, pool: str | None = None) -> Path:
    """Write the configuration for one FreeRADIUS instance under ``base`` and
    return its raddb directory (for ``freeradius -d``).

    ``body`` is appended to ``radiusd.conf``: ``client``, ``modules`` and
    ``server`` sections. ``proxy``: the text of ``proxy.conf`` (``home_server``,
    ``home_server_pool``, ``realm``); it turns ``proxy_requests`` on. ``pool``:
    a ``thread pool`` section replacing the default one."""
    raddb, log, run = base / "raddb", base / "log", base / "run"
    for directory in (raddb, log, run):
        directory.mkdir(parents=True, exist_ok=True)
    (raddb / "dictionary").write_text(f"$INCLUDE {VENDOR_DICTIONARY}\n")
    if proxy is not None:
        (raddb / "proxy.conf").write_text(proxy)
    threads = pool or (
        "thread pool {\n"
        "    start_servers = 5\n    max_servers = 32\n    min_spare_servers = 3\n    max_spare_servers = 10\n"
        "    max_requests_per_server = 0\n    auto_limit_acct = no\n}\n"
    )
    (raddb / "radiusd.conf").write_text(
        f"""\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {log}
raddbdir = {raddb}
radacctdir = {log}/radacct
name = freeradius
confdir = {raddb}
modconfdir = {raddb}/mods-config
run_dir = {run}
db_dir = {raddb}
libdir = /usr/lib/freeradius
pidfile = {run}/freeradius.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
proxy_requests = {"yes" if proxy is not None else "no"}
{"$INCLUDE proxy.conf" if proxy is not None else ""}
log {{
    destination = files
    file = {log}/radius.log
    auth = no
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = no
}}
{threads}
{body}
"""
    )
    return raddb


def log_file(raddb: Path) -> Path:
    """Where the instance of ``raddb`` (written by :func:`write_raddb`) logs."""
    return raddb.parent / "log" / "radius.log"


def check_raddb(freeradius: str, raddb: Path) -> None:
    """``freeradius -C``: raise RuntimeError with its output if the configuration is refused."""
    check = subprocess.run([freeradius, "-C", "-d", str(raddb)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(
            f"FreeRADIUS refused the configuration in {raddb} (exit {check.returncode}):\n"
            f"{check.stdout[-3000:]}{check.stderr[-3000:]}{_tail(log_file(raddb))}"
        )


def wait_ready(process: subprocess.Popen[bytes], raddb: Path, timeout: float = 20.0) -> None:
    """Wait until the instance says it is ready; RuntimeError if it exits or takes too long."""
    log = log_file(raddb)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"freeradius exited with {process.returncode}:\n{_tail(log)}")
        if log.exists() and READY in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"freeradius did not log {READY!r} within {timeout} s:\n{_tail(log)}")


def start_on_probed_ports(
    freeradius: str, configure: Callable[[int], Path], attempts: int = 3
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start an instance from the raddb ``configure(attempt)`` writes on ports it
    probes, and again with a new configuration while a probed port was taken
    meanwhile: FreeRADIUS can neither take a bound socket nor report a port it
    picked. Returns the process, ready, and its raddb; an instance that did not
    come up is stopped by its PID before the error is raised."""
    for attempt in range(attempts):
        raddb = configure(attempt)
        check_raddb(freeradius, raddb)
        process = subprocess.Popen(
            [freeradius, "-f", "-d", str(raddb)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(process, raddb)
            return process, raddb
        except RuntimeError as exc:
            if process.poll() is None:
                process.kill()
            process.wait()
            if "in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise ValueError(f"attempts {attempts}: expected at least 1")


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""
