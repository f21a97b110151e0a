"""Provisioning records validate themselves (model.py)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

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


def test_keymat_lengths_follow_rfc4106_and_rfc4868() -> None:
    for transform in EspTransform:
        expected = transform.encryption_key_length + (4 if transform.is_aead else 32)
        assert transform.keymat_length == expected
        assert EspTransform.from_code(transform.code) is transform
    assert EspTransform.AES_GCM_16_256.keymat_length == 36  # RFC 4106 section 8.1
    with pytest.raises(ValueError, match="unknown ESP transform"):
        EspTransform.from_code(99)


@pytest.mark.parametrize("nai", ["mn1", "@home.example", "mn1@", "a b@home.example", "mn1@home..example", ""])
def test_bad_nais_are_refused(nai: str) -> None:
    with pytest.raises(ValidationError, match="NAI"):
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
