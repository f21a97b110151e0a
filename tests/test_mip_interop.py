"""Mobile IPv4 wire format against independent decoders.

* scapy (``scapy.layers.mobileip``: ``MobileIP``, ``MobileIPRRQ``,
  ``MobileIPRRP``) covers only the fixed part of Registration Request and
  Reply: it has no extensions. Both directions are checked: scapy dissects
  what we encode, and we decode what scapy builds.
* tshark (Wireshark's ``mip`` dissector) decodes a pcap written with scapy
  (IP/UDP to port 434 on documentation addresses; a file, nothing is sent),
  field by field, including the extensions: NAI, MN-HA/MN-FA/FA-HA,
  generalized authentication, challenge, CVSE, NVSE, skippable unknown.

Known limits of the oracles (tshark 4.0.17), so not asserted here:

* tshark does not dissect message type 255 (RFC 4064's experimental message)
  at all and marks it malformed. The extensions of a binding message are
  therefore checked by grafting them behind a Registration Request fixed
  part, which tshark does dissect.
* tshark reads the One-byte Padding extension (type 0) as a Type-Length
  pair and reports the message malformed, although RFC 5944 section 1.8 says
  it is "encoded with neither Length nor Data field". No padding is used here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.mobileip import MobileIP, MobileIPRRP, MobileIPRRQ
from scapy.packet import Raw
from scapy.utils import wrpcap

from aaa_vpn.secret import Secret
from aaa_vpn.wire.mip import (
    AuthenticationExtension,
    BindingUpdate,
    ChallengeExtension,
    CriticalVendorExtension,
    Extension,
    ExtensionSpan,
    ExtensionType,
    GeneralizedAuthExtension,
    GeneralizedAuthSubtype,
    MipDecodeError,
    NaiExtension,
    NormalVendorExtension,
    RegistrationFlags,
    RegistrationReply,
    RegistrationRequest,
    ReplyCode,
    UnknownExtension,
    decode_message,
    decode_registration_reply,
    decode_registration_request,
    encode_extensions,
    encode_message,
    extension_spans,
)
from aaa_vpn.wire.mip_auth import append_authentication, append_generalized_authentication, relay_reply, relay_request
from aaa_vpn.wire.mip_replay import mismatch_identification, timestamp_identification
from aaa_vpn.wire.mip_vpn import encode_vpn_path, previous_fa_extension
from aaa_vpn.wire.profile import VENDOR_ID

from .test_mip_wire import (
    COA,
    FA_HA_KEY,
    HA,
    HOME,
    MN_FA_KEY,
    MN_HA_KEY,
    NAI,
    NEW_FA,
    _path,
    addresses,
    mn_request,
    u64,
)

pytestmark = pytest.mark.interop

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z
IDENT = timestamp_identification(NOW, random_low=0x123)


def _fail_table(title: str, rows: list[tuple[str, str, str]], data: bytes) -> str:
    lines = [title, f"{'field':<28} {'expected':<40} got"]
    lines += [f"{'!!' if e != g else '  '} {name:<25} {e:<40} {g}" for name, e, g in rows]
    lines.append("message on the wire, field by field (our layout):")
    lines.append(f"   fixed part  {data[: len(data) - sum(s.end - s.start for s in _spans(data))].hex(' ')}")
    for span in _spans(data):
        lines.append(f"   @{span.start:<4d} {type(span.extension).__name__:<28} {data[span.start : span.end].hex(' ')}")
    return "\n".join(lines)


def _spans(data: bytes) -> tuple[ExtensionSpan, ...]:
    try:
        return extension_spans(data)
    except MipDecodeError:
        return ()


# --------------------------------------------------------------------------------------------
# scapy: fixed part


def test_scapy_dissects_our_registration_request() -> None:
    data = mn_request()
    ours = decode_registration_request(data)
    packet = MobileIP(data)
    rrq = packet[MobileIPRRQ]
    rows = [
        ("type", "1", str(packet.type)),
        ("flags", f"0x{int(ours.flags):02x}", f"0x{rrq.flags:02x}"),
        ("lifetime", str(ours.lifetime), str(rrq.lifetime)),
        ("homeaddr", str(ours.home_address), rrq.homeaddr),
        ("haaddr", str(ours.home_agent), rrq.haaddr),
        ("coaddr", str(ours.care_of_address), rrq.coaddr),
        ("id", f"0x{ours.identification:016x}", f"0x{rrq.id:016x}"),
        ("extensions (Raw)", data[24:].hex(), bytes(rrq.payload).hex()),
    ]
    assert all(e == g for _, e, g in rows), _fail_table("scapy disagrees on the RRQ", rows, data)


def test_scapy_dissects_our_registration_reply() -> None:
    reply = RegistrationReply(ReplyCode.HA_IDENTIFICATION_MISMATCH, 0, HOME, HA, IDENT, (NaiExtension(NAI),))
    data = encode_message(reply)
    packet = MobileIP(data)
    rrp = packet[MobileIPRRP]
    rows = [
        ("type", "3", str(packet.type)),
        ("code", "133", str(rrp.code)),
        ("lifetime", "0", str(rrp.lifetime)),
        ("homeaddr", str(HOME), rrp.homeaddr),
        ("haaddr", str(HA), rrp.haaddr),
        ("id", f"0x{IDENT:016x}", f"0x{rrp.id:016x}"),
        ("extensions (Raw)", data[20:].hex(), bytes(rrp.payload).hex()),
    ]
    assert all(e == g for _, e, g in rows), _fail_table("scapy disagrees on the RRP", rows, data)


def test_scapy_sees_the_experimental_type_of_a_binding_message() -> None:
    data = encode_message(BindingUpdate(600, HOME, COA, IDENT))
    packet = MobileIP(data)
    assert packet.type == 255
    assert MobileIPRRQ not in packet and MobileIPRRP not in packet
    assert bytes(packet.payload) == data[1:]


@given(st.integers(0, 255), st.integers(0, 0xFFFF), addresses, addresses, addresses, u64)
def test_we_decode_what_scapy_builds(
    flags: int, lifetime: int, home: IPv4Address, agent: IPv4Address, care_of: IPv4Address, ident: int
) -> None:
    rrq = bytes(
        MobileIP(type=1)
        / MobileIPRRQ(
            flags=flags, lifetime=lifetime, homeaddr=str(home), haaddr=str(agent), coaddr=str(care_of), id=ident
        )
    )
    assert decode_registration_request(rrq) == RegistrationRequest(
        RegistrationFlags(flags), lifetime, home, agent, care_of, ident
    )
    rrp = bytes(
        MobileIP(type=3) / MobileIPRRP(code=flags, lifetime=lifetime, homeaddr=str(home), haaddr=str(agent), id=ident)
    )
    assert decode_registration_reply(rrp) == RegistrationReply(flags, lifetime, home, agent, ident)


# --------------------------------------------------------------------------------------------
# tshark: fixed part and extensions

FIELDS = (
    "mip.type mip.flags mip.s mip.b mip.d mip.m mip.g mip.v mip.t mip.code mip.life mip.homeaddr mip.haaddr "
    "mip.coa mip.ident mip.ext.type mip.ext.len mip.nai mip.auth.spi mip.auth.auth mip.ext.auth.subtype "
    "mip.extension mip.ext.cvse.reserved mip.ext.cvse.vendor_id mip.ext.cvse.vendor_type "
    "mip.ext.cvse.vendor_value mip.ext.nvse.vendor_id mip.ext.nvse.vendor_type mip.ext.nvse.vendor_value "
    "_ws.malformed"
).split()


def _ntp_text(identification: int) -> str:
    """How tshark shows an NTP-format Identification: UTC, nanoseconds truncated."""
    seconds = (identification >> 32) - 2_208_988_800
    nanoseconds = ((identification & 0xFFFFFFFF) * 10**9) >> 32
    return datetime.fromtimestamp(seconds, UTC).strftime("%b %e, %Y %H:%M:%S") + f".{nanoseconds:09d} UTC"


def _extension_length(extension: Extension) -> int:
    """The Length field as tshark reports it (it excludes Type, Sub-Type/Reserved and Length)."""
    if isinstance(extension, NaiExtension):
        return len(extension.nai.encode())
    if isinstance(extension, (AuthenticationExtension, GeneralizedAuthExtension)):
        return 4 + len(extension.authenticator)
    if isinstance(extension, ChallengeExtension):
        return len(extension.challenge)
    if isinstance(extension, CriticalVendorExtension):
        return 6 + len(extension.value)
    if isinstance(extension, NormalVendorExtension):
        return 8 + len(extension.value)
    assert isinstance(extension, UnknownExtension)
    return len(extension.data)


def _extension_type(extension: Extension) -> int:
    if isinstance(extension, AuthenticationExtension):
        return int(extension.type)
    if isinstance(extension, UnknownExtension):
        return extension.type
    return {
        NaiExtension: 131,
        GeneralizedAuthExtension: 36,
        ChallengeExtension: 132,
        CriticalVendorExtension: 38,
        NormalVendorExtension: 134,
    }[type(extension)]


def expected_fields(message: RegistrationRequest | RegistrationReply) -> dict[str, str]:
    """What tshark should show for ``message``, derived from our typed value."""
    exts = message.extensions
    auths = [e for e in exts if isinstance(e, (AuthenticationExtension, GeneralizedAuthExtension))]
    cvses = [e for e in exts if isinstance(e, CriticalVendorExtension)]
    nvses = [e for e in exts if isinstance(e, NormalVendorExtension)]
    opaque = [
        e.challenge if isinstance(e, ChallengeExtension) else e.data
        for e in exts
        if isinstance(e, (ChallengeExtension, UnknownExtension))
    ]
    fields = {
        "mip.life": str(message.lifetime),
        "mip.homeaddr": str(message.home_address),
        "mip.haaddr": str(message.home_agent),
        "mip.ident": _ntp_text(message.identification),
        "mip.ext.type": ",".join(str(_extension_type(e)) for e in exts),
        "mip.ext.len": ",".join(str(_extension_length(e)) for e in exts),
        "mip.nai": ",".join(e.nai for e in exts if isinstance(e, NaiExtension)),
        "mip.auth.spi": ",".join(f"0x{e.spi:08x}" for e in auths),
        "mip.auth.auth": ",".join(e.authenticator.hex() for e in auths),
        "mip.ext.auth.subtype": ",".join(str(int(e.subtype)) for e in exts if isinstance(e, GeneralizedAuthExtension)),
        "mip.extension": ",".join(value.hex() for value in opaque),
        "mip.ext.cvse.reserved": ",".join(f"0x{e.reserved:02x}" for e in cvses),
        "mip.ext.cvse.vendor_id": ",".join(str(e.vendor_id) for e in cvses),
        "mip.ext.cvse.vendor_type": ",".join(f"0x{e.vendor_type:04x}" for e in cvses),
        "mip.ext.cvse.vendor_value": ",".join(e.value.hex() for e in cvses),
        "mip.ext.nvse.vendor_id": ",".join(str(e.vendor_id) for e in nvses),
        "mip.ext.nvse.vendor_type": ",".join(str(e.vendor_type) for e in nvses),
        "mip.ext.nvse.vendor_value": ",".join(e.value.hex() for e in nvses),
        "_ws.malformed": "",
    }
    if isinstance(message, RegistrationRequest):
        flags = int(message.flags)
        fields |= {
            "mip.type": "1",
            "mip.flags": f"0x{flags:02x}",
            "mip.coa": str(message.care_of_address),
            "mip.code": "",
        }
        for name, bit in zip("sbdmgvt", (0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02), strict=True):
            fields[f"mip.{name}"] = "1" if flags & bit else "0"
    else:
        fields |= {"mip.type": "3", "mip.code": str(int(message.code)), "mip.coa": "", "mip.flags": ""}
        fields |= {f"mip.{name}": "" for name in "sbdmgvt"}  # a reply has no flags
    return fields


def _messages() -> list[tuple[str, str, int, str, int, bytes]]:
    """(what, src, sport, dst, dport, UDP payload) of one registration, hop by hop."""
    mn = mn_request()
    # The MN names its previous FA for the FA only (after the MN-HA/MN-AAA extensions).
    mn = append_authentication(
        mn[:-22] + encode_extensions([previous_fa_extension(NEW_FA)]), ExtensionType.MN_FA_AUTH, 0x101, MN_FA_KEY
    )
    fa_exts: list[Extension] = [
        CriticalVendorExtension(VENDOR_ID, 0x0101, b"fa-cvse"),
        NormalVendorExtension(VENDOR_ID, 2, b"fa-nvse"),
        UnknownExtension(255, b"\x01exp"),
    ]
    to_ha = relay_request(mn, extensions=fa_exts, fa_ha_spi=0x300, fa_ha_key=FA_HA_KEY)
    reply = RegistrationReply(ReplyCode.ACCEPTED, 1800, HOME, HA, IDENT, (NaiExtension(NAI),))
    from_ha = append_authentication(encode_message(reply), ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    from_ha = append_authentication(from_ha, ExtensionType.FA_HA_AUTH, 0x300, FA_HA_KEY)
    to_mn = relay_reply(from_ha, mn_fa_spi=0x101, mn_fa_key=MN_FA_KEY)
    deny = RegistrationReply(133, 0, HOME, HA, mismatch_identification(0x0123456789ABCDEF, NOW), (NaiExtension(NAI),))
    denied = append_authentication(encode_message(deny), ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    # A Binding Update's extensions (VPN path CVSE, binding authentication),
    # grafted behind an RRQ fixed part: tshark does not dissect type 255.
    kek = Secret(bytes(range(32)))
    bu = encode_message(BindingUpdate(600, HOME, COA, IDENT, extensions=(encode_vpn_path(_path(), kek),)))
    bu = append_generalized_authentication(bu, GeneralizedAuthSubtype.BINDING, 0x400, FA_HA_KEY)
    graft = encode_message(RegistrationRequest(RegistrationFlags(0), 600, HOME, HA, COA, IDENT)) + bu[28:]
    return [
        ("MN -> FA Registration Request", str(HOME), 49152, str(COA), 434, mn),
        ("FA -> HA relayed Registration Request", str(COA), 434, str(HA), 434, to_ha),
        ("HA -> FA Registration Reply", str(HA), 434, str(COA), 434, from_ha),
        ("FA -> MN relayed Registration Reply", str(COA), 434, str(HOME), 49152, to_mn),
        ("HA -> FA reply 133 (RFC 5944 5.7.1)", str(HA), 434, str(COA), 434, denied),
        ("Binding Update extensions behind an RRQ", str(HA), 434, str(COA), 434, graft),
    ]


def _run_tshark(tshark: str, pcap: Path) -> list[dict[str, str]]:
    command = [tshark, "-n", "-r", str(pcap), "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    command += ["-E", "separator=\t"]
    for name in FIELDS:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return [dict(zip(FIELDS, line.split("\t"), strict=True)) for line in result.stdout.splitlines()]


def test_tshark_decodes_a_registration_hop_by_hop(require_tool: Callable[[str], str], tmp_path: Path) -> None:
    tshark = require_tool("tshark")
    messages = _messages()
    packets = [IP(src=s, dst=d) / UDP(sport=sp, dport=dp) / Raw(load=data) for _, s, sp, d, dp, data in messages]
    pcap = tmp_path / "mip.pcap"
    wrpcap(str(pcap), packets)
    frames = _run_tshark(tshark, pcap)
    assert len(frames) == len(messages)
    for (what, *_, data), got in zip(messages, frames, strict=True):
        message = decode_message(data)
        assert isinstance(message, (RegistrationRequest, RegistrationReply))
        expected = expected_fields(message)
        rows = [(name, expected[name], got[name]) for name in FIELDS]
        assert all(e == g for _, e, g in rows), _fail_table(f"tshark disagrees on: {what}", rows, data)


def test_tshark_reads_timestamp_identification_as_ntp_time(require_tool: Callable[[str], str], tmp_path: Path) -> None:
    # RFC 5944 section 5.7: the Identification is NTP time; tshark shows it as a date.
    tshark = require_tool("tshark")
    request = RegistrationRequest(RegistrationFlags(0), 1800, HOME, HA, COA, IDENT, (NaiExtension(NAI),))
    data = append_authentication(encode_message(request), ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    pcap = tmp_path / "ident.pcap"
    wrpcap(str(pcap), [IP(src=str(HOME), dst=str(COA)) / UDP(sport=434, dport=434) / Raw(load=data)])
    (frame,) = _run_tshark(tshark, pcap)
    assert frame["mip.ident"].startswith("Nov 14, 2023 22:13:20.25"), frame["mip.ident"]
