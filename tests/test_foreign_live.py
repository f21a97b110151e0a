"""The foreign AAA as a real process in front of a real home AAA process, on loopback.

* home AAA: ``aaa-vpn serve home`` on 127.0.0.1, provisioned through the CLI
  (tests/test_home_server.py's ``provision``) plus the AAAF as a ``foreign-aaa``
  client ``aaaf`` = 127.0.0.3 of domain visited.example;
* foreign AAA: ``aaa-vpn serve foreign`` on 127.0.0.3, its upstream sockets
  bound to 127.0.0.3 too; realm home.example -> a dead first server (a free
  port nobody listens on) then the home AAA, so every request also exercises
  failover or the dead-server bookkeeping over real sockets;
* the FA is 127.0.0.1 (radclient's and the Python client's source address).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn import keys
from aaa_vpn.net.radius_client import AsyncRadiusClient
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import RejectReason, RequestType
from aaa_vpn.wire.radius import prepare_tool_dir
from aaa_vpn.wire.radius_request import Accepted, AccessRequest, Rejected

from .radius_client import PRECEDING, served_port, silent_server, status_server, wait_until_serving
from .test_home_server import MN_SECRET, NAI, REPO, SECRET, cli, provision, start_server, stop

AAAF = "127.0.0.3"
FA = IPv4Address("127.0.0.1")
HA = IPv4Address("127.0.0.2")
FA_SECRET = b"fa-to-aaaf-live-secret"
AAAF_SECRET = b"aaaf-to-home-live-secret"


@dataclass
class Topology:
    db: Path
    home: tuple[str, int]
    aaaf: tuple[str, int]
    aaaf_process: subprocess.Popen[bytes]
    aaaf_log: Path
    home_log: Path


def start_foreign(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aaa_vpn.cli", "serve", "foreign", "--config", str(config), "--log-level", "debug"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp = tmp_path_factory.mktemp("foreign")
    db = tmp / "vpn.db"
    provision(db)
    proxy_client = ["aaaf", "--address", AAAF, "--role", "foreign-aaa", "--domain", "visited.example"]
    cli(db, "client", "add", *proxy_client, "--secret", AAAF_SECRET.decode())
    home_log, aaaf_log = tmp / "home.log", tmp / "foreign.log"
    home = start_server(db, 0, 1, home_log)
    dead = silent_server()
    try:
        home_port, dead_port = served_port(home, home_log), dead.port
    except BaseException:
        dead.close()
        stop(home)
        raise
    config = tmp / "foreign.toml"
    config.write_text(
        f"""\
listen = "{AAAF}"
port = 0
dup_cache_seconds = 5

[upstream]
timeout = 0.3
retries = 1
dead_time = 30
status_interval = 1

[[clients]]
name = "fa-lo"
address = "127.0.0.1"
secret = "{FA_SECRET.decode()}"

