"""The Diameter codec (aaa_vpn/wire/diameter.py) and the VPN profile AVPs
(aaa_vpn/wire/diameter_profile.py): RFC 6733 layouts byte for byte, round
trips and garbage (Hypothesis), the M-bit rule, and an independent codec
(python-diameter) reading what ours writes and writing what ours reads."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aaa_vpn.secret import Secret
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter_profile import PATH_AVP, ProfileAvpError, decode_profile_avps, encode_profile_avps
from aaa_vpn.wire.enums import EspTransform, GatewayMode, KeyMode
from aaa_vpn.wire.profile import VENDOR_ID, PathProfile, PathRole, QosSpec, VpnProfile


def test_header_and_avp_layout() -> None:
    # RFC 6733 section 3: Version 1, Length 24 bits, flags R|P, Command Code
    # 280 (DWR), Application-ID 0, Hop-by-Hop, End-to-End; section 4.1: AVP
    # Origin-Host (264), flags M, Length 8 + 5 = 13, value, 3 octets of padding.
    message = d.Message(
        d.Command.DEVICE_WATCHDOG, True, 0, 0x11223344, 0x55667788, (d.avp_text(C.ORIGIN_HOST, "a.b.c"),)
    )
    wire = message.encode()
    assert wire.hex() == ("0100002480000118000000001122334455667788000001084000000d612e622e63000000")
    assert d.decode_message(wire) == message


def test_vendor_avp_layout() -> None:
    # Section 4.1: the V bit adds the 4-octet Vendor-ID; Length counts it.
    avp = d.avp_u32(12, 7, vendor=VENDOR_ID, mandatory=False)
    assert d.encode_avp(avp).hex() == "0000000c8000001000007ed900000007"
    assert d.decode_avps(d.encode_avp(avp)) == (avp,)


def test_address_type() -> None:
    avp = d.avp_address(C.MIP_HOME_AGENT_ADDRESS, IPv4Address("192.0.2.1"))
    assert avp.value.hex() == "0001c0000201"  # family 1 (IPv4), then the address
    assert avp.as_ipv4() == IPv4Address("192.0.2.1")
    with pytest.raises(d.DiameterDecodeError) as info:
        d.Avp(C.MIP_HOME_AGENT_ADDRESS, b"\x00\x01\x01").as_ipv4()
    assert info.value.result_code == d.ResultCode.INVALID_AVP_VALUE


def test_dictionary_codes_rfc4004() -> None:
    # RFC 4004 sections 5 and 7 (and Wireshark's diameter/mobileipv4.xml).
    assert (d.Command.AA_MOBILE_NODE, d.Command.HOME_AGENT_MIP) == (260, 262)
    expected = {
        "MIP-Reg-Request": 320,
        "MIP-Reg-Reply": 321,
        "MIP-MN-AAA-Auth": 322,
        "MIP-FA-to-HA-MSA": 328,
        "MIP-HA-to-FA-MSA": 329,
        "MIP-MN-to-HA-MSA": 331,
        "MIP-HA-to-MN-MSA": 332,
        "MIP-Mobile-Node-Address": 333,
        "MIP-Home-Agent-Address": 334,
        "MIP-Nonce": 335,
        "MIP-MN-AAA-SPI": 341,
        "MIP-Session-Key": 343,
        "MIP-Algorithm-Type": 345,
        "MIP-MSA-Lifetime": 367,
    }
    names = {v.name: v.code for v in d.AVPS.values()}
    assert {k: names[k] for k in expected} == expected
    assert (d.ResultCode.MIP_REPLY_FAILURE, d.ResultCode.END_TO_END_MIP_KEY_ENCRYPTION) == (4005, 5025)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ("0200001480000118000000000000000100000001", 5011),  # Version 2
        ("010000158000011800000000000000010000000100", 5015),  # Length not a multiple of 4
        ("0100001880000118000000000000000100000001", 5015),  # Length beyond the octets
        ("01000014a0000118000000000000000100000001", 3008),  # E on a request
        ("0100001481000118000000000000000100000001", 3008),  # a reserved flag
        ("0100001c800001180000000000000001000000010000010840000010", 5014),  # AVP past the end
        ("0100001c800001180000000000000001000000010000010840000007", 5014),  # AVP Length < 8
    ],
)
def test_refused_with_result_code(wire: str, code: int) -> None:
    with pytest.raises(d.DiameterDecodeError) as info:
        d.decode_message(bytes.fromhex(wire))
    assert info.value.result_code == code


def test_grouped_inner_cannot_run_past_group() -> None:
    inner = d.encode_avp(d.avp_u32(C.MIP_MN_AAA_SPI, 2))
    bad = inner[:5] + b"\x00\x00\x20" + inner[8:]  # inner Length 32 in a 12-octet group
    group = d.avp_octets(C.MIP_MN_AAA_AUTH, bad)
    wire = d.Message(260, True, 2, 1, 1, (group,)).encode()
    message = d.decode_message(wire)  # the message itself is fine ...
    with pytest.raises(d.DiameterDecodeError) as info:  # ... its group is not
        message.avps[0].as_grouped()
    assert info.value.result_code == d.ResultCode.INVALID_AVP_LENGTH


def test_unknown_avps_kept_and_m_bit() -> None:
    unknown_optional = d.Avp(9999, b"xyz", mandatory=False)
    unknown_vendor = d.Avp(7, b"\x01\x02", vendor=12345, mandatory=True, protected=True, reserved=3)
    message = d.Message(260, True, 2, 5, 6, (d.avp_text(C.SESSION_ID, "s"), unknown_optional, unknown_vendor))
    decoded = d.decode_message(message.encode())
    assert decoded == message  # kept, raw, in order, reserved bits too
    assert decoded.encode() == message.encode()
    known = set(d.AVPS)
    assert d.unknown_mandatory(decoded.avps, known) == unknown_vendor
    assert d.unknown_mandatory(decoded.avps[:2], known) is None


def test_repr_never_shows_values() -> None:
    avp = d.avp_octets(C.MIP_SESSION_KEY, b"top-secret-key-material")
    assert "top-secret" not in repr(avp) and "746f70" not in repr(avp)
    assert "top-secret" not in repr(d.Message(260, False, 2, avps=(avp,)))


_avps = st.recursive(
    st.builds(
        d.Avp,
        code=st.integers(0, 2**32 - 1),
        value=st.binary(max_size=40),
        vendor=st.one_of(st.just(0), st.integers(1, 2**32 - 1)),
        mandatory=st.booleans(),
        protected=st.booleans(),
        reserved=st.integers(0, 31),
    ),
    lambda inner: st.builds(
        lambda code, children: d.avp_grouped(code, children), st.integers(0, 2**32 - 1), st.lists(inner, max_size=4)
    ),
    max_leaves=10,
)
_messages = st.builds(
    d.Message,
    command=st.integers(0, 2**24 - 1),
    request=st.just(False),
    application=st.integers(0, 2**32 - 1),
    hop_by_hop=st.integers(0, 2**32 - 1),
    end_to_end=st.integers(0, 2**32 - 1),
    avps=st.lists(_avps, max_size=6).map(tuple),
    proxiable=st.booleans(),
    error=st.booleans(),
    retransmit=st.booleans(),
)


@given(_messages)
@settings(max_examples=300, deadline=None)
def test_round_trip(message: d.Message) -> None:
    wire = message.encode()
    assert d.decode_message(wire) == message
    assert d.decode_message(wire).encode() == wire
    assert d.message_length(wire[:4]) == len(wire)


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    try:
        message = d.decode_message(data)
    except d.DiameterDecodeError:
        return
    for avp in message.avps:  # every typed read fails only with the decode error too
        for read in (avp.as_u32, avp.as_u64, avp.as_text, avp.as_address, avp.as_grouped):
            try:
                read()
            except d.DiameterDecodeError:
                pass


@given(st.binary(min_size=20, max_size=120))
@settings(max_examples=500, deadline=None)
def test_garbage_behind_a_valid_header(body: bytes) -> None:
    body = body[: len(body) // 4 * 4]
    header = (d.HEADER_LENGTH + len(body)).to_bytes(3, "big")
    data = b"\x01" + header + b"\x80\x00\x01\x04" + bytes(12) + body
    try:
        d.decode_message(data)
    except d.DiameterDecodeError:
        pass


def _profile() -> VpnProfile:
    path = PathProfile(
        role=PathRole.FA_GW,
        local=IPv4Address("198.51.100.1"),
        peer=IPv4Address("203.0.113.9"),
        local_ts=(IPv4Network("10.1.0.5/32"),),
        remote_ts=(IPv4Network("192.168.10.0/24"), IPv4Network("192.168.11.0/24")),
        key_mode=KeyMode.IKEV2,
        esp_transform=EspTransform.AES_GCM_16_256,
        spi_in=0x1234,
        spi_out=0x5678,
        key_in=Secret(b"k" * 36),
        key_out=Secret(b"o" * 36),
        lifetime=3000,
        ike_proposal="aes256gcm16-prfsha256-ecp256",
        ike_psk=Secret(b"p" * 32),
        qos=QosSpec("gold", 46, 1000),
        gateway_mode=GatewayMode.DYNAMIC,
        binding_key=Secret(b"b" * 32),
    )
    return VpnProfile(
        session_id="s-1",
        home_address=IPv4Address("10.1.0.5"),
        home_agent=IPv4Address("192.0.2.1"),
        care_of_address=IPv4Address("198.51.100.1"),
        lifetime=1800,
        epoch=3,
        paths=(path,),
        fa_ha_spi=300,
        fa_ha_key=Secret(b"f" * 20),
        handoff_key=Secret(b"h" * 32),
        previous_fa=IPv4Address("198.51.100.2"),
        previous_fa_handoff_key=Secret(b"q" * 32),
        digest=bytes(range(16)),
    )


def test_profile_avps_round_trip() -> None:
    profile = _profile()
    avps = encode_profile_avps(profile)
    assert all(a.vendor == VENDOR_ID and not a.mandatory for a in avps)
    assert [a.code for a in avps if a.code == PATH_AVP] == [PATH_AVP]
    wire = d.Message(260, False, 2, avps=tuple(avps)).encode()
    assert decode_profile_avps(d.decode_message(wire).avps) == profile


def test_profile_avps_refused() -> None:
    avps = [a for a in encode_profile_avps(_profile()) if a.code != 3]  # no Aaa-Vpn-Home-Address
    with pytest.raises(ProfileAvpError) as info:
        decode_profile_avps(avps)
    assert info.value.result_code == d.ResultCode.MISSING_AVP


# --- an independent implementation: python-diameter ------------------------------------------


def test_python_diameter_reads_ours_and_we_read_its() -> None:
    from diameter.message import Message as PdMessage
    from diameter.message.commands import AaMobileNodeAnswer, AaMobileNodeRequest
    from diameter.message.commands.aa_mobile_node import MipMnAaaAuth

    # python-diameter builds an AMR; we decode it.
    amr = AaMobileNodeRequest()
    amr.header.hop_by_hop_identifier = 0x0A0B0C0D
    amr.header.end_to_end_identifier = 0x01020304
    amr.header.application_id = 2  # python-diameter leaves the header at 0 unless told
    amr.session_id = "fa1.visited.example;1;2"
    amr.auth_application_id = 2
    amr.user_name = "alice@home.example"
    amr.destination_realm = b"home.example"
    amr.origin_host = b"fa1.visited.example"
    amr.origin_realm = b"visited.example"
    amr.mip_reg_request = b"\x01\x02\x03\x04"
    amr.mip_mn_aaa_auth = MipMnAaaAuth(
        mip_mn_aaa_spi=2, mip_auth_input_data_length=4, mip_authenticator_length=16, mip_authenticator_offset=4
    )
    ours = d.decode_message(amr.as_bytes())
    assert ours.command == d.Command.AA_MOBILE_NODE and ours.request and ours.proxiable
    assert (ours.application, ours.hop_by_hop, ours.end_to_end) == (2, 0x0A0B0C0D, 0x01020304)
    assert ours.session_id == "fa1.visited.example;1;2"
    assert ours.text(C.USER_NAME) == "alice@home.example"
    assert ours.find(C.MIP_REG_REQUEST).value == b"\x01\x02\x03\x04"  # type: ignore[union-attr]
    auth = {a.code: a.as_u32() for a in ours.find(C.MIP_MN_AAA_AUTH).as_grouped()}  # type: ignore[union-attr]
    assert auth == {341: 2, 338: 4, 339: 16, 340: 4}
    assert d.unknown_mandatory(ours.avps, d.AVPS) is None
    assert ours.encode() == amr.as_bytes()

    # We build an AMA; python-diameter decodes it.
    ama = d.Message(
        d.Command.AA_MOBILE_NODE,
        False,
        2,
        0x0A0B0C0D,
        0x01020304,
        (
            d.avp_text(C.SESSION_ID, "fa1.visited.example;1;2"),
            d.avp_u32(C.AUTH_APPLICATION_ID, 2),
            d.avp_u32(C.RESULT_CODE, d.ResultCode.SUCCESS),
            d.avp_text(C.ORIGIN_HOST, "aaa.home.example"),
            d.avp_text(C.ORIGIN_REALM, "home.example"),
            d.avp_address(C.MIP_HOME_AGENT_ADDRESS, IPv4Address("192.0.2.1")),
            d.avp_address(C.MIP_MOBILE_NODE_ADDRESS, IPv4Address("10.1.0.5")),
            d.avp_u32(C.MIP_MSA_LIFETIME, 1800),
            *encode_profile_avps(_profile()),
        ),
        proxiable=True,
    )
    theirs = PdMessage.from_bytes(ama.encode())
    assert isinstance(theirs, AaMobileNodeAnswer)
    assert theirs.result_code == 2001
    assert theirs.session_id == "fa1.visited.example;1;2"
    assert theirs.mip_home_agent_address == (1, "192.0.2.1")  # (address family, text)
    assert theirs.mip_mobile_node_address == (1, "10.1.0.5")
    assert theirs.mip_msa_lifetime == 1800
    assert theirs.header.hop_by_hop_identifier == 0x0A0B0C0D
    # It re-encodes in its own AVP order, but loses none of ours (the vendor ones included).
    assert sorted(d.decode_message(theirs.as_bytes()).avps, key=d.encode_avp) == sorted(ama.avps, key=d.encode_avp)


def test_wireshark_dictionary_is_the_code_table() -> None:
    import xml.etree.ElementTree as ET
    from pathlib import Path

    from aaa_vpn.wire.diameter_profile import AVP_NAMES

    path = Path(__file__).resolve().parents[1] / "aaa_vpn" / "dictionaries" / "wireshark-diameter-aaa_vpn.xml"
    vendor = ET.parse(path).getroot()
    assert int(vendor.get("code", "")) == VENDOR_ID
    assert {int(a.get("code", "")): a.get("name") for a in vendor.iter("avp")} == AVP_NAMES


# --------------------------------------------------------------------------------------------
# Mobility security associations (RFC 4004 section 9)


def test_msa_layouts_rfc4004_section_9() -> None:
    # MIP-MN-to-HA-MSA (331): MIP-MN-HA-SPI, MIP-MN-AAA-SPI, MIP-Algorithm-Type, MIP-Replay-Mode, MIP-Nonce.
    msa = d.Msa(algorithm=2, spi=0x3957, nonce=b"\xab" * 16, replay_mode=d.REPLAY_TIMESTAMPS, aaa_spi=2)
    wire = d.encode_avp(d.encode_msa(C.MIP_MN_TO_HA_MSA, msa))
    expected = (
        "0000014b 40 000050"  # 331, M, length 8 + 4 * 12 + 24 = 80
        "000001eb 40 00000c 00003957"  # MIP-MN-HA-SPI 491
        "00000155 40 00000c 00000002"  # MIP-MN-AAA-SPI 341
        "00000159 40 00000c 00000002"  # MIP-Algorithm-Type 345 = HMAC-SHA-1
        "0000015a 40 00000c 00000002"  # MIP-Replay-Mode 346 = timestamps
        "0000014f 40 000018" + "ab" * 16  # MIP-Nonce 335
    )
    assert wire.hex() == expected.replace(" ", "")
    assert d.decode_msa(d.decode_avps(wire)[0]) == msa
    # MIP-FA-to-MN-MSA (326): MIP-FA-to-MN-SPI 319, algorithm, MIP-Session-Key 343.
    key = d.Msa(algorithm=2, spi=0x3958, session_key=b"k" * 20)
    group = d.encode_msa(C.MIP_FA_TO_MN_MSA, key)
    assert [a.code for a in group.as_grouped()] == [C.MIP_FA_TO_MN_SPI, C.MIP_ALGORITHM_TYPE, C.MIP_SESSION_KEY]
    assert d.decode_msa(group) == key
    assert "6b6b6b" not in repr(key) and "kkkk" not in repr(key)
    # MIP-HA-to-MN-MSA (332) may leave its SPI to the MN-to-HA group.
    bare = d.Msa(algorithm=2, session_key=b"k" * 20, replay_mode=2)
    assert d.decode_msa(d.encode_msa(C.MIP_HA_TO_MN_MSA, bare)) == bare


def test_msa_refusals() -> None:
    with pytest.raises(d.DiameterValueError, match="without MIP-Nonce"):
        d.encode_msa(C.MIP_MN_TO_FA_MSA, d.Msa(aaa_spi=2))
    with pytest.raises(d.DiameterValueError, match="SPI"):
        d.encode_msa(C.MIP_FA_TO_MN_MSA, d.Msa(session_key=b"k"))
    with pytest.raises(d.DiameterValueError, match="not an MSA"):
        d.encode_msa(C.MIP_NONCE, d.Msa())
    no_algorithm = d.avp_grouped(C.MIP_MN_TO_FA_MSA, [d.avp_octets(C.MIP_NONCE, b"n")])
    with pytest.raises(d.DiameterDecodeError, match="MIP-Algorithm-Type") as caught:
        d.decode_msa(no_algorithm)
    assert caught.value.result_code == d.ResultCode.MISSING_AVP
    assert caught.value.failed_avp == d.encode_avp(no_algorithm)
    empty = d.avp_grouped(C.MIP_MN_TO_FA_MSA, [d.avp_u32(C.MIP_ALGORITHM_TYPE, 2), d.avp_octets(C.MIP_NONCE, b"")])
    with pytest.raises(d.DiameterDecodeError, match="empty") as caught:
        d.decode_msa(empty)
    assert caught.value.result_code == d.ResultCode.INVALID_AVP_VALUE
    short = d.avp_grouped(
        C.MIP_FA_TO_MN_MSA,
        [
            d.avp_octets(C.MIP_FA_TO_MN_SPI, b"\x01"),
            d.avp_u32(C.MIP_ALGORITHM_TYPE, 2),
            d.avp_octets(C.MIP_SESSION_KEY, b"k"),
        ],
    )
    with pytest.raises(d.DiameterDecodeError) as caught:
        d.decode_msa(short)
    assert caught.value.result_code == d.ResultCode.INVALID_AVP_LENGTH


_msa_groups = st.sampled_from(sorted(d.MSA_KEY_GROUPS | d.MSA_NONCE_GROUPS))


@given(_msa_groups, st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=40), st.integers(0, 2**32 - 1))
def test_msa_round_trip(group: int, spi: int, secret: bytes, number: int) -> None:
    msa = d.Msa(
        algorithm=number,
        spi=spi if group in d.MSA_SPI else None,
        session_key=secret if group in d.MSA_KEY_GROUPS else b"",
        nonce=secret if group in d.MSA_NONCE_GROUPS else b"",
        replay_mode=number if group in d.MSA_REPLAY_GROUPS else None,
        aaa_spi=number if group in d.MSA_NONCE_GROUPS else None,
    )
    avp = d.decode_avps(d.encode_avp(d.encode_msa(group, msa)))[0]
    assert d.decode_msa(avp) == msa


@given(_msa_groups, st.binary(max_size=120))
@settings(max_examples=300, deadline=None)
def test_msa_garbage_raises_only_decode_error(group: int, value: bytes) -> None:
    try:
        d.decode_msa(d.Avp(group, value, mandatory=True))
    except d.DiameterDecodeError:
        pass
