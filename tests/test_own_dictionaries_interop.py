"""Interop: every flavour's Access-Accept as third-party tools read it with
their *own* dictionaries -- FreeRADIUS's (/usr/share/freeradius/dictionary*,
through radclient's output) and tshark's (/usr/share/wireshark/radius) -- each
value compared with what the database holds. No project dictionary is
loaded: radclient gets an empty local dictionary directory, tshark an empty
configuration directory.

The answers come from the home AAA's service layer (service/home.py, the
code ``serve home`` runs) on a real SQLite database, behind a small UDP
responder on 127.0.0.1: radclient sends the FA's (or HA's) Access-Request,
the service answers. One RADIUS client (127.0.0.0/24) stands for the NAS;
the NAS-IP-Address of each request says which node it is (roles/home_aaa.py
rule 5), and the client's flavour changes between requests. tshark then
reads each request and reply from a pcap written here.

What each flavour must show (docs/radius-attributes.md):

* ``aaa-vpn``: to tools without our dictionary, vendor 32473 attributes as
  unknown ones (radclient ``Attr-26.32473.N``, tshark ``radius.avp``),
  their raw values the session's; Class and Session-Timeout by name;
* ``rfc2868``: Tunnel-* with Tunnel-Password decrypted by radclient (its
  ``encrypt=2``), and, in the HA's view, the gateway's relayed tunnel
  marked ``relay:fa-gw``;
* ``3gpp2``: the HA address, MN-HA SPI and key, Security-Level, 3GPP2-KeyID
  and the pre-shared secret -- plain (shown as the secret) or salt-encrypted
  (shown as ciphertext: the reason the encoding is per client).

Skipped if a tool is missing, failed under ``AAA_VPN_REQUIRE_TOOLS=1``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from xml.etree import ElementTree

import pytest

from aaa_vpn.model import (
    Client,
    ClientRole,
    EspTransform,
    Flavour,
    Gateway,
    GatewayMode,
    KeyMode,
    PskEncoding,
    Service,
    Session,
    User,
    VpnRecord,
)
from aaa_vpn.roles import home_plan as plan
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService, StoreProvisioning
from aaa_vpn.store import SqlStore, init_store
from aaa_vpn.wire.profile import PathRole, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import threegpp2_key_id

from .radius_client import PRECEDING
from .test_dictionaries_interop import Exchange, parse_reply, rfc2868_decrypt, tshark_fields, write_pcap

pytestmark = [pytest.mark.interop]

NAI = "mn1@home.example"
FA = IPv4Address("127.0.0.81")
HA = IPv4Address("127.0.0.85")
GW = IPv4Address("127.0.0.70")
HOME_ADDRESS = IPv4Address("198.51.100.10")
SECRET = b"own-dictionaries-secret"
MN_AAA = Secret(b"mn1-aaa-secret")
TIMEOUT = 20.0
#: FreeRADIUS's own dictionaries (freeradius-common).
FREERADIUS_DICTIONARIES = Path("/usr/share/freeradius")
ROLE_NAMES = {PathRole.FA_HA: "fa-ha", PathRole.FA_GW: "fa-gw", PathRole.HA_GW: "ha-gw"}


@dataclass
class Home:
    store: SqlStore
    service: HomeService
    sock: socket.socket

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def answer_one(self) -> Exchange:
        """Receive one request, answer it with the service layer (in this thread)."""
        data, address = self.sock.recvfrom(4096)
        reply = self.service.handle(data, address, time.time())
        if reply is not None:
            self.sock.sendto(reply, address)
        return Exchange(data, reply or b"")


def _provision(store: SqlStore) -> None:
    store.add_client(Client("nas", IPv4Network("127.0.0.0/24"), Secret(SECRET), ClientRole.FA))
    store.add_gateway(Gateway("gw-d", GW, GatewayMode.DYNAMIC, (IPv4Network("203.0.113.128/25"),), Secret(b"g" * 32)))
    store.add_service(Service("gold", key_mode=KeyMode.IKEV2, esp_transform=EspTransform.AES_GCM_16_256))
    store.add_user(User(NAI, HA, MN_AAA, 256, Secret(bytes(range(16))), home_address=HOME_ADDRESS))
    store.add_vpn_record(VpnRecord(NAI, IPv4Network("203.0.113.128/25"), "gw-d", "gold"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    db = tmp_path_factory.mktemp("own-dictionaries") / "vpn.db"
    store, _ = init_store(db)
    _provision(store)
    service = HomeService(store)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(TIMEOUT)
        try:
            yield Home(store, service, sock)
        finally:
            service.close()


def _set_client(home: Home, role: ClientRole, flavour: Flavour, encoding: PskEncoding = PskEncoding.SALT) -> None:
    client = home.store.get_client("nas")
    home.store.update_client(replace(client, role=role, flavour=flavour, psk_encoding=encoding))


def _radclient(home: Home, tmp_path: Path, radclient: str, lines: list[str]) -> tuple[bytes, Exchange]:
    """radclient with FreeRADIUS's own dictionaries only; its output and the exchange."""
    # radclient 3.2 re-encodes a 17-octet CHAP-Password whose octets are all >= 32
    # as a cleartext password: draw until one is below 32 (tests/test_home_interop.py).
    while True:
        chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, MN_AAA)
        if min(chap_password) < 32:
            break
    request = tmp_path / "request.txt"
    request.write_text(
        "\n".join(
            [
                f'User-Name = "{NAI}"',
                f"CHAP-Password = 0x{chap_password.hex()}",
                f"CHAP-Challenge = 0x{chap_challenge.hex()}",
                *lines,
                "Message-Authenticator = 0x00",
                "",
            ]
        )
    )
    local = tmp_path / "raddb"
    local.mkdir(exist_ok=True)
    (local / "dictionary").write_text("# nothing of the project's\n")
    args = [radclient, "-x", "-D", str(FREERADIUS_DICTIONARIES), "-d", str(local), "-f", str(request)]
    args += ["-r", "1", "-t", "10", f"127.0.0.1:{home.port}", "auth", SECRET.decode()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        exchange = home.answer_one()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:  # stop what we started, by its PID
            proc.kill()
            proc.wait()
    # exit 0: radclient checked the Response Authenticator and the Message-Authenticator
    assert proc.returncode == 0, (out + err).decode(errors="replace")
    return out, exchange


def _by_name(output: bytes) -> dict[tuple[str, int], list[str | bytes]]:
    out: dict[tuple[str, int], list[str | bytes]] = {}
    for name, tag, value in parse_reply(output):
        out.setdefault((name, tag), []).append(value)
    return out


def _session(home: Home) -> Session:
    (session,) = home.store.find_sessions(NAI)
    return session


def _view(home: Home, role: ClientRole) -> VpnProfile:
    """What the database says ``role`` is sent for the live session."""
    session = _session(home)
    ctx = StoreProvisioning(home.store).user_context(NAI)
    assert ctx is not None
    paths = plan.plan_paths(ctx, session.home_address, session.home_agent, session.care_of_address)
    if role is ClientRole.FA:
        return plan.view_for(session, paths, role, RequestType.FA_REGISTRATION, FA, ctx.user, 0)
    return plan.view_for(session, paths, role, RequestType.HA_REGISTRATION, HA, ctx.user, 0)


def _tshark(tshark: str, tmp_path: Path, exchange: Exchange, fields: list[str]) -> dict[str, list[str]]:
    config = tmp_path / "wireshark"  # empty: tshark's own dictionaries only
    config.mkdir(exist_ok=True)
    pcap = tmp_path / "exchange.pcap"
    write_pcap(pcap, exchange)
    return tshark_fields(tshark, config, pcap, fields)


def _tshark_pdml(tshark: str, tmp_path: Path, exchange: Exchange) -> dict[str, list[bytes]]:
    """Every field of the Access-Accept as tshark decodes it with its own
    dictionaries: name -> the octets it covers (PDML ``value``), in order."""
    config = tmp_path / "wireshark"  # empty: tshark's own dictionaries only
    config.mkdir(exist_ok=True)
    write_pcap(tmp_path / "exchange.pcap", exchange)
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config))
    args = [tshark, "-n", "-r", str(tmp_path / "exchange.pcap"), "-T", "pdml", "-Y", "radius.code == 2"]
    done = subprocess.run(args, capture_output=True, env=env, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out: dict[str, list[bytes]] = {}
    for element in ElementTree.fromstring(done.stdout).iter("field"):
        name, value = element.get("name", ""), element.get("value")
        if name.startswith("radius.") and value is not None and "." not in name[len("radius.") :]:
            out.setdefault(name, []).append(bytes.fromhex(value))
    return out


def _tshark_verbose(tshark: str, tmp_path: Path) -> str:
    """tshark -V of the pcap :func:`_tshark` wrote, with its own dictionaries."""
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(tmp_path / "wireshark"))
    args = [tshark, "-n", "-r", str(tmp_path / "exchange.pcap"), "-V", "-Y", "radius.code == 2"]
    done = subprocess.run(args, capture_output=True, env=env, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode(errors="replace")


def _tshark_bytes(shown: str) -> bytes:
    """A byte string as tshark shows an FT_BYTES field: hex, maybe with colons."""
    return bytes.fromhex(shown.replace(":", ""))


def _class_of(session: Session) -> bytes:
    return b"aaa-vpn:" + session.session_id.encode()


def _fa_registration(home: Home, tmp_path: Path, radclient: str) -> tuple[bytes, Exchange]:
    return _radclient(home, tmp_path, radclient, [f"NAS-IP-Address = {FA}"])


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(PskEncoding), ids=lambda e: f"psk-{e.value}")
def test_3gpp2_flavour(home: Home, tmp_path: Path, require_tool: Callable[[str], str], encoding: PskEncoding) -> None:
    radclient, tshark = require_tool("radclient"), require_tool("tshark")
    _set_client(home, ClientRole.FA, Flavour.THREEGPP2, encoding)
    output, exchange = _fa_registration(home, tmp_path, radclient)
    session, view = _session(home), _view(home, ClientRole.FA)
    fa_ha = next(p for p in view.paths if p.role is PathRole.FA_HA)
    assert fa_ha.ike_psk is not None
    key_id = threegpp2_key_id(FA, HA, int(session.epoch_started))
    psk = fa_ha.ike_psk.value

    got = _by_name(output)
    assert got[("3GPP2-Home-Agent-IP-Address", 0)] == [str(HA)]
    if view.mn_ha_key is not None:  # the FA's view has none (docs/design.md section 3); an HA's has
        assert got[("3GPP2-MN-HA-SPI", 0)] == [str(view.mn_ha_spi)]
        assert got[("3GPP2-MN-HA-Shared-Key", 0)] == [view.mn_ha_key.value]  # its dictionary: encrypt=2
    else:
        assert ("3GPP2-MN-HA-SPI", 0) not in got and ("3GPP2-MN-HA-Shared-Key", 0) not in got
    assert got[("3GPP2-Security-Level", 0)] in (["3"], ["IPsec-Tunnels-And-Registration"])
    assert got[("3GPP2-KeyID", 0)] == [key_id]
    (shown_psk,) = got[("3GPP2-Pre-Shared-Secret", 0)]
    if encoding is PskEncoding.PLAIN:
        assert shown_psk == psk
    else:  # its dictionary has no encrypt flag: it shows salt || ciphertext, which decrypts to the secret
        assert isinstance(shown_psk, bytes) and shown_psk != psk
        assert rfc2868_decrypt(SECRET, exchange.request[4:20], shown_psk) == psk
    assert got[("Class", 0)] == [_class_of(session)]
    assert int(str(got[("Session-Timeout", 0)][0])) > 0

    # tshark: the exact octets of every field (PDML), and its own rendering (-V)
    shown = _tshark_pdml(tshark, tmp_path, exchange)
    assert shown["radius.3GPP2_Home_Agent_IP_Address"] == [HA.packed]
    if view.mn_ha_key is not None:
        assert shown["radius.3GPP2_MN_HA_SPI"] == [view.mn_ha_spi.to_bytes(4, "big")]
        (mn_ha_key,) = shown["radius.3GPP2_MN_HA_Shared_Key_encrypted"]
        assert rfc2868_decrypt(SECRET, exchange.request[4:20], mn_ha_key) == view.mn_ha_key.value
    else:
        assert "radius.3GPP2_MN_HA_SPI" not in shown and "radius.3GPP2_MN_HA_Shared_Key_encrypted" not in shown
    # tshark 4.0's dictionary.3gpp2 lets the TLV member "AT-hardware-identifier-value" (2)
    # of 3GPP2-AT-Hardware-Identifier shadow 3GPP2-Security-Level (2): the value is there,
    # under that name
    assert shown["radius.AT_hardware_identifier_value"] == [(3).to_bytes(4, "big")]
    assert shown["radius.3GPP2_KeyID"] == [key_id]
    (shown_psk,) = shown["radius.3GPP2_Pre_Shared_Secret"]
    if encoding is PskEncoding.PLAIN:
        assert shown_psk == psk
    else:
        assert shown_psk != psk and rfc2868_decrypt(SECRET, exchange.request[4:20], shown_psk) == psk
    assert shown["radius.Class"] == [_class_of(session)]
    verbose = _tshark_verbose(tshark, tmp_path)
    assert "3GPP2-KeyID: " + key_id[:16].decode() in verbose and "Malformed" not in verbose