[[realms]]
name = "home.example"
[[realms.servers]]
name = "dead"
address = "127.0.0.1"
port = {dead_port}
secret = "{AAAF_SECRET.decode()}"
[[realms.servers]]
name = "home"
address = "127.0.0.1"
port = {home_port}
secret = "{AAAF_SECRET.decode()}"
"""
    )
    config.chmod(0o600)
    aaaf = start_foreign(config, aaaf_log)
    try:
        aaaf_port = served_port(aaaf, aaaf_log)
        wait_until_serving(("127.0.0.1", home_port), SECRET)
        wait_until_serving((AAAF, aaaf_port), FA_SECRET)
        yield Topology(db, ("127.0.0.1", home_port), (AAAF, aaaf_port), aaaf, aaaf_log, home_log)
    finally:
        dead.close()
        codes = (stop(aaaf), stop(home))
        assert codes == (0, 0), f"exit codes {codes}:\n{aaaf_log.read_text()}\n{home_log.read_text()}"


def info(nai: str = NAI, challenge: bytes | None = None) -> AccessRequest:
    chap_password, chap_challenge = mn_aaa_chap_attributes(challenge or os.urandom(16), PRECEDING, Secret(MN_SECRET))
    return AccessRequest(
        nai=nai,
        chap_password=chap_password,
        chap_challenge=chap_challenge,
        nas_ip_address=FA,
        request_type=RequestType.FA_REGISTRATION,
        care_of_address=FA,
        home_agent=HA,
    )


def ask(topology: Topology, request: AccessRequest) -> Accepted | Rejected:
    async def run() -> Accepted | Rejected:
        server = ServerConfig(topology.aaaf[0], topology.aaaf[1], Secret(FA_SECRET), "aaaf")
        async with AsyncRadiusClient([server], local_address=("127.0.0.1", 0), timeout=3.0, retries=1) as client:
            return await client.access_request(request)

    return asyncio.run(run())


def home_sessions(db: Path, with_secrets: bool = False) -> list[dict[str, object]]:
    args = ["--json", "session", "list", "--user", NAI] + (["--show-secrets"] if with_secrets else [])
    return list(json.loads(cli(db, *args).stdout)["sessions"])


def test_python_fa_gets_an_accept_through_the_proxy_with_keys_for_its_own_secret(topology: Topology) -> None:
    result = ask(topology, info())  # verified and decoded with the FA's secret by the client
    assert isinstance(result, Accepted), result
    profile = result.profile
    assert profile.session_root_key is None  # it stayed in the AAAF
    (session,) = home_sessions(topology.db, with_secrets=True)
    assert session["session_id"] == profile.session_id
    assert session["foreign_domain"] == "visited.example"  # the proxy client's domain
    # The FA-HA key is the one the home AAA derived from the session's root key.
    srk = Secret(bytes.fromhex(session["session_root_key"]["hex"]))  # type: ignore[index]
    assert profile.fa_ha_key == keys.derive_fa_ha_key(srk, FA, HA, profile.epoch)
    assert {p.peer for p in profile.paths} == {HA, IPv4Address("127.0.0.20")}


def test_radclient_gets_a_verified_accept_through_the_proxy(
    topology: Topology, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    radclient = require_tool("radclient")
    tooldir = prepare_tool_dir(tmp_path / "dict")
    while True:  # bench/README.md: radclient re-encodes a CHAP-Password with every octet >= 32
        challenge = os.urandom(16)
        request = info(challenge=challenge)
        assert request.chap_password is not None and request.chap_challenge is not None
        if min(request.chap_password) < 32:
            break
    request_file = tmp_path / "request.txt"
    request_file.write_text(
        "\n".join(
            [
                f'User-Name = "{NAI}"',
                f"CHAP-Password = 0x{request.chap_password.hex()}",
                f"CHAP-Challenge = 0x{request.chap_challenge.hex()}",
                "NAS-IP-Address = 127.0.0.1",
                "Aaa-Vpn-Request-Type = FA-Registration",
                f"Aaa-Vpn-Home-Agent = {HA}",
                f"Aaa-Vpn-Care-Of-Address = {FA}",
                "Message-Authenticator = 0x00",
            ]
        )
        + "\n"
    )
    target = f"{topology.aaaf[0]}:{topology.aaaf[1]}"
    command = [radclient, "-x", "-d", str(tooldir), "-f", str(request_file), "-r", "1", "-t", "5", target, "auth"]
    proc = subprocess.Popen([*command, FA_SECRET.decode()], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # stop what we started, by its PID
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    # Exit status 0: radclient verified the Response Authenticator and the
    # Message-Authenticator of the reply with the FA's secret.
    assert proc.returncode == 0, f"radclient rc={proc.returncode}\n{text}\n{err.decode(errors='replace')}"
    assert "Received Access-Accept" in text
    assert "Aaa-Vpn-Session-Root-Key" not in text
    (session,) = home_sessions(topology.db)  # a re-registration via the same FA renews the session
    assert f'Aaa-Vpn-Session-Id = "{session["session_id"]}"' in text, text
    assert session["foreign_domain"] == "visited.example"


def test_unknown_realm_and_status_server(topology: Topology) -> None:
    result = ask(topology, info(nai="mn1@nowhere.example"))
    assert isinstance(result, Rejected)
    assert result.message == "no route to realm 'nowhere.example'" and result.reason is RejectReason.UNKNOWN_USER
    status = status_server(topology.aaaf, FA_SECRET)
    assert status.reply is not None
    message = next(value for code, value in status.attributes if code == 18).decode()
    assert message.startswith("aaa-vpn foreign AAA up") and "no_route 1" in message


def test_the_log_is_structured_and_holds_no_secret(topology: Topology) -> None:
    topology.aaaf_process.send_signal(signal.SIGUSR1)  # log the counters
    for _ in range(50):
        text = topology.aaaf_log.read_text(errors="replace")
        if "counters" in text:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert "foreign AAA starting" in text and "realms=home.example" in text
    assert "home server marked zombie" in text and "server=dead" in text  # failover over real sockets
    assert "upstream_failovers=" in text
    for secret in (FA_SECRET, AAAF_SECRET, MN_SECRET):
        assert secret.decode() not in text
