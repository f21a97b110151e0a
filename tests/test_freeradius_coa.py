"""FreeRADIUS 3.2 as the Dynamic Authorization server (RFC 5176) of an FA and
an HA: ``aaa-vpn session push`` and ``aaa-vpn session disconnect`` complete
against it, and what it decoded -- with its own dictionaries only, as a
third-party NAS would -- is what the database holds.

Topology, all on loopback:

* the database: a temporary SQLite file; FA ``fa1`` = 127.0.0.61 of the
  ``3gpp2`` flavour (its pre-shared-secret encoding a parameter), HA ``ha1`` =
  127.0.0.62 of the ``rfc2868`` flavour that requires a Message-Authenticator
  in its CoA answers, a dynamic gateway 127.0.0.70 (so the HA's view holds a
  tunnel it only relays), an IKEv2 service, one user;
* the session: made by the home AAA's service layer (service/home.py, the
  same code ``serve home`` runs) from an FA's Access-Request that carries the
  identification attributes a PDSN sends (NAS-IP-Address, NAS-Identifier,
  Calling-Station-Id, Acct-Session-Id), and an HA's;
* FreeRADIUS: ``freeradius -f`` from a private raddb (tests/freeradius.py)
  whose ``dictionary`` is empty -- FreeRADIUS's own dictionaries only --
  with two ``listen { type = coa }`` sections, one per agent address, each
  with its own client list (the home AAA at 127.0.0.1 with that agent's
  secret); ``recv-coa`` writes every request to a ``detail`` file and
  answers ACK. The HA's server adds a Message-Authenticator to its answers
  (``update reply { Message-Authenticator := 0x00 }``), which FreeRADIUS
  signs its own way (over 16 zero octets: aaa_vpn/wire/coa.py);
* ``aaa-vpn --json session push|disconnect`` run as commands.

Every process started here is stopped by its PID; the temporary directory is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

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
from aaa_vpn.store import SqlStore, init_store, open_store
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import PathRole, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import threegpp2_key_id
from aaa_vpn.wire.radius_request import AccessRequest, encode_access_request

from . import freeradius
from .conftest import _require_tool
from .radius_client import PRECEDING, probed_udp_port
from .test_dictionaries_interop import as_freeradius_prints
from .test_home_server import cli

pytestmark = [pytest.mark.interop, pytest.mark.integration]

NAI = "mn1@home.example"
FA = IPv4Address("127.0.0.61")
HA = IPv4Address("127.0.0.62")
GW = IPv4Address("127.0.0.70")
HOME_ADDRESS = IPv4Address("198.51.100.10")
FA_SECRET = b"fa1-coa-shared-secret"
HA_SECRET = b"ha1-coa-shared-secret"
MN_AAA = Secret(b"mn1-aaa-secret")
#: What the PDSN sends besides NAS-IP-Address: the identification attributes of RFC 5176 section 3.
PDSN_IDENTIFICATION = (
    (rc.Attr.NAS_IDENTIFIER, b"pdsn-61"),
    (rc.Attr.CALLING_STATION_ID, b"310150123456789"),
    (rc.Attr.ACCT_SESSION_ID, b"0A0B0C0D"),
)


def _provision(store: SqlStore, coa_port: int, encoding: PskEncoding) -> None:
    store.add_client(
        Client(
            "fa1",
            IPv4Network(f"{FA}/32"),
            Secret(FA_SECRET),
            ClientRole.FA,
            coa_port=coa_port,
            flavour=Flavour.THREEGPP2,
            psk_encoding=encoding,
        )
    )
    store.add_client(
        Client(
            "ha1",
            IPv4Network(f"{HA}/32"),
            Secret(HA_SECRET),
            ClientRole.HA,
            coa_port=coa_port,
            flavour=Flavour.RFC2868,
            require_coa_message_authenticator=True,
        )
    )
    store.add_gateway(Gateway("gw-d", GW, GatewayMode.DYNAMIC, (IPv4Network("203.0.113.128/25"),), Secret(b"g" * 32)))
    store.add_service(Service("gold", key_mode=KeyMode.IKEV2, esp_transform=EspTransform.AES_GCM_16_256))
    store.add_user(User(NAI, HA, MN_AAA, 256, Secret(bytes(range(16))), home_address=HOME_ADDRESS))
    store.add_vpn_record(VpnRecord(NAI, IPv4Network("203.0.113.128/25"), "gw-d", "gold"))


def _register(store: SqlStore) -> Session:
    """The FA's and the HA's Access-Requests, answered by the home AAA's service layer."""
    service = HomeService(store)
    now = time.time()
    for node, secret, fields in (
        (
            FA,
            FA_SECRET,
            {
                "care_of_address": FA,
                "extra": tuple(rc.attribute(code, value) for code, value in PDSN_IDENTIFICATION),
            },
        ),
        (HA, HA_SECRET, {"request_type": RequestType.HA_REGISTRATION, "nas_identifier": "ha-62"}),
    ):
        chap_password, chap_challenge = mn_aaa_chap_attributes(os.urandom(16), PRECEDING, MN_AAA)
        request = AccessRequest(
            nai=NAI,
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=node,
            **fields,  # type: ignore[arg-type]
        )
        raw = encode_access_request(request, 1, os.urandom(16), secret)
        reply = service.handle(raw, (str(node), 40000), now)
        assert reply is not None and reply[0] == rc.ACCESS_ACCEPT, reply
    (session,) = store.find_sessions(NAI)
    service.close()  # closes the store too
    return session


