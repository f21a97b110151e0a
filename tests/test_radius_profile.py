"""aaa_vpn.wire.radius_profile: wire layout, round trips, size limits, and
decoders that raise only ProfileDecodeError (property tests with Hypothesis).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pyrad.packet
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaa_vpn.model import EspTransform, Flavour, GatewayMode, KeyMode
from aaa_vpn.secret import Secret
from aaa_vpn.wire.enums import PskEncoding
from aaa_vpn.wire.profile import PathProfile, PathRole, QosSpec, VpnProfile
from aaa_vpn.wire.radius import (
    encode_reply,
    load_dictionary,
    prepare_tool_dir,
    salt_decrypt,
)
from aaa_vpn.wire.radius_profile import (
    ProfileDecodeError,
    ProfileError,
    decode_3gpp2,
    decode_profile,
    decode_tunnel_attributes,
    encode_profile,
    iter_attributes,
    parse_key_id,
    threegpp2_key_id,
)

SECRET = b"testing123"
RA = bytes.fromhex("0f403f9473978057bd83d5cb98f4227a")
VENDOR_HEX = "00007ed9"  # 32473


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def make_path(tag_seed: int = 1, **changes: object) -> PathProfile:
    path = PathProfile(
        role=PathRole.FA_HA,
        local=IPv4Address("192.0.2.1"),
        peer=IPv4Address("192.0.2.2"),
        local_ts=(IPv4Network("198.51.100.10/32"),),
        remote_ts=(IPv4Network("203.0.113.0/24"), IPv4Network("10.0.0.0/8")),
        key_mode=KeyMode.IKEV2,
        esp_transform=EspTransform.AES_GCM_16_256,
        spi_in=0x1000 + tag_seed,
        spi_out=0x2000 + tag_seed,
        key_in=Secret(bytes(range(36))),
        key_out=Secret(bytes(range(100, 164))),
        lifetime=3600,
        ike_proposal="aes256gcm16-prfsha256-x25519",
        ike_psk=Secret(b"psk-" + bytes([tag_seed]) * 28),
        qos=QosSpec("gold", 46, 10000),
        gateway_mode=GatewayMode.STATIC,
    )
    return replace(path, **changes)  # type: ignore[arg-type]


def make_profile(n_paths: int = 2, **changes: object) -> VpnProfile:
    profile = VpnProfile(
        session_id="s-1@home.example",
        home_address=IPv4Address("198.51.100.10"),
        home_agent=IPv4Address("192.0.2.2"),
        care_of_address=IPv4Address("192.0.2.1"),
        lifetime=1800,
        epoch=3,
        paths=tuple(make_path(i + 1) for i in range(n_paths)),
        mn_ha_spi=0x100,
        mn_ha_key=Secret(b"m" * 16),
        fa_ha_spi=0x101,
        fa_ha_key=Secret(b"f" * 16),
        session_root_key=Secret(bytes(range(32))),
    )
    return replace(profile, **changes)  # type: ignore[arg-type]


# --- wire layout ----------------------------------------------------------------------------


def test_aaa_vpn_wire_layout_field_by_field() -> None:
    attrs = encode_profile(make_profile(1), Flavour.AAA_VPN, SECRET, RA)
    by_type: dict[tuple[int, int], list[bytes]] = {}
    for raw in attrs:
        if raw[0] == 26:
            assert raw[1] == len(raw), f"VSA length {raw[1]} != {len(raw)}: {_hex(raw)}"
            assert raw[2:6].hex() == VENDOR_HEX, f"vendor id: {_hex(raw[2:6])}"
            assert raw[7] == len(raw) - 6, f"vendor length: {_hex(raw)}"
            by_type.setdefault((32473, raw[6]), []).append(raw)
        else:
            by_type.setdefault((0, raw[0]), []).append(raw)
    # Session-Timeout (27) = lifetime 1800 = 0x708
    assert by_type[(0, 27)] == [bytes.fromhex("1b 06 00 00 07 08")]
    # Aaa-Vpn-Home-Address (3): 26 | 12 | 00007ed9 | 03 | 06 | c6 33 64 0a
    assert by_type[(32473, 3)] == [bytes.fromhex("1a 0c 00007ed9 03 06 c633640a")]
    # Aaa-Vpn-Key-Epoch (8): untagged 32-bit integer 3
    assert by_type[(32473, 8)] == [bytes.fromhex("1a 0c 00007ed9 08 06 00000003")]
    # Aaa-Vpn-Path-SPI-In:1 (39) = 0x1001: tag 01 then 3 octets
    assert by_type[(32473, 39)] == [bytes.fromhex("1a 0c 00007ed9 27 06 01 001001")]
    # Aaa-Vpn-Path-Local:1 (33) = tag 01 || "192.0.2.1"
    assert by_type[(32473, 33)] == [bytes.fromhex("1a 12 00007ed9 21 0c 01") + b"192.0.2.1"]
    # Aaa-Vpn-Path-Remote-TS:1 (36): one attribute per prefix, in order
    assert [r[9:] for r in by_type[(32473, 36)]] == [b"203.0.113.0/24", b"10.0.0.0/8"]
    # Aaa-Vpn-Path-Key-In:1 (41): tag || salt (MSB set) || 3 blocks (36 + 1 -> 48)
    key_in = by_type[(32473, 41)][0]
    assert key_in[8] == 1 and key_in[9] & 0x80 and len(key_in) == 8 + 1 + 2 + 48
    assert salt_decrypt(key_in[9:], SECRET, RA) == bytes(range(36))
    # Aaa-Vpn-Session-Root-Key (7): untagged salt || ciphertext
    srk = by_type[(32473, 7)][0]
    assert srk[8] & 0x80 and salt_decrypt(srk[8:], SECRET, RA) == bytes(range(32))


def test_salts_are_unique_and_have_msb_set() -> None:
    profile = make_profile(31)
    attrs = encode_profile(profile, Flavour.AAA_VPN, SECRET, RA, budget=100_000)
    salts = []
    for raw in attrs:
        if raw[0] == 26 and raw[6] in (41, 42, 45):
            salts.append(raw[9:11])
        elif raw[0] == 26 and raw[6] in (7, 11, 13):
            salts.append(raw[8:10])
    assert len(salts) == 31 * 3 + 3
    assert all(s[0] & 0x80 for s in salts)
    assert len(set(salts)) == len(salts), "RFC 2868 section 3.5: salts unique within the packet"


def test_round_trip_bytes_and_list_forms() -> None:
    profile = make_profile(3)
    attrs = encode_profile(profile, Flavour.AAA_VPN, SECRET, RA)
    assert decode_profile(attrs, SECRET, RA) == profile
    assert decode_profile(b"".join(attrs), SECRET, RA) == profile
    assert decode_profile(b"".join(attrs), Secret(SECRET), RA) == profile


def test_decode_from_a_real_reply_with_other_attributes() -> None:
    profile = make_profile(2)
    attrs = encode_profile(profile, Flavour.AAA_VPN, SECRET, RA)
    other_vendor = bytes.fromhex("1a 0c 0000159f 07 06 c0000202")  # 3GPP2 HA address
    proxy_state = bytes.fromhex("21 05 616263")
    # two of our sub-attributes packed into one VSA (RFC 2865 section 5.26 allows it)
    packed = attrs[2][:2] + attrs[2][2:] + attrs[3][6:]
    packed = bytes((26, len(packed))) + packed[2:]
    reply = encode_reply(
        2,
        9,
        RA,
        SECRET,
        [proxy_state, other_vendor, attrs[0], attrs[1], packed, *attrs[4:]],
    )
    assert decode_profile(reply[20:], SECRET, RA) == profile


def test_pyrad_decodes_our_attributes_with_the_dictionary() -> None:
    # pyrad, with our dictionary, must see every value: an independent check
    # of has_tag, encrypt=2 and the vendor layout.
    profile = make_profile(2)
    attrs = encode_profile(profile, Flavour.AAA_VPN, SECRET, RA)
    reply = encode_reply(2, 9, RA, SECRET, attrs)
    pkt = pyrad.packet.AuthPacket(packet=reply, secret=SECRET, dict=load_dictionary())
    pkt.request_authenticator = RA
    assert pkt["Aaa-Vpn-Session-Id"] == ["s-1@home.example"]
    assert pkt["Aaa-Vpn-Home-Address"] == ["198.51.100.10"]
    assert pkt["Aaa-Vpn-Session-Root-Key"] == [bytes(range(32))]
    assert pkt["Aaa-Vpn-Path-SPI-In:1"] == [0x1001]
    assert pkt["Aaa-Vpn-Path-SPI-In:2"] == [0x1002]
    assert pkt["Aaa-Vpn-Path-Role:2"] == ["FA-HA"]
    assert pkt["Aaa-Vpn-Path-Remote-TS:1"] == ["203.0.113.0/24", "10.0.0.0/8"]
    key_out = pkt["Aaa-Vpn-Path-Key-Out:2"][0]
    assert (key_out if isinstance(key_out, bytes) else key_out.encode("latin-1")) == bytes(range(100, 164))
    assert pkt["Session-Timeout"] == [1800]
    assert pkt["Message-Authenticator"]


def test_rfc2868_flavour() -> None:
    profile = make_profile(2, paths=(make_path(1), make_path(2, ike_psk=None, role=PathRole.FA_GW)))
    attrs = encode_profile(profile, Flavour.RFC2868, SECRET, RA)
    # Tunnel-Type:1 = ESP (9): 40 06 01 000009
    assert attrs[0] == bytes.fromhex("40 06 01 000009")
    assert attrs[1] == bytes.fromhex("41 06 01 000001")  # Tunnel-Medium-Type:1 = IPv4
    assert attrs[2] == bytes.fromhex("42 0c 01") + b"192.0.2.1"  # Tunnel-Client-Endpoint:1
    got = decode_tunnel_attributes(attrs, SECRET, RA)
    assert got.session_timeout == 1800
    first, second = got.tunnels
    assert (first.tag, first.tunnel_type, first.medium_type) == (1, 9, 1)
    assert (first.client_endpoint, first.server_endpoint) == ("192.0.2.1", "192.0.2.2")
    assert first.password == make_path(1).ike_psk
    assert (first.assignment_id, first.preference) == ("fa-ha", 1)
    assert second.password is None and second.assignment_id == "fa-gw" and second.preference == 2


def test_rfc2868_decoder_reads_pyrad_tunnel_password() -> None:
    pkt = pyrad.packet.AuthPacket(
        code=pyrad.packet.AccessAccept,
        secret=SECRET,
        dict=load_dictionary(),
        authenticator=RA,
    )
    pkt.request_authenticator = RA
    pkt["Tunnel-Password:3"] = "tunnel-secret-42"
    pkt["Tunnel-Type:3"] = "ESP"
    pkt["Tunnel-Server-Endpoint:3"] = "192.0.2.9"
    raw = pkt.ReplyPacket()
    got = decode_tunnel_attributes(raw[20:], SECRET, RA)
    assert got.tunnels[0].tag == 3
    assert got.tunnels[0].password == Secret(b"tunnel-secret-42")
    assert got.tunnels[0].tunnel_type == 9
    assert got.tunnels[0].server_endpoint == "192.0.2.9"


def test_3gpp2_flavour() -> None:
    profile = make_profile(2)
    attrs = encode_profile(profile, Flavour.THREEGPP2, SECRET, RA)
    # 3GPP2-Home-Agent-IP-Address: 26 | 12 | 0000159f | 07 | 06 | c0000202
    assert attrs[0] == bytes.fromhex("1a 0c 0000159f 07 06 c0000202")
    got = decode_3gpp2(attrs, SECRET, RA)
    assert got.home_agent == IPv4Address("192.0.2.2")
    assert got.mn_ha_spi == 0x100 and got.mn_ha_key == Secret(b"m" * 16)
    assert got.security_level == 3
    assert got.pre_shared_secret == make_path(1).ike_psk
    assert got.session_timeout == 1800
    # pyrad with our dictionary decrypts both encrypt=2 attributes too
    reply = encode_reply(2, 1, RA, SECRET, attrs)
    pkt = pyrad.packet.AuthPacket(packet=reply, secret=SECRET, dict=load_dictionary())
    pkt.request_authenticator = RA
    assert pkt["3GPP2-MN-HA-Shared-Key"] == ["m" * 16]
    assert pkt["3GPP2-Security-Level"] == ["IPsec-Tunnels-And-Registration"]


def test_3gpp2_key_id_and_the_two_pre_shared_secret_encodings() -> None:
    """3GPP2-KeyID (26/5535/8) rides with the pre-shared secret: the FA and
    the HA as eight hex digits each, then the key's time, 32 bits (StarOS's
    layout, 20 octets as Wireshark's dictionary says). The secret itself is
    salt-encrypted (StarOS) or plain (FreeRADIUS's and Wireshark's ``string``)."""
    profile = make_profile(1)
    psk = make_path(1).ike_psk
    assert psk is not None
    salted = encode_profile(profile, Flavour.THREEGPP2, SECRET, RA, key_time=0x5F5E1000)
    key_id = b"c0000201" + b"c0000202" + bytes.fromhex("5f5e1000")
    # 26 | 28 | 0000159f | 08 | 22 | key id
    assert bytes.fromhex("1a 1c 0000159f 08 16") + key_id in salted
    got = decode_3gpp2(salted, SECRET, RA)
    assert got.key_id == key_id and got.pre_shared_secret == psk
    assert parse_key_id(key_id) == (IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), 0x5F5E1000)
    assert threegpp2_key_id(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), 0x5F5E1000) == key_id
    # the salt-encrypted form does not show the secret; the plain one is the secret, in clear
    assert psk.value not in b"".join(salted)
    plain = encode_profile(profile, Flavour.THREEGPP2, SECRET, RA, psk_encoding=PskEncoding.PLAIN, key_time=1)
    header = bytes((26, 8 + len(psk.value))) + bytes.fromhex("0000159f") + bytes((3, 2 + len(psk.value)))
    assert header + psk.value in plain
    assert decode_3gpp2(plain, SECRET, RA, PskEncoding.PLAIN).pre_shared_secret == psk
    # no time given, no KeyID; no pre-shared secret, no KeyID either
    assert decode_3gpp2(encode_profile(profile, Flavour.THREEGPP2, SECRET, RA), SECRET, RA).key_id is None
    bare = make_profile(1, paths=(make_path(1, ike_psk=None),))
    assert decode_3gpp2(encode_profile(bare, Flavour.THREEGPP2, SECRET, RA, key_time=5), SECRET, RA).key_id is None
    with pytest.raises(ProfileError, match="32-bit"):
        threegpp2_key_id(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), 1 << 32)
    with pytest.raises(ProfileDecodeError, match="3GPP2-KeyID"):
        parse_key_id(b"zz" * 8 + b"\x00" * 4)


def test_rfc2868_marks_the_tunnels_the_receiver_only_relays() -> None:
    """A tunnel whose Tunnel-Client-Endpoint is not the receiver's own address
    (the gateway's side of a route-optimised path in the HA's view) has the
    Tunnel-Assignment-Id ``relay:<role>``; the receiver's own tunnels keep
    the plain role."""
    gw_side = make_path(2, role=PathRole.FA_GW, local=IPv4Address("203.0.113.1"), peer=IPv4Address("192.0.2.1"))
    profile = make_profile(2, paths=(make_path(1, local=IPv4Address("192.0.2.2")), gw_side))
    attrs = encode_profile(profile, Flavour.RFC2868, SECRET, RA, receiver=IPv4Address("192.0.2.2"))
    own, relayed = decode_tunnel_attributes(attrs, SECRET, RA).tunnels
    assert (own.assignment_id, own.relayed, own.client_endpoint) == ("fa-ha", False, "192.0.2.2")
    assert (relayed.assignment_id, relayed.relayed, relayed.client_endpoint) == ("relay:fa-gw", True, "203.0.113.1")
    assert bytes.fromhex("52 0e 02") + b"relay:fa-gw" in attrs  # Tunnel-Assignment-Id:2
    # without a receiver nothing is marked (the encoder cannot know)
    unmarked = decode_tunnel_attributes(encode_profile(profile, Flavour.RFC2868, SECRET, RA), SECRET, RA).tunnels
    assert [t.relayed for t in unmarked] == [False, False]


def test_3gpp2_without_paths_or_mn_ha() -> None:
    profile = make_profile(0, mn_ha_spi=None, mn_ha_key=None)
    got = decode_3gpp2(encode_profile(profile, Flavour.THREEGPP2, SECRET, RA), SECRET, RA)
    assert got.security_level is None and got.pre_shared_secret is None
    assert got.mn_ha_spi is None and got.mn_ha_key is None


# --- limits ---------------------------------------------------------------------------------


def test_more_than_31_paths() -> None:
    with pytest.raises(ProfileError, match="31"):
        encode_profile(make_profile(32), Flavour.AAA_VPN, SECRET, RA, budget=100_000)


def test_tagged_integer_beyond_24_bits() -> None:
    profile = make_profile(1, paths=(make_path(1, spi_in=0x1000000),))
    with pytest.raises(ProfileError, match="SPI-In"):
        encode_profile(profile, Flavour.AAA_VPN, SECRET, RA)


@pytest.mark.parametrize("length", [240, 300])
def test_secret_beyond_salt_limit(length: int) -> None:
    profile = make_profile(1, paths=(make_path(1, key_in=Secret(b"k" * length)),))
    with pytest.raises(ProfileError, match="239"):
        encode_profile(profile, Flavour.AAA_VPN, SECRET, RA)
    assert encode_profile(
        make_profile(1, paths=(make_path(1, key_in=Secret(b"k" * 239)),)),
        Flavour.AAA_VPN,
        SECRET,
        RA,
    )


def test_string_beyond_one_attribute() -> None:
    with pytest.raises(ProfileError, match="247"):
        encode_profile(make_profile(0, session_id="x" * 248), Flavour.AAA_VPN, SECRET, RA)
    # 247 octets fit exactly: 255-octet attribute
    attrs = encode_profile(make_profile(0, session_id="x" * 247), Flavour.AAA_VPN, SECRET, RA)
    assert max(len(a) for a in attrs) == 255
    with pytest.raises(ProfileError, match="empty"):
        encode_profile(make_profile(0, session_id=""), Flavour.AAA_VPN, SECRET, RA)


def test_packet_budget() -> None:
    profile = make_profile(6)
    size = sum(map(len, encode_profile(profile, Flavour.AAA_VPN, SECRET, RA)))
    assert size < 4058
    assert encode_profile(profile, Flavour.AAA_VPN, SECRET, RA, budget=size)
    with pytest.raises(ProfileError, match="octets"):
        encode_profile(profile, Flavour.AAA_VPN, SECRET, RA, budget=size - 1)
    with pytest.raises(ProfileError, match="4096"):
        encode_profile(make_profile(31), Flavour.AAA_VPN, SECRET, RA)


def test_integer_out_of_range() -> None:
    with pytest.raises(ProfileError):
        encode_profile(make_profile(0, epoch=2**32), Flavour.AAA_VPN, SECRET, RA)
    with pytest.raises(ProfileError):
        encode_profile(make_profile(0, lifetime=-1), Flavour.RFC2868, SECRET, RA)


# --- decode errors --------------------------------------------------------------------------


def _without(attrs: list[bytes], vendor_type: int) -> list[bytes]:
    return [a for a in attrs if not (a[0] == 26 and a[6] == vendor_type)]


@pytest.mark.parametrize(
    ("vendor_type", "message"),
    [
        (1, "Session-Id"),
        (3, "Home-Address"),
        (8, "Key-Epoch"),
        (39, "SPI-In"),
        (42, "Key-Out"),
    ],
)
def test_missing_mandatory(vendor_type: int, message: str) -> None:
    attrs = _without(encode_profile(make_profile(1), Flavour.AAA_VPN, SECRET, RA), vendor_type)
    with pytest.raises(ProfileDecodeError, match=message):
        decode_profile(attrs, SECRET, RA)


def test_lifetime_falls_back_to_session_timeout() -> None:
    profile = make_profile(1)
    attrs = _without(encode_profile(profile, Flavour.AAA_VPN, SECRET, RA), 9)
    assert decode_profile(attrs, SECRET, RA) == profile
    with pytest.raises(ProfileDecodeError, match="Lifetime"):
        decode_profile([a for a in attrs if a[0] != 27], SECRET, RA)


def test_specific_decode_errors() -> None:
    attrs = encode_profile(make_profile(1), Flavour.AAA_VPN, SECRET, RA)
    spi = next(a for a in attrs if a[0] == 26 and a[6] == 39)
    bad_tag = spi[:8] + b"\x00" + spi[9:]
    with pytest.raises(ProfileDecodeError, match="tag"):
        decode_profile([*attrs, bad_tag], SECRET, RA)
    with pytest.raises(ProfileDecodeError, match="twice"):
        decode_profile([*attrs, spi], SECRET, RA)
    local = next(a for a in attrs if a[0] == 26 and a[6] == 33)
    bad_ip = local[:9] + b"192.0.2.01"
    bad_ip = bytes((26, len(bad_ip))) + bad_ip[2:7] + bytes((len(bad_ip) - 6,)) + bad_ip[8:]
    with pytest.raises(ProfileDecodeError, match="dotted-decimal"):
        decode_profile([a for a in attrs if a is not local] + [bad_ip], SECRET, RA)
    with pytest.raises(ProfileDecodeError, match=r"padding|length octet"):
        decode_profile(attrs, b"another secret", RA)
    with pytest.raises(ProfileDecodeError, match="length"):
        decode_profile(b"".join(attrs)[:-1], SECRET, RA)


# --- properties -----------------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
prefix = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: IPv4Network(((t[0] >> (32 - t[1]) << (32 - t[1])) if t[1] else 0, t[1]))
)
text = st.text(st.characters(codec="utf-8"), max_size=30)
keys = st.binary(max_size=64).map(Secret)
u24 = st.integers(0, 0xFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def paths(draw: st.DrawFn) -> PathProfile:
    return PathProfile(
        role=draw(st.sampled_from(PathRole)),
        local=draw(ipv4),
        peer=draw(ipv4),
        local_ts=tuple(draw(st.lists(prefix, max_size=3))),
        remote_ts=tuple(draw(st.lists(prefix, max_size=3))),
        key_mode=draw(st.sampled_from(KeyMode)),
        esp_transform=draw(st.sampled_from(EspTransform)),
        spi_in=draw(st.integers(0x100, 0xFFFFFF)),
        spi_out=draw(st.integers(0x100, 0xFFFFFF)),
        key_in=draw(keys),
        key_out=draw(keys),
        lifetime=draw(u24),
        ike_proposal=draw(st.none() | text),
        ike_psk=draw(st.none() | keys),
        qos=draw(st.none() | st.builds(QosSpec, text, u24, u24)),
        gateway_mode=draw(st.none() | st.sampled_from(GatewayMode)),
        binding_key=draw(st.none() | keys),
    )


profiles = st.builds(
    VpnProfile,
    session_id=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    home_address=ipv4,
    home_agent=ipv4,
    care_of_address=ipv4,
    lifetime=u32,
    epoch=u32,
    paths=st.lists(paths(), max_size=4).map(tuple),
    mn_ha_spi=st.none() | u32,
    mn_ha_key=st.none() | keys,
    fa_ha_spi=st.none() | u32,
    fa_ha_key=st.none() | keys,
    session_root_key=st.none() | keys,
    handoff_key=st.none() | keys,
    previous_fa=st.none() | ipv4,
    previous_fa_handoff_key=st.none() | keys,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=profiles,
    secret=st.binary(min_size=1, max_size=40),
    ra=st.binary(min_size=16, max_size=16),
)
def test_round_trip(profile: VpnProfile, secret: bytes, ra: bytes) -> None:
    attrs = encode_profile(profile, Flavour.AAA_VPN, secret, ra)
    assert all(2 <= len(a) <= 255 and a[1] == len(a) for a in attrs)
    assert decode_profile(attrs, secret, ra) == profile


@settings(max_examples=100, deadline=None)
@given(profile=profiles)
def test_other_flavours_decode(profile: VpnProfile) -> None:
    tunnels = decode_tunnel_attributes(encode_profile(profile, Flavour.RFC2868, SECRET, RA), SECRET, RA)
    assert [t.server_endpoint for t in tunnels.tunnels] == [str(p.peer) for p in profile.paths]
    assert [t.password for t in tunnels.tunnels] == [p.ike_psk for p in profile.paths]
    assert tunnels.session_timeout == profile.lifetime
    g = decode_3gpp2(encode_profile(profile, Flavour.THREEGPP2, SECRET, RA), SECRET, RA)
    assert (g.home_agent, g.mn_ha_spi, g.mn_ha_key) == (
        profile.home_agent,
        profile.mn_ha_spi,
        profile.mn_ha_key,
    )


DECODERS = (decode_profile, decode_tunnel_attributes, decode_3gpp2)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    for decoder in DECODERS:
        try:
            decoder(data, SECRET, RA)
        except ProfileDecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    profile=profiles,
    flavour=st.sampled_from(Flavour),
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("rid")),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_encodings_raise_only_decode_error(
    profile: VpnProfile, flavour: Flavour, edits: list[tuple[int, int, str]]
) -> None:
    data = bytearray(b"".join(encode_profile(profile, flavour, SECRET, RA)))
    for position, byte, kind in edits:
        if not data:
            break
        i = position % len(data)
        if kind == "r":
            data[i] = byte
        elif kind == "i":
            data.insert(i, byte)
        else:
            del data[i]
    for decoder in DECODERS:
        try:
            decoder(bytes(data), SECRET, RA)
        except ProfileDecodeError:
            pass


def test_iter_attributes_skips_unknown_vendors() -> None:
    data = bytes.fromhex("1a 0a 00000009 01 04 6162") + bytes.fromhex("01 04 6162")
    assert list(iter_attributes(data)) == [(0, 1, b"ab")]
    assert list(iter_attributes(data, (9,))) == [(9, 1, b"ab"), (0, 1, b"ab")]
    with pytest.raises(ProfileDecodeError):
        list(iter_attributes(bytes.fromhex("1a 06 00007ed9")))


def test_dictionary_and_tool_dir(tmp_path: os.PathLike[str]) -> None:
    d = load_dictionary()
    assert d is load_dictionary()  # cached
    assert d.attributes["Aaa-Vpn-Path-Key-In"].encrypt == 2
    assert d.attributes["Aaa-Vpn-Path-Key-In"].has_tag
    assert d.attributes["3GPP2-Pre-Shared-Secret"].encrypt == 2
    assert d.attributes["Tunnel-Password"].encrypt == 2
    assert d.attributes["User-Password"].encrypt == 1
    assert d.attributes["Message-Authenticator"].code == 80
    assert d.attributes["Error-Cause"].values.GetForward("Session-Context-Not-Found") == b"\0\0\x01\xf7"  # 503
    out = prepare_tool_dir(tmp_path)
    assert (out / "dictionary").read_text().count("VENDOR\t\tAaa-Vpn\t\t\t\t32473") == 1
    assert "3GPP2-Security-Level" in (out / "radius" / "dictionary").read_text()


def test_pyrad_packet_with_profile_after_message_authenticator() -> None:
    # the construction the interop tests use: MA first, then our raw attributes
    req = pyrad.packet.AuthPacket(code=pyrad.packet.AccessRequest, secret=SECRET, dict=load_dictionary(), id=5)
    req.add_message_authenticator()
    req.RequestPacket()
    reply = req.CreateReply()
    reply.code = pyrad.packet.AccessAccept
    reply.add_message_authenticator()
    attrs = encode_profile(make_profile(2), Flavour.AAA_VPN, SECRET, req.authenticator)
    for raw in attrs:
        OrderedDict.setdefault(reply, raw[0], []).append(raw[2:])
    raw_reply = reply.ReplyPacket()
    assert raw_reply[20:22] == b"\x50\x12"
    assert req.VerifyReply(
        pyrad.packet.AuthPacket(packet=raw_reply, secret=SECRET, dict=load_dictionary()),
        raw_reply,
        enforce_ma=True,
    )
    assert decode_profile(raw_reply[20:], SECRET, req.authenticator) == make_profile(2)
