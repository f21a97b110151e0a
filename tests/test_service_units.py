"""Running under systemd: the units (checked by ``systemd-analyze verify``),
``aaa-vpn install-units``, the sd_notify messages the daemons send to a
``$NOTIFY_SOCKET`` (a real unix datagram socket the test binds, by path and
in the abstract namespace), and SIGHUP reloading the home AAA's
configuration while requests keep being answered.

Addresses: the home AAA on 127.0.0.1 (port 0), a gateway agent on
127.0.0.21 (its Mobile IP port bound by the test and handed over).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aaa_vpn.lab.topology import bind_udp
from aaa_vpn.service import units
from aaa_vpn.wire import radius as rc

from .radius_client import access_request, exchange, served_port, wait_until_serving
from .test_home_server import MN_SECRET, NAI, SECRET, cli, provision, stop

REPO = Path(__file__).resolve().parents[1]

# -- the units ---------------------------------------------------------------------------------------


def test_the_packaged_units_are_what_install_units_writes() -> None:
    for name, text in units.all_files().items():
        folder = "sysusers.d" if name.endswith(".conf") else "systemd"
        assert (REPO / "packaging" / folder / name).read_text() == text, f"packaging/{folder}/{name} is stale"


def _program() -> str:
    script = Path(sys.executable).parent / "aaa-vpn"
    return str(script if script.exists() else Path(sys.executable))


def test_systemd_analyze_verify_passes_on_every_unit(tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aaa_vpn.cli",
            "--json",
            "install-units",
            "--directory",
            str(tmp_path),
            "--sysusers-directory",
            str(tmp_path),
            "--executable",
            _program(),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    written = json.loads(result.stdout)["files"]
    assert sorted(Path(f).name for f in written) == sorted(units.all_files())
    # the servers as they are; each agent template as an instance
    targets = [str(tmp_path / "aaa-vpn-home.service"), str(tmp_path / "aaa-vpn-foreign.service")]
    targets += [str(tmp_path / f"aaa-vpn-{kind}@{kind}1.service") for kind in ("fa", "ha", "gw")]
    verify = subprocess.run([analyze, "verify", *targets], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr
    text = (tmp_path / "aaa-vpn-home.service").read_text()
    for line in (
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/lib/aaa-vpn -/run/aaa-vpn",
        "User=aaa-vpn",
        f"ExecStartPre={_program()} --config /etc/aaa-vpn/aaa-vpn.toml serve home --check",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30",
    ):
        assert line in text.splitlines(), line
    # the check is not a formality: a unit it rejects says why
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    complaint = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "protect system value" in complaint.stdout + complaint.stderr


def test_install_units_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", "install-units", "--directory", str(tmp_path / "units"), "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "would write" in result.stdout and "systemctl daemon-reload" in result.stdout
    assert not (tmp_path / "units").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", "install-units", "--executable", "aaa-vpn", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "absolute path" in bad.stderr


# -- sd_notify ---------------------------------------------------------------------------------------


class NotifySocket:
    """The systemd end: a unix datagram socket that collects notifications."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def wait_for(self, key: str, value: str, timeout: float = 20.0, after: float = 0.0) -> dict[str, str]:
        """The first notification after ``after`` (monotonic) that says ``key=value``."""
        deadline = time.monotonic() + timeout
        while True:
            for when, message in self.messages:
                if when >= after and message.get(key) == value:
                    return message
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value} in {self.messages}")
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), lines))

    def count(self, key: str, value: str, since: float) -> int:
        return sum(1 for when, m in self.messages if when >= since and m.get(key) == value)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), lines))

    def close(self) -> None:
        self.sock.close()


