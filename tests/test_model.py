"""Provisioning records validate themselves (model.py)."""

from __future__ import annotations

import unicodedata
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aaa_vpn.model import (
    Client,
    ClientRole,
    EspTransform,
    QosClass,
    Service,
    User,
    ValidationError,
    check_nai,
    nai_realm,
)
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.nai import MAX_NAI_OCTETS, nai_problem
from aaa_vpn.wire.radius_request import AccessRequest, RequestError, decode_access_request, encode_access_request


def test_keymat_lengths_follow_rfc4106_and_rfc4868() -> None:
    for transform in EspTransform:
        expected = transform.encryption_key_length + (4 if transform.is_aead else 32)
        assert transform.keymat_length == expected
        assert EspTransform.from_code(transform.code) is transform
    assert EspTransform.AES_GCM_16_256.keymat_length == 36  # RFC 4106 section 8.1
    with pytest.raises(ValueError, match="unknown ESP transform"):
        EspTransform.from_code(99)


@pytest.mark.parametrize(
    ("nai", "why"),
    [
        ("mn1", "expected user@realm"),
        ("@home.example", "expected user@realm"),
        ("mn1@", "the realm is empty"),
        ("a b@home.example", "U\\+0020"),
        ("mn1@home..example", "empty label"),
        ("", "expected user@realm"),
        ("mn1@localhost", "at least two labels"),  # RFC 7542 section 2.2: utf8-realm
        ("mn1@-home.example", "inner hyphens"),
        ("mn1@home.example.", "empty label"),
        (".mn1@home.example", "empty part"),
        ("mn1@home@home.example", "inner hyphens"),
        ("mn\u200b1@home.example", "U\\+200B"),  # zero-width space (Cf)
        ("mn1\u202e@home.example", "U\\+202E"),  # right-to-left override (Cf)
        ("mn1\u00a0@home.example", "U\\+00A0"),  # no-break space (Zs)
        ("jose\u0301@home.example", "Normalization Form C"),  # NFD: e + combining acute
        ("\u00e9" * 127 + "@home.example", "267 octets of UTF-8; a NAI is at most 253"),
    ],
)
def test_bad_nais_are_refused(nai: str, why: str) -> None:
    with pytest.raises(ValidationError, match=f"invalid NAI .*{why}"):
        check_nai(nai)


@pytest.mark.parametrize(
    "nai",
    [
        "mn1@home.example",
        "jos\u00e9@home.example",  # RFC 7542 allows UTF-8 in the username
        "\u7528\u6237@\u4f8b\u5b50.\u4e2d\u56fd",  # and in the realm's labels
        "mn1@b\u00fccher.example",
        "first.last+tag@sub.home-domain.example",
        "visited.example!mn1@home.example",  # a decorated NAI (RFC 7542 section 3.3.1)
        "a" * (MAX_NAI_OCTETS - len("@home.example")) + "@home.example",
    ],
)
def test_unicode_and_long_nais_are_accepted(nai: str) -> None:
    assert check_nai(nai) == nai
    assert nai_realm(nai) == nai.rpartition("@")[2].lower()


#: NAIs the rules accept: usernames and realm labels of ASCII and non-ASCII characters.
_ATEXT = st.sampled_from("abcXYZ019!#$%&'*+-/=?^_`{|}~") | st.characters(min_codepoint=0x80)
_RTEXT = st.sampled_from("abcXYZ019") | st.characters(min_codepoint=0x80)
_NAIS = st.builds(
    lambda user, labels: unicodedata.normalize("NFC", ".".join(user) + "@" + ".".join(labels)),
    st.lists(st.text(_ATEXT, min_size=1, max_size=8), min_size=1, max_size=3),
    st.lists(st.text(_RTEXT, min_size=1, max_size=8), min_size=2, max_size=3),
)


@given(_NAIS)
def test_every_nai_the_model_accepts_fits_the_user_name_and_the_mobile_ip_nai_extension(nai: str) -> None:
    """The model and the wire agree: a NAI that can be provisioned can be sent
    (User-Name, RFC 2865 section 5.1; NAI extension, RFC 2794) and decodes as
    the same string, so the home AAA's lookup finds the user."""
    if nai_problem(nai) is not None:
        with pytest.raises(ValidationError):
            check_nai(nai)
        return
    check_nai(nai)
    request = AccessRequest(nai, nas_ip_address=IPv4Address("192.0.2.1"))
    raw = encode_access_request(request, 1, bytes(16), b"secret")
    assert decode_access_request(rc.decode_packet(raw)).nai == nai
    assert mip.decode_extension(mip.encode_extension(mip.NaiExtension(nai))) == mip.NaiExtension(nai)


def test_a_nai_too_long_for_the_wire_is_refused_by_the_model_too() -> None:
    nai = "a" * (MAX_NAI_OCTETS + 1 - len("@home.example")) + "@home.example"
    with pytest.raises(RequestError, match="254 octets"):
        AccessRequest(nai, nas_ip_address=IPv4Address("192.0.2.1"))
    with pytest.raises(ValidationError, match="254 octets"):
        check_nai(nai)


def test_realm_is_case_insensitive() -> None:
    assert nai_realm("mn1@Home.EXAMPLE") == "home.example"


def _user(**changes: object) -> User:
    fields: dict[str, object] = {
        "nai": "mn1@home.example",
        "home_agent": IPv4Address("192.0.2.2"),
        "mn_aaa_secret": Secret(b"s"),
        "mn_ha_spi": 256,
        "mn_ha_key": Secret(bytes(16)),
    }
    fields.update(changes)
    return User(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mn_ha_spi": 255}, "SPI"),  # RFC 5944 section 1.6: 0-255 reserved
        ({"mn_ha_key": Secret(bytes(15))}, "at least 16"),  # RFC 5944 section 5.1
        ({"mn_aaa_secret": Secret(b"")}, "too short"),
    ],
)
def test_user_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _user(**changes)


def test_records_never_show_secrets() -> None:
    user = _user(mn_aaa_secret=Secret(b"very-secret-value"))
    client = Client("fa1", IPv4Network("192.0.2.1/32"), Secret(b"shared-secret-1"), ClientRole.FA)
    assert "very-secret-value" not in repr(user) and "shared-secret-1" not in repr(client)


def test_service_and_qos_bounds() -> None:
    with pytest.raises(ValidationError, match="IKE proposal"):
        Service("s", ike_proposal="not a proposal!")
    with pytest.raises(ValidationError, match="SA lifetime"):
        Service("s", sa_lifetime=0x1000000)  # does not fit a tagged integer
    with pytest.raises(ValidationError, match="DSCP"):
        QosClass("q", dscp=64)
