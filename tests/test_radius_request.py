"""The one typed Access-Request (aaa_vpn.wire.radius_request) and the packet
decoder it is read with (aaa_vpn.wire.radius.decode_packet).

* Property: ``decode_access_request(decode_packet(encode(x))) == x`` for any
  valid request; arbitrary bytes raise only the project's decode errors.
* RFC 2865 section 7.2's example Access-Request (user "flopsy", CHAP) decodes
  into the values the RFC names.
* pyrad, as an independent codec, decodes what we encode and the other way round.
* An attribute whose Length runs past the packet's end is a decode error
  (RFC 2865 section 5), never accepted.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pyrad.packet
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import RequestType
from aaa_vpn.wire.radius_request import (
    AccessRequest,
    RequestDecodeError,
    decode_access_request,
    encode_access_request,
)
from aaa_vpn.wire.reader import DecodeError

SECRET = b"request-codec-secret"

ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda t: 1 <= len(t.encode()) <= 200
)
octets = st.binary(min_size=1, max_size=40)
# A complete attribute none of the typed fields claims (RADIUS types 5-17, say).
other_attribute = st.tuples(st.sampled_from([5, 6, 7, 30, 31, 61]), st.binary(min_size=0, max_size=30)).map(
    lambda tv: bytes((tv[0], len(tv[1]) + 2)) + tv[1]
)


@st.composite
def requests(draw: st.DrawFn) -> AccessRequest:
    return AccessRequest(
        nai=draw(text),
        chap_password=draw(st.none() | st.binary(min_size=17, max_size=17)),
        chap_challenge=draw(st.none() | st.binary(min_size=5, max_size=253)),
        nas_ip_address=draw(ipv4),
        nas_identifier=draw(st.none() | text),
        request_type=draw(st.none() | st.sampled_from(RequestType)),
        care_of_address=draw(st.none() | ipv4),
        home_agent=draw(st.none() | ipv4),
        session_id=draw(st.none() | text),
        previous_fa=draw(st.none() | ipv4),
        key_epoch=draw(st.none() | st.integers(0, 2**32 - 1)),
        profile_digest=draw(st.none() | st.binary(min_size=16, max_size=16)),
        threegpp2_home_agent=draw(st.none() | ipv4),
        threegpp2_foreign_agent=draw(st.none() | ipv4),
        proxy_states=tuple(draw(st.lists(octets, max_size=3))),
        extra=tuple(draw(st.lists(other_attribute, max_size=4))),
    )


@given(requests(), st.integers(0, 255), st.binary(min_size=16, max_size=16))
@settings(max_examples=300)
def test_decode_of_encode_is_the_request(request: AccessRequest, identifier: int, authenticator: bytes) -> None:
    raw = encode_access_request(request, identifier, authenticator, SECRET)
    packet = rc.decode_packet(raw)
    assert (packet.code, packet.identifier, packet.authenticator) == (rc.ACCESS_REQUEST, identifier, authenticator)
    assert rc.check_message_authenticator(packet, SECRET) is True
    assert packet.attributes[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE  # first: BlastRADIUS
    assert decode_access_request(packet) == request


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_arbitrary_bytes_raise_only_the_decode_error(data: bytes) -> None:
    try:
        packet = rc.decode_packet(data)
    except rc.RadiusDecodeError:
        return
    try:
        decode_access_request(packet)
    except RequestDecodeError:
        pass


@given(st.integers(1, 255), st.binary(min_size=0, max_size=300))
@settings(max_examples=300)
def test_arbitrary_attributes_behind_a_valid_header_raise_only_the_decode_error(code: int, body: bytes) -> None:
    data = struct.pack("!BBH", code, 1, 20 + len(body)) + bytes(16) + body
    try:
        packet = rc.decode_packet(data)
        decode_access_request(packet)
    except DecodeError as exc:
        assert isinstance(exc, rc.RadiusDecodeError), type(exc)


def test_an_attribute_running_past_the_packet_is_a_decode_error() -> None:
    # User-Name claims 10 octets; 4 are left in the packet (Length 26 = 20 + 6).
    data = struct.pack("!BBH", 1, 7, 26) + bytes(16) + bytes((1, 10)) + b"mn1@"
    with pytest.raises(rc.RadiusDecodeError, match=r"attribute 1 has length 10, 6 octets are left.*offset 20"):
        rc.decode_packet(data)
    # ... also when the datagram has more octets than Length (padding is not an attribute)
    with pytest.raises(rc.RadiusDecodeError):
        rc.decode_packet(data + b"\x00" * 8)
    # a Length below 2 cannot be skipped either
    with pytest.raises(rc.RadiusDecodeError, match="length 1"):
        rc.decode_packet(struct.pack("!BBH", 1, 7, 24) + bytes(16) + bytes((1, 1, 0, 0)))


def test_rfc2865_section_7_2_chap_request_decodes() -> None:
    # RFC 2865 section 7.2: "flopsy" with CHAP, NAS 192.168.1.16 port 20.
    raw = bytes.fromhex(
        "01 01 00 47 2a ee 86 f0 8d 0d 55 96 9c a5 97 8e"
        "0d 33 67 a2 01 08 66 6c 6f 70 73 79 03 13 16 e9"
        "75 57 c3 16 18 58 95 f2 93 ff 63 44 07 72 75 04"
        "06 c0 a8 01 10 05 06 00 00 00 14 06 06 00 00 00"
        "02 07 06 00 00 00 01"
    )
    request = decode_access_request(rc.decode_packet(raw))
    assert request.nai == "flopsy"
    assert request.chap_password == bytes.fromhex("16e97557c3161858 95f293ff63440772 75")
    assert request.nas_ip_address == IPv4Address("192.168.1.16")
    # No CHAP-Challenge: the Request Authenticator is the challenge (RFC 2865
    # section 5.3). It decodes; the home AAA refuses it as an MN-AAA proof.
    assert request.chap_challenge is None
    # NAS-Port 20, Service-Type Framed, Framed-Protocol PPP: kept, raw, in order
    assert request.extra == tuple(bytes.fromhex(a) for a in ("0506 00000014", "0606 00000002", "0706 00000001"))


def test_pyrad_decodes_what_we_encode() -> None:
    dictionary = rc.load_dictionary()
    request = AccessRequest(
        nai="mn1@home.example",
        chap_password=bytes(range(17)),
        chap_challenge=bytes(range(20)),
        nas_ip_address=IPv4Address("192.0.2.1"),
        request_type=RequestType.HA_REGISTRATION,
        care_of_address=IPv4Address("192.0.2.7"),
        session_id="5f1c",
        key_epoch=3,
        profile_digest=bytes(range(16)),
    )
    raw = encode_access_request(request, 9, bytes(range(16)), SECRET)
    theirs = pyrad.packet.AuthPacket(packet=raw, dict=dictionary, secret=SECRET)
    assert theirs["User-Name"] == ["mn1@home.example"]
    assert theirs["NAS-IP-Address"] == ["192.0.2.1"]
    assert theirs["Aaa-Vpn-Request-Type"] == ["HA-Registration"]
    assert theirs["Aaa-Vpn-Care-Of-Address"] == ["192.0.2.7"]
    assert theirs["Aaa-Vpn-Session-Id"] == ["5f1c"]
    assert theirs["Aaa-Vpn-Key-Epoch"] == [3]
    assert theirs["Aaa-Vpn-Profile-Digest"] == [bytes(range(16))]
    assert theirs.verify_message_authenticator()


def test_we_decode_what_pyrad_encodes_and_keep_what_we_do_not_name() -> None:
    dictionary = rc.load_dictionary()
    theirs = pyrad.packet.AuthPacket(id=4, secret=SECRET, dict=dictionary, authenticator=bytes(range(16)))
    theirs["User-Name"] = "mn2@home.example"
    theirs["NAS-Identifier"] = "pdsn-7"
    theirs["Calling-Station-Id"] = "001122334455"
    theirs["3GPP2-Home-Agent-IP-Address"] = "198.51.100.1"
    theirs["Aaa-Vpn-Previous-FA"] = "192.0.2.9"
    theirs["Proxy-State"] = [b"\x01\x02", b"\x03"]
    theirs.add_message_authenticator()
    raw = theirs.RequestPacket()
    packet = rc.decode_packet(raw)
    assert rc.check_message_authenticator(packet, SECRET) is True
    request = decode_access_request(packet)
    assert request.nai == "mn2@home.example" and request.nas_identifier == "pdsn-7"
    assert request.threegpp2_home_agent == IPv4Address("198.51.100.1")
    assert request.requested_home_agent == IPv4Address("198.51.100.1")
    assert request.previous_fa == IPv4Address("192.0.2.9")
    assert request.proxy_states == (b"\x01\x02", b"\x03")
    assert request.extra == (bytes((31, 14)) + b"001122334455",)  # Calling-Station-Id kept, raw


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (b"", "User-Name .* is missing"),
        (b"\x01\x03a\x01\x03b", "User-Name appears twice"),
        (b"\x01\x04\xff\xfe", "User-Name is not valid UTF-8"),
        (b"\x01\x03a" + struct.pack("!BBIBB", 26, 9, 32473, 5, 3) + b"\x01", "Aaa-Vpn-Care-Of-Address: 1 octets"),
        (b"\x01\x03a" + struct.pack("!BBIBBI", 26, 12, 32473, 2, 6, 99), "unknown Aaa-Vpn-Request-Type 99"),
        (b"\x01\x03a\x04\x05\x00\x00\x00", "NAS-IP-Address: 3 octets"),
        (b"\x01\x03a\x21\x02", "an empty Proxy-State"),
    ],
)
def test_malformed_known_attributes_name_themselves(attributes: bytes, message: str) -> None:
    raw = struct.pack("!BBH", 1, 1, 20 + len(attributes)) + bytes(16) + attributes
    with pytest.raises(RequestDecodeError, match=message):
        decode_access_request(rc.decode_packet(raw))
