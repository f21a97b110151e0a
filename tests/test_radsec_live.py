"""RadSec (RFC 6614) against the running home AAA: ``aaa-vpn serve home
--radsec-listen`` with certificates from a throw-away CA (tests/radsec_pki.py).

* our RADIUS client over TLS (net/radsec.py's connector): an FA's
  Access-Request, sealed with the secret ``radsec``, is accepted for the
  client the certificate names (fa1), the keys decrypt under ``radsec`` and
  the session is in the database; Status-Server over the connection is
  answered; an Accounting-Request on the same connection is recorded;
* refused: a certificate from another CA, an expired one, one that names no
  provisioned client, one that carries a pinned client's name without its
  fingerprint -- each counted and logged by the server;
* framing: a Length of 5 on the stream closes the connection (logged), and
  the server goes on serving.

Everything runs on loopback; the server is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aaa_vpn.net.radsec import RadsecConnector, RadsecServer, TlsFiles, client_context
from aaa_vpn.roles.radsec import RADSEC_SECRET
from aaa_vpn.store import open_store
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.accounting import AcctStatus, encode_accounting_request
from aaa_vpn.wire.radius_profile import decode_profile
from aaa_vpn.wire.radius_request import build_status_server, decode_status_reply

from .radius_client import access_request, served_port, wait_until_serving
from .radsec_pki import Authority, Issued
from .test_home_server import MN_SECRET, NAI, SECRET, cli, provision, start_server, stop

pytestmark = [pytest.mark.integration]


@dataclass
class Home:
    db: Path
    udp: tuple[str, int]
    radsec: tuple[str, int]
    log: Path
    ca: Path
    certs: dict[str, Issued]


def radsec_port(log: Path, timeout: float = 15.0, host: str = "127.0.0.1") -> int:
    """The RadSec port the server logged ("worker listening ... radsec=HOST:PORT")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(rf"radsec={re.escape(host)}:(\d+)", log.read_text(errors="replace"))
        if found and "worker listening" in log.read_text(errors="replace"):
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no RadSec address in the log:\n{log.read_text()}")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    tmp = tmp_path_factory.mktemp("radsec")
    pki = Authority(tmp / "pki")
    rogue = Authority(tmp / "rogue", "someone else's CA")
    certs = {
        "server": pki.issue("home", "home-aaa.example", dns=("home-aaa.example",), addresses=("127.0.0.1",)),
        "fa1": pki.issue("fa1", "fa1"),
        "ha1": pki.issue("ha1", "ha1-by-address", addresses=("127.0.0.2",)),
        "rogue": rogue.issue("rogue-fa1", "fa1"),
        "expired": pki.issue("expired-fa1", "fa1", valid=False),
        "stranger": pki.issue("stranger", "nobody-we-know"),
        "pinned": pki.issue("gw-pinned", "gw-dyn"),
        "impostor": pki.issue("gw-impostor", "gw-dyn"),
    }
    db = tmp / "vpn.db"
    provision(db)
    log = tmp / "server.log"
    process = start_server(
        db,
        0,
        2,  # two workers share the RadSec port (SO_REUSEPORT), each accepts connections
        log,
        "--radsec-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(certs["server"].cert),
        "--tls-key",
        str(certs["server"].key),
        "--tls-ca",
        str(pki.cert),
        "--radsec-client",
        f"gw-dyn=sha256:{certs['pinned'].fingerprint}",
    )
    try:
        port = served_port(process, log)
        wait_until_serving(("127.0.0.1", port), SECRET)
        yield Home(db, ("127.0.0.1", port), ("127.0.0.1", radsec_port(log)), log, pki.cert, certs)
    finally:
        code = stop(process)
        assert code == 0, f"server exited with {code}:\n{log.read_text()}"


def _files(home: Home, name: str, ca: Path | None = None) -> TlsFiles:
    issued = home.certs[name]
    return TlsFiles(issued.cert, issued.key, ca or home.ca)