def _start_home(db: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aaa_vpn.cli",
                *args,
                "--db",
                str(db),
                "serve",
                "home",
                "--listen",
                "127.0.0.1",
                "--port",
                "0",
                "--workers",
                "2",
                "--log-level",
                "debug",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("units") / "vpn.db"
    provision(db)
    return db


def _worker_pids(log: Path) -> dict[int, int]:
    text = log.read_text(errors="replace")
    return {int(w): int(p) for p, w in re.findall(r"aaa_vpn\.server\[(\d+)\]: worker listening worker=(\d+)", text)}


def test_home_notifies_ready_watchdog_reload_and_stop(database: Path, tmp_path: Path) -> None:
    notify = NotifySocket(str(tmp_path / "notify"))
    log = tmp_path / "server.log"
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    process = _start_home(database, log, env=env)
    try:
        ready = notify.wait_for("READY", "1")
        assert ready["MAINPID"] == str(process.pid), ready  # the supervisor speaks, not a worker
        assert len(_worker_pids(log)) == 2, "READY=1 before both workers listened"
        port = served_port(process, log)
        wait_until_serving(("127.0.0.1", port), SECRET)
        start = time.monotonic()
        notify.drain(2.5)
        assert notify.count("WATCHDOG", "1", start) >= 3  # every half second (WATCHDOG_USEC/2)

        # a worker that stops turning its loop stops the watchdog notifications
        stalled = _worker_pids(log)[1]
        os.kill(stalled, signal.SIGSTOP)
        try:
            notify.drain(6.0)  # a worker's slot is stale after 5 s
            quiet = time.monotonic()
            notify.drain(2.0)
            assert notify.count("WATCHDOG", "1", quiet) == 0
            assert "a worker is not responding" in log.read_text()
        finally:
            os.kill(stalled, signal.SIGCONT)
        notify.wait_for("WATCHDOG", "1", after=time.monotonic())

        mark = time.monotonic()
        process.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1", after=mark)
        notify.wait_for("READY", "1", after=mark)
        mark = time.monotonic()
        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1", after=mark)
        assert process.wait(timeout=15) == 0
    finally:
        stop(process)
        notify.close()


def test_an_agent_notifies_through_an_abstract_socket(tmp_path: Path) -> None:
    name = f"aaa-vpn-test-{os.getpid()}-{time.monotonic_ns()}"
    notify = NotifySocket("\0" + name)
    mip = bind_udp(["127.0.0.21"])
    key = tmp_path / "gw.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    log = tmp_path / "gw.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aaa_vpn.cli",
                "agent",
                "gw",
                "--address",
                "127.0.0.21",
                "--mip-port",
                str(mip.port),
                "--mip-socket-fd",
                str(mip.fd("127.0.0.21")),
                "--gateway-key-file",
                str(key),
                "--home-agent",
                "127.0.0.2",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(mip.fd("127.0.0.21"),),
            env={**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "600000"},
        )
    try:
        notify.wait_for("READY", "1")
        start = time.monotonic()
        notify.drain(1.5)
        assert notify.count("WATCHDOG", "1", start) >= 3
        process.send_signal(signal.SIGHUP)  # not a reload, and not the end either
        time.sleep(0.5)
        assert process.poll() is None
        mark = time.monotonic()
        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1", after=mark)
        assert process.wait(timeout=15) == 0
        assert "does not reload its configuration" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        mip.close()
        notify.close()


# -- SIGHUP: a reload that drops nothing -------------------------------------------------------------


def _config(path: Path, lifetime: int) -> None:
    path.write_text(f'[serve.home]\nsession_lifetime = {lifetime}\nlog_level = "debug"\n')


def _session_lifetime(db: Path) -> float:
    sessions = json.loads(cli(db, "--json", "session", "list", "--user", NAI).stdout)["sessions"]
    newest = max(sessions, key=lambda s: s["created"])
    return float(newest["expires"]) - float(newest["created"])


