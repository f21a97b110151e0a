"""The home AAA as a real process: provisioned through the CLI, serving on
loopback, driven by a RADIUS client over UDP.

Addresses (all loopback): the server on 127.0.0.1; clients fa1 = 127.0.0.1/32
(aaa-vpn flavour), ha1 = 127.0.0.2, gw-dyn = 127.0.0.20, fa-rfc = 127.0.1.0/24
(rfc2868 flavour), fa-3gpp2 = 127.0.2.0/24 (3gpp2 flavour), proxy = 127.0.0.5 (a generic
RADIUS proxy), visited-aaaf = 127.0.0.6 (role foreign-aaa).
127.0.0.99 is nobody.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from aaa_vpn.store import open_store
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import VENDOR_ID, PathRole, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import (
    AaaVpnAttr,
    decode_3gpp2,
    decode_profile,
    decode_tunnel_attributes,
)
from aaa_vpn.wire.radius_request import Accepted, decode_access_reply

from .radius_client import (
    access_request,
    exchange,
    served_port,
    status_server,
    vendor_values,
    wait_until_serving,
)

REPO = Path(__file__).resolve().parents[1]
SECRET = b"fa1-shared-secret"
HA_SECRET = b"ha1-shared-secret"
MN_SECRET = b"mn1-aaa-secret"
NAI = "mn1@home.example"


#: The key file of each PostgreSQL database a test made (a file database's is <db>.key).
KEY_FILES: dict[str, Path] = {}


def database_args(db: Path | str) -> list[str]:
    """``--db`` (and, for a PostgreSQL URL, ``--key-file``) for ``db``."""
    key = KEY_FILES.get(str(db))
    return ["--db", str(db), *(["--key-file", str(key)] if key is not None else [])]


def cli(db: Path | str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", *database_args(db), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"aaa-vpn {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def provision(db: Path | str) -> None:
    cli(db, "db", "init")
    cli(
        db,
        "client",
        "add",
        "fa1",
        "--address",
        "127.0.0.1",
        "--role",
        "fa",
        "--secret",
        SECRET.decode(),
        "--domain",
        "visited.example",
    )
    cli(db, "client", "add", "ha1", "--address", "127.0.0.2", "--role", "ha", "--secret", HA_SECRET.decode())
    cli(db, "client", "add", "gw-dyn", "--address", "127.0.0.20", "--role", "gw", "--secret", "gw-dyn-secret")
    cli(
        db,
        "client",
        "add",
        "proxy",
        "--address",
        "127.0.0.5",
        "--role",
        "proxy",
        "--secret",
        "proxy-secret",
        "--domain",
        "visited.example",
    )
    cli(
        db,
        "client",
        "add",
        "visited-aaaf",
        "--address",
        "127.0.0.6",
        "--role",
        "foreign-aaa",
        "--secret",
        "aaaf-secret",
        "--domain",
        "visited.example",
    )
    cli(
        db,
        "client",
        "add",
        "fa-rfc",
        "--address",
        "127.0.1.0/24",
        "--role",
        "fa",
        "--secret",
        "rfc-secret-1",
        "--flavour",
        "rfc2868",
    )
    cli(
        db,
        "client",
        "add",
        "fa-3gpp2",
        "--address",
        "127.0.2.0/24",
        "--role",
        "fa",
        "--secret",
        "tgpp2-secret",
        "--flavour",
        "3gpp2",
    )
    for nai, address in ((NAI, "198.51.100.10"), ("mn2@home.example", "198.51.100.11")):
        cli(
            db,
            "user",
            "add",
            nai,
            "--home-agent",
            "127.0.0.2",
            "--home-address",
            address,
            "--mn-aaa-secret",
            MN_SECRET.decode(),
            "--mn-ha-spi",
            "256",
            "--mn-ha-key-hex",
            "00112233445566778899aabbccddeeff",
        )
    cli(
        db,
        "gateway",
        "add",
        "gw-static",
        "--address",
        "127.0.0.10",
        "--mode",
        "static",
        "--protects",
        "203.0.113.0/25",
        "--generate",
    )
    cli(
        db,
        "gateway",
        "add",
        "gw-dyn",
        "--address",
        "127.0.0.20",
        "--mode",
        "dynamic",
        "--protects",
        "203.0.113.128/25",
        "--generate",
    )
    cli(db, "service", "add", "gold", "--key-mode", "ikev2", "--esp-transform", "aes256gcm16")
    cli(db, "service", "add", "silver", "--esp-transform", "aes128-sha256")
    cli(db, "qos", "add", "voice", "--dscp", "46", "--rate-kbps", "512")
    cli(
        db,
        "vpn",
        "add",
        "--user",
        NAI,
        "--correspondent",
        "203.0.113.0/25",
        "--gateway",
        "gw-static",
        "--service",
        "gold",
        "--qos",
        "voice",
    )
    cli(
        db,
        "vpn",
        "add",
        "--user",
        NAI,
        "--correspondent",
        "203.0.113.128/25",
        "--gateway",
        "gw-dyn",
        "--service",
        "silver",
    )


@dataclass
class Server:
    db: Path
    address: tuple[str, int]
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(db: Path | str, port: int, workers: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aaa_vpn.cli",
                *database_args(db),
                "serve",
                "home",
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "debug",
                *extra,
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("the server did not stop on SIGTERM within 10 s") from None
    return process.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("home")
    db = tmp / "vpn.db"
    provision(db)
    log = tmp / "server.log"
    process = start_server(db, 0, 2, log)
    try:
        port = served_port(process, log)
        wait_until_serving(("127.0.0.1", port), SECRET)
        yield Server(db, ("127.0.0.1", port), process, log)
    finally:
        code = stop(process)
        assert code == 0, f"server exited with {code}:\n{log.read_text()}"


def sessions(db: Path | str, nai: str = NAI) -> list[dict[str, object]]:
    result = cli(db, "--json", "session", "list", "--user", nai)
    return list(json.loads(result.stdout)["sessions"])


def register(server: Server, home_agent: str = "127.0.0.2", **kwargs: object) -> tuple[object, object]:
    request = access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent=home_agent, **kwargs)  # type: ignore[arg-type]
    ex = exchange(server.address, request)
    return request, ex


def test_fa_registration_gets_the_fa_part_of_the_profile(server: Server) -> None:
    request, ex = register(server)
    assert ex.reply is not None, "no reply to a valid Access-Request"
    assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
    assert ex.attributes[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE  # first attribute (BlastRADIUS)
    assert request.VerifyReply(_decoded(ex.reply, SECRET), rawreply=ex.reply, enforce_ma=True)
    profile = decode_profile(ex.reply[20:], SECRET, ex.authenticator)
    assert profile.home_address == IPv4Address("198.51.100.10")
    assert profile.care_of_address == IPv4Address("127.0.0.1")
    assert profile.session_root_key is None and profile.mn_ha_key is None  # least privilege
    roles = sorted((p.role, str(p.peer)) for p in profile.paths)
    assert roles == [(PathRole.FA_HA, "127.0.0.2"), (PathRole.FA_GW, "127.0.0.20")]
    fa_gw = next(p for p in profile.paths if p.role is PathRole.FA_GW)
    assert fa_gw.remote_ts == (IPv4Network("203.0.113.128/25"),)
    assert len(fa_gw.key_in) == 48  # AES-128-CBC key + HMAC-SHA-256 key
    fa_ha = next(p for p in profile.paths if p.role is PathRole.FA_HA)
    assert fa_ha.ike_psk is not None and len(fa_ha.key_in) == 36  # gold: IKEv2, AES-256-GCM
    assert fa_ha.qos is not None and fa_ha.qos.dscp == 46
    stored = sessions(server.db)
    assert [s["session_id"] for s in stored] == [profile.session_id]


def test_ha_gets_the_mirrored_part(server: Server) -> None:
    _, fa_ex = register(server)
    fa = decode_profile(fa_ex.reply[20:], SECRET, fa_ex.authenticator)
    request = access_request(
        HA_SECRET, NAI, MN_SECRET, nas_ip="127.0.0.2", care_of="127.0.0.1", request_type=RequestType.HA_REGISTRATION
    )
    ex = exchange(server.address, request, source=("127.0.0.2", 0))
    assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
    ha = decode_profile(ex.reply[20:], HA_SECRET, ex.authenticator)
    assert ha.session_id == fa.session_id
    assert ha.session_root_key is not None and ha.mn_ha_spi == 256
    assert ha.mn_ha_key is not None and ha.mn_ha_key.value == bytes.fromhex("00112233445566778899aabbccddeeff")
    at_fa = next(p for p in fa.paths if p.role is PathRole.FA_HA)
    at_ha = next(p for p in ha.paths if p.role is PathRole.FA_HA)
    assert (at_ha.local, at_ha.peer) == (at_fa.peer, at_fa.local)
    assert at_ha.key_in == at_fa.key_out and at_ha.key_out == at_fa.key_in
    assert at_ha.spi_in == at_fa.spi_out and at_ha.spi_out == at_fa.spi_in
    assert at_ha.ike_psk == at_fa.ike_psk
    assert ha.fa_ha_key == fa.fa_ha_key and ha.fa_ha_spi == fa.fa_ha_spi
    # the HA also gets the gateway's side of the route-optimised path, for its Binding Update
    gw_side = next(p for p in ha.paths if p.role is PathRole.FA_GW)
    fa_side = next(p for p in fa.paths if p.role is PathRole.FA_GW)
    assert gw_side.local == fa_side.peer and gw_side.key_in == fa_side.key_out
    assert any(p.role is PathRole.HA_GW for p in ha.paths)


def test_gateway_gets_only_its_own_paths(server: Server) -> None:
    _, fa_ex = register(server)
    fa = decode_profile(fa_ex.reply[20:], SECRET, fa_ex.authenticator)
    request = access_request(b"gw-dyn-secret", NAI, None, nas_ip="127.0.0.20")
    ex = exchange(server.address, request, source=("127.0.0.20", 0))
    assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
    gw = decode_profile(ex.reply[20:], b"gw-dyn-secret", ex.authenticator)
    assert [(p.role, str(p.local), str(p.peer)) for p in gw.paths] == [(PathRole.FA_GW, "127.0.0.20", "127.0.0.1")]
    assert gw.session_root_key is None and gw.fa_ha_key is None
    fa_side = next(p for p in fa.paths if p.role is PathRole.FA_GW)
    assert gw.paths[0].spi_in == fa_side.spi_out


def test_only_a_foreign_aaa_gets_the_session_root_key(server: Server) -> None:
    # docs/design.md section 3: the SRK goes to this project's foreign AAA (which keeps
    # it for same-domain handoffs and strips it), never to a generic proxy, which
    # would pass it on to the FA.
    request = access_request(b"proxy-secret", NAI, MN_SECRET, nas_ip="127.0.0.1", care_of="127.0.0.1")
    ex = exchange(server.address, request, source=("127.0.0.5", 0))
    assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
    srk_attributes = vendor_values(ex.attributes, VENDOR_ID, AaaVpnAttr.SESSION_ROOT_KEY)
    assert srk_attributes == [], f"a proxy client got Aaa-Vpn-Session-Root-Key: {[v.hex() for v in srk_attributes]}"
    profile = decode_profile(ex.reply[20:], b"proxy-secret", ex.authenticator)
    assert profile.session_root_key is None and profile.fa_ha_key is not None
    request = access_request(b"aaaf-secret", NAI, MN_SECRET, nas_ip="127.0.0.1", care_of="127.0.0.1")
    ex = exchange(server.address, request, source=("127.0.0.6", 0))
    assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
    assert len(vendor_values(ex.attributes, VENDOR_ID, AaaVpnAttr.SESSION_ROOT_KEY)) == 1, ex.attributes
    profile = decode_profile(ex.reply[20:], b"aaaf-secret", ex.authenticator)
    assert profile.session_root_key is not None and len(profile.session_root_key) == 32


def _reject_reason(ex: object) -> tuple[int, str]:
    attrs = ex.attributes  # type: ignore[attr-defined]
    reason = vendor_values(attrs, VENDOR_ID, 14)
    message = [v for c, v in attrs if c == rc.REPLY_MESSAGE]
    assert reason and message, attrs
    return int.from_bytes(reason[0], "big"), message[0].decode()


@pytest.mark.parametrize(
    ("nai", "mn_secret", "reason", "text"),
    [
        ("nobody@home.example", MN_SECRET, RejectReason.UNKNOWN_USER, "unknown user"),
        (NAI, b"wrong-secret", RejectReason.AUTHENTICATION_FAILED, "failed authentication"),
    ],
)
def test_rejects_carry_reason_and_message(
    server: Server, nai: str, mn_secret: bytes, reason: RejectReason, text: str
) -> None:
    request = access_request(SECRET, nai, mn_secret, care_of="127.0.0.1")
    ex = exchange(server.address, request)
    assert ex.code == rc.ACCESS_REJECT
    assert ex.attributes[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE
    assert request.VerifyReply(_decoded(ex.reply, SECRET), rawreply=ex.reply, enforce_ma=True)
    code, message = _reject_reason(ex)
    assert code == reason and text in message


def test_fa_may_not_ask_for_the_ha_part_or_claim_another_care_of(server: Server) -> None:
    request = access_request(SECRET, NAI, MN_SECRET, request_type=RequestType.HA_REGISTRATION)
    ex = exchange(server.address, request)
    assert ex.code == rc.ACCESS_REJECT and _reject_reason(ex)[0] == RejectReason.BAD_REQUEST
    request = access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.77")
    ex = exchange(server.address, request)
    assert ex.code == rc.ACCESS_REJECT and "care-of address" in _reject_reason(ex)[1]


def test_disabling_a_user_takes_effect_at_once(server: Server) -> None:
    cli(server.db, "user", "change", "mn2@home.example", "--disable")
    try:
        request = access_request(SECRET, "mn2@home.example", MN_SECRET, care_of="127.0.0.1")
        ex = exchange(server.address, request)
        assert ex.code == rc.ACCESS_REJECT and _reject_reason(ex)[0] == RejectReason.USER_DISABLED
    finally:
        cli(server.db, "user", "change", "mn2@home.example", "--enable")
    ex = exchange(server.address, access_request(SECRET, "mn2@home.example", MN_SECRET, care_of="127.0.0.1"))
    assert ex.code == rc.ACCESS_ACCEPT


def test_retransmission_gets_the_identical_reply_and_no_second_session(server: Server) -> None:
    request = access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1")
    raw = request.RequestPacket()
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        first = exchange(server.address, raw, sock=sock)
        ids_after_first = [s["session_id"] for s in sessions(server.db)]
        second = exchange(server.address, raw, sock=sock)
    assert first.reply is not None and first.reply == second.reply
    assert [s["session_id"] for s in sessions(server.db)] == ids_after_first
    assert len(ids_after_first) == 1


def test_registrations_renew_move_and_replace_sessions(server: Server) -> None:
    _, one = register(server)
    first = decode_profile(one.reply[20:], SECRET, one.authenticator)
    # the FA renews for its current visitor, naming the session: same session, same keys
    _, two = register(server, session_id=first.session_id)
    second = decode_profile(two.reply[20:], SECRET, two.authenticator)
    assert (second.session_id, second.epoch) == (first.session_id, first.epoch)
    assert [p.key_in for p in second.paths] == [p.key_in for p in first.paths]
    # another FA (fa-rfc's 127.0.1.0/24) naming the previous one: a handoff --
    # same session, next epoch, new FA-side keys (home_aaa rule 6)
    moved = access_request(
        b"rfc-secret-1", NAI, MN_SECRET, nas_ip="127.0.1.9", care_of="127.0.1.9", previous_fa="127.0.0.1"
    )
    ex = exchange(server.address, moved, source=("127.0.1.9", 0))
    assert ex.code == rc.ACCESS_ACCEPT
    (stored,) = sessions(server.db)
    assert stored["session_id"] == first.session_id and stored["epoch"] == first.epoch + 1
    assert stored["care_of_address"] == "127.0.1.9"
    # a registration that names neither (after a deregistration, say): a new
    # session, so no node is handed keys it has removed before
    _, three = register(server)
    third = decode_profile(three.reply[20:], SECRET, three.authenticator)
    assert third.session_id != first.session_id
    assert [s["session_id"] for s in sessions(server.db)] == [third.session_id]
    # naming a session that is not the live one does not renew it either
    _, four = register(server, session_id=first.session_id)
    fourth = decode_profile(four.reply[20:], SECRET, four.authenticator)
    assert fourth.session_id not in (first.session_id, third.session_id)


def test_proxy_state_is_echoed_in_order(server: Server) -> None:
    states = (b"\x00first", b"second-state", b"\xff")
    request = access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1", proxy_states=states)
    ex = exchange(server.address, request)
    assert ex.code == rc.ACCESS_ACCEPT
    assert tuple(v for c, v in ex.attributes if c == rc.PROXY_STATE) == states
    assert ex.attributes[-len(states) :] == [(rc.PROXY_STATE, s) for s in states]
    reject = access_request(SECRET, "nobody@home.example", MN_SECRET, proxy_states=states)
    ex = exchange(server.address, reject)
    assert tuple(v for c, v in ex.attributes if c == rc.PROXY_STATE) == states


def test_status_server(server: Server) -> None:
    ex = status_server(server.address, SECRET)
    assert ex.code == rc.ACCESS_ACCEPT
    assert ex.attributes[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE
    message = next(v for c, v in ex.attributes if c == rc.REPLY_MESSAGE).decode()
    assert "requests" in message and "dropped" in message


@pytest.mark.parametrize(
    "case",
    ["no_message_authenticator", "wrong_secret", "unknown_client", "garbage", "bad_length", "accounting"],
)
def test_bad_input_is_dropped_counted_and_harmless(server: Server, case: str) -> None:
    source = ("127.0.0.1", 0)
    if case == "no_message_authenticator":
        packet: bytes = access_request(SECRET, NAI, MN_SECRET, message_authenticator=False).RequestPacket()
    elif case == "wrong_secret":
        packet = access_request(b"not-the-secret", NAI, MN_SECRET).RequestPacket()
    elif case == "unknown_client":
        packet = access_request(SECRET, NAI, MN_SECRET).RequestPacket()
        source = ("127.0.0.99", 0)
    elif case == "garbage":
        packet = os.urandom(57)
    elif case == "bad_length":
        good = access_request(SECRET, NAI, MN_SECRET).RequestPacket()
        packet = good[:2] + (len(good) + 40).to_bytes(2, "big") + good[4:]
    else:
        packet = bytes([4]) + access_request(SECRET, NAI, MN_SECRET).RequestPacket()[1:]
    ex = exchange(server.address, packet, source=source, timeout=0.5)
    assert ex.reply is None
    # still serving, and the drop was logged with its reason
    assert status_server(server.address, SECRET).code == rc.ACCESS_ACCEPT
    reason = {
        "no_message_authenticator": "missing_message_authenticator",
        "wrong_secret": "bad_message_authenticator",
        "unknown_client": "unknown_client",
        "garbage": None,
        "bad_length": "malformed",
        "accounting": "unsupported_code",
    }[case]
    deadline = time.monotonic() + 2
    while reason and f"reason={reason}" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    if reason:
        assert f"reason={reason}" in server.log_text()


def test_other_flavours(server: Server) -> None:
    rfc = access_request(b"rfc-secret-1", NAI, MN_SECRET, nas_ip="127.0.1.7", care_of="127.0.1.7")
    ex = exchange(server.address, rfc, source=("127.0.1.7", 0))
    assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
    tunnels = decode_tunnel_attributes(ex.reply[20:], b"rfc-secret-1", ex.authenticator)
    assert not any(c == 26 and v[:4] == VENDOR_ID.to_bytes(4, "big") for c, v in ex.attributes)
    assert tunnels.tunnels, tunnels
    tgpp2 = access_request(b"tgpp2-secret", NAI, MN_SECRET, nas_ip="127.0.2.7", care_of="127.0.2.7")
    ex = exchange(server.address, tgpp2, source=("127.0.2.7", 0))
    assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
    decoded = decode_3gpp2(ex.reply[20:], b"tgpp2-secret", ex.authenticator)
    assert decoded.home_agent == IPv4Address("127.0.0.2")


def test_logs_never_show_secrets(server: Server) -> None:
    register(server)
    text = server.log_text()
    for secret in (SECRET, HA_SECRET, MN_SECRET, b"00112233445566778899aabbccddeeff"):
        assert secret.decode() not in text
    store = open_store(server.db, server.db.with_name(server.db.name + ".key"))
    try:
        for session in store.list_sessions():
            assert session.session_root_key.value.hex() not in text
    finally:
        store.close()


def test_bad_start_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    log = tmp_path / "log"
    process = start_server(missing, 0, 2, log)
    assert process.wait(timeout=30) != 0
    assert "Traceback" not in log.read_text()


def _decoded(reply: bytes, secret: bytes) -> object:
    import pyrad.packet

    from aaa_vpn.wire.radius import load_dictionary

    return pyrad.packet.Packet(packet=reply, dict=load_dictionary(), secret=secret)


def test_sigusr1_logs_every_workers_counters(server: Server) -> None:
    register(server)
    before = server.log_text().count("INFO    aaa_vpn.server")
    server.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in server.log_text().splitlines() if ": counters " in line]
        if len(lines) >= 2:  # one line per worker
            break
        time.sleep(0.05)
    assert len(lines) >= 2, server.log_text()[-2000:]
    assert any("accepts=" in line for line in lines)
    assert server.process.poll() is None  # the signal did not stop the server
    assert server.log_text().count("INFO    aaa_vpn.server") > before


def test_no_worker_confirms_a_session_another_worker_replaced(server: Server) -> None:
    """Both workers hold the session and remember its confirmation (renewals
    from eight source ports, which the workers share by their authenticators,
    net/reuseport.py); a registration that names nothing replaces it; no worker then
    confirms the old session, from its copy or from its memo."""
    sockets = []
    try:
        for _ in range(8):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)

        def renew(sock: socket.socket, profile: VpnProfile) -> Accepted:
            request = access_request(
                SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2", session_id=profile.session_id
            )
            request[(VENDOR_ID, 17)] = [profile.digest]
            ex = exchange(server.address, request, sock=sock)
            assert ex.reply is not None, "no reply to a renewal"
            answer = decode_access_reply(ex.reply, ex.request, SECRET)
            assert isinstance(answer, Accepted), answer
            return answer

        for _round in range(3):
            _, one = register(server)
            first = decode_profile(one.reply[20:], SECRET, one.authenticator)
            for sock in sockets * 2:  # the second time from the memo
                confirmed = renew(sock, first)
                assert confirmed.profile is None and confirmed.confirmation is not None
            _, two = register(server)
            second = decode_profile(two.reply[20:], SECRET, two.authenticator)
            assert second.session_id != first.session_id
            for sock in sockets:
                answer = renew(sock, first)
                assert answer.profile is not None, "a worker confirmed a session that was replaced"
                assert answer.profile.session_id not in (first.session_id, second.session_id)
    finally:
        for sock in sockets:
            sock.close()


def test_one_peer_is_served_by_every_worker(tmp_path: Path) -> None:
    """One RADIUS peer sending from one port (a proxy, say) is spread over
    both workers by its requests' authenticators, not pinned to one by its
    address and port (net/reuseport.py); each worker's counters show its share."""
    db = tmp_path / "vpn.db"
    provision(db)
    log = tmp_path / "server.log"
    process = start_server(db, 0, 2, log)
    try:
        address = ("127.0.0.1", served_port(process, log))
        wait_until_serving(address, SECRET)
        deadline = time.monotonic() + 10  # both workers in the group: else the first takes all
        while log.read_text().count("worker listening") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            for _ in range(64):
                ex = exchange(address, access_request(SECRET, "nobody@home.example", MN_SECRET), sock=peer)
                assert ex.code == rc.ACCESS_REJECT
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # one line per worker ("counters" alone if it counted nothing)
            lines = [line for line in log.read_text().splitlines() if re.search(r"\]: counters( |$)", line)]
            if len(lines) >= 2:
                break
            time.sleep(0.05)
        assert len(lines) == 2, lines
        shares = [int(match.group(1)) if (match := re.search(r" rejects=(\d+)", line)) else 0 for line in lines]
        assert sum(shares) == 64 and min(shares) > 0, (shares, lines)
    finally:
        assert stop(process) == 0, log.read_text()[-2000:]