async def _exchange(home: Home, name: str, packets: list[bytes], timeout: float = 10.0) -> list[bytes | None]:
    """Send ``packets`` over one RadSec connection with certificate ``name``;
    the reply to each (matched by Identifier), None if none came."""
    replies: dict[int, bytes] = {}
    arrived = asyncio.Event()

    def deliver(packet: bytes, _address: tuple[str, int]) -> None:
        replies[packet[1]] = packet
        if len(replies) == len(packets):
            arrived.set()

    connector = RadsecConnector(
        [RadsecServer(home.radsec, tls_name="home-aaa.example")],
        client_context(_files(home, name)),
        deliver,
        local_address="127.0.0.1",
    )
    try:
        for packet in packets:
            connector.send(packet, home.radsec)
        try:
            await asyncio.wait_for(arrived.wait(), timeout)
        except TimeoutError:
            pass
        return [replies.get(p[1]) for p in packets]
    finally:
        connector.close()


def _registration(identifier: int = 7) -> bytes:
    request = access_request(
        RADSEC_SECRET.value, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2", identifier=identifier
    )
    return bytes(request.RequestPacket())


def _counter(home: Home, name: str) -> int:
    """The latest value of a counter in the server's counters log line."""
    values = re.findall(rf"\b{name}=(\d+)", home.log.read_text(errors="replace"))
    return int(values[-1]) if values else 0


def test_fa_registration_over_radsec(home: Home) -> None:
    request = _registration()
    (reply,) = asyncio.run(_exchange(home, "fa1", [request]))
    assert reply is not None, f"no reply over RadSec:\n{home.log.read_text()[-3000:]}"
    assert reply[0] == rc.ACCESS_ACCEPT, reply.hex()
    # sealed with the secret "radsec" (RFC 6614 section 2.3): Response
    # Authenticator and Message-Authenticator, and the keys decrypt under it
    assert reply[4:20] == rc.response_authenticator(reply, request[4:20], b"radsec")
    assert rc.verify_message_authenticator(reply, b"radsec", request[4:20])
    profile = decode_profile(reply[20:], b"radsec", request[4:20])
    assert str(profile.care_of_address) == "127.0.0.1"
    store = open_store(home.db, home.db.with_name(home.db.name + ".key"))
    try:
        stored = [s for s in store.find_sessions(NAI) if s.session_id == profile.session_id]
    finally:
        store.close()
    assert len(stored) == 1 and str(stored[0].care_of_address) == "127.0.0.1"
    log = home.log.read_text()
    assert "radsec connection" in log and "client=fa1" in log


def test_the_secret_never_appears_in_the_log(home: Home) -> None:
    log = home.log.read_text()
    for secret in (SECRET, MN_SECRET):
        assert secret.decode() not in log


def test_status_server_over_radsec(home: Home) -> None:
    probe = build_status_server(42, b"\x11" * 16, RADSEC_SECRET)
    (reply,) = asyncio.run(_exchange(home, "fa1", [probe]))
    assert reply is not None and reply[0] == rc.ACCESS_ACCEPT
    assert decode_status_reply(reply, probe, RADSEC_SECRET)  # verifies both authenticators; a Reply-Message


def test_accounting_and_access_on_one_connection(home: Home) -> None:
    access = _registration(identifier=9)
    accounting = encode_accounting_request(
        10,
        RADSEC_SECRET.value,
        AcctStatus.START,
        "radsec-acct-1",
        [rc.attribute(rc.USER_NAME, NAI.encode()), rc.attribute(rc.NAS_IP_ADDRESS, bytes([127, 0, 0, 1]))],
    )
    replies = asyncio.run(_exchange(home, "fa1", [access, accounting]))
    assert replies[0] is not None and replies[0][0] == rc.ACCESS_ACCEPT
    assert replies[1] is not None and replies[1][0] == rc.ACCOUNTING_RESPONSE, home.log.read_text()[-2000:]


def test_an_address_in_the_certificate_names_the_client(home: Home) -> None:
    # ha1's certificate has no name the home AAA knows, only ha1's address
    request = access_request(
        RADSEC_SECRET.value, NAI, MN_SECRET, nas_ip="127.0.0.2", care_of="127.0.0.1", request_type=2
    )
    (reply,) = asyncio.run(_exchange(home, "ha1", [bytes(request.RequestPacket())]))
    assert reply is not None, home.log.read_text()[-2000:]
    assert "client=ha1" in home.log.read_text()