def test_sighup_reloads_the_home_configuration_without_losing_a_request(database: Path, tmp_path: Path) -> None:
    config = tmp_path / "aaa-vpn.toml"
    _config(config, 600)
    log = tmp_path / "server.log"
    process = _start_home(database, log, "--config", str(config))
    try:
        port = served_port(process, log)
        server = ("127.0.0.1", port)
        wait_until_serving(server, SECRET)
        assert exchange(server, _registration()).code == rc.ACCESS_ACCEPT
        assert 590 <= _session_lifetime(database) <= 600

        answered: list[int] = []
        lost: list[int] = []
        done = threading.Event()

        def traffic() -> None:
            # one request at a time, each from a socket of its own (spread
            # over both workers), never retransmitted: a drop is a loss
            number = 0
            while not done.is_set():
                number += 1
                reply = exchange(server, _registration(), timeout=5.0)
                (answered if reply.code == rc.ACCESS_ACCEPT else lost).append(number)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            for lifetime in (1200, 900, 1200):
                time.sleep(1.0)
                _config(config, lifetime)
                process.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            config.write_text("[serve.home\n")  # broken: the running configuration stays
            process.send_signal(signal.SIGHUP)
            time.sleep(1.0)
        finally:
            done.set()
            sender.join(timeout=30)
        assert not lost, f"requests {lost} got no Access-Accept across the reloads"
        assert len(answered) >= 10, answered
        text = log.read_text()
        assert text.count("configuration reloaded") >= 3 + 2 * 3  # the supervisor's, and each worker's
        assert "configuration reload failed: keeping the running configuration" in text
        assert process.poll() is None
        # the new session lifetime is in force in both workers
        for _ in range(6):
            assert exchange(server, _registration()).code == rc.ACCESS_ACCEPT
            assert 1190 <= _session_lifetime(database) <= 1200
    finally:
        assert stop(process) == 0, log.read_text()


def _registration() -> object:
    return access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2")


def test_serve_home_check_opens_the_database_without_binding(database: Path) -> None:
    result = cli(database, "--json", "serve", "home", "--check", "--metrics-listen", "127.0.0.1:9812")
    document = json.loads(result.stdout)
    assert document["clients"] >= 1 and document["metrics_listen"] == "127.0.0.1:9812"
    bad = cli(database, "serve", "home", "--check", "--metrics-listen", "nowhere", check=False)
    assert bad.returncode == 2 and "metrics-listen" in bad.stderr
    missing = cli(database.with_name("absent.db"), "serve", "home", "--check", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


def test_the_units_checks_pass_on_valid_configuration_files(database: Path, tmp_path: Path) -> None:
    """Every ExecStartPre line, run as written with /etc/aaa-vpn/ replaced by a
    directory of valid files (and %i by an instance name), exits 0: the units'
    command lines are real ones."""
    etc = tmp_path / "etc"
    etc.mkdir()
    key = database.parent / f"{database.name}.key"
    (etc / "aaa-vpn.toml").write_text(
        f'db = "{database}"\nkey_file = "{key}"\n'
        '[serve.home]\nlisten = "127.0.0.1"\nmetrics_listen = "127.0.0.1:9812"\n'
    )
    secret = etc / "aaa.secret"
    secret.write_text("a-shared-secret-of-length")
    secret.chmod(0o600)
    (etc / "foreign.toml").write_text(
        'listen = "127.0.0.3"\n[[clients]]\nname = "fa"\naddress = "127.0.0.1"\nsecret_file = "aaa.secret"\n'
        '[[realms]]\nname = "home.example"\n[[realms.servers]]\naddress = "127.0.0.1"\nsecret_file = "aaa.secret"\n'
    )
    for name, address in (("fa1", "127.0.0.11"), ("ha1", "127.0.0.2")):
        (etc / f"{name}.toml").write_text(
            f'address = "{address}"\nname = "{name}"\nstate_file = "{tmp_path}/{name}.json"\n'
            '[[aaa]]\naddress = "127.0.0.1"\nsecret_file = "aaa.secret"\n'
        )
    gateway_key = etc / "gw1.key"
    gateway_key.write_bytes(b"g" * 32)
    gateway_key.chmod(0o600)
    (etc / "gw1.toml").write_text('address = "127.0.0.21"\nname = "gw1"\ngateway_key_file = "gw1.key"\n')
    instances = {"aaa-vpn-fa@.service": "fa1", "aaa-vpn-ha@.service": "ha1", "aaa-vpn-gw@.service": "gw1"}
    for unit in units.UNITS:
        text = units.render(unit, executable="aaa-vpn")
        (line,) = [x for x in text.splitlines() if x.startswith("ExecStartPre=")]
        command = line.removeprefix("ExecStartPre=").replace("/etc/aaa-vpn/", f"{etc}/")
        command = command.replace("%i", instances.get(unit.name, ""))
        args = command.split()[1:]  # the program: this checkout's, as the tests run it
        done = subprocess.run(
            [sys.executable, "-m", "aaa_vpn.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (unit.name, args, done.stdout, done.stderr)
        assert "OK" in done.stdout, (unit.name, done.stdout)
