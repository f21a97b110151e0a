"""aaa_vpn's home AAA as a FreeRADIUS module (rlm_python3), driven by radclient.

FreeRADIUS 3.2 is the RADIUS server: its own clients, secrets and
dictionaries; ``aaa_vpn.freeradius.module`` decides in ``authorize`` (one
virtual server) or in ``post-auth`` (another), on the database the CLI
provisioned (tests/test_home_server.py's ``provision``). radclient sends the
FA's Access-Request from 127.0.0.1 under FreeRADIUS's secret, which is not
the one in aaa_vpn's database; it verifies the Accept and decrypts the keys
FreeRADIUS re-encrypted. The reply is compared with the session the database
holds, as tests/test_home_interop.py does for the standalone server.

The configuration is docs/freeradius-module.md's (aaa_vpn/freeradius/config.py).
Everything runs on loopback, from a temporary raddb; FreeRADIUS is stopped by
its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn import keys
from aaa_vpn.freeradius.bridge import (
    ACCEPT,
    DO_NOT_RESPOND,
    RLM_MODULE_FAIL,
    RLM_MODULE_HANDLED,
    RLM_MODULE_REJECT,
    RLM_MODULE_UPDATED,
    SIGN_REPLY,
    HostedHome,
    HostedRequest,
)
from aaa_vpn.freeradius.config import CLIENT_POLICY, module_config
from aaa_vpn.freeradius.pairs import PLAIN_IN_FREERADIUS, PairCodec, escape_string, unescape_printed
from aaa_vpn.model import EspTransform
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService
from aaa_vpn.store import open_store
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import RejectReason
from aaa_vpn.wire.radius import load_dictionary, prepare_tool_dir

from . import freeradius
from .conftest import _require_tool
from .radius_client import (
    PRECEDING,
    access_request,
    exchange,
    probed_udp_port,
    served_port,
    wait_until_serving,
)
from .test_dictionaries_interop import as_freeradius_prints, parse_reply
from .test_home_server import KEY_FILES, MN_SECRET, NAI, SECRET, provision, start_server, stop

pytestmark = [pytest.mark.interop, pytest.mark.integration]

LISTEN = IPv4Address("127.0.0.7")  # FreeRADIUS
FA = IPv4Address("127.0.0.1")  # radclient's source; client fa1 in aaa_vpn's database
HA = IPv4Address("127.0.0.2")
GW_DYN = IPv4Address("127.0.0.20")
#: FreeRADIUS's own secret for the FA: aaa_vpn's database holds another one.
FR_SECRET = "fa-to-freeradius-secret"


def server_config(db: Path, key_file: Path, authorize_port: int, post_auth_port: int) -> str:
    return f"""\