@pytest.mark.parametrize(
    ("certificate", "reason"),
    [
        ("rogue", "refused.handshake"),
        ("expired", "refused.handshake"),
        ("stranger", "refused.unknown_certificate"),
        ("impostor", "refused.pin_mismatch"),
    ],
)
def test_certificates_that_name_no_client_are_refused(home: Home, certificate: str, reason: str) -> None:
    before = home.log.read_text().count(f"radsec connection {reason.replace('_', ' ').replace('.', ': ')}")
    (reply,) = asyncio.run(_exchange(home, certificate, [_registration(identifier=3)], timeout=3.0))
    assert reply is None
    deadline = time.monotonic() + 5
    wanted = f"radsec connection {reason.replace('_', ' ').replace('.', ': ')}"
    while home.log.read_text().count(wanted) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert home.log.read_text().count(wanted) > before, f"no {wanted!r} in the log:\n{home.log.read_text()[-2000:]}"


def test_the_pinned_certificate_is_accepted(home: Home) -> None:
    from aaa_vpn.wire.profile import RequestType

    request = access_request(
        RADSEC_SECRET.value, NAI, MN_SECRET, nas_ip="127.0.0.20", request_type=int(RequestType.GW_BINDING)
    )
    (reply,) = asyncio.run(_exchange(home, "pinned", [bytes(request.RequestPacket())]))
    assert reply is not None, home.log.read_text()[-2000:]
    assert "client=gw-dyn" in home.log.read_text()


def test_a_malformed_length_closes_the_connection(home: Home) -> None:
    context = client_context(_files(home, "fa1"))
    with socket.create_connection(home.radsec, timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="home-aaa.example") as tls:
            tls.sendall(bytes([1, 1, 0, 5]) + b"\x00" * 16)
            try:
                data = tls.recv(100)
            except (ssl.SSLError, ConnectionError):
                data = b""
            assert data == b"", "the server answered a stream with Length 5"
    deadline = time.monotonic() + 5
    while "radsec connection closed: framing" not in home.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "radsec connection closed: framing" in home.log.read_text()
    # ... and goes on serving
    (reply,) = asyncio.run(_exchange(home, "fa1", [build_status_server(1, b"\x22" * 16, RADSEC_SECRET)]))
    assert reply is not None


def test_udp_is_unchanged(home: Home) -> None:
    wait_until_serving(home.udp, SECRET)
    assert cli(home.db, "client", "list").returncode == 0


async def _session(
    home: Home, steps: list[tuple[float, bytes | None]], **timers: float
) -> tuple[list[bytes], RadsecConnector]:
    """One connector (fa1's certificate) through ``steps``: (seconds to wait,
    packet to send or None); returns what arrived and the connector."""
    arrived: list[bytes] = []
    connector = RadsecConnector(
        [RadsecServer(home.radsec, tls_name="home-aaa.example")],
        client_context(_files(home, "fa1")),
        lambda packet, _address: arrived.append(packet),
        local_address="127.0.0.1",
        **timers,  # type: ignore[arg-type]
    )
    try:
        for wait, packet in steps:
            await asyncio.sleep(wait)
            if packet is not None:
                connector.send(packet, home.radsec)
        return arrived, connector
    finally:
        connector.close()


def test_the_watchdog_is_answered_over_the_connection(home: Home) -> None:
    probe = build_status_server(50, b"\x33" * 16, RADSEC_SECRET)
    arrived, connector = asyncio.run(
        _session(home, [(0, probe), (3.0, None)], watchdog_interval=0.5, watchdog_timeout=5.0)
    )
    counters = connector.counters()
    assert [p[1] for p in arrived] == [50]  # the watchdog's answers are not passed on
    assert counters["radsec.watchdog_sent"] >= 1 and counters["radsec.watchdog_answered"] >= 1, counters
    assert counters["radsec.closed.watchdog"] == 0 and counters["radsec.connects"] == 1, counters