def _raddb_body(base: Path, port: int) -> str:
    sections = []
    for name, address, secret, extra in (
        ("fa", FA, FA_SECRET, ""),
        # FreeRADIUS adds a Message-Authenticator when the reply has one (its rad_sign computes it)
        ("ha", HA, HA_SECRET, "        update reply {\n            Message-Authenticator := 0x00\n        }\n"),
    ):
        sections.append(
            f"""\
clients coa_{name} {{
    client home-aaa {{
        ipaddr = 127.0.0.1
        secret = {secret.decode()}
    }}
}}
server coa_{name} {{
    listen {{
        type = coa
        ipaddr = {address}
        port = {port}
        clients = coa_{name}
    }}
    recv-coa {{
        {name}_detail
{extra}        ok
    }}
    send-coa {{
        ok
    }}
}}
"""
        )
    modules = "".join(
        f"    detail {name}_detail {{\n        filename = {base}/{name}.detail\n        permissions = 0600\n    }}\n"
        for name in ("fa", "ha")
    )
    modules += "    always ok {\n        rcode = ok\n    }\n"
    return "modules {\n" + modules + "}\n" + "".join(sections)


@dataclass
class Receiver:
    db: Path
    base: Path
    encoding: PskEncoding

    def requests(self, agent: str) -> list[dict[str, list[str]]]:
        """The requests FreeRADIUS wrote to the agent's detail file, in order:
        attribute name -> values as FreeRADIUS printed them (its dictionaries)."""
        path = self.base / f"{agent}.detail"
        if not path.exists():
            return []
        out: list[dict[str, list[str]]] = []
        for block in path.read_text(errors="replace").split("\n\n"):
            attributes: dict[str, list[str]] = {}
            for line in block.splitlines():
                found = re.match(r"^\t([A-Za-z0-9.:-]+) = (.*)$", line)
                if found:
                    attributes.setdefault(found.group(1), []).append(found.group(2))
            if attributes:
                out.append(attributes)
        return out


