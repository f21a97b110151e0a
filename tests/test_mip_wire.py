"""Mobile IPv4 wire format: vectors, properties and error cases.

Vectors are hand-computed, field by field, from the layouts of RFC 5944
sections 3.3-3.5, RFC 2794 section 2, RFC 4721 sections 4-8, RFC 3115 section
2 and docs/protocol.md section 3 (the aaa_vpn binding messages and VPN path
CVSE). Where a vector has an authenticator, the test recomputes it with the
standard library over the literal bytes, so the expected value does not come
from the code under test. Primitive checks use published vectors: RFC 2202
(HMAC-MD5) and RFC 5649 section 6 (AES key wrap with padding).

A failing vector prints the expected and received octets field by field
(:func:`assert_wire`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding, aes_key_wrap_with_padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaa_vpn.model import EspTransform, GatewayMode, KeyMode
from aaa_vpn.roles import home_plan as home_aaa
from aaa_vpn.secret import Secret
from aaa_vpn.wire.mip import (
    AaaNonce,
    AuthenticationExtension,
    BindingAcknowledge,
    BindingRequest,
    BindingStatus,
    BindingUpdate,
    BindingWarning,
    ChallengeExtension,
    CriticalVendorExtension,
    Extension,
    ExtensionType,
    GeneralizedAuthExtension,
    GeneralizedAuthSubtype,
    KeyGenAlgorithm,
    KeyGenSubtype,
    KeyReplyExtension,
    KeyRequestExtension,
    Message,
    MipDecodeError,
    MipValueError,
    NaiExtension,
    NormalVendorExtension,
    PaddingExtension,
    PreviousFaNotification,
    RegistrationFlags,
    RegistrationReply,
    RegistrationRequest,
    ReplayMethod,
    ReplyCode,
    UnknownExtension,
    UnknownNonSkippableExtension,
    decode_aaa_nonce,
    decode_binding_message,
    decode_extension,
    decode_extensions,
    decode_message,
    decode_registration_reply,
    decode_registration_request,
    encode_aaa_nonce,
    encode_extension,
    encode_extensions,
    encode_message,
    extension_spans,
    is_accepted,
)
from aaa_vpn.wire.mip_auth import (
    CHAP_SPI,
    MSA_ALGORITHMS,
    append_authentication,
    append_generalized_authentication,
    derive_aaa_key,
    find_authentication,
    hmac_md5,
    mip_authenticator,
    mn_aaa_preceding,
    mn_aaa_proof,
    mn_identifier,
    msa_algorithm,
    relay_reply,
    relay_request,
    verify_authentication,
)
from aaa_vpn.wire.mip_replay import (
    NTP_UNIX_OFFSET,
    TimestampVerdict,
    check_timestamp,
    identification_matches,
    identification_skew,
    identification_time,
    mismatch_identification,
    timestamp_identification,
)
from aaa_vpn.wire.mip_vpn import (
    CvseType,
    VpnInformationError,
    decode_vpn_path,
    encode_vpn_path,
    previous_fa,
    previous_fa_extension,
    unknown_critical_extensions,
    vpn_paths,
)
from aaa_vpn.wire.profile import VENDOR_ID, PathProfile, PathRole, QosSpec

Field = tuple[str, str]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def assert_wire(actual: bytes, fields: Sequence[Field]) -> None:
    """Assert ``actual`` is the concatenation of ``fields`` (name, hex); on a
    mismatch, fail with a field-by-field table of expected and received octets."""
    expected = b"".join(_hex(h) for _, h in fields)
    if actual == expected:
        return
    lines = [f"wire mismatch: expected {len(expected)} octets, got {len(actual)}"]
    offset = 0
    for name, text in fields:
        want = _hex(text)
        got = actual[offset : offset + len(want)]
        mark = "  " if got == want else "!!"
        lines.append(f"{mark} @{offset:<4d} {name:<34} expected {want.hex(' ')}   got {got.hex(' ') or '(missing)'}")
        offset += len(want)
    if len(actual) > offset:
        lines.append(f"!! @{offset:<4d} {'(trailing octets)':<34} got {actual[offset:].hex(' ')}")
    pytest.fail("\n".join(lines))


HOME = IPv4Address("198.51.100.10")
HA = IPv4Address("192.0.2.2")
COA = IPv4Address("192.0.2.1")
GW = IPv4Address("203.0.113.20")
NEW_FA = IPv4Address("192.0.2.33")
NAI = "mn1@home.example"
IDENT = 0xE8F0E5A1_12345678  # NTP time 2023-11-04T15:45:37Z, fraction 0x12345678
MN_HA_KEY = Secret(b"mn-ha-shared-secret")
MN_AAA_SECRET = Secret(b"mn-aaa-secret")
MN_FA_KEY = Secret(b"mn-fa-key-16-oct")
FA_HA_KEY = Secret(bytes(range(16)))
CHALLENGE = _hex("a1b2c3d4")

RRQ_FIXED: list[Field] = [
    ("Type = 1 (RRQ)", "01"),
    ("flags S|T = 0x80|0x02", "82"),
    ("Lifetime = 1800", "0708"),
    ("Home Address 198.51.100.10", "c633640a"),
    ("Home Agent 192.0.2.2", "c0000202"),
    ("Care-of Address 192.0.2.1", "c0000201"),
    ("Identification", "e8f0e5a1 12345678"),
]
NAI_EXT: list[Field] = [
    ("NAI Type = 131", "83"),
    ("NAI Length = 16", "10"),
    ("NAI 'mn1@home.example'", b"mn1@home.example".hex()),
]
MN_HA_HEADER: list[Field] = [
    ("MN-HA Type = 32", "20"),
    ("MN-HA Length = 4 + 16", "14"),
    ("MN-HA SPI = 0x100", "00000100"),
]
MN_HA_AUTHENTICATOR = "4b9a93604b439fa3f7c3ac31d6f61360"
CHALLENGE_EXT: list[Field] = [("Challenge Type = 132", "84"), ("Length = 4", "04"), ("Challenge", "a1b2c3d4")]
MN_AAA_HEADER: list[Field] = [
    ("Gen-Auth Type = 36", "24"),
    ("Subtype = 1 (MN-AAA)", "01"),
    ("Length (16) = 4 + 16", "0014"),
    ("SPI = 2 (CHAP_SPI)", "00000002"),
]
MN_AAA_AUTHENTICATOR = "f65cc598c7942f4cf07018db9d08a1f1"
MN_FA_HEADER: list[Field] = [("MN-FA Type = 33", "21"), ("Length = 20", "14"), ("SPI = 0x101", "00000101")]
MN_FA_AUTHENTICATOR = "803652c56e999b6f260925a7fc58ad7c"


def _joined(fields: Sequence[Field]) -> bytes:
    return b"".join(_hex(h) for _, h in fields)


def base_request(lifetime: int = 1800) -> RegistrationRequest:
    return RegistrationRequest(
        RegistrationFlags.S | RegistrationFlags.T, lifetime, HOME, HA, COA, IDENT, (NaiExtension(NAI),)
    )


def mn_request() -> bytes:
    """What the mobile node sends: fixed | NAI | MN-HA | challenge | MN-AAA | MN-FA."""
    data = append_authentication(encode_message(base_request()), ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    data += encode_extension(ChallengeExtension(CHALLENGE))
    data = append_generalized_authentication(data, GeneralizedAuthSubtype.MN_AAA, CHAP_SPI, MN_AAA_SECRET)
    return append_authentication(data, ExtensionType.MN_FA_AUTH, 0x101, MN_FA_KEY)


# --------------------------------------------------------------------------------------------
# Primitives against published vectors


def test_hmac_md5_rfc2202_test_case_1() -> None:
    # RFC 2202 section 2, test case 1.
    assert hmac_md5(Secret(b"\x0b" * 16), b"Hi There").hex() == "9294727a3638bb1c13f48ef8158bfc9d"
    assert mip_authenticator(Secret(b"\x0b" * 16), b"Hi There") == hmac_md5(Secret(b"\x0b" * 16), b"Hi There")


def test_hmac_sha1_rfc2202_test_case_1() -> None:
    # RFC 2202 section 3, test case 1: the whole 20 octets, never truncated.
    digest = mip_authenticator(Secret(b"\x0b" * 20), b"Hi There", KeyGenAlgorithm.HMAC_SHA1)
    assert digest.hex() == "b617318655057264e28bc0b6fb378c8ef146be00"


def test_aes_key_wrap_with_padding_rfc5649_vectors() -> None:
    # RFC 5649 section 6: the 192-bit KEK, 20- and 7-octet keys.
    kek = _hex("5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8")
    twenty = aes_key_wrap_with_padding(kek, _hex("c37b7e6492584340 bed1220780894115 5068f738"))
    assert twenty.hex() == "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"
    assert aes_key_wrap_with_padding(kek, _hex("466f7250617369")).hex() == "afbeb0f07dfbf5419200f2ccb50bb24f"


# --------------------------------------------------------------------------------------------
# Registration Request and Reply vectors


def test_registration_request_vector_fixed_part_and_nai() -> None:
    # RFC 5944 section 3.3 fixed part, RFC 2794 section 2 NAI.
    data = encode_message(base_request())
    assert_wire(data, RRQ_FIXED + NAI_EXT)
    assert decode_registration_request(data) == base_request()


def test_registration_request_vector_with_every_authenticator() -> None:
    data = mn_request()
    # Each authenticator recomputed here over the literal bytes it covers.
    covered_mn_ha = _joined(RRQ_FIXED + NAI_EXT + MN_HA_HEADER)
    assert hmac.digest(MN_HA_KEY.value, covered_mn_ha, "md5").hex() == MN_HA_AUTHENTICATOR  # RFC 5944 3.5.1
    covered_mn_aaa = covered_mn_ha + _hex(MN_HA_AUTHENTICATOR) + _joined(CHALLENGE_EXT + MN_AAA_HEADER)
    # RFC 4721 section 8: MD5(Challenge[0] || key || MD5(preceding) || Challenge[-237:]).
    chap = hashlib.md5(CHALLENGE[:1] + MN_AAA_SECRET.value + hashlib.md5(covered_mn_aaa).digest() + CHALLENGE)
    assert chap.hexdigest() == MN_AAA_AUTHENTICATOR
    covered_mn_fa = covered_mn_aaa + _hex(MN_AAA_AUTHENTICATOR) + _joined(MN_FA_HEADER)
    assert hmac.digest(MN_FA_KEY.value, covered_mn_fa, "md5").hex() == MN_FA_AUTHENTICATOR
    assert_wire(
        data,
        [
            *RRQ_FIXED,
            *NAI_EXT,
            *MN_HA_HEADER,
            ("MN-HA Authenticator", MN_HA_AUTHENTICATOR),
            *CHALLENGE_EXT,
            *MN_AAA_HEADER,
            ("MN-AAA Authenticator", MN_AAA_AUTHENTICATOR),
            *MN_FA_HEADER,
            ("MN-FA Authenticator", MN_FA_AUTHENTICATOR),
        ],
    )
    decoded = decode_registration_request(data)
    assert decoded.extensions == (
        NaiExtension(NAI),
        AuthenticationExtension(ExtensionType.MN_HA_AUTH, 0x100, _hex(MN_HA_AUTHENTICATOR)),
        ChallengeExtension(CHALLENGE),
        GeneralizedAuthExtension(GeneralizedAuthSubtype.MN_AAA, CHAP_SPI, _hex(MN_AAA_AUTHENTICATOR)),
        AuthenticationExtension(ExtensionType.MN_FA_AUTH, 0x101, _hex(MN_FA_AUTHENTICATOR)),
    )
    assert encode_message(decoded) == data


def test_registration_reply_vector() -> None:
    # RFC 5944 section 3.4: Type 3 | Code | Lifetime | Home Address | Home Agent | Identification.
    reply = RegistrationReply(ReplyCode.ACCEPTED, 1800, HOME, HA, IDENT, (NaiExtension(NAI),))
    data = encode_message(reply)
    assert_wire(
        data,
        [
            ("Type = 3 (RRP)", "03"),
            ("Code = 0 (accepted)", "00"),
            ("Lifetime = 1800", "0708"),
            ("Home Address", "c633640a"),
            ("Home Agent", "c0000202"),
            ("Identification", "e8f0e5a1 12345678"),
            *NAI_EXT,
        ],
    )
    assert decode_registration_reply(data) == reply
    assert reply.accepted


def test_every_flag_bit_in_its_place() -> None:
    # RFC 5944 section 3.3: S B D M G r T x from the most significant bit.
    expected = {"S": 0x80, "B": 0x40, "D": 0x20, "M": 0x10, "G": 0x08, "R": 0x04, "T": 0x02, "X": 0x01}
    for name, mask in expected.items():
        request = RegistrationRequest(RegistrationFlags[name], 0, HOME, HA, COA, 0)
        assert encode_message(request)[1] == mask, f"flag {name}: expected octet 1 = 0x{mask:02x}"


def test_reply_codes_known_and_unknown() -> None:
    assert ReplyCode(133) is ReplyCode.HA_IDENTIFICATION_MISMATCH
    assert ReplyCode(67) is ReplyCode.FA_MN_FAILED_AUTHENTICATION
    assert ReplyCode(104) is ReplyCode.FA_UNKNOWN_CHALLENGE
    assert ReplyCode(143) is ReplyCode.HA_REDIRECT
    assert ReplyCode(194) is ReplyCode.INVALID_HOME_AGENT_ADDRESS
    # A code no RFC we read defines still decodes, as a plain int.
    data = _hex("03 ca 0000 c633640a c0000202 0000000000000001")
    reply = decode_registration_reply(data)
    assert reply.code == 202 and not isinstance(reply.code, ReplyCode)
    assert encode_message(reply) == data
    assert is_accepted(1) and is_accepted(8) and not is_accepted(64)


# --------------------------------------------------------------------------------------------
# Extension vectors


@pytest.mark.parametrize(
    ("extension", "fields"),
    [
        (PaddingExtension(), [("Type = 0 (one-byte padding)", "00")]),
        (
            CriticalVendorExtension(VENDOR_ID, 0x0102, b"abc"),
            [
                ("CVSE Type = 38", "26"),
                ("Reserved", "00"),
                ("Length (16) = 4 + 2 + 3", "0009"),
                ("Vendor/Org-ID = 32473", "00007ed9"),
                ("Vendor-CVSE-Type", "0102"),
                ("Value", "616263"),
            ],
        ),
        (
            NormalVendorExtension(VENDOR_ID, 7, b"\xc0\x00\x02\x07"),
            [
                ("NVSE Type = 134", "86"),
                ("Length = 2 + 4 + 2 + 4", "0c"),
                ("Reserved (16)", "0000"),
                ("Vendor/Org-ID = 32473", "00007ed9"),
                ("Vendor-NVSE-Type = 7", "0007"),
                ("Value", "c0000207"),
            ],
        ),
        (
            GeneralizedAuthExtension(GeneralizedAuthSubtype.MN_AAA, 0x1234, bytes(range(16))),
            [
                ("Type = 36", "24"),
                ("Subtype = 1", "01"),
                ("Length (16) = 20", "0014"),
                ("SPI", "00001234"),
                ("Authenticator", bytes(range(16)).hex()),
            ],
        ),
        (
            AuthenticationExtension(ExtensionType.FA_HA_AUTH, 0xDEADBEEF, b"\xff" * 16),
            [("Type = 34", "22"), ("Length = 20", "14"), ("SPI", "deadbeef"), ("Authenticator", "ff" * 16)],
        ),
        (ChallengeExtension(CHALLENGE), CHALLENGE_EXT),
        (UnknownExtension(200, b"zz"), [("Type = 200", "c8"), ("Length = 2", "02"), ("Data", "7a7a")]),
        (
            KeyRequestExtension(ExtensionType.MN_FA_KEY_REQUEST, 0x3958),
            [
                ("Type = 40 (MN-FA KeyGen Request, RFC 3957 6.1)", "28"),
                ("Subtype = 1 (AAA)", "01"),
                ("Length (16) = 4", "0004"),
                ("Mobile Node SPI", "00003958"),
            ],
        ),
        (
            KeyRequestExtension(ExtensionType.MN_HA_KEY_REQUEST, 0x3957),
            [
                ("Type = 42 (MN-HA KeyGen Request, RFC 3957 6.3)", "2a"),
                ("Subtype = 1 (AAA)", "01"),
                ("Length (16) = 4", "0004"),
                ("Mobile Node SPI", "00003957"),
            ],
        ),
        (
            encode_aaa_nonce(
                ExtensionType.MN_FA_KEY_REPLY, 600, AaaNonce(CHAP_SPI, 0x3958, KeyGenAlgorithm.HMAC_SHA1, bytes(16))
            ),
            [
                ("Type = 41 (MN-FA KeyGen Reply, RFC 3957 6.2)", "29"),
                ("Subtype = 1 (AAA)", "01"),
                ("Length (16) = 4 + 4 + 4 + 2 + 16", "001e"),
                ("Lifetime = 600", "00000258"),
                ("AAA SPI = 2", "00000002"),
                ("FA SPI", "00003958"),
                ("Algorithm Identifier = 2", "0002"),
                ("Key Generation Nonce", "00" * 16),
            ],
        ),
        (
            encode_aaa_nonce(
                ExtensionType.MN_HA_KEY_REPLY,
                600,
                AaaNonce(CHAP_SPI, 0x3957, KeyGenAlgorithm.HMAC_SHA1, b"\xab" * 16, ReplayMethod.TIMESTAMPS),
            ),
            [
                ("Type = 43 (MN-HA KeyGen Reply, RFC 3957 6.4)", "2b"),
                ("Subtype = 1 (AAA)", "01"),
                ("Length (16) = 4 + 4 + 4 + 2 + 2 + 16", "0020"),
                ("Lifetime = 600", "00000258"),
                ("AAA SPI = 2", "00000002"),
                ("HA SPI", "00003957"),
                ("Algorithm Identifier = 2", "0002"),
                ("Replay Method = 2 (timestamps)", "0002"),
                ("Key Generation Nonce", "ab" * 16),
            ],
        ),
    ],
)
def test_extension_vectors(extension: Extension, fields: list[Field]) -> None:
    assert_wire(encode_extension(extension), fields)
    assert decode_extension(_joined(fields)) == extension


def test_unknown_non_skippable_extension_discards_the_message() -> None:
    # RFC 5944 section 1.8: type 39 is non-skippable and unknown here.
    data = encode_message(base_request()) + _hex("27 02 abcd")
    with pytest.raises(UnknownNonSkippableExtension) as caught:
        decode_message(data)
    assert caught.value.extension_type == 39
    assert caught.value.offset == 24 + 18
    assert "discarded" in str(caught.value)


def test_unknown_skippable_extension_round_trips_in_place() -> None:
    data = encode_message(base_request()) + _hex("ff 03 010203") + _hex("8a 00")
    decoded = decode_message(data)
    assert decoded.extensions[1:] == (UnknownExtension(255, b"\x01\x02\x03"), UnknownExtension(138, b""))
    assert encode_message(decoded) == data


@pytest.mark.parametrize(
    ("tail", "complaint"),
    [
        ("83 11 " + b"mn1@home.example".hex(), "17 octets needed"),  # NAI Length one too long
        ("20 03 000001", "SPI"),  # auth extension shorter than its SPI
        ("20", "extension length"),  # Type without Length
        ("24 01 0013 00000002" + "00" * 15, "at least 20"),  # generalized auth Length 19
        ("24 01 0030 00000002" + "00" * 16, "octets needed"),  # generalized auth Length past the end
        ("26 00 0005 00007ed9 00", "Vendor-CVSE-Type"),  # CVSE shorter than its header
        ("26 00 0006 01007ed9 0001", "high-order octet"),  # Vendor-ID high octet not 0
        ("86 07 0000 00007ed9 00", "Vendor-NVSE-Type"),
        ("83 02 ff fe", "UTF-8"),
        ("83 00", "NAI"),
        ("28 01 0003 000039", "SPI or lifetime"),  # KeyGen request shorter than its SPI
        ("2a 01 0008 00003957", "octets needed"),  # Length past the end
        ("29 01", "length"),  # KeyGen reply without Length
    ],
)
def test_malformed_extensions_raise(tail: str, complaint: str) -> None:
    data = encode_message(RegistrationRequest(RegistrationFlags(0), 0, HOME, HA, COA, 0)) + _hex(tail)
    with pytest.raises(MipDecodeError, match=complaint):
        decode_message(data)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ("", "empty"),
        ("02", "message type 2"),
        ("01 00 0000 c633640a c0000202 c0000201 00000000000000", "identification"),
        ("03 00 0000 c633640a", "home agent"),
    ],
)
def test_malformed_fixed_parts_raise(data: str, complaint: str) -> None:
    with pytest.raises(MipDecodeError, match=complaint):
        decode_message(_hex(data))


def test_construction_validates() -> None:
    with pytest.raises(MipValueError):
        RegistrationRequest(RegistrationFlags(0), 0x10000, HOME, HA, COA, 0)
    with pytest.raises(MipValueError):
        RegistrationReply(256, 0, HOME, HA, 0)
    with pytest.raises(MipValueError):
        RegistrationRequest(RegistrationFlags(0), 0, HOME, HA, COA, 1 << 64)
    with pytest.raises(MipValueError):
        GeneralizedAuthExtension(1, 2, b"short")
    with pytest.raises(MipValueError):
        AuthenticationExtension(ExtensionType.NAI, 1, b"")
    with pytest.raises(MipValueError):
        UnknownExtension(100, b"")  # non-skippable: cannot be carried blind
    with pytest.raises(MipValueError):
        UnknownExtension(131, b"x")  # known: use NaiExtension
    with pytest.raises(MipValueError):
        NaiExtension("x" * 256)
    with pytest.raises(MipValueError):
        CriticalVendorExtension(1 << 24, 1, b"")
    with pytest.raises(MipValueError):
        BindingUpdate(1, HOME, "192.0.2.1", 0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Authentication (RFC 5944 section 3.5.1, RFC 4721 sections 6 and 8)


def test_coverage_is_up_to_and_including_the_spi() -> None:
    data = mn_request()
    site = find_authentication(data, ExtensionType.MN_HA_AUTH)
    assert site is not None
    # Fixed part (24) + NAI (18) + Type, Length, SPI (6); not the authenticator.
    assert site.covered == data[: 24 + 18 + 6]
    assert site.extension.authenticator == data[48:64]
    assert verify_authentication(data, ExtensionType.MN_HA_AUTH, MN_HA_KEY, spi=0x100)
    assert verify_authentication(data, ExtensionType.MN_FA_AUTH, MN_FA_KEY)
    assert verify_authentication(
        data, ExtensionType.GENERALIZED_AUTH, MN_AAA_SECRET, subtype=GeneralizedAuthSubtype.MN_AAA
    )


def test_verification_fails_for_wrong_key_spi_or_any_covered_octet() -> None:
    data = mn_request()
    assert not verify_authentication(data, ExtensionType.MN_HA_AUTH, Secret(b"wrong"))
    assert not verify_authentication(data, ExtensionType.MN_HA_AUTH, MN_HA_KEY, spi=0x101)
    assert not verify_authentication(data, ExtensionType.FA_HA_AUTH, MN_HA_KEY)  # absent
    for offset in range(64):  # every covered octet and the authenticator itself
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        try:
            ok = verify_authentication(bytes(tampered), ExtensionType.MN_HA_AUTH, MN_HA_KEY)
        except MipDecodeError:
            continue  # the flip broke a length field: the message is discarded anyway
        assert not ok, f"flipping octet {offset} went unnoticed"


def test_mn_aaa_hmac_md5_default() -> None:
    # RFC 4721 section 6: any SPI but CHAP_SPI -> HMAC-MD5 over preceding || Type, Subtype, Length, SPI.
    base = encode_message(base_request())
    data = append_generalized_authentication(base, GeneralizedAuthSubtype.MN_AAA, 0x1000, MN_AAA_SECRET)
    covered = base + _hex("24 01 0014 00001000")
    assert data == covered + hmac.digest(MN_AAA_SECRET.value, covered, "md5")
    assert verify_authentication(data, ExtensionType.GENERALIZED_AUTH, MN_AAA_SECRET, subtype=1)
    assert mn_aaa_preceding(data) == covered


def test_mn_aaa_chap_proof_verifies_at_the_home_aaa() -> None:
    data = mn_request()
    proof = mn_aaa_proof(data)
    assert proof.spi == CHAP_SPI and proof.challenge == CHALLENGE
    decoded = decode_registration_request(data)
    preceding = mn_aaa_preceding(decoded)  # what an FA passes to the RADIUS side
    assert preceding == proof.preceding
    chap_password, chap_challenge = proof.chap_attributes()
    # The FA's attributes are what the home AAA module computes from the secret ...
    assert (chap_password, chap_challenge) == home_aaa.mn_aaa_chap_attributes(CHALLENGE, preceding, MN_AAA_SECRET)
    # ... and the home AAA accepts them, and only under the right secret.
    assert home_aaa.verify_mn_aaa_chap(chap_password, chap_challenge, MN_AAA_SECRET)
    assert not home_aaa.verify_mn_aaa_chap(chap_password, chap_challenge, Secret(b"other secret"))


def test_mn_aaa_proof_requires_the_extension() -> None:
    with pytest.raises(MipDecodeError, match="no MN-AAA"):
        mn_aaa_proof(encode_message(base_request()))


def test_fa_relays_request_per_rfc5944_3_7_2_2() -> None:
    mn = mn_request()
    # An extension meant for the FA only, after the authorization-enabling ones.
    mn_with_fa_ext = append_authentication(
        mn[:-22] + encode_extension(previous_fa_extension(NEW_FA)), ExtensionType.MN_FA_AUTH, 0x101, MN_FA_KEY
    )
    fa_ext = NormalVendorExtension(VENDOR_ID, 99, b"for the HA")
    relayed = relay_request(mn_with_fa_ext, extensions=[fa_ext], fa_ha_spi=0x300, fa_ha_key=FA_HA_KEY)
    kept = mn[:-22]  # fixed .. MN-AAA, byte for byte; MN-FA and the FA's NVSE removed
    assert relayed[: len(kept)] == kept
    assert decode_message(relayed).extensions[-2:] == (
        fa_ext,
        AuthenticationExtension(ExtensionType.FA_HA_AUTH, 0x300, relayed[-16:]),
    )
    assert relayed[len(kept) : -22] == encode_extension(fa_ext)
    assert verify_authentication(relayed, ExtensionType.FA_HA_AUTH, FA_HA_KEY, spi=0x300)
    assert verify_authentication(relayed, ExtensionType.MN_HA_AUTH, MN_HA_KEY)
    assert mn_aaa_proof(relayed) == mn_aaa_proof(mn)  # the HA can relay the same proof
    assert find_authentication(relayed, ExtensionType.MN_FA_AUTH) is None


def test_only_the_closing_fa_ha_extension_counts() -> None:
    # A mobile node cannot slip in an FA-HA extension of its own before MN-HA:
    # FA-HA (like MN-FA) is looked for as the last extension only.
    forged = encode_message(base_request()) + encode_extension(
        AuthenticationExtension(ExtensionType.FA_HA_AUTH, 0x300, b"\x00" * 16)
    )
    mn = append_authentication(forged, ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    assert find_authentication(mn, ExtensionType.FA_HA_AUTH) is None
    relayed = relay_request(mn, fa_ha_spi=0x300, fa_ha_key=FA_HA_KEY)
    site = find_authentication(relayed, ExtensionType.FA_HA_AUTH)
    assert site is not None and site.end == len(relayed)
    assert verify_authentication(relayed, ExtensionType.FA_HA_AUTH, FA_HA_KEY)


def test_fa_relays_deregistration_without_fa_ha_authentication() -> None:
    # RFC 5944 section 3.5.4: no FA-HA authentication on Lifetime 0.
    mn = append_authentication(encode_message(base_request(lifetime=0)), ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    relayed = relay_request(mn, fa_ha_spi=0x300, fa_ha_key=FA_HA_KEY)
    assert relayed == mn


def test_fa_refuses_to_relay_without_authorization_enabling_extension() -> None:
    with pytest.raises(MipDecodeError, match="authorization-enabling"):
        relay_request(encode_message(base_request()))


def test_fa_relays_reply_per_rfc5944_3_7_3_2() -> None:
    reply = RegistrationReply(ReplyCode.ACCEPTED, 1800, HOME, HA, IDENT, (NaiExtension(NAI),))
    from_ha = append_authentication(encode_message(reply), ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    mn_part = from_ha
    from_ha = append_authentication(from_ha, ExtensionType.FA_HA_AUTH, 0x300, FA_HA_KEY)
    assert verify_authentication(from_ha, ExtensionType.FA_HA_AUTH, FA_HA_KEY)
    to_mn = relay_reply(from_ha, mn_fa_spi=0x101, mn_fa_key=MN_FA_KEY)
    assert to_mn[: len(mn_part)] == mn_part
    assert find_authentication(to_mn, ExtensionType.FA_HA_AUTH) is None
    assert verify_authentication(to_mn, ExtensionType.MN_FA_AUTH, MN_FA_KEY)
    assert verify_authentication(to_mn, ExtensionType.MN_HA_AUTH, MN_HA_KEY)


# --------------------------------------------------------------------------------------------
# Authenticators under an MSA's algorithm (RFC 4004 section 9.8, RFC 3957)

#: RFC 3957 section 5: HMAC-SHA1(MN-AAA secret, nonce || NAI), nonce 100..115 -- the stdlib's value.
MSA_KEY = Secret(_hex("dc597010429a6fa76c428185dbb0c0d90561f6bf"))
SHA1_MN_HA_HEADER: list[Field] = [
    ("MN-HA Type = 32", "20"),
    ("MN-HA Length = 4 + 20", "18"),
    ("MN-HA SPI = 0x3957", "00003957"),
]
SHA1_MN_HA_AUTHENTICATOR = "862b2413e7b204533c5e31a2c8a1a80704d30832"


def test_msa_key_is_rfc3957_derivation() -> None:
    nonce = bytes(range(100, 116))
    assert hmac.digest(MN_AAA_SECRET.value, nonce + NAI.encode(), "sha1") == MSA_KEY.value
    assert derive_aaa_key(MN_AAA_SECRET, nonce, NAI.encode()) == MSA_KEY


def test_hmac_sha1_mn_ha_authenticator_vector() -> None:
    # Length 24 and a 20-octet HMAC-SHA-1 over the fixed part, NAI, Type, Length and SPI.
    data = append_authentication(
        encode_message(base_request()), ExtensionType.MN_HA_AUTH, 0x3957, MSA_KEY, KeyGenAlgorithm.HMAC_SHA1
    )
    covered = _joined(RRQ_FIXED + NAI_EXT + SHA1_MN_HA_HEADER)
    assert hmac.new(MSA_KEY.value, covered, hashlib.sha1).hexdigest() == SHA1_MN_HA_AUTHENTICATOR
    assert_wire(
        data, [*RRQ_FIXED, *NAI_EXT, *SHA1_MN_HA_HEADER, ("MN-HA Authenticator (HMAC-SHA-1)", SHA1_MN_HA_AUTHENTICATOR)]
    )
    sha1 = KeyGenAlgorithm.HMAC_SHA1
    assert verify_authentication(data, ExtensionType.MN_HA_AUTH, MSA_KEY, spi=0x3957, algorithm=sha1)
    # The same key and SPI under the default algorithm: not authentic (and no exception).
    assert not verify_authentication(data, ExtensionType.MN_HA_AUTH, MSA_KEY, spi=0x3957)
    assert not verify_authentication(data, ExtensionType.MN_HA_AUTH, Secret(b"another key"), spi=0x3957, algorithm=sha1)


def test_an_authenticator_of_the_wrong_length_is_not_authentic() -> None:
    message = encode_message(base_request())
    md5 = append_authentication(message, ExtensionType.MN_HA_AUTH, 0x3957, MSA_KEY)
    sha1 = append_authentication(message, ExtensionType.MN_HA_AUTH, 0x3957, MSA_KEY, KeyGenAlgorithm.HMAC_SHA1)
    assert len(md5) - len(message) == 2 + 4 + 16 and len(sha1) - len(message) == 2 + 4 + 20
    # The default is byte for byte what it always was.
    assert md5 == append_authentication(message, ExtensionType.MN_HA_AUTH, 0x3957, MSA_KEY, KeyGenAlgorithm.HMAC_MD5)
    assert md5[-16:] == hmac.digest(MSA_KEY.value, md5[:-16], "md5")
    assert verify_authentication(md5, ExtensionType.MN_HA_AUTH, MSA_KEY)
    assert not verify_authentication(md5, ExtensionType.MN_HA_AUTH, MSA_KEY, algorithm=KeyGenAlgorithm.HMAC_SHA1)
    # HMAC-SHA-1 cut to 16 octets (as a truncating peer would send) is authentic under neither.
    covered = message + bytes((ExtensionType.MN_HA_AUTH, 20)) + (0x3957).to_bytes(4, "big")
    truncated = covered + hmac.digest(MSA_KEY.value, covered, "sha1")[:16]
    for algorithm in (KeyGenAlgorithm.HMAC_MD5, KeyGenAlgorithm.HMAC_SHA1):
        assert not verify_authentication(truncated, ExtensionType.MN_HA_AUTH, MSA_KEY, algorithm=algorithm)
    # An algorithm this code does not compute verifies nothing, and appends nothing.
    assert not verify_authentication(sha1, ExtensionType.MN_HA_AUTH, MSA_KEY, algorithm=7)
    with pytest.raises(MipValueError):
        append_authentication(message, ExtensionType.MN_HA_AUTH, 0x3957, MSA_KEY, 7)


def test_fa_relays_reply_with_hmac_sha1_mn_fa_authentication() -> None:
    reply = RegistrationReply(ReplyCode.ACCEPTED, 1800, HOME, HA, IDENT, (NaiExtension(NAI),))
    from_ha = append_authentication(encode_message(reply), ExtensionType.MN_HA_AUTH, 0x100, MN_HA_KEY)
    from_ha = append_authentication(from_ha, ExtensionType.FA_HA_AUTH, 0x300, FA_HA_KEY)
    sha1 = KeyGenAlgorithm.HMAC_SHA1
    to_mn = relay_reply(from_ha, mn_fa_spi=0x3958, mn_fa_key=MSA_KEY, mn_fa_algorithm=sha1)
    last = decode_registration_reply(to_mn).extensions[-1]
    assert isinstance(last, AuthenticationExtension) and last.type == ExtensionType.MN_FA_AUTH
    assert to_mn[-26:-20] == bytes((33, 24)) + (0x3958).to_bytes(4, "big")
    assert last.authenticator == hmac.new(MSA_KEY.value, to_mn[:-20], hashlib.sha1).digest()
    assert verify_authentication(to_mn, ExtensionType.MN_FA_AUTH, MSA_KEY, spi=0x3958, algorithm=sha1)
    assert not verify_authentication(to_mn, ExtensionType.MN_FA_AUTH, MSA_KEY, spi=0x3958)
    # The HA's MN-HA authentication is untouched and still HMAC-MD5.
    assert verify_authentication(to_mn, ExtensionType.MN_HA_AUTH, MN_HA_KEY, spi=0x100)


def test_msa_algorithms_are_the_registry_ones() -> None:
    # MIP-Algorithm-Type's IANA registry defines only 2 (HMAC-SHA-1).
    assert msa_algorithm(2) is KeyGenAlgorithm.HMAC_SHA1
    assert MSA_ALGORITHMS == {KeyGenAlgorithm.HMAC_SHA1}
    for value in (0, 1, 3, 255, 0xFFFF, 0xFFFFFFFF):
        assert msa_algorithm(value) is None


# --------------------------------------------------------------------------------------------
# Replay protection by timestamps (RFC 5944 section 5.7)


def test_timestamp_identification_is_ntp_time() -> None:
    # The Unix epoch is NTP second 2208988800 = 0x83aa7e80 (RFC 868).
    assert timestamp_identification(0.0) == 0x83AA7E80_00000000
    # 1700000000.5: seconds 0xe8fe6f80, fraction 1/2 in the top bits, 12 random bits below.
    assert timestamp_identification(1_700_000_000.5, random_low=0xFABC) == 0xE8FE6F80_80000ABC
    assert identification_time(0xE8FE6F80_80000000, now=1_700_000_000.0) == 1_700_000_000.5


def test_check_timestamp() -> None:
    now = 1_700_000_000.0
    ident = timestamp_identification(now - 2.0)
    assert check_timestamp(ident, now).ok
    assert check_timestamp(ident, now, last_seen=ident - 1)
    replay = check_timestamp(ident, now, last_seen=ident)
    assert replay.verdict is TimestampVerdict.NOT_NEWER and "not greater" in replay.reason
    stale = check_timestamp(timestamp_identification(now - 7.5), now)
    assert stale.verdict is TimestampVerdict.OUT_OF_WINDOW and "behind" in stale.reason
    ahead = check_timestamp(timestamp_identification(now + 30), now, tolerance=7.0)
    assert not ahead and "ahead" in ahead.reason and ahead.skew == pytest.approx(30, abs=1e-3)
    assert check_timestamp(timestamp_identification(now + 6.9), now)


def test_timestamps_across_the_ntp_era_wrap() -> None:
    # NTP era 0 ends at Unix time 2085978496 (2036-02-07T06:28:16Z).
    wrap = (1 << 32) - NTP_UNIX_OFFSET
    before = timestamp_identification(wrap - 1.0)
    after = timestamp_identification(wrap + 1.0)
    assert after >> 32 == 1 and before >> 32 == 0xFFFFFFFF  # seconds wrapped
    assert check_timestamp(before, wrap + 2.0).ok
    assert check_timestamp(after, wrap + 2.0, last_seen=before).ok
    assert check_timestamp(before, wrap + 2.0, last_seen=after).verdict is TimestampVerdict.NOT_NEWER
    assert identification_time(after, wrap) == pytest.approx(wrap + 1.0, abs=1e-5)


def test_mismatch_reply_identification_rfc5944_5_7_1() -> None:
    now = 1_700_000_000.0
    request = 0x11111111_DEADBEEF  # a clock far off
    reply = mismatch_identification(request, now)
    assert reply & 0xFFFFFFFF == 0xDEADBEEF  # low 32 bits copied
    assert reply >> 32 == 0xE8FE6F80  # the home agent's own time in the high 32
    assert identification_matches(reply, request)
    assert not identification_matches(reply ^ 1, request)
    # The mobile node learns how far off it is.
    assert identification_skew(reply, now) == pytest.approx(0.0, abs=1.0)


# --------------------------------------------------------------------------------------------
# Binding messages (docs/protocol.md section 3.6)

BINDING_HEADER_PEN = ("Vendor/Org-ID = 32473", "00007ed9")


def test_binding_update_vector() -> None:
    bu = BindingUpdate(600, HOME, COA, IDENT, acknowledge=True)
    assert_wire(
        encode_message(bu),
        [
            ("Type = 255 (experimental, RFC 4064)", "ff"),
            ("Sub-Type = 3 (Binding Update)", "03"),
            ("Flags: A", "80"),
            ("Status (unused) = 0", "00"),
            BINDING_HEADER_PEN,
            ("Lifetime = 600", "0258"),
            ("Reserved", "0000"),
            ("Home Address", "c633640a"),
            ("Care-of Address", "c0000201"),
            ("Identification", "e8f0e5a1 12345678"),
        ],
    )


def test_binding_acknowledge_vector() -> None:
    ba = BindingAcknowledge(BindingStatus.VPN_INFORMATION_INVALID, 0, HOME, COA, IDENT)
    assert_wire(
        encode_message(ba),
        [
            ("Type = 255", "ff"),
            ("Sub-Type = 4 (Binding Acknowledge)", "04"),
            ("Flags = 0", "00"),
            ("Status = 160", "a0"),
            BINDING_HEADER_PEN,
            ("Lifetime = 0", "0000"),
            ("Reserved", "0000"),
            ("Home Address", "c633640a"),
            ("Care-of Address", "c0000201"),
            ("Identification", "e8f0e5a1 12345678"),
        ],
    )


def test_binding_warning_request_and_previous_fa_vectors() -> None:
    assert_wire(
        encode_message(BindingWarning(HOME, GW, 1)),
        [
            ("Type, Sub-Type 1, Flags, Status", "ff 01 00 00"),
            BINDING_HEADER_PEN,
            ("Home Address", "c633640a"),
            ("Target Address 203.0.113.20", "cb007114"),
            ("Identification", "00000000 00000001"),
        ],
    )
    assert_wire(
        encode_message(BindingRequest(HOME, 2)),
        [
            ("Type, Sub-Type 2, Flags, Status", "ff 02 00 00"),
            BINDING_HEADER_PEN,
            ("Home Address", "c633640a"),
            ("Identification", "00000000 00000002"),
        ],
    )
    assert_wire(
        encode_message(PreviousFaNotification(30, HOME, NEW_FA, 3, acknowledge=False)),
        [
            ("Type, Sub-Type 5, Flags (no A), Status", "ff 05 00 00"),
            BINDING_HEADER_PEN,
            ("Lifetime = 30", "001e"),
            ("Reserved", "0000"),
            ("Home Address", "c633640a"),
            ("Care-of Address (new FA) 192.0.2.33", "c0000221"),
            ("Identification", "00000000 00000003"),
        ],
    )


def test_authenticated_binding_update_with_vpn_path() -> None:
    kek = Secret(bytes(range(32)))
    bu = BindingUpdate(600, HOME, COA, IDENT, extensions=(encode_vpn_path(_path(), kek),))
    data = append_generalized_authentication(encode_message(bu), GeneralizedAuthSubtype.BINDING, 0x400, FA_HA_KEY)
    assert verify_authentication(data, ExtensionType.GENERALIZED_AUTH, FA_HA_KEY, subtype=255, spi=0x400)
    decoded = decode_binding_message(data)
    assert isinstance(decoded, BindingUpdate) and decoded.acknowledge
    assert vpn_paths(decoded.extensions, kek) == (_path(),)
    assert unknown_critical_extensions(decoded.extensions) == ()


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ("ff 03 80 00 00007eda 0000 0000 c633640a c0000201 0000000000000000", "not aaa_vpn's"),
        ("ff 09 00 00 00007ed9", "sub-type 9"),
        ("ff 01 80 00 00007ed9 c633640a cb007114 0000000000000000", "undefined flag"),
        ("ff 03 40 00 00007ed9 0000 0000 c633640a c0000201 0000000000000000", "undefined flag"),
        ("ff 03 80 07 00007ed9 0000 0000 c633640a c0000201 0000000000000000", "status"),
        ("ff 03 80 00 00007ed9 0000 0001 c633640a c0000201 0000000000000000", "reserved"),
        ("ff 02 00 00 00007ed9 c633640a 00000000", "identification"),
    ],
)
def test_malformed_binding_messages_raise(data: str, complaint: str) -> None:
    with pytest.raises(MipDecodeError, match=complaint):
        decode_message(_hex(data))


def test_binding_status_unknown_value_stays_int() -> None:
    data = _hex("ff 04 00 c8 00007ed9 0000 0000 c633640a c0000201 0000000000000000")
    ba = decode_message(data)
    assert isinstance(ba, BindingAcknowledge) and ba.status == 200 and not ba.accepted
    assert encode_message(ba) == data


# --------------------------------------------------------------------------------------------
# The VPN path CVSE (docs/protocol.md section 3.7)


def _path(**changes: object) -> PathProfile:
    values: dict[str, object] = {
        "role": PathRole.FA_GW,
        "local": GW,
        "peer": COA,
        "local_ts": (IPv4Network("203.0.113.0/24"),),
        "remote_ts": (IPv4Network("198.51.100.10/32"),),
        "key_mode": KeyMode.IKEV2,
        "esp_transform": EspTransform.AES_GCM_16_128,
        "spi_in": 0x1001,
        "spi_out": 0x2002,
        "key_in": Secret(bytes([0x11]) * 20),
        "key_out": Secret(bytes([0x22]) * 20),
        "lifetime": 3600,
        "ike_proposal": "aes128gcm16-prfsha256-x25519",
        "ike_psk": Secret(bytes([0x33]) * 32),
        "qos": QosSpec("gold", 46, 1000),
        "gateway_mode": GatewayMode.DYNAMIC,
    }
    values.update(changes)
    return PathProfile(**values)  # type: ignore[arg-type]


def test_vpn_path_cvse_vector() -> None:
    kek = Secret(bytes(range(32)))
    cvse = encode_vpn_path(_path(), kek)
    assert (cvse.vendor_id, cvse.vendor_type) == (VENDOR_ID, CvseType.VPN_PATH)
    proposal = b"aes128gcm16-prfsha256-x25519"
    clear: list[Field] = [
        ("Role = 3 (FA-GW)", "03"),
        ("Key Mode = 2 (IKEv2)", "02"),
        ("ESP Transform = 1 (aes128gcm16)", "01"),
        ("Flags P|K|Q|G|D", "f8"),
        ("Local Address 203.0.113.20", "cb007114"),
        ("Peer Address 192.0.2.1", "c0000201"),
        ("SPI In", "00001001"),
        ("SPI Out", "00002002"),
        ("SA Lifetime = 3600", "00000e10"),
        ("Local TS count = 1", "01"),
        ("Remote TS count = 1", "01"),
        ("Reserved", "0000"),
        ("Local TS /24", "18"),
        ("Local TS 203.0.113.0", "cb007100"),
        ("Remote TS /32", "20"),
        ("Remote TS 198.51.100.10", "c633640a"),
        ("Proposal Length = 28", "1c"),
        ("IKE proposal", proposal.hex()),
        ("DSCP = 46", "2e"),
        ("Rate kbps = 1000", "000003e8"),
        ("QoS name length = 4", "04"),
        ("QoS name 'gold'", b"gold".hex()),
    ]
    # SPIs (8) + 2 x 20 octets of AES-GCM key material + 32-octet PSK = 80 -> 88 wrapped.
    plain = _hex("00001001 00002002") + b"\x11" * 20 + b"\x22" * 20 + b"\x33" * 32
    wrapped = aes_key_wrap_with_padding(bytes(range(32)), plain)
    assert_wire(cvse.value, [*clear, ("Wrapped Length = 88", "0058"), ("Wrapped keys (RFC 5649)", wrapped.hex())])
    assert aes_key_unwrap_with_padding(bytes(range(32)), cvse.value[-88:]) == plain
    assert decode_vpn_path(cvse, kek) == _path()


def test_vpn_path_minimal_round_trip() -> None:
    kek = Secret(b"k" * 16)
    path = _path(
        key_mode=KeyMode.MANUAL,
        esp_transform=EspTransform.AES_CBC_256_HMAC_SHA256,
        key_in=Secret(b"i" * 64),
        key_out=Secret(b"o" * 64),
        ike_proposal=None,
        ike_psk=None,
        qos=None,
        gateway_mode=None,
        local_ts=(),
        remote_ts=(),
    )
    assert decode_vpn_path(encode_vpn_path(path, kek), kek) == path


def test_vpn_path_keys_need_the_right_wrapping_key_and_spis() -> None:
    kek = Secret(bytes(range(32)))
    cvse = encode_vpn_path(_path(), kek)
    with pytest.raises(VpnInformationError, match="unwrap"):
        decode_vpn_path(cvse, Secret(bytes(32)))
    # Keys moved to a path with other SPIs (same wrapping key) are refused.
    other = encode_vpn_path(_path(spi_in=0x9999), kek)
    moved_value = other.value[:16] + cvse.value[16:]  # other's clear SPI In (offset 12), cvse's wrapped keys
    moved = CriticalVendorExtension(VENDOR_ID, CvseType.VPN_PATH, moved_value)
    with pytest.raises(VpnInformationError, match="other SPIs"):
        decode_vpn_path(moved, kek)


def test_vpn_path_rejects_bad_key_lengths() -> None:
    with pytest.raises(MipValueError, match="key_in"):
        encode_vpn_path(_path(key_in=Secret(b"short")), Secret(b"k" * 16))
    with pytest.raises(MipValueError, match="wrapping key"):
        encode_vpn_path(_path(), Secret(b"k" * 15))


def test_previous_fa_nvse_and_unknown_cvse() -> None:
    extensions = (previous_fa_extension(NEW_FA), CriticalVendorExtension(9, 1, b""))
    assert encode_extension(extensions[0]) == _hex("86 0c 0000 00007ed9 0001 c0000221")
    assert previous_fa(extensions) == NEW_FA
    assert previous_fa(()) is None
    assert unknown_critical_extensions(extensions) == (extensions[1],)


# --------------------------------------------------------------------------------------------
# AAA registration keys (RFC 3957)


def test_aaa_nonce_reply_fields_and_refusals() -> None:
    nonce = AaaNonce(CHAP_SPI, 0x3957, KeyGenAlgorithm.HMAC_SHA1, b"n" * 16, ReplayMethod.TIMESTAMPS)
    reply = encode_aaa_nonce(ExtensionType.MN_HA_KEY_REPLY, 300, nonce)
    assert reply.subtype is KeyGenSubtype.AAA and reply.lifetime == 300
    assert decode_aaa_nonce(reply) == nonce
    with pytest.raises(MipValueError, match="replay method"):
        encode_aaa_nonce(ExtensionType.MN_FA_KEY_REPLY, 300, nonce)
    with pytest.raises(MipValueError, match="replay method"):
        encode_aaa_nonce(ExtensionType.MN_HA_KEY_REPLY, 300, AaaNonce(2, 3, 2, b"n"))
    with pytest.raises(MipDecodeError, match="subtype 7"):
        decode_aaa_nonce(KeyReplyExtension(ExtensionType.MN_FA_KEY_REPLY, 1, 7, bytes(20)))
    with pytest.raises(MipDecodeError, match="without a nonce"):
        decode_aaa_nonce(KeyReplyExtension(ExtensionType.MN_FA_KEY_REPLY, 1, 1, bytes(10)))
    with pytest.raises(MipDecodeError, match="replay method"):
        decode_aaa_nonce(KeyReplyExtension(ExtensionType.MN_HA_KEY_REPLY, 1, 1, bytes(11)))
    with pytest.raises(MipValueError):
        KeyRequestExtension(ExtensionType.MN_FA_KEY_REPLY, 1)
    with pytest.raises(MipValueError):
        KeyReplyExtension(ExtensionType.MN_HA_KEY_REQUEST, 1)


def test_aaa_key_derivation_rfc3957_section_5() -> None:
    # key = HMAC-SHA1(AAA-key, Key Generation Nonce || NAI), recomputed with the standard library.
    nonce = bytes(range(16))
    expected = hmac.new(MN_AAA_SECRET.value, nonce + NAI.encode(), hashlib.sha1).digest()
    request = base_request()
    assert mn_identifier(request) == NAI.encode()
    assert derive_aaa_key(MN_AAA_SECRET, nonce, mn_identifier(request)).value == expected
    assert len(expected) == 20
    # Without an NAI the identifier is the home address.
    bare = RegistrationRequest(RegistrationFlags(0), 0, HOME, HA, COA, 0)
    assert mn_identifier(bare) == HOME.packed
    assert derive_aaa_key(MN_AAA_SECRET, nonce, mn_identifier(bare)) != derive_aaa_key(
        MN_AAA_SECRET, nonce, mn_identifier(request)
    )


# --------------------------------------------------------------------------------------------
# Properties (Hypothesis)

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
addresses = u32.map(IPv4Address)
nais = st.text(min_size=1, max_size=60)

extensions: st.SearchStrategy[Extension] = st.one_of(
    st.just(PaddingExtension()),
    st.builds(NaiExtension, nais),
    st.builds(AuthenticationExtension, st.sampled_from(list(ExtensionType)[1:4]), u32, st.binary(max_size=251)),
    st.builds(GeneralizedAuthExtension, st.integers(0, 255), u32, st.binary(min_size=16, max_size=300)),
    st.builds(ChallengeExtension, st.binary(max_size=255)),
    st.builds(
        CriticalVendorExtension,
        st.integers(0, 0xFFFFFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=400),
        st.integers(0, 255),
    ),
    st.builds(
        NormalVendorExtension,
        st.integers(0, 0xFFFFFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=247),
        st.integers(0, 0xFFFF),
    ),
    st.builds(
        UnknownExtension,
        st.integers(128, 255).filter(lambda t: t not in (131, 132, 134)),
        st.binary(max_size=255),
    ),
    st.builds(
        KeyRequestExtension,
        st.sampled_from([ExtensionType.MN_FA_KEY_REQUEST, ExtensionType.MN_HA_KEY_REQUEST]),
        u32,
        st.integers(0, 255),
        st.binary(max_size=40),
    ),
    st.builds(
        KeyReplyExtension,
        st.sampled_from([ExtensionType.MN_FA_KEY_REPLY, ExtensionType.MN_HA_KEY_REPLY]),
        u32,
        st.integers(0, 255),
        st.binary(max_size=60),
    ),
)
extension_lists = st.lists(extensions, max_size=6).map(tuple)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        RegistrationRequest,
        st.integers(0, 255).map(RegistrationFlags),
        st.integers(0, 0xFFFF),
        addresses,
        addresses,
        addresses,
        u64,
        extension_lists,
    ),
    st.builds(
        RegistrationReply, st.integers(0, 255), st.integers(0, 0xFFFF), addresses, addresses, u64, extension_lists
    ),
    st.builds(BindingWarning, addresses, addresses, u64, extension_lists),
    st.builds(BindingRequest, addresses, u64, extension_lists),
    st.builds(BindingUpdate, st.integers(0, 0xFFFF), addresses, addresses, u64, st.booleans(), extension_lists),
    st.builds(
        PreviousFaNotification, st.integers(0, 0xFFFF), addresses, addresses, u64, st.booleans(), extension_lists
    ),
    st.builds(
        BindingAcknowledge, st.integers(0, 255), st.integers(0, 0xFFFF), addresses, addresses, u64, extension_lists
    ),
)


@given(extensions)
def test_extension_round_trip(extension: Extension) -> None:
    assert decode_extension(encode_extension(extension)) == extension


@given(extension_lists)
def test_extension_list_round_trip(values: tuple[Extension, ...]) -> None:
    assert decode_extensions(encode_extensions(values)) == values


@given(messages)
def test_message_round_trip(message: Message) -> None:
    data = encode_message(message)
    assert decode_message(data) == message
    spans = extension_spans(data)
    assert [s.extension for s in spans] == list(message.extensions)
    assert b"".join(data[s.start : s.end] for s in spans) == encode_extensions(message.extensions)


def _decodes_losslessly_or_raises(data: bytes) -> None:
    try:
        message = decode_message(data)
    except MipDecodeError:
        return
    assert encode_message(message) == data  # whatever decodes is kept byte for byte


@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    _decodes_losslessly_or_raises(data)


@given(
    st.sampled_from(
        [
            encode_message(RegistrationRequest(RegistrationFlags(0), 0, HOME, HA, COA, 0)),
            encode_message(RegistrationReply(0, 0, HOME, HA, 0)),
            encode_message(BindingUpdate(1, HOME, COA, 0)),
            encode_message(BindingWarning(HOME, GW, 0)),
        ]
    ),
    st.binary(max_size=120),
)
def test_arbitrary_extension_bytes_raise_only_decode_error(fixed: bytes, tail: bytes) -> None:
    # A valid fixed part, so that the fuzzing reaches the extension parser.
    _decodes_losslessly_or_raises(fixed + tail)


@given(st.binary(max_size=80))
def test_arbitrary_single_extension_bytes(data: bytes) -> None:
    try:
        extension = decode_extension(data)
    except MipDecodeError:
        return
    assert encode_extension(extension) == data


@given(messages, st.data())
def test_mutated_messages_raise_only_decode_error(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(message))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    _decodes_losslessly_or_raises(bytes(encoded[:cut]))


networks = st.builds(lambda a, p: IPv4Network((a, p), strict=False), u32, st.integers(0, 32))


@st.composite
def paths(draw: st.DrawFn) -> PathProfile:
    transform = draw(st.sampled_from(list(EspTransform)))
    keymat = st.binary(min_size=transform.keymat_length, max_size=transform.keymat_length).map(Secret)
    text = st.text(min_size=1, max_size=40)
    return PathProfile(
        role=draw(st.sampled_from(list(PathRole))),
        local=draw(addresses),
        peer=draw(addresses),
        local_ts=tuple(draw(st.lists(networks, max_size=4))),
        remote_ts=tuple(draw(st.lists(networks, max_size=4))),
        key_mode=draw(st.sampled_from(list(KeyMode))),
        esp_transform=transform,
        spi_in=draw(u32),
        spi_out=draw(u32),
        key_in=draw(keymat),
        key_out=draw(keymat),
        lifetime=draw(u32),
        ike_proposal=draw(st.none() | text),
        ike_psk=draw(st.none() | st.binary(max_size=64).map(Secret)),
        qos=draw(st.none() | st.builds(QosSpec, text, st.integers(0, 63), u32)),
        gateway_mode=draw(st.none() | st.sampled_from(list(GatewayMode))),
    )


KEK = Secret(bytes(range(16)))


@given(paths())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_vpn_path_round_trip(path: PathProfile) -> None:
    cvse = encode_vpn_path(path, KEK)
    assert decode_extension(encode_extension(cvse)) == cvse
    assert decode_vpn_path(cvse, KEK) == path


@given(st.binary(max_size=200))
def test_arbitrary_vpn_path_values_raise_only_decode_error(value: bytes) -> None:
    try:
        decode_vpn_path(CriticalVendorExtension(VENDOR_ID, CvseType.VPN_PATH, value), KEK)
    except MipDecodeError:
        pass


@given(
    st.sampled_from([ExtensionType.MN_FA_KEY_REPLY, ExtensionType.MN_HA_KEY_REPLY]),
    u32,
    st.builds(AaaNonce, u32, u32, st.integers(0, 0xFFFF), st.binary(min_size=1, max_size=40)),
    st.integers(0, 0xFFFF),
)
def test_aaa_nonce_round_trip(reply_type: ExtensionType, lifetime: int, nonce: AaaNonce, replay: int) -> None:
    if reply_type == ExtensionType.MN_HA_KEY_REPLY:
        nonce = AaaNonce(nonce.aaa_spi, nonce.agent_spi, nonce.algorithm, nonce.nonce, replay)
    extension = encode_aaa_nonce(reply_type, lifetime, nonce)
    decoded = decode_extension(encode_extension(extension))
    assert isinstance(decoded, KeyReplyExtension) and decoded == extension
    assert decode_aaa_nonce(decoded) == nonce


@given(st.sampled_from([ExtensionType.MN_FA_KEY_REPLY, ExtensionType.MN_HA_KEY_REPLY]), st.binary(max_size=40))
def test_arbitrary_aaa_nonce_data_raises_only_decode_error(reply_type: ExtensionType, data: bytes) -> None:
    try:
        decode_aaa_nonce(KeyReplyExtension(reply_type, 0, KeyGenSubtype.AAA, data))
    except MipDecodeError:
        pass


@given(messages)
def test_appended_authenticator_verifies(message: Message) -> None:
    data = append_authentication(encode_message(message), ExtensionType.FA_HA_AUTH, 0x1234, FA_HA_KEY)
    site = find_authentication(data, ExtensionType.FA_HA_AUTH)
    assert site is not None and site.end == len(data)
    assert verify_authentication(data, ExtensionType.FA_HA_AUTH, FA_HA_KEY, spi=0x1234)


@given(messages, st.sampled_from(list(KeyGenAlgorithm)))
def test_appended_authenticator_verifies_under_its_algorithm_only(message: Message, algorithm: KeyGenAlgorithm) -> None:
    data = append_authentication(encode_message(message), ExtensionType.MN_FA_AUTH, 0x3958, MSA_KEY, algorithm)
    other = KeyGenAlgorithm.HMAC_MD5 if algorithm == KeyGenAlgorithm.HMAC_SHA1 else KeyGenAlgorithm.HMAC_SHA1
    assert verify_authentication(data, ExtensionType.MN_FA_AUTH, MSA_KEY, spi=0x3958, algorithm=algorithm)
    assert not verify_authentication(data, ExtensionType.MN_FA_AUTH, MSA_KEY, spi=0x3958, algorithm=other)


@given(messages, st.binary(max_size=40), st.integers(0, 0xFFFF))
def test_any_authenticator_under_any_algorithm_is_a_plain_verdict(
    message: Message, authenticator: bytes, algorithm: int
) -> None:
    extension = AuthenticationExtension(ExtensionType.MN_HA_AUTH, 0x3957, authenticator)
    data = encode_message(message) + encode_extension(extension)
    site = find_authentication(data, ExtensionType.MN_HA_AUTH)
    assert site is not None
    verdict = verify_authentication(data, ExtensionType.MN_HA_AUTH, MSA_KEY, algorithm=algorithm)
    digest = {1: "md5", 2: "sha1"}.get(algorithm)
    found = site.extension.authenticator  # ours, or an MN-HA extension the message already had
    expected = digest is not None and found == hmac.digest(MSA_KEY.value, site.covered, digest)
    assert verdict is expected
