"""Our ESP against independent implementations (docs/design.md section 7).

* scapy's ``SecurityAssociation`` (tunnel mode) decrypts what we encrypt,
  including a look at our padding and Next Header through its own parser, and
  we decrypt what it encrypts, for all four transforms.
* tshark 4.0 decrypts a pcap of our packets given the SAs in its ``esp_sa``
  UAT (reference/test-environment.md section 3.1), checks every ICV and
  dissects the inner IPv4/UDP packet completely; with a wrong integrity key it
  reports the ICV as bad, so the check is real.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.model import EspTransform
from aaa_vpn.sa.esp import EspSa, decapsulate, encapsulate

scapy_all = pytest.importorskip("scapy.all")
scapy_ipsec = pytest.importorskip("scapy.layers.ipsec")

pytestmark = pytest.mark.interop

ALL = list(EspTransform)
SRC = IPv4Address("192.0.2.1")
DST = IPv4Address("192.0.2.2")
SPIS = {transform: 0x1001 + index for index, transform in enumerate(ALL)}
PAYLOAD_SIZES = (0, 1, 3, 100, 1372)  # 1372 -> a 1400-octet inner packet

# tshark's literal algorithm labels (reference/test-environment.md section 3.1).
_TSHARK_ENCRYPTION = {True: "AES-GCM with 16 octet ICV [RFC4106]", False: "AES-CBC [RFC3602]"}
_TSHARK_AUTH = {True: "NULL", False: "HMAC-SHA-256-128 [RFC4868]"}


def keymat(transform: EspTransform) -> bytes:
    return os.urandom(transform.keymat_length)


def scapy_sa(transform: EspTransform, spi: int, key: bytes) -> object:
    """scapy's view of the same SA: GCM takes key | salt as crypt_key (RFC 4106 section 8.1)."""
    tunnel = scapy_all.IP(src=str(SRC), dst=str(DST))
    if transform.is_aead:
        return scapy_ipsec.SecurityAssociation(
            scapy_ipsec.ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key, tunnel_header=tunnel
        )
    k = transform.encryption_key_length
    return scapy_ipsec.SecurityAssociation(
        scapy_ipsec.ESP,
        spi=spi,
        crypt_algo="AES-CBC",
        crypt_key=key[:k],
        auth_algo="SHA2-256-128",
        auth_key=key[k:],
        tunnel_header=tunnel,
    )


def inner(size: int, sport: int = 40000) -> bytes:
    packet = (
        scapy_all.IP(src="198.51.100.10", dst="203.0.113.5", id=size)
        / scapy_all.UDP(sport=sport, dport=9)
        / scapy_all.Raw(bytes((size + i) & 0xFF for i in range(size)))
    )
    return bytes(packet)


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_scapy_decrypts_ours(transform: EspTransform) -> None:
    key = keymat(transform)
    ours = EspSa(0x1001, transform, key)
    theirs = scapy_sa(transform, 0x1001, key)
    for seq, size in enumerate(PAYLOAD_SIZES, start=1):
        plain = inner(size)
        wire = encapsulate(SRC, DST, ours.seal(plain), dscp=10)
        parsed = scapy_all.IP(wire)
        assert parsed.proto == 50 and parsed.tos == 10 << 2
        rebuilt = scapy_all.IP(wire)
        del rebuilt.chksum  # scapy recomputes the header checksum when building
        assert scapy_all.IP(bytes(rebuilt)).chksum == parsed.chksum, "outer IPv4 checksum"
        assert parsed[scapy_ipsec.ESP].spi == 0x1001 and parsed[scapy_ipsec.ESP].seq == seq
        # scapy's own parse of the trailer: default padding pattern and Next Header 4.
        crypt_icv = 16 if transform.is_aead else 0
        auth = theirs.auth_algo  # type: ignore[attr-defined]
        if not transform.is_aead:
            auth.verify(parsed[scapy_ipsec.ESP], theirs.auth_key)  # type: ignore[attr-defined]
        esp = theirs.crypt_algo.decrypt(  # type: ignore[attr-defined]
            theirs,
            parsed[scapy_ipsec.ESP],
            theirs.crypt_key,  # type: ignore[attr-defined]
            crypt_icv or auth.icv_size,
        )
        assert esp.nh == 4
        assert bytes(esp.padding) == bytes(range(1, esp.padlen + 1))
        assert (len(plain) + esp.padlen + 2) % (4 if transform.is_aead else 16) == 0
        decrypted = theirs.decrypt(scapy_all.IP(wire))  # type: ignore[attr-defined]
        assert bytes(decrypted) == plain, f"scapy decrypted {bytes(decrypted)[:40].hex()}..."


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_we_decrypt_scapys(transform: EspTransform) -> None:
    key = keymat(transform)
    ours = EspSa(0x1001, transform, key)
    theirs = scapy_sa(transform, 0x1001, key)
    for size in PAYLOAD_SIZES:
        plain = inner(size)
        wire = bytes(theirs.encrypt(scapy_all.IP(plain)))  # type: ignore[attr-defined]
        outer = decapsulate(wire)
        assert (outer.src, outer.dst) == (SRC, DST)
        assert ours.open(outer.payload) == plain
    # scapy's integrity check agrees with ours on a tampered packet
    wire = bytearray(encapsulate(SRC, DST, EspSa(0x1001, transform, key).seal(inner(50))))
    wire[-3] ^= 0x40
    with pytest.raises(scapy_ipsec.IPSecIntegrityError):
        theirs.decrypt(scapy_all.IP(bytes(wire)))  # type: ignore[attr-defined]


