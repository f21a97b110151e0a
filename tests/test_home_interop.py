"""Independent peers against the running home AAA.

``radclient`` (freeradius-utils) sends the FA's Access-Request to a running
``aaa-vpn serve home`` provisioned through the CLI; it verifies the Response
Authenticator and the Message-Authenticator itself and prints every attribute,
decrypting the salt-encrypted keys. tshark captures the exchange on loopback
and decodes it with our dictionary. Both are compared with what the database
says the session is: the SPIs it stores and the keys its session root key
derives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn import keys
from aaa_vpn.model import EspTransform
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.secret import Secret
from aaa_vpn.store import open_store
from aaa_vpn.wire.radius import prepare_tool_dir

from .radius_client import PRECEDING, served_port, wait_until_serving
from .test_dictionaries_interop import as_freeradius_prints, parse_reply
from .test_home_server import MN_SECRET, NAI, SECRET, provision, start_server, stop

pytestmark = [pytest.mark.interop, pytest.mark.integration]

FA = IPv4Address("127.0.0.1")
HA = IPv4Address("127.0.0.2")
GW_DYN = IPv4Address("127.0.0.20")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    tmp = tmp_path_factory.mktemp("interop")
    db = tmp / "vpn.db"
    provision(db)
    process = start_server(db, 0, 1, tmp / "server.log")
    try:
        port = served_port(process, tmp / "server.log")
        wait_until_serving(("127.0.0.1", port), SECRET)
        yield db, port
    finally:
        assert stop(process) == 0


def _request_file(path: Path) -> None:
    # radclient 3.2 re-encodes a 17-octet CHAP-Password whose octets are all >= 32
    # as if it were a cleartext password (~10% of random proofs): draw until one
    # octet is below 32, so the proof reaches the server as computed.
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


def _start_capture(tshark: str, port: int, pcap: Path) -> subprocess.Popen[bytes]:
    capture = subprocess.Popen(
        [tshark, "-n", "-i", "lo", "-f", f"udp port {port}", "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert capture.stderr is not None
    deadline = time.monotonic() + 20
    seen = b""
    # "Capturing on ..." comes before dumpcap has attached its filter; tshark
    # reports "Capture started" once packets are really being recorded.
    while b"Capture started" not in seen:
        if capture.poll() is not None or time.monotonic() > deadline:
            capture.kill()
            raise AssertionError(f"tshark did not start capturing: {seen.decode(errors='replace')}")
        seen += capture.stderr.read1(4096)
    return capture


def test_radclient_and_tshark_agree_with_the_database(
    home: tuple[Path, int], tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    radclient, tshark = require_tool("radclient"), require_tool("tshark")
    db, port = home
    tooldir = prepare_tool_dir(tmp_path / "dict")
    request = tmp_path / "request.txt"
    _request_file(request)
    pcap = tmp_path / "exchange.pcap"
    capture = _start_capture(tshark, port, pcap)
    try:
        result = subprocess.run(
            [
                radclient,
                "-x",
                "-r",
                "1",
                "-t",
                "5",
                "-d",
                str(tooldir),
                "-f",
                str(request),
                f"127.0.0.1:{port}",
                "auth",
                SECRET.decode(),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        time.sleep(0.3)  # let the reply reach the capture file
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=20)
    output = result.stdout + result.stderr
    # exit 0: radclient checked the Response Authenticator and the Message-Authenticator
    assert result.returncode == 0, output.decode(errors="replace")
    assert b"Received Access-Accept" in output
    attributes = parse_reply(output)
    assert attributes[0][0] == "Message-Authenticator", attributes  # first, as BlastRADIUS guidance wants

    store = open_store(db, db.with_name(db.name + ".key"))
    try:
        (session,) = store.find_sessions(NAI)
    finally:
        store.close()
    spi = {a.path: a.spi for a in session.spis}
    by_name: dict[tuple[str, int], list[str | bytes]] = {}
    for name, tag, value in attributes:
        by_name.setdefault((name, tag), []).append(value)
    assert by_name[("Aaa-Vpn-Session-Id", 0)] == [session.session_id.encode()]
    tags = {by_name[("Aaa-Vpn-Path-Role", t)][0]: t for t in range(1, 3)}
    assert set(tags) == {"FA-HA", "FA-GW"}

    # FA <-> HA (service gold: IKEv2, AES-256-GCM): SPIs, keys and PSK as the SRK derives them
    t = tags["FA-HA"]
    assert by_name[("Aaa-Vpn-Path-Local", t)] == [b"127.0.0.1"] and by_name[("Aaa-Vpn-Path-Peer", t)] == [b"127.0.0.2"]
    assert by_name[("Aaa-Vpn-Path-SPI-In", t)] == [str(spi["fa-ha@127.0.0.1"])]
    assert by_name[("Aaa-Vpn-Path-SPI-Out", t)] == [str(spi["fa-ha@127.0.0.2"])]
    length = EspTransform.AES_GCM_16_256.keymat_length  # 36 octets: three salt-encryption blocks
    key_in = keys.derive_sa_key(session.session_root_key, b"fa-ha", HA, FA, session.epoch, length)
    key_out = keys.derive_sa_key(session.session_root_key, b"fa-ha", FA, HA, session.epoch, length)
    assert by_name[("Aaa-Vpn-Path-Key-In", t)] == [as_freeradius_prints(key_in.value)]
    assert by_name[("Aaa-Vpn-Path-Key-Out", t)] == [as_freeradius_prints(key_out.value)]
    psk = keys.derive_ike_psk(session.session_root_key, b"fa-ha", FA, HA, session.epoch)
    assert by_name[("Aaa-Vpn-Path-IKE-PSK", t)] == [as_freeradius_prints(psk.value)]
    assert by_name[("Aaa-Vpn-Path-DSCP", t)] == ["46"]

    # FA <-> dynamic GW (service silver: AES-128-CBC + HMAC-SHA-256-128, 48-octet keys)
    t = tags["FA-GW"]
    label = next(a.path for a in session.spis if a.path.startswith("fa-gw:")).split("@")[0].encode()
    length = EspTransform.AES_CBC_128_HMAC_SHA256.keymat_length
    gw_in = keys.derive_sa_key(session.session_root_key, label, GW_DYN, FA, session.epoch, length)
    assert by_name[("Aaa-Vpn-Path-Key-In", t)] == [as_freeradius_prints(gw_in.value)]
    assert by_name[("Aaa-Vpn-Path-Remote-TS", t)] == [b"203.0.113.128/25"]

    # tshark, decoding the capture of the same exchange with our dictionary
    config = tooldir  # prepare_tool_dir wrote radius/dictionary there too
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config))
    fields = [
        "radius.code",
        "radius.User_Name",
        "radius.Aaa_Vpn_Request_Type",
        "radius.Aaa_Vpn_Session_Id",
        "radius.Aaa_Vpn_Path_Role",
        "radius.Aaa_Vpn_Path_SPI_In",
        "radius.Aaa_Vpn_Path_Local",
        "radius.Aaa_Vpn_Path_Remote_TS",
    ]
    # the test port is not 1812, so tell tshark it carries RADIUS
    args = [
        tshark,
        "-n",
        "-r",
        str(pcap),
        "-d",
        f"udp.port=={port},radius",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=;",
    ]
    for field in fields:
        args += ["-e", field]
    decoded = subprocess.run(args, capture_output=True, env=env, timeout=60, check=False)
    assert decoded.returncode == 0, decoded.stderr.decode(errors="replace")
    rows = [line.split("\t") for line in decoded.stdout.decode().strip().split("\n")]
    assert [row[0] for row in rows] == ["1", "2"], rows  # the request, then the Accept
    request_row, accept_row = (dict(zip(fields, row, strict=True)) for row in rows)
    assert request_row["radius.User_Name"] == NAI
    assert request_row["radius.Aaa_Vpn_Request_Type"] == "1"
    assert accept_row["radius.Aaa_Vpn_Session_Id"] == session.session_id
    assert sorted(accept_row["radius.Aaa_Vpn_Path_Role"].split(";")) == ["1", "3"]
    assert sorted(int(v) for v in accept_row["radius.Aaa_Vpn_Path_SPI_In"].split(";")) == sorted(
        [spi["fa-ha@127.0.0.1"], next(v for k, v in spi.items() if k.startswith("fa-gw:") and k.endswith("@127.0.0.1"))]
    )
    assert accept_row["radius.Aaa_Vpn_Path_Local"].split(";") == ["127.0.0.1", "127.0.0.1"]
    assert "203.0.113.128/25" in accept_row["radius.Aaa_Vpn_Path_Remote_TS"].split(";")


def test_radclient_status_server(home: tuple[Path, int], tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    radclient = require_tool("radclient")
    _db, port = home
    request = tmp_path / "status.txt"
    request.write_text("Message-Authenticator = 0x00\nNAS-IP-Address = 127.0.0.1\n")
    result = subprocess.run(
        [radclient, "-x", "-r", "1", "-t", "5", "-f", str(request), f"127.0.0.1:{port}", "status", SECRET.decode()],
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    assert "Received Access-Accept" in output and "Reply-Message" in output
