"""Independent RadSec peers in front of the home AAA (``aaa-vpn serve home
--radsec-listen``), all on loopback, certificates from a throw-away CA
(tests/radsec_pki.py):

* radsecproxy (Debian ``radsecproxy``): ``radclient`` -> UDP ->
  radsecproxy (127.0.0.8) -> TLS -> the home AAA, which knows radsecproxy by
  its certificate (CN ``rsp``) as the provisioned client ``rsp`` (role proxy);
  radsecproxy's own Status-Server watchdog (``StatusServer on``) is answered
  over the connection;
* FreeRADIUS 3.2 (``home_server`` with ``proto = tcp`` and a ``tls``
  section): ``radclient`` -> UDP -> FreeRADIUS (127.0.0.9) -> TLS -> the
  home AAA, client ``freeradius-tls`` by certificate; its ``status_check =
  status-server`` over TLS is answered too.

Each test checks the reply radclient verified, and the session the database
now holds for the user. Every process is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn import keys
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.secret import Secret
from aaa_vpn.store import open_store
from aaa_vpn.wire.radius import prepare_tool_dir

from . import freeradius
from .conftest import _require_tool
from .radius_client import PRECEDING, probed_udp_port, served_port, wait_until_serving
from .radsec_pki import Authority, Issued
from .test_dictionaries_interop import as_freeradius_prints, parse_reply
from .test_home_server import MN_SECRET, NAI, SECRET, cli, provision, start_server, stop
from .test_radsec_live import radsec_port

pytestmark = [pytest.mark.interop, pytest.mark.integration]

RSP = "127.0.0.8"
FR = "127.0.0.9"
FA_SECRET = "fa-to-the-radsec-proxy"


@dataclass
class Home:
    db: Path
    radsec: tuple[str, int]
    log: Path
    ca: Path
    certs: dict[str, Issued]
    base: Path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    base = tmp_path_factory.mktemp("radsec-peers")
    pki = Authority(base / "pki")
    certs = {
        "server": pki.issue("home", "home-aaa.example", dns=("home-aaa.example",), addresses=("127.0.0.1",)),
        "rsp": pki.issue("rsp", "rsp"),
        "freeradius": pki.issue("freeradius", "freeradius-tls"),
        "fr-server": pki.issue("fr-server", "freeradius-server", addresses=(FR,)),
        "ours": pki.issue("ours", "aaa-vpn-agent", addresses=("127.0.0.1",)),
    }
    db = base / "vpn.db"
    provision(db)
    for name, address in (("rsp", RSP), ("freeradius-tls", FR)):
        cli(db, "client", "add", name, "--address", address, "--role", "proxy", "--domain", "visited.example",
            "--secret", f"{name}-udp-secret-unused")  # fmt: skip
    log = base / "home.log"
    process = start_server(
        db,
        0,
        1,
        log,
        "--radsec-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(certs["server"].cert),
        "--tls-key",
        str(certs["server"].key),
        "--tls-ca",
        str(pki.cert),
    )
    try:
        port = served_port(process, log)
        wait_until_serving(("127.0.0.1", port), SECRET)
        yield Home(db, ("127.0.0.1", radsec_port(log)), log, pki.cert, certs, base)
    finally:
        code = stop(process)
        assert code == 0, f"home AAA exited with {code}:\n{log.read_text()}"
        shutil.rmtree(base, ignore_errors=True)


def _request_file(path: Path) -> None:
    # As tests/test_home_interop.py: radclient 3.2 re-encodes a CHAP-Password
    # whose octets are all >= 32; draw a proof that reaches the server as made.
    while True:
        chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, Secret(MN_SECRET))
        if min(chap_password) < 32:
            break
    path.write_text(
        f'User-Name = "{NAI}"\n'
        f"CHAP-Password = 0x{chap_password.hex()}\n"
        f"CHAP-Challenge = 0x{chap_challenge.hex()}\n"
        "NAS-IP-Address = 127.0.0.1\n"
        "Aaa-Vpn-Request-Type = FA-Registration\n"
        "Aaa-Vpn-Care-Of-Address = 127.0.0.1\n"
        "Aaa-Vpn-Home-Agent = 127.0.0.2\n"
        "Message-Authenticator = 0x00\n"
    )


def _radclient(home: Home, target: tuple[str, int], tmp: Path) -> list[tuple[str, int, str | bytes]]:
    radclient = _require_tool("radclient")
    request = tmp / "request.txt"
    _request_file(request)
    tooldir = prepare_tool_dir(tmp / "dict")
    result = subprocess.run(
        [
            radclient,
            "-x",
            "-r",
            "3",
            "-t",
            "5",
            "-d",
            str(tooldir),
            "-f",
            str(request),
            f"{target[0]}:{target[1]}",
            "auth",
            FA_SECRET,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    # exit 0: radclient verified the Response Authenticator and Message-Authenticator
    assert result.returncode == 0, f"{output.decode(errors='replace')}\n{home.log.read_text()[-3000:]}"
    assert b"Received Access-Accept" in output
    return parse_reply(output)


def _session_of(home: Home, session_id: bytes) -> object:
    store = open_store(home.db, home.db.with_name(home.db.name + ".key"))
    try:
        found = [s for s in store.find_sessions(NAI) if s.session_id.encode() == session_id]
    finally:
        store.close()
    assert len(found) == 1, f"the database has no session {session_id!r}"
    session = found[0]
    assert str(session.care_of_address) == "127.0.0.1"
    return session


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.1)


# -- radsecproxy ----------------------------------------------------------------------------


def _radsecproxy_conf(home: Home, port: int, log: Path) -> str:
    cert = home.certs["rsp"]
    return f"""\