@pytest.fixture(params=list(PskEncoding), ids=lambda e: f"psk-{e.value}")
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    binary = _require_tool("freeradius")  # missing: skip, or fail under AAA_VPN_REQUIRE_TOOLS=1 (CI)
    encoding: PskEncoding = request.param
    db = tmp_path / "vpn.db"
    store, _ = init_store(db)
    process: subprocess.Popen[bytes] | None = None
    raddb: Path | None = None
    try:
        # FreeRADIUS can neither take a bound socket nor report its port: it is
        # told a probed one (the clients' coa_port too), and started again if taken.
        def configure(attempt: int) -> Path:
            port = probed_udp_port(str(FA))
            if attempt == 0:
                _provision(store, port, encoding)
            else:
                for name in ("fa1", "ha1"):
                    client = store.get_client(name)
                    store.update_client(Client(**{**client.__dict__, "coa_port": port}))
            written = freeradius.write_raddb(tmp_path / f"fr{attempt}", _raddb_body(tmp_path, port))
            (written / "dictionary").write_text("# FreeRADIUS's own dictionaries only\n")
            return written

        process, raddb = freeradius.start_on_probed_ports(binary, configure)
        store.close()
        yield Receiver(db, tmp_path, encoding)
    finally:
        store.close()
        if process is not None and process.poll() is None:  # stopped by its PID
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            log = freeradius.log_file(raddb) if raddb is not None else None
            text = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            assert process.returncode == 0, f"freeradius exited with {process.returncode}:\n{text}"
        shutil.rmtree(tmp_path / "fr0", ignore_errors=True)


def _unescape(printed: str) -> bytes:
    """A string value as FreeRADIUS 3 prints it (double quotes, C escapes,
    non-printable octets as three octal digits) back to its octets."""
    text = printed[1:-1] if printed.startswith('"') and printed.endswith('"') else printed
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        following = text[i + 1 : i + 4]
        if re.fullmatch(r"[0-7]{3}", following):
            out.append(int(following, 8))
            i += 4
        else:
            out += {"n": b"\n", "r": b"\r", "t": b"\t"}.get(text[i + 1], text[i + 1].encode())
            i += 2
    return bytes(out)


def _views(receiver: Receiver, session: Session) -> dict[str, VpnProfile]:
    """The FA's and the HA's views of ``session`` as the database derives them."""
    with open_store(receiver.db) as store:
        ctx = StoreProvisioning(store).user_context(NAI)
    assert ctx is not None
    paths = plan.plan_paths(ctx, session.home_address, session.home_agent, session.care_of_address)
    return {
        "fa": plan.view_for(session, paths, ClientRole.FA, RequestType.FA_REGISTRATION, FA, ctx.user, 60),
        "ha": plan.view_for(session, paths, ClientRole.HA, RequestType.HA_REGISTRATION, HA, ctx.user, 60),
    }


def _aaa_vpn(receiver: Receiver, *args: str) -> dict[str, object]:
    done = cli(receiver.db, "--json", "session", *args, "--timeout", "2", "--retries", "2", check=False)
    assert done.returncode == 0, f"aaa-vpn session {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _identification_as_sent(attributes: dict[str, list[str]], node: IPv4Address, nas_identifier: str) -> None:
    assert attributes["User-Name"] == [f'"{NAI}"']
    assert attributes["NAS-IP-Address"] == [str(node)]
    assert attributes["NAS-Identifier"] == [f'"{nas_identifier}"']