client fa1 {{
    ipaddr = {FA}
    secret = {FR_SECRET}
    require_message_authenticator = yes
}}
policy {{
{CLIENT_POLICY}}}
modules {{
{module_config(db, key_file)}
}}
server home_authorize {{
    listen {{
        type = auth
        ipaddr = {LISTEN}
        port = {authorize_port}
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
server home_post_auth {{
    listen {{
        type = auth
        ipaddr = {LISTEN}
        port = {post_auth_port}
    }}
    authorize {{
        aaa_vpn_client
        update control {{
            &Auth-Type := Accept
        }}
    }}
    authenticate {{
    }}
    post-auth {{
        aaa_vpn
        Post-Auth-Type REJECT {{
        }}
    }}
}}
"""


@dataclass
class Hosted:
    db: Path | str
    key_file: Path
    raddb: Path
    ports: dict[str, int]


def _freeradius_with_module() -> str:
    binary = _require_tool("freeradius")  # missing: skip, or fail under AAA_VPN_REQUIRE_TOOLS=1 (CI)
    if not Path("/usr/lib/freeradius/rlm_python3.so").exists():
        message = "rlm_python3 is not installed (Debian freeradius-python3; scripts/setup.sh)"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)
    return binary


@contextlib.contextmanager
def running(db: Path | str, key_file: Path, base: Path) -> Iterator[Hosted]:
    """FreeRADIUS with the module on ``db``, from its own raddb under ``base``; stopped by its PID."""
    binary = _freeradius_with_module()
    process: subprocess.Popen[bytes] | None = None
    raddb: Path | None = None
    try:
        ports: dict[str, int] = {}

        def configure(attempt: int) -> Path:
            ports.update({"authorize": probed_udp_port(str(LISTEN)), "post-auth": probed_udp_port(str(LISTEN))})
            return freeradius.write_raddb(
                base / f"fr{attempt}", server_config(db, key_file, ports["authorize"], ports["post-auth"])
            )

        process, raddb = freeradius.start_on_probed_ports(binary, configure)
        yield Hosted(db, key_file, raddb, ports)
    finally:
        if process is not None and process.poll() is None:  # stopped by its PID
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and raddb is not None:
            log = freeradius.log_file(raddb).read_text(errors="replace")
            assert process.returncode == 0, f"freeradius exited with {process.returncode}:\n{log[-3000:]}"


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosted]:
    _freeradius_with_module()
    base = tmp_path_factory.mktemp("freeradius-module")
    db = base / "vpn.db"
    provision(db)
    with running(db, db.with_name(db.name + ".key"), base) as server:
        yield server


def fr_log(hosted: Hosted) -> str:
    return freeradius.log_file(hosted.raddb).read_text(errors="replace")


def request_text(
    *,
    mn_secret: bytes = MN_SECRET,
    nai: str = NAI,
    nas: IPv4Address = FA,
    request_type: str = "FA-Registration",
    session_id: str | None = None,
) -> str:
    """An Access-Request in radclient's format, as an FA (or HA) sends it."""
    # radclient 3.2 re-encodes a 17-octet CHAP-Password whose octets are all >= 32
    # as if it were a cleartext password: draw until one octet is below 32.
    while True:
        chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, Secret(mn_secret))
        if min(chap_password) < 32:
            break
    return (
        f'User-Name = "{nai}"\n'
        f"CHAP-Password = 0x{chap_password.hex()}\n"
        f"CHAP-Challenge = 0x{chap_challenge.hex()}\n"
        f"NAS-IP-Address = {nas}\n"
        f"Aaa-Vpn-Request-Type = {request_type}\n"
        f"Aaa-Vpn-Care-Of-Address = {FA}\n"
        f"Aaa-Vpn-Home-Agent = {HA}\n"
        + (f'Aaa-Vpn-Session-Id = "{session_id}"\n' if session_id else "")
        + "Message-Authenticator = 0x00\n"
    )


def radclient(hosted: Hosted, section: str, text: str, tmp_path: Path) -> tuple[int, bytes]:
    tooldir = prepare_tool_dir(tmp_path / f"dict-{section}")
    request = tmp_path / f"request-{section}.txt"
    request.write_text(text)
    result = subprocess.run(
        [
            _require_tool("radclient"),
            "-x",
            "-r",
            "1",
            "-t",
            "20",
            "-d",
            str(tooldir),
            "-f",
            str(request),
            f"{LISTEN}:{hosted.ports[section]}",
            "auth",
            FR_SECRET,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def session_of(hosted: Hosted, session_id: str) -> object:
    store = open_store(hosted.db, hosted.key_file)
    try:
        return store.get_session(session_id)
    finally:
        store.close()


@pytest.mark.parametrize("section", ["authorize", "post-auth"])
def test_the_accept_freeradius_sends_carries_the_profile_of_the_stored_session(
    hosted: Hosted, section: str, tmp_path: Path
) -> None:
    code, output = radclient(hosted, section, request_text(), tmp_path)
    text = output.decode(errors="replace")
    # exit 0: radclient checked the Response Authenticator and the Message-Authenticator
    assert code == 0, f"{text}\n{fr_log(hosted)[-3000:]}"
    assert "Received Access-Accept" in text, text
    attributes = parse_reply(output)
    assert attributes[0][0] == "Message-Authenticator", attributes  # FreeRADIUS signed it
    by_name: dict[tuple[str, int], list[str | bytes]] = {}
    for name, tag, value in attributes:
        by_name.setdefault((name, tag), []).append(value)
    (session_id,) = by_name[("Aaa-Vpn-Session-Id", 0)]
    assert isinstance(session_id, bytes)
    session = session_of(hosted, session_id.decode())  # the session is in the database
    assert session.nai == NAI and session.care_of_address == FA and session.home_agent == HA  # type: ignore[attr-defined]
    spi = {a.path: a.spi for a in session.spis}  # type: ignore[attr-defined]
    tags = {value[0]: tag for (name, tag), value in by_name.items() if name == "Aaa-Vpn-Path-Role"}
    assert set(tags) == {"FA-HA", "FA-GW"}, text

    # FA <-> HA: SPIs and keys as the stored root key derives them; FreeRADIUS
    # re-encrypted the keys under its own secret and radclient decrypted them.
    srk, epoch = session.session_root_key, session.epoch  # type: ignore[attr-defined]
    t = tags["FA-HA"]
    assert by_name[("Aaa-Vpn-Path-Local", t)] == [b"127.0.0.1"] and by_name[("Aaa-Vpn-Path-Peer", t)] == [b"127.0.0.2"]
    assert by_name[("Aaa-Vpn-Path-SPI-In", t)] == [str(spi["fa-ha@127.0.0.1"])]
    assert by_name[("Aaa-Vpn-Path-SPI-Out", t)] == [str(spi["fa-ha@127.0.0.2"])]
    length = EspTransform.AES_GCM_16_256.keymat_length

    def shown(key: Secret) -> list[str | bytes]:
        return [as_freeradius_prints(key.value)]

    assert by_name[("Aaa-Vpn-Path-Key-In", t)] == shown(keys.derive_sa_key(srk, b"fa-ha", HA, FA, epoch, length))
    assert by_name[("Aaa-Vpn-Path-Key-Out", t)] == shown(keys.derive_sa_key(srk, b"fa-ha", FA, HA, epoch, length))
    assert by_name[("Aaa-Vpn-Path-IKE-PSK", t)] == shown(keys.derive_ike_psk(srk, b"fa-ha", FA, HA, epoch))
    assert by_name[("Aaa-Vpn-Path-DSCP", t)] == ["46"]
    t = tags["FA-GW"]
    label = next(a.path for a in session.spis if a.path.startswith("fa-gw:")).split("@")[0].encode()  # type: ignore[attr-defined]
    length = EspTransform.AES_CBC_128_HMAC_SHA256.keymat_length
    assert by_name[("Aaa-Vpn-Path-Key-In", t)] == shown(keys.derive_sa_key(srk, label, GW_DYN, FA, epoch, length))
    assert by_name[("Aaa-Vpn-Path-Remote-TS", t)] == [b"203.0.113.128/25"]
    # the Class the NAS copies into its accounting names the session
    assert any(name == "Class" for name, _, _ in attributes)


@pytest.mark.parametrize("section", ["authorize", "post-auth"])
def test_a_wrong_mn_aaa_proof_is_an_access_reject_with_its_reason(hosted: Hosted, section: str, tmp_path: Path) -> None:
    _, output = radclient(hosted, section, request_text(mn_secret=b"not-the-mn-aaa-secret"), tmp_path)
    text = output.decode(errors="replace")
    assert "Received Access-Reject" in text, f"{text}\n{fr_log(hosted)[-3000:]}"
    assert "Aaa-Vpn-Reject-Reason = Authentication-Failed" in text, text
    assert "Reply-Message" in text


def test_the_log_shows_no_secret(hosted: Hosted) -> None:
    log = fr_log(hosted)
    assert "aaa_vpn: hosted home AAA serving the database" in log, log[-2000:]
    for secret in (MN_SECRET.decode(), "fa1-shared-secret", "ha1-shared-secret"):
        assert secret not in log


def test_on_postgresql_beside_the_standalone_server(pg_url: str, tmp_path: Path) -> None:
    """One PostgreSQL database, two home AAAs: FreeRADIUS with the module creates
    the session, ``aaa-vpn serve home`` renews it (it names the session), and
    FreeRADIUS sees the renewal."""
    _freeradius_with_module()
    KEY_FILES[pg_url] = tmp_path / "vpn.key"
    try:
        provision(pg_url)
        with running(pg_url, KEY_FILES[pg_url], tmp_path) as server:
            code, output = radclient(server, "authorize", request_text(), tmp_path)
            assert code == 0 and b"Received Access-Accept" in output, output.decode(errors="replace")
            session_id = {n: v for n, _, v in parse_reply(output)}["Aaa-Vpn-Session-Id"]
            assert isinstance(session_id, bytes)
            created = session_of(server, session_id.decode())
            log = tmp_path / "home.log"
            home = start_server(pg_url, 0, 1, log)
            try:
                port = served_port(home, log)
                wait_until_serving(("127.0.0.1", port), SECRET)
                request = access_request(
                    SECRET, NAI, MN_SECRET, care_of=str(FA), home_agent=str(HA), session_id=session_id.decode()
                )
                answer = exchange(("127.0.0.1", port), request)
                assert answer.code == rc.ACCESS_ACCEPT, answer
            finally:
                assert stop(home) == 0, log.read_text()[-3000:]
            renewed = session_of(server, session_id.decode())
            assert renewed.epoch == created.epoch  # type: ignore[attr-defined]  # a renewal: same keys
            assert renewed.expires >= created.expires  # type: ignore[attr-defined]
            # and FreeRADIUS renews what the standalone server stored
            code, output = radclient(server, "post-auth", request_text(session_id=session_id.decode()), tmp_path)
            assert code == 0 and b"Received Access-Accept" in output, output.decode(errors="replace")
            assert {n: v for n, _, v in parse_reply(output)}["Aaa-Vpn-Session-Id"] == session_id
    finally:
        KEY_FILES.pop(pg_url, None)


# -- the bridge and the pair codec without FreeRADIUS ----------------------------------------------


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostedHome]:
    db = tmp_path_factory.mktemp("bridge") / "vpn.db"
    provision(db)
    store = open_store(db, db.with_name(db.name + ".key"))
    hosted = HostedHome(HomeService(store), PairCodec.from_dictionary(load_dictionary()))
    try:
        yield hosted
    finally:
        hosted.service.close()


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """radclient's request format as rlm_python3 prints the pairs (octets 0x.., strings bare)."""
    pairs = []
    for line in text.strip().splitlines():
        name, _, value = line.partition(" = ")
        pairs.append((name, value.strip('"')))
    return tuple(pairs)


def test_bridge_answers_each_request_of_a_batch(bridge: HostedHome) -> None:
    good = HostedRequest(_pairs(request_text()), str(FA))
    bad_proof = HostedRequest(_pairs(request_text(mn_secret=b"wrong-mn-aaa-secret")), str(FA))
    accept, reject = bridge.decide([good, bad_proof], 1_000.0)
    assert accept.code == RLM_MODULE_UPDATED and accept.config == (ACCEPT,), accept
    assert accept.reply[0] == SIGN_REPLY
    assert ("Aaa-Vpn-Path-Role:1", "1") in accept.reply or ("Aaa-Vpn-Path-Role:2", "1") in accept.reply
    assert (
        reject.code == RLM_MODULE_REJECT
        and ("Aaa-Vpn-Reject-Reason", str(int(RejectReason.AUTHENTICATION_FAILED))) in reject.reply
    ), reject
    post = bridge.decide([HostedRequest(good.pairs, str(FA), "post-auth")], 1_001.0)[0]
    assert post.code == RLM_MODULE_UPDATED and post.config == ()  # FreeRADIUS's own Auth-Type stands


def test_bridge_answers_the_ha_with_its_view_of_the_session_the_fa_made(bridge: HostedHome) -> None:
    (fa,) = bridge.decide([HostedRequest(_pairs(request_text(nai="mn2@home.example")), str(FA))], 2_000.0)
    session_id = dict(fa.reply)["Aaa-Vpn-Session-Id"]
    ha_request = request_text(nai="mn2@home.example", nas=HA, request_type="HA-Registration", session_id=session_id)
    (ha,) = bridge.decide([HostedRequest(_pairs(ha_request), str(HA))], 2_001.0)
    assert ha.code == RLM_MODULE_UPDATED, ha
    reply = dict(ha.reply)
    assert reply["Aaa-Vpn-Session-Id"] == session_id
    assert "Aaa-Vpn-Session-Root-Key" in reply  # the HA (only) gets the session root key (docs/design.md section 3)
    assert "Aaa-Vpn-Session-Root-Key" not in dict(fa.reply)


def test_a_store_that_cannot_write_in_time_means_no_reply(tmp_path: Path) -> None:
    """Bridge rule 4: the write did not get the database's lock within the busy
    timeout; FreeRADIUS is told not to answer, so the retransmission is decided anew."""
    db = tmp_path / "vpn.db"
    provision(db)
    store = open_store(db, db.with_name(db.name + ".key"), busy_timeout_ms=50)
    hosted = HostedHome(HomeService(store), PairCodec.from_dictionary(load_dictionary()))
    blocker = sqlite3.connect(db)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        (answer,) = hosted.decide([HostedRequest(_pairs(request_text()), str(FA))], 1_000.0)
        assert (answer.code, answer.config, answer.outcome) == (RLM_MODULE_HANDLED, (DO_NOT_RESPOND,), "no-answer")
        blocker.rollback()
        (answer,) = hosted.decide([HostedRequest(_pairs(request_text()), str(FA))], 1_001.0)
        assert answer.code == RLM_MODULE_UPDATED, answer
    finally:
        blocker.close()
        hosted.service.close()


def test_bridge_fails_a_request_without_a_client_it_knows(bridge: HostedHome) -> None:
    pairs = _pairs(request_text())
    no_client, unknown = bridge.decide([HostedRequest(pairs, ""), HostedRequest(pairs, "192.0.2.99")], 1_000.0)
    assert (no_client.code, no_client.outcome) == (RLM_MODULE_FAIL, "no-client")
    assert (unknown.code, unknown.outcome) == (RLM_MODULE_FAIL, "unknown-client")
    assert bridge.counters["freeradius.unknown_client"] >= 1


def test_bridge_rejects_a_pair_it_cannot_convert(bridge: HostedHome) -> None:
    pairs = (*_pairs(request_text()), ("Aaa-Vpn-Home-Agent", "not-an-address"))
    (answer,) = bridge.decide([HostedRequest(pairs, str(FA))], 1_000.0)
    assert answer.code == RLM_MODULE_REJECT
    assert ("Aaa-Vpn-Reject-Reason", str(int(RejectReason.BAD_REQUEST))) in answer.reply, answer
    assert any(name == "Reply-Message" and "not an IPv4 address" in value for name, value in answer.reply)


def test_escaped_strings_reach_the_wire_exactly() -> None:
    for value in (b"", b"plain", b"back\\slash", bytes(range(256))):
        assert unescape_printed(escape_string(value).replace("\\\\", "\\134")) == value


def test_attributes_freeradius_defines_in_clear_are_the_ones_left_encrypted() -> None:
    """PLAIN_IN_FREERADIUS: salt-encrypted in our dictionaries, plain in FreeRADIUS's."""
    ours = {d.name for d in PairCodec.from_dictionary(load_dictionary()).by_name.values() if d.encrypt == 2}
    encrypted_there: set[str] = set()
    for path in Path("/usr/share/freeradius").glob("dictionary*"):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0] == "ATTRIBUTE" and "encrypt=2" in parts[4]:
                encrypted_there.add(parts[1])
    vendor = rc.dictionary_dir() / "dictionary.aaa_vpn"
    for line in vendor.read_text().splitlines():  # our vendor file is FreeRADIUS's too (it is $INCLUDEd)
        parts = line.split()
        if len(parts) >= 5 and parts[0] == "ATTRIBUTE" and "encrypt=2" in parts[4]:
            encrypted_there.add(parts[1])
    if not encrypted_there:
        pytest.skip("FreeRADIUS's dictionaries are not installed")
    assert ours - encrypted_there == set(PLAIN_IN_FREERADIUS), sys.version


def test_the_database_location_is_logged_without_its_password() -> None:
    from aaa_vpn.freeradius.module import _redacted

    assert _redacted("/var/lib/aaa_vpn/vpn.db") == "/var/lib/aaa_vpn/vpn.db"
    assert "pw" not in _redacted("postgresql://aaa:pw@db.example/vpn")
    assert "pw" not in _redacted("postgresql://db.example/vpn?password=pw")