ListenUDP {RSP}:{port}
LogLevel 4
tls default {{
    CACertificateFile {home.ca}
    CertificateFile {cert.cert}
    CertificateKeyFile {cert.key}
}}
client fa {{
    host 127.0.0.1
    type udp
    secret {FA_SECRET}
}}
server home-aaa {{
    host {home.radsec[0]}
    port {home.radsec[1]}
    type tls
    tls default
    secret radsec
    StatusServer on
}}
realm * {{
    server home-aaa
}}
"""


def test_radclient_through_radsecproxy(home: Home, tmp_path: Path) -> None:
    binary = _require_tool("radsecproxy")
    log = tmp_path / "radsecproxy.log"
    process: subprocess.Popen[bytes] | None = None
    for _attempt in range(3):
        port = probed_udp_port(RSP)
        conf = tmp_path / "radsecproxy.conf"
        conf.write_text(_radsecproxy_conf(home, port, log))
        check = subprocess.run([binary, "-p", "-c", str(conf)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        with log.open("wb") as out:
            process = subprocess.Popen(
                [binary, "-f", "-d", "4", "-c", str(conf), "-i", str(tmp_path / "rsp.pid")],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        time.sleep(0.5)
        if process.poll() is None:
            break
        assert "in use" in log.read_text(errors="replace"), log.read_text(errors="replace")
    assert process is not None
    try:
        attributes = _radclient(home, (RSP, port), tmp_path)
        by_name = {name: value for name, _tag, value in attributes}
        session = _session_of(home, bytes(by_name["Aaa-Vpn-Session-Id"]))  # type: ignore[arg-type]
        text = home.log.read_text()
        assert "client=rsp" in text, text[-2000:]
        # radsecproxy re-encrypts only the standard attributes it knows (User-Password,
        # Tunnel-Password, MS-MPPE keys), not vendor ones: the FA-HA pre-shared key left
        # the home AAA salt-encrypted under "radsec" and reaches radclient unchanged,
        # so decrypted under the FA's secret it is not the key (docs/radsec.md).
        fa, ha = IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2")
        psk = keys.derive_ike_psk(session.session_root_key, b"fa-ha", fa, ha, session.epoch)  # type: ignore[attr-defined]
        psks = [value for name, _tag, value in attributes if name == "Aaa-Vpn-Path-IKE-PSK"]
        # (garbage that happens to decode with a bad length is shown raw, or not at all)
        assert psk.value not in psks, psks
    finally:
        code = _stop(process)
    assert code in (0, -signal.SIGTERM), log.read_text(errors="replace")


# -- FreeRADIUS -----------------------------------------------------------------------------


def _fr_proxy(home: Home) -> str:
    cert = home.certs["freeradius"]
    return f"""\
proxy server {{
    default_fallback = no
}}
home_server home-aaa-tls {{
    type = auth
    ipaddr = {home.radsec[0]}
    port = {home.radsec[1]}
    proto = tcp
    secret = radsec
    response_window = 10
    zombie_period = 40
    revive_interval = 120
    status_check = status-server
    check_interval = 6
    check_timeout = 4
    num_answers_to_alive = 3
    tls {{
        private_key_file = {cert.key}
        certificate_file = {cert.cert}
        ca_file = {home.ca}
        fragment_size = 8192
        check_crl = no
        tls_min_version = "1.2"
    }}
}}
home_server_pool home-tls {{
    type = fail-over
    home_server = home-aaa-tls
}}
realm home.example {{
    auth_pool = home-tls
    nostrip
}}
"""


def _fr_server(port: int) -> str:
    return f"""\