def test_an_unreachable_server_backs_off(home: Home) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()
        down = Home(home.db, home.udp, address, home.log, home.ca, home.certs)
        probe = build_status_server(1, b"\x44" * 16, RADSEC_SECRET)
        arrived, connector = asyncio.run(
            _session(
                down, [(0, probe), (1.0, probe), (5.5, probe), (2.0, None)], reconnect_delay=5.0, reconnect_max=8.0
            )
        )
    counters = connector.counters()
    assert arrived == []
    # the first packet tried a connection; the second, within the delay, was
    # dropped; the third, after it, tried again and failed again
    assert counters["radsec.connects"] == 2 and counters["radsec.failures"] == 2, counters
    assert counters["radsec.dropped.unreachable"] >= 1, counters


def test_the_server_closes_idle_connections_and_the_client_reconnects(tmp_path: Path, home: Home) -> None:
    db = tmp_path / "vpn.db"
    provision(db)
    log = tmp_path / "server.log"
    server = home.certs["server"]
    process = start_server(
        db, 0, 1, log, "--radsec-listen", "127.0.0.1:0", "--tls-cert", str(server.cert), "--tls-key",
        str(server.key), "--tls-ca", str(home.ca), "--radsec-idle-timeout", "1",
    )  # fmt: skip
    try:
        served_port(process, log)
        idle = Home(db, home.udp, ("127.0.0.1", radsec_port(log)), log, home.ca, home.certs)
        first = build_status_server(1, b"\x55" * 16, RADSEC_SECRET)
        second = build_status_server(2, b"\x66" * 16, RADSEC_SECRET)
        arrived, connector = asyncio.run(
            _session(idle, [(0, first), (3.0, second), (2.0, None)], watchdog_interval=None)  # type: ignore[arg-type]
        )
        counters = connector.counters()
        assert sorted(p[1] for p in arrived) == [1, 2], (counters, log.read_text()[-2000:])
        assert "radsec connection closed: idle" in log.read_text()
        # closed by the server while it owed nothing: no failure, a new connection on demand
        assert counters["radsec.connects"] == 2 and counters["radsec.failures"] == 0, counters
        assert counters["radsec.closed.by_peer"] >= 1, counters
    finally:
        assert stop(process) == 0, log.read_text()


def test_tls_1_2_is_accepted_and_older_versions_are_not(home: Home) -> None:
    context = client_context(_files(home, "fa1"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(home.radsec, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="home-aaa.example") as tls:
            assert tls.version() == "TLSv1.2"
            probe = build_status_server(77, b"\x77" * 16, RADSEC_SECRET)
            tls.sendall(probe)
            reply = tls.recv(4096)
    assert decode_status_reply(reply, probe, RADSEC_SECRET)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():  # deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        return  # this OpenSSL cannot even offer TLS 1.1
    with socket.create_connection(home.radsec, timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with old.wrap_socket(raw) as tls:
                tls.sendall(probe)
                tls.recv(10)


def test_a_client_without_a_certificate_is_refused(home: Home) -> None:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(home.ca))
    before = home.log.read_text().count("radsec connection refused: handshake")
    with socket.create_connection(home.radsec, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="home-aaa.example") as tls:
            try:
                tls.sendall(build_status_server(1, b"\x01" * 16, RADSEC_SECRET))
                data = tls.recv(100)  # TLS 1.3: the refusal comes after the client's handshake
            except (ssl.SSLError, ConnectionError):
                data = b""
    assert data == b""
    deadline = time.monotonic() + 5
    while home.log.read_text().count("radsec connection refused: handshake") <= before:
        assert time.monotonic() < deadline, home.log.read_text()[-2000:]
        time.sleep(0.05)


def test_the_client_checks_the_server_name(home: Home) -> None:
    async def run() -> RadsecConnector:
        connector = RadsecConnector(
            [RadsecServer(home.radsec, tls_name="someone-else.example")],
            client_context(_files(home, "fa1")),
            lambda _packet, _address: None,
        )
        connector.send(build_status_server(1, b"\x02" * 16, RADSEC_SECRET), home.radsec)
        for _ in range(100):
            if connector.counters()["radsec.failures"]:
                break
            await asyncio.sleep(0.05)
        connector.close()
        return connector

    counters = asyncio.run(run()).counters()
    assert counters["radsec.failures"] == 1 and counters["radsec.connected"] == 0, counters