def test_rfc2868_flavour_fa_and_ha(home: Home, tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    radclient, tshark = require_tool("radclient"), require_tool("tshark")
    _set_client(home, ClientRole.FA, Flavour.RFC2868)
    _fa_registration(home, tmp_path, radclient)
    # the HA asks naming the FA with 3GPP2-Foreign-Agent-Address, the attribute its dictionary has
    _set_client(home, ClientRole.HA, Flavour.RFC2868)
    output, exchange = _radclient(
        home, tmp_path, radclient, [f"NAS-IP-Address = {HA}", f"3GPP2-Foreign-Agent-Address = {FA}"]
    )
    session, view = _session(home), _view(home, ClientRole.HA)
    got = _by_name(output)
    for tag, path in enumerate(view.paths, start=1):
        relayed = path.local != HA
        assignment = ("relay:" if relayed else "") + ROLE_NAMES[path.role]
        assert got[("Tunnel-Type", tag)] == ["ESP"]
        assert got[("Tunnel-Medium-Type", tag)] == ["IPv4"]
        assert got[("Tunnel-Client-Endpoint", tag)] == [str(path.local).encode()]
        assert got[("Tunnel-Server-Endpoint", tag)] == [str(path.peer).encode()]
        assert got[("Tunnel-Assignment-Id", tag)] == [assignment.encode()]
        assert got[("Tunnel-Preference", tag)] == [str(tag)]
        if path.ike_psk is not None:
            assert got[("Tunnel-Password", tag)] == [path.ike_psk.value]  # decrypted: encrypt=2
    assert {str(path.local) for path in view.paths} == {str(HA), str(GW)}  # one of them relayed
    assert got[("Class", 0)] == [_class_of(session)]

    fields = ["radius.Tunnel_Client_Endpoint", "radius.Tunnel_Assignment_Id", "radius.Tunnel_Type", "radius.Class"]
    shown = _tshark(tshark, tmp_path, exchange, fields)
    assert shown["radius.Tunnel_Client_Endpoint"] == [str(p.local) for p in view.paths]
    assert shown["radius.Tunnel_Assignment_Id"] == [
        ("relay:" if p.local != HA else "") + ROLE_NAMES[p.role] for p in view.paths
    ]
    assert shown["radius.Tunnel_Type"] == ["9"] * len(view.paths)
    assert _tshark_bytes(shown["radius.Class"][0]) == _class_of(session)


def test_aaa_vpn_flavour_is_readable_as_unknown_vendor_attributes(
    home: Home, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    radclient, tshark = require_tool("radclient"), require_tool("tshark")
    _set_client(home, ClientRole.FA, Flavour.AAA_VPN)
    output, exchange = _fa_registration(home, tmp_path, radclient)
    session, view = _session(home), _view(home, ClientRole.FA)
    got = _by_name(output)
    expected = {
        1: session.session_id.encode(),  # Aaa-Vpn-Session-Id
        3: HOME_ADDRESS.packed,  # Home-Address
        4: HA.packed,  # Home-Agent
        5: FA.packed,  # Care-Of-Address
        8: session.epoch.to_bytes(4, "big"),  # Key-Epoch
    }
    assert view.fa_ha_spi is not None and view.fa_ha_key is not None
    expected[12] = view.fa_ha_spi.to_bytes(4, "big")  # FA-HA-SPI
    for vendor_type, value in expected.items():
        assert got[(f"Attr-26.32473.{vendor_type}", 0)] == [value], vendor_type
    # salt-encrypted values stay opaque to it: the FA-HA key, salt || ciphertext
    (hidden,) = got[("Attr-26.32473.13", 0)]
    assert isinstance(hidden, bytes) and view.fa_ha_key.value not in hidden
    assert rfc2868_decrypt(SECRET, exchange.request[4:20], hidden) == view.fa_ha_key.value
    assert ("Attr-26.32473.7", 0) not in got  # no session root key for an FA
    assert got[("Class", 0)] == [_class_of(session)]

    fields = ["radius.avp.vendor_id", "radius.avp.vendor_type", "radius.Class"]
    shown = _tshark(tshark, tmp_path, exchange, fields)
    ids, types = shown["radius.avp.vendor_id"], shown["radius.avp.vendor_type"]
    vendor_types = {int(t) for t in types}
    assert set(expected) <= vendor_types, shown
    assert set(ids) == {"32473"} and len(ids) == len(types)
    assert _tshark_bytes(shown["radius.Class"][0]) == _class_of(session)
    assert not re.search(r"[Mm]alformed", str(shown))