client fa {{
    ipaddr = 127.0.0.1
    secret = {FA_SECRET}
    require_message_authenticator = yes
}}
modules {{
    realm suffix {{
        format = suffix
        delimiter = "@"
    }}
}}
server visited {{
    listen {{
        type = auth
        ipaddr = {FR}
        port = {port}
    }}
    authorize {{
        suffix
    }}
    authenticate {{
    }}
    pre-proxy {{
    }}
    post-proxy {{
    }}
}}
"""


def test_radclient_through_freeradius_over_tls(home: Home, tmp_path: Path) -> None:
    binary = _require_tool("freeradius")
    ports: list[int] = []

    def configure(attempt: int) -> Path:
        ports.append(probed_udp_port(FR))
        return freeradius.write_raddb(tmp_path / f"fr{attempt}", _fr_server(ports[-1]), proxy=_fr_proxy(home))

    process, raddb = freeradius.start_on_probed_ports(binary, configure)
    port = ports[-1]
    try:
        attributes = _radclient(home, (FR, port), tmp_path)
        by_name = {name: value for name, _tag, value in attributes}
        session = _session_of(home, bytes(by_name["Aaa-Vpn-Session-Id"]))  # type: ignore[arg-type]
        assert "client=freeradius-tls" in home.log.read_text()
        # FreeRADIUS reads our dictionary: it decrypts the salt-encrypted key under
        # "radsec" and encrypts it again under the FA's secret, so radclient gets the key
        fa, ha = IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2")
        psk = keys.derive_ike_psk(session.session_root_key, b"fa-ha", fa, ha, session.epoch)  # type: ignore[attr-defined]
        shown = as_freeradius_prints(psk.value)
        assert shown in [value for name, _tag, value in attributes if name == "Aaa-Vpn-Path-IKE-PSK"]
    finally:
        code = _stop(process)
    assert code == 0, freeradius.log_file(raddb).read_text(errors="replace")[-3000:]


# -- FreeRADIUS as the RadSec server, our connector as its client -----------------------------


def _fr_tls_server(home: Home, port: int) -> str:
    cert = home.certs["fr-server"]
    return f"""\
clients radsec {{
    client aaa-vpn {{
        ipaddr = 127.0.0.1
        proto = tls
        secret = radsec
    }}
}}
server radsec-home {{
    listen {{
        type = auth
        ipaddr = {FR}
        port = {port}
        proto = tcp
        clients = radsec
        tls {{
            private_key_file = {cert.key}
            certificate_file = {cert.cert}
            ca_file = {home.ca}
            require_client_cert = yes
            fragment_size = 8192
            tls_min_version = "1.2"
        }}
    }}
    authorize {{
        update control {{
            &Auth-Type := Accept
        }}
        update reply {{
            &Reply-Message := "accepted by FreeRADIUS over TLS"
        }}
    }}
    authenticate {{
    }}
}}
"""


def test_our_client_against_freeradius_as_a_radsec_server(home: Home, tmp_path: Path) -> None:
    import asyncio

    from aaa_vpn.net.radsec import RadsecConnector, RadsecServer, TlsFiles, client_context
    from aaa_vpn.roles.radsec import RADSEC_SECRET, answers_status
    from aaa_vpn.wire import radius as rc
    from aaa_vpn.wire.radius_request import build_status_server

    from .radius_client import access_request

    binary = _require_tool("freeradius")
    process: subprocess.Popen[bytes] | None = None
    raddb: Path | None = None
    for attempt in range(3):
        port = probed_udp_port(FR)  # a TCP port this time; the same probe serves
        raddb = freeradius.write_raddb(tmp_path / f"fr{attempt}", _fr_tls_server(home, port))
        conf = raddb / "radiusd.conf"
        conf.write_text(conf.read_text().replace("status_server = no", "status_server = yes"))
        freeradius.check_raddb(binary, raddb)
        process = subprocess.Popen(
            [binary, "-f", "-d", str(raddb)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            freeradius.wait_ready(process, raddb)
            break
        except RuntimeError as exc:
            if "in use" not in str(exc) or attempt == 2:
                raise
            process.wait()
    assert process is not None and raddb is not None
    request = bytes(
        access_request(RADSEC_SECRET.value, NAI, MN_SECRET, care_of="127.0.0.1", identifier=5).RequestPacket()
    )
    probe = build_status_server(6, os.urandom(16), RADSEC_SECRET)
    mine = home.certs["ours"]

    async def run() -> tuple[dict[int, bytes], RadsecConnector]:
        replies: dict[int, bytes] = {}
        connector = RadsecConnector(
            [RadsecServer((FR, port))],
            client_context(TlsFiles(mine.cert, mine.key, home.ca)),
            lambda packet, _address: replies.__setitem__(packet[1], packet),
            local_address="127.0.0.1",
            watchdog_interval=0.5,
        )
        try:
            connector.send(request, (FR, port))
            connector.send(probe, (FR, port))
            deadline = time.monotonic() + 15
            while (len(replies) < 2 or connector.counters()["radsec.watchdog_answered"] < 1) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.1)
            return replies, connector
        finally:
            connector.close()

    try:
        replies, connector = asyncio.run(run())
        fr_log = freeradius.log_file(raddb).read_text(errors="replace")[-3000:]
        assert set(replies) == {5, 6}, f"{connector.counters()}\n{fr_log}"
        accept = replies[5]
        assert accept[0] == rc.ACCESS_ACCEPT
        assert accept[4:20] == rc.response_authenticator(accept, request[4:20], b"radsec")
        # FreeRADIUS 3.2 answers Status-Server over TLS with a bare Access-Accept,
        # no Message-Authenticator: the Response Authenticator is what binds it
        assert answers_status(replies[6], probe), replies[6].hex()
        # our watchdog's Status-Server, answered by FreeRADIUS and kept by the connector
        assert connector.counters()["radsec.watchdog_answered"] >= 1, connector.counters()
    finally:
        code = _stop(process)
    assert code == 0, freeradius.log_file(raddb).read_text(errors="replace")[-3000:]