def _uat(transform: EspTransform, spi: int, key: bytes, auth_key: bytes | None = None) -> str:
    """One ``esp_sa`` record: Protocol, Src IP, Dst IP, SPI, Encryption, Key, Authentication, Auth key."""
    k = transform.encryption_key_length
    if transform.is_aead:
        encryption_key, integrity_key = key, ""
    else:
        encryption_key, integrity_key = key[:k], "0x" + (auth_key or key[k:]).hex()
    fields = [
        "IPv4",
        str(SRC),
        str(DST),
        f"0x{spi:08x}",
        _TSHARK_ENCRYPTION[transform.is_aead],
        "0x" + encryption_key.hex(),
        _TSHARK_AUTH[transform.is_aead],
        integrity_key,
    ]
    return ",".join(f'"{field}"' for field in fields)


def _tshark(tshark: str, pcap: Path, config: Path, records: list[str]) -> list[list[str]]:
    config.mkdir(exist_ok=True)
    command = [tshark, "-n", "-r", str(pcap)]
    command += ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
    for record in records:
        command += ["-o", f"uat:esp_sa:{record}"]
    command += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in ("esp.spi", "esp.sequence", "esp.icv_good", "esp.icv_bad", "ip.src", "ip.dst"):
        command += ["-e", field]
    for field in ("ip.dsfield.dscp", "udp.srcport", "udp.dstport", "udp.length", "data.data"):
        command += ["-e", field]
    # A private configuration directory: the user's own profile must not leak in.
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config), HOME=str(config))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


def test_tshark_decrypts_ours(tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    tshark = require_tool("tshark")
    keys = {transform: keymat(transform) for transform in ALL}
    frames = []
    expected = []
    for transform in ALL:
        sa = EspSa(SPIS[transform], transform, keys[transform])
        for seq, size in enumerate(PAYLOAD_SIZES, start=1):
            sport = 40000 + size
            wire = encapsulate(SRC, DST, sa.seal(inner(size, sport)), dscp=46)
            frames.append(scapy_all.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / scapy_all.IP(wire))
            payload = bytes((size + i) & 0xFF for i in range(size)).hex()
            expected.append((transform, SPIS[transform], seq, sport, size, payload))
    pcap = tmp_path / "ours.pcap"
    scapy_all.wrpcap(str(pcap), frames)

    records = [_uat(transform, SPIS[transform], keys[transform]) for transform in ALL]
    rows = _tshark(tshark, pcap, tmp_path / "wireshark", records)
    assert len(rows) == len(expected)
    for row, (transform, spi, seq, sport, size, payload) in zip(rows, expected, strict=True):
        spi_field, seq_field, good, bad, ip_src, ip_dst, dscp, udp_sport, udp_dport, udp_length, data = row
        where = f"{transform.name} seq {seq}: {row}"
        assert int(spi_field, 16) == spi and int(seq_field) == seq, where
        assert (good, bad) == ("1", "0"), f"ICV not verified by tshark: {where}"
        assert ip_src.split(",") == ["192.0.2.1", "198.51.100.10"], where  # outer, then inner
        assert ip_dst.split(",") == ["192.0.2.2", "203.0.113.5"], where
        assert dscp.split(",")[0] == "46", where
        assert (udp_sport, udp_dport, udp_length) == (str(sport), "9", str(8 + size)), where
        assert data == payload, f"{where}: inner UDP payload"


def test_tshark_sees_a_wrong_integrity_key(tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    tshark = require_tool("tshark")
    transform = EspTransform.AES_CBC_128_HMAC_SHA256
    key = keymat(transform)
    sa = EspSa(0x2001, transform, key)
    pcap = tmp_path / "wrong.pcap"
    frame = scapy_all.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / scapy_all.IP(
        encapsulate(SRC, DST, sa.seal(inner(64)))
    )
    scapy_all.wrpcap(str(pcap), [frame])
    wrong = bytes(32)
    rows = _tshark(tshark, pcap, tmp_path / "wireshark", [_uat(transform, 0x2001, key, auth_key=wrong)])
    assert [(row[2], row[3]) for row in rows] == [("0", "1")], rows
