"""Interop: our dictionaries and profile encodings, read by independent decoders.

* radclient (FreeRADIUS 3.2.1) is the RADIUS client: it sends an
  Access-Request from a file to a tiny responder on 127.0.0.1 that answers
  with a pyrad-built Access-Accept (Message-Authenticator first, then the
  output of ``encode_profile``). radclient verifies the Response
  Authenticator and the Message-Authenticator (rc 0 only if both hold),
  decrypts every ``encrypt=2`` attribute it knows, and prints the reply; every
  printed value is checked here, including multi-block keys.
* tshark reads the same request and reply from a pcap with
  ``WIRESHARK_CONFIG_DIR`` made by ``prepare_tool_dir``; every field is
  checked, tags included. tshark does not decrypt salt-encrypted values, so
  their ``salt || ciphertext`` is decrypted here with an implementation of
  RFC 2868 section 3.5 written in this file.

Skipped if the tools are missing, failed under ``AAA_VPN_REQUIRE_TOOLS=1``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pyrad.packet
import pytest

from aaa_vpn.model import EspTransform, Flavour, GatewayMode, KeyMode
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import PathProfile, PathRole, QosSpec, VpnProfile
from aaa_vpn.wire.radius import load_dictionary, prepare_tool_dir
from aaa_vpn.wire.radius_profile import encode_profile

pytestmark = pytest.mark.interop

SECRET = "interop-secret-1"
TIMEOUT = 20.0

# Keys chosen to exercise radclient's escaping: NUL, quote, backslash, CR/LF/TAB,
# a valid UTF-8 sequence (printed raw), 0xff and DEL (printed in octal).
KEY32 = b'\x00"\\\n\r\t\xc3\xa9\xff\x7f' + bytes(range(200, 222))
KEY64 = hashlib.sha512(b"aaa_vpn interop key-out").digest()
PSK32 = hashlib.sha256(b"aaa_vpn interop psk").digest()
assert (len(KEY32), len(KEY64), len(PSK32)) == (32, 64, 32)

PROFILE = VpnProfile(
    session_id="sess-0001@home.example",
    home_address=IPv4Address("198.51.100.10"),
    home_agent=IPv4Address("192.0.2.2"),
    care_of_address=IPv4Address("192.0.2.1"),
    lifetime=1800,
    epoch=7,
    paths=(
        PathProfile(
            role=PathRole.FA_HA,
            local=IPv4Address("192.0.2.1"),
            peer=IPv4Address("192.0.2.2"),
            local_ts=(IPv4Network("198.51.100.10/32"),),
            remote_ts=(IPv4Network("203.0.113.0/24"), IPv4Network("203.0.114.0/24")),
            key_mode=KeyMode.IKEV2,
            esp_transform=EspTransform.AES_GCM_16_256,
            spi_in=0x1001,
            spi_out=0x1002,
            key_in=Secret(KEY32),
            key_out=Secret(KEY64),
            lifetime=3600,
            ike_proposal="aes256gcm16-prfsha256-x25519",
            ike_psk=Secret(PSK32),
            qos=QosSpec("gold", 46, 10000),
        ),
        PathProfile(
            role=PathRole.FA_GW,
            local=IPv4Address("192.0.2.1"),
            peer=IPv4Address("192.0.2.3"),
            local_ts=(IPv4Network("198.51.100.10/32"),),
            remote_ts=(IPv4Network("203.0.113.0/24"),),
            key_mode=KeyMode.MANUAL,
            esp_transform=EspTransform.AES_CBC_128_HMAC_SHA256,
            spi_in=0x2001,
            spi_out=0xFFFFFF,
            key_in=Secret(KEY64),
            key_out=Secret(KEY32),
            lifetime=7200,
            gateway_mode=GatewayMode.DYNAMIC,
        ),
    ),
    mn_ha_spi=0x100,
    mn_ha_key=Secret(KEY32),
    fa_ha_spi=0x101,
    fa_ha_key=Secret(bytes(16)),
    session_root_key=Secret(KEY64),
)


def rfc2868_decrypt(secret: bytes, ra: bytes, data: bytes) -> bytes:
    """RFC 2868 section 3.5 decryption, from the RFC text (no project code)."""
    salt, c = data[:2], data[2:]
    assert salt[0] & 0x80, f"salt {salt.hex()} without its MSB"
    assert c and len(c) % 16 == 0, f"ciphertext of {len(c)} octets"
    p = b""
    for i in range(0, len(c), 16):
        b = hashlib.md5(secret + (ra + salt if i == 0 else c[i - 16 : i])).digest()
        p += bytes(x ^ y for x, y in zip(c[i : i + 16], b, strict=True))
    return p[1 : 1 + p[0]]


# --- a one-shot responder -------------------------------------------------------------------


@dataclass
class Exchange:
    request: bytes = b""
    reply: bytes = b""
    errors: list[BaseException] = field(default_factory=list)


def serve_one(sock: socket.socket, flavour: Flavour, exchange: Exchange) -> None:
    try:
        data, address = sock.recvfrom(4096)
        request = pyrad.packet.AuthPacket(packet=data, secret=SECRET.encode(), dict=load_dictionary())
        reply = request.CreateReply()
        reply.code = pyrad.packet.AccessAccept
        reply.add_message_authenticator()  # first attribute
        for raw in encode_profile(PROFILE, flavour, SECRET.encode(), request.authenticator):
            # raw attributes go in by code; pyrad writes them as type|len|value
            OrderedDict.setdefault(reply, raw[0], []).append(raw[2:])
        exchange.request, exchange.reply = data, reply.ReplyPacket()
        sock.sendto(exchange.reply, address)
    except Exception as exc:
        exchange.errors.append(exc)


def run_radclient(radclient: str, tooldir: Path, tmp_path: Path, flavour: Flavour) -> tuple[Exchange, bytes]:
    request_file = tmp_path / "request.txt"
    request_file.write_text(
        'User-Name = "mn1@home.example"\n'
        "NAS-IP-Address = 192.0.2.1\n"
        "Message-Authenticator = 0x00\n"  # radclient adds a real one only if asked
    )
    exchange = Exchange()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(TIMEOUT)
        port = sock.getsockname()[1]
        thread = threading.Thread(target=serve_one, args=(sock, flavour, exchange), daemon=True)
        thread.start()
        proc = subprocess.Popen(
            [
                radclient,
                "-x",
                "-d",
                str(tooldir),
                "-f",
                str(request_file),
                "-r",
                "1",
                "-t",
                "5",
                f"127.0.0.1:{port}",
                "auth",
                SECRET,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:  # stop what we started, by its PID
                proc.kill()
                proc.wait()
        thread.join(TIMEOUT)
    assert not exchange.errors, exchange.errors
    assert proc.returncode == 0, (
        f"radclient rc={proc.returncode}\n{out.decode(errors='replace')}\n{err.decode(errors='replace')}"
    )
    return exchange, out


# --- radclient output -----------------------------------------------------------------------

_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord('"'): 34, ord("\\"): 92}


def unescape(quoted: bytes) -> bytes:
    """A FreeRADIUS-printed string: "...", with \\n \\r \\t \\" \\\\ and \\ooo
    octal escapes; valid UTF-8 is printed raw, so other bytes are copied."""
    assert quoted[:1] == b'"' and quoted[-1:] == b'"', quoted
    body, out, i = quoted[1:-1], bytearray(), 0
    while i < len(body):
        if body[i] == 0x5C:
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
            else:
                out.append(int(body[i + 1 : i + 4], 8))
                i += 4
        else:
            out.append(body[i])
            i += 1
    return bytes(out)


def as_freeradius_prints(value: bytes) -> bytes:
    """A binary ``string`` value (a tagged key, a PSK) as FreeRADIUS 3.2 prints
    it -- radclient, detail files: without its last NUL (one key in 256 ends in
    zero). The value itself keeps it: FreeRADIUS relays such keys whole
    (tests/test_freeradius_proxy.py)."""
    return value[:-1] if value.endswith(b"\x00") else value


def parse_reply(output: bytes) -> list[tuple[str, int, str | bytes]]:
    """The attributes radclient printed under "Received Access-Accept":
    (name, tag or 0, value); strings and octets as bytes, the rest as text."""
    lines = output.split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"Received Access-Accept"))
    result: list[tuple[str, int, str | bytes]] = []
    for line in lines[start + 1 :]:
        if not line.startswith(b"\t"):
            break
        name_part, _, value = line[1:].partition(b" = ")
        name, _, tag = name_part.decode().partition(":")
        parsed: str | bytes
        if value.startswith(b'"'):
            parsed = unescape(value)
        elif value.startswith(b"0x"):
            parsed = bytes.fromhex(value[2:].decode())
        else:
            parsed = value.decode()
        result.append((name, int(tag or 0), parsed))
    return result


def expected_radclient(flavour: Flavour) -> list[tuple[str, int, str | bytes]]:
    p = PROFILE
    if flavour is Flavour.AAA_VPN:
        rows: list[tuple[str, int, str | bytes]] = [
            ("Session-Timeout", 0, "1800"),
            ("Aaa-Vpn-Session-Id", 0, p.session_id.encode()),
            ("Aaa-Vpn-Home-Address", 0, "198.51.100.10"),
            ("Aaa-Vpn-Home-Agent", 0, "192.0.2.2"),
            ("Aaa-Vpn-Care-Of-Address", 0, "192.0.2.1"),
            ("Aaa-Vpn-Key-Epoch", 0, "7"),
            ("Aaa-Vpn-Lifetime", 0, "1800"),
            ("Aaa-Vpn-Session-Root-Key", 0, KEY64),  # octets: printed 0x..., decrypted
            ("Aaa-Vpn-MN-HA-SPI", 0, "256"),
            ("Aaa-Vpn-MN-HA-Key", 0, KEY32),
            ("Aaa-Vpn-FA-HA-SPI", 0, "257"),
            ("Aaa-Vpn-FA-HA-Key", 0, bytes(16)),
        ]
        names = {
            KeyMode.IKEV2: "IKEv2",
            KeyMode.MANUAL: "Manual",
            EspTransform.AES_GCM_16_256: "AES-GCM-16-256",
            EspTransform.AES_CBC_128_HMAC_SHA256: "AES-CBC-128-HMAC-SHA-256-128",
            PathRole.FA_HA: "FA-HA",
            PathRole.FA_GW: "FA-GW",
            GatewayMode.DYNAMIC: "Dynamic",
        }
        for tag, path in enumerate(p.paths, 1):
            rows += [
                ("Aaa-Vpn-Path-Role", tag, names[path.role]),
                ("Aaa-Vpn-Path-Local", tag, str(path.local).encode()),
                ("Aaa-Vpn-Path-Peer", tag, str(path.peer).encode()),
                *(("Aaa-Vpn-Path-Local-TS", tag, str(n).encode()) for n in path.local_ts),
                *(("Aaa-Vpn-Path-Remote-TS", tag, str(n).encode()) for n in path.remote_ts),
                ("Aaa-Vpn-Path-Key-Mode", tag, names[path.key_mode]),
                ("Aaa-Vpn-Path-ESP-Transform", tag, names[path.esp_transform]),
                ("Aaa-Vpn-Path-SPI-In", tag, str(path.spi_in)),
                ("Aaa-Vpn-Path-SPI-Out", tag, str(path.spi_out)),
                ("Aaa-Vpn-Path-Key-In", tag, path.key_in.value),
                ("Aaa-Vpn-Path-Key-Out", tag, path.key_out.value),
                ("Aaa-Vpn-Path-Lifetime", tag, str(path.lifetime)),
            ]
            if path.ike_proposal is not None:
                rows.append(("Aaa-Vpn-Path-IKE-Proposal", tag, path.ike_proposal.encode()))
            if path.ike_psk is not None:
                rows.append(("Aaa-Vpn-Path-IKE-PSK", tag, path.ike_psk.value))
            if path.qos is not None:
                rows += [
                    ("Aaa-Vpn-Path-QoS-Class", tag, path.qos.name.encode()),
                    ("Aaa-Vpn-Path-DSCP", tag, str(path.qos.dscp)),
                    ("Aaa-Vpn-Path-Rate-Limit", tag, str(path.qos.rate_kbps)),
                ]
            if path.gateway_mode is not None:
                rows.append(("Aaa-Vpn-Path-Gateway-Mode", tag, names[path.gateway_mode]))
        return rows
    if flavour is Flavour.RFC2868:
        rows = []
        for tag, path in enumerate(p.paths, 1):
            rows += [
                ("Tunnel-Type", tag, "ESP"),
                ("Tunnel-Medium-Type", tag, "IPv4"),
                ("Tunnel-Client-Endpoint", tag, str(path.local).encode()),
                ("Tunnel-Server-Endpoint", tag, str(path.peer).encode()),
                (
                    "Tunnel-Assignment-Id",
                    tag,
                    ("fa-ha" if tag == 1 else "fa-gw").encode(),
                ),
                ("Tunnel-Preference", tag, str(tag)),
            ]
            if path.ike_psk is not None:
                rows.append(("Tunnel-Password", tag, path.ike_psk.value))
        return [*rows, ("Session-Timeout", 0, "1800")]
    return [
        ("3GPP2-Home-Agent-IP-Address", 0, "192.0.2.2"),
        ("3GPP2-MN-HA-SPI", 0, "256"),
        ("3GPP2-MN-HA-Shared-Key", 0, KEY32),
        ("3GPP2-Security-Level", 0, "3"),
        (
            "3GPP2-Pre-Shared-Secret",
            0,
            PSK32,
        ),  # decrypted below: radclient prints it raw
        ("Session-Timeout", 0, "1800"),
    ]


def _key(row: tuple[str, int, str | bytes]) -> tuple[str, int]:
    return row[0], row[1]


@pytest.mark.parametrize("flavour", list(Flavour), ids=[f.name for f in Flavour])
def test_radclient_reads_every_attribute(flavour: Flavour, tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    radclient = require_tool("radclient")
    tooldir = prepare_tool_dir(tmp_path / "dict")
    exchange, out = run_radclient(radclient, tooldir, tmp_path, flavour)
    printed = parse_reply(out)
    assert printed[0][0] == "Message-Authenticator", "Message-Authenticator must come first"
    printed = printed[1:]
    if flavour is Flavour.THREEGPP2:
        # FreeRADIUS' dictionary has no encrypt flag on Pre-Shared-Secret: it
        # prints salt || ciphertext, which we decrypt with the request's authenticator.
        printed = [
            (n, t, rfc2868_decrypt(SECRET.encode(), exchange.request[4:20], v))
            if n == "3GPP2-Pre-Shared-Secret" and isinstance(v, bytes)
            else (n, t, v)
            for n, t, v in printed
        ]
    expected = expected_radclient(flavour)

    # Compare per (name, tag), order kept within each: pyrad groups attributes
    # by type on the wire, so the global order differs by flavour.
    def grouped(
        rows: list[tuple[str, int, str | bytes]],
    ) -> dict[tuple[str, int], list[str | bytes]]:
        out: dict[tuple[str, int], list[str | bytes]] = {}
        for row in rows:
            out.setdefault(_key(row), []).append(row[2])
        return out

    got, want = grouped(printed), grouped(expected)
    assert got.keys() == want.keys(), (
        f"attributes: missing {want.keys() - got.keys()}, extra {got.keys() - want.keys()}"
    )
    for k in want:
        assert got[k] == want[k], f"{k[0]}:{k[1]}: radclient printed {got[k]!r}, expected {want[k]!r}"


# --- tshark ---------------------------------------------------------------------------------


def write_pcap(path: Path, exchange: Exchange) -> None:
    from scapy.all import IP, UDP, Raw, wrpcap  # slow import: only here

    wrpcap(
        str(path),
        [
            IP(src="127.0.0.1", dst="127.0.0.2") / UDP(sport=40000, dport=1812) / Raw(exchange.request),
            IP(src="127.0.0.2", dst="127.0.0.1") / UDP(sport=1812, dport=40000) / Raw(exchange.reply),
        ],
    )


def tshark_fields(tshark: str, config: Path, pcap: Path, fields: list[str]) -> dict[str, list[str]]:
    args = [
        tshark,
        "-n",
        "-r",
        str(pcap),
        "-Y",
        "radius.code == 2",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "separator=/t",
        "-E",
        "aggregator=;",
    ]
    for f in fields:
        args += ["-e", f]
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    line = out.decode().rstrip("\n")
    assert "\n" not in line, "expected exactly one Access-Accept"
    return {f: (v.split(";") if v else []) for f, v in zip(fields, line.split("\t"), strict=True)}


def expected_tshark(
    flavour: Flavour,
) -> tuple[dict[str, list[str]], dict[str, list[bytes]]]:
    """(plain fields -> values as tshark prints them, encrypted fields -> plaintexts)."""
    p = PROFILE
    plain: dict[str, list[str]] = {"radius.Session_Timeout": ["1800"]}
    encrypted: dict[str, list[bytes]] = {}
    if flavour is Flavour.AAA_VPN:
        plain.update(
            {
                "radius.Aaa_Vpn_Session_Id": [p.session_id],
                "radius.Aaa_Vpn_Home_Address": ["198.51.100.10"],
                "radius.Aaa_Vpn_Home_Agent": ["192.0.2.2"],
                "radius.Aaa_Vpn_Care_Of_Address": ["192.0.2.1"],
                "radius.Aaa_Vpn_Key_Epoch": ["7"],
                "radius.Aaa_Vpn_Lifetime": ["1800"],
                "radius.Aaa_Vpn_MN_HA_SPI": ["256"],
                "radius.Aaa_Vpn_FA_HA_SPI": ["257"],
            }
        )
        # octets with encrypt=2: tshark shows salt || ciphertext in the field itself
        encrypted.update(
            {
                "radius.Aaa_Vpn_Session_Root_Key": [KEY64],
                "radius.Aaa_Vpn_MN_HA_Key": [KEY32],
                "radius.Aaa_Vpn_FA_HA_Key": [bytes(16)],
            }
        )

        def per_path(name: str, values: list[list[str]]) -> None:
            field_name = f"radius.Aaa_Vpn_Path_{name}"
            plain[field_name] = [v for vs in values for v in vs]
            plain[field_name + ".tag"] = [f"0x{t:02x}" for t, vs in enumerate(values, 1) for _ in vs]

        paths = p.paths
        per_path("Role", [[str(int(x.role))] for x in paths])
        per_path("Local", [[str(x.local)] for x in paths])
        per_path("Peer", [[str(x.peer)] for x in paths])
        per_path("Local_TS", [[str(n) for n in x.local_ts] for x in paths])
        per_path("Remote_TS", [[str(n) for n in x.remote_ts] for x in paths])
        per_path("Key_Mode", [["2" if x.key_mode is KeyMode.IKEV2 else "1"] for x in paths])
        per_path("ESP_Transform", [[str(x.esp_transform.code)] for x in paths])
        per_path("SPI_In", [[str(x.spi_in)] for x in paths])
        per_path("SPI_Out", [[str(x.spi_out)] for x in paths])
        per_path("Lifetime", [[str(x.lifetime)] for x in paths])
        per_path("IKE_Proposal", [[x.ike_proposal] if x.ike_proposal else [] for x in paths])
        per_path("QoS_Class", [[x.qos.name] if x.qos else [] for x in paths])
        per_path("DSCP", [[str(x.qos.dscp)] if x.qos else [] for x in paths])
        per_path("Rate_Limit", [[str(x.qos.rate_kbps)] if x.qos else [] for x in paths])
        per_path("Gateway_Mode", [["2"] if x.gateway_mode else [] for x in paths])
        # tagged strings with encrypt=2: "<name>_encrypted" holds salt || ciphertext
        for name, values in (
            ("Key_In", [[x.key_in.value] for x in paths]),
            ("Key_Out", [[x.key_out.value] for x in paths]),
            ("IKE_PSK", [[x.ike_psk.value] if x.ike_psk else [] for x in paths]),
        ):
            encrypted[f"radius.Aaa_Vpn_Path_{name}_encrypted"] = [v for vs in values for v in vs]
            plain[f"radius.Aaa_Vpn_Path_{name}.tag"] = [f"0x{t:02x}" for t, vs in enumerate(values, 1) for _ in vs]
    elif flavour is Flavour.RFC2868:
        tags = [f"0x{t:02x}" for t in range(1, len(p.paths) + 1)]
        for name, values in (
            ("Tunnel_Type", ["9"] * len(p.paths)),
            ("Tunnel_Medium_Type", ["1"] * len(p.paths)),
            ("Tunnel_Client_Endpoint", [str(x.local) for x in p.paths]),
            ("Tunnel_Server_Endpoint", [str(x.peer) for x in p.paths]),
            ("Tunnel_Assignment_Id", ["fa-ha", "fa-gw"]),
            ("Tunnel_Preference", ["1", "2"]),
        ):
            plain[f"radius.{name}"] = values
            plain[f"radius.{name}.tag"] = tags
        with_psk = [(t, x) for t, x in enumerate(p.paths, 1) if x.ike_psk is not None]
        plain["radius.Tunnel_Password.tag"] = [f"0x{t:02x}" for t, _ in with_psk]
        encrypted["radius.Tunnel_Password_encrypted"] = [x.ike_psk.value for _, x in with_psk if x.ike_psk]
    else:
        # Home-Agent-IP-Address and Security-Level as corrected by dictionary.wireshark
        plain.update(
            {
                "radius.3GPP2_Home_Agent_IP_Address": ["192.0.2.2"],
                "radius.3GPP2_MN_HA_SPI": ["256"],
                "radius.3GPP2_Security_Level": ["3"],
            }
        )
        encrypted.update(
            {
                "radius.3GPP2_MN_HA_Shared_Key_encrypted": [KEY32],
                "radius.3GPP2_Pre_Shared_Secret": [PSK32],
            }
        )
    return plain, encrypted


@pytest.mark.parametrize("flavour", list(Flavour), ids=[f.name for f in Flavour])
def test_tshark_reads_every_attribute(flavour: Flavour, tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    radclient = require_tool("radclient")
    tshark = require_tool("tshark")
    config = prepare_tool_dir(tmp_path / "wireshark")
    exchange, _ = run_radclient(radclient, config, tmp_path, flavour)
    pcap = tmp_path / "radius.pcap"
    write_pcap(pcap, exchange)
    plain, encrypted = expected_tshark(flavour)
    got = tshark_fields(tshark, config, pcap, [*plain, *encrypted, "radius.Message_Authenticator"])
    assert len(got["radius.Message_Authenticator"]) == 1
    for name, want in plain.items():
        assert got[name] == want, f"{name}: tshark shows {got[name]}, expected {want}"
    ra = exchange.request[4:20]
    for name, keys in encrypted.items():
        shown = [rfc2868_decrypt(SECRET.encode(), ra, bytes.fromhex(v.replace(":", ""))) for v in got[name]]
        assert shown == keys, f"{name}: salt-decrypted {[s.hex() for s in shown]}, expected {[k.hex() for k in keys]}"