def test_push_and_disconnect_complete_with_freeradius_as_the_coa_server(receiver: Receiver) -> None:
    session = _register(open_store(receiver.db))
    # -- push: both agents ACK; FreeRADIUS decoded what the database holds at the new epoch
    pushed = _aaa_vpn(receiver, "push", session.session_id)
    assert pushed["acknowledged"] is True, pushed
    with open_store(receiver.db) as store:
        (after,) = store.find_sessions(NAI)
    assert after.epoch == session.epoch + 1
    views = _views(receiver, after)

    (fa,) = receiver.requests("fa")
    _identification_as_sent(fa, FA, "pdsn-61")
    assert fa["Calling-Station-Id"] == ['"310150123456789"'] and fa["Acct-Session-Id"] == ['"0A0B0C0D"']
    assert not any(name.startswith("Attr-26.32473") for name in fa), "no aaa-vpn attribute to a 3gpp2 client"
    fa_view = views["fa"]
    assert fa["3GPP2-Home-Agent-IP-Address"] == [str(HA)]
    assert fa["3GPP2-Security-Level"] in (["3"], ["IPsec-Tunnels-And-Registration"])
    fa_ha = next(p for p in fa_view.paths if p.role is PathRole.FA_HA)
    assert fa_ha.ike_psk is not None
    (printed_psk,) = fa["3GPP2-Pre-Shared-Secret"]
    if receiver.encoding is PskEncoding.PLAIN:
        # FreeRADIUS's dictionary: a plain string (printed without a last NUL)
        assert _unescape(printed_psk) == as_freeradius_prints(fa_ha.ike_psk.value)
    else:
        assert _unescape(printed_psk) != fa_ha.ike_psk.value  # salt-encrypted: opaque to it (StarOS decrypts)
    (printed_key_id,) = fa["3GPP2-KeyID"]
    assert _unescape(printed_key_id) == threegpp2_key_id(FA, HA, int(after.epoch_started))

    (ha,) = receiver.requests("ha")
    _identification_as_sent(ha, HA, "ha-62")
    assert not any(name.startswith("Attr-26") for name in ha), "no vendor attribute to an rfc2868 client"
    ha_view = views["ha"]
    for tag, path in enumerate(ha_view.paths, start=1):
        assert ha[f"Tunnel-Client-Endpoint:{tag}"] == [f'"{path.local}"']
        assert ha[f"Tunnel-Server-Endpoint:{tag}"] == [f'"{path.peer}"']
        relayed = path.local != HA
        role = {PathRole.FA_HA: "fa-ha", PathRole.FA_GW: "fa-gw", PathRole.HA_GW: "ha-gw"}[path.role]
        assert ha[f"Tunnel-Assignment-Id:{tag}"] == [f'"{"relay:" if relayed else ""}{role}"']
        if path.ike_psk is not None:  # FreeRADIUS decrypts Tunnel-Password (its dictionary: encrypt=2)
            assert _unescape(ha[f"Tunnel-Password:{tag}"][0]) == as_freeradius_prints(path.ike_psk.value)
    assert {p.local for p in ha_view.paths} == {HA, GW}  # the gateway's side is there, marked relayed

    # -- disconnect: both agents ACK; the session is gone
    disconnected = _aaa_vpn(receiver, "disconnect", session.session_id)
    assert disconnected["acknowledged"] is True and disconnected["deleted"] is True, disconnected
    fa_disconnect = receiver.requests("fa")[-1]
    _identification_as_sent(fa_disconnect, FA, "pdsn-61")
    assert fa_disconnect["Acct-Session-Id"] == ['"0A0B0C0D"']
    assert set(fa_disconnect) <= {
        "User-Name",
        "NAS-IP-Address",
        "NAS-Identifier",
        "Calling-Station-Id",
        "Acct-Session-Id",
        "Message-Authenticator",
        "Packet-Type",
        "Timestamp",
        "Packet-Src-IP-Address",
        "Packet-Dst-IP-Address",
        "Packet-Src-IP-Port",
        "Packet-Dst-IP-Port",
        "Packet-Original-Timestamp",
    }, fa_disconnect
    _identification_as_sent(receiver.requests("ha")[-1], HA, "ha-62")
    with open_store(receiver.db) as store:
        assert store.find_sessions(NAI) == []


def test_an_answer_without_the_required_message_authenticator_is_not_believed(receiver: Receiver) -> None:
    """The FA's server answers without a Message-Authenticator (FreeRADIUS's
    default): believed -- unless the client requires one, then the push
    reports no answer and exits 1."""
    session = _register(open_store(receiver.db))
    with open_store(receiver.db) as store:
        fa = store.get_client("fa1")
        store.update_client(Client(**{**fa.__dict__, "require_coa_message_authenticator": True}))
    done = cli(
        receiver.db, "--json", "session", "disconnect", session.session_id, "--keep", "--timeout", "0.3",
        "--retries", "1", check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    agents = {a["role"]: a for a in json.loads(done.stdout)["agents"]}
    assert agents["ha"]["acknowledged"] is True  # FreeRADIUS signs the HA's answers
    assert agents["fa"]["acknowledged"] is False and "no answer" in agents["fa"]["error"], agents
    # FreeRADIUS handled it (once; the retransmission it answered from its
    # duplicate cache) and answered: only not in a way this client accepts
    assert [r["Packet-Type"] for r in receiver.requests("fa")] == [["Disconnect-Request"]]
