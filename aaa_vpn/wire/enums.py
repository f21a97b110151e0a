"""The enumerations that travel on the wire: which attributes a client is sent
its profile in (flavour), how a path is keyed, what kind of gateway ends it,
and its ESP transform.

They are here, at the bottom of the package, so that ``aaa_vpn.wire``
depends on nothing above it; :mod:`aaa_vpn.model` uses them in its records.
Each enum's ``value`` is its text form (CLI, database, TOML); the numbers sent
in RADIUS and Mobile IP are in the codecs (and :attr:`EspTransform.code`).
"""

from __future__ import annotations

import enum


class Flavour(enum.Enum):
    """Which attributes a client is sent the VPN profile in."""

    AAA_VPN = "aaa-vpn"  # the full aaa_vpn vendor attributes
    RFC2868 = "rfc2868"  # RFC 2868 Tunnel-* attributes only
    THREEGPP2 = "3gpp2"  # the 3GPP2 attributes real PDSN/HA equipment reads


class PskEncoding(enum.Enum):
    """How the ``3gpp2`` flavour sends 3GPP2-Pre-Shared-Secret (26/5535/3):
    salt-encrypted as StarOS documents it, or as the string the public
    dictionaries (FreeRADIUS, Wireshark) define (docs/radius-attributes.md)."""

    SALT = "salt"  # RFC 2868 section 3.5 salt encryption, like Tunnel-Password
    PLAIN = "plain"  # the octets themselves: readable by anyone who sees the packet


class GatewayMode(enum.Enum):
    """A correspondent's network apparatus: stationary tunnel to the HA, or route optimisation."""

    STATIC = "static"
    DYNAMIC = "dynamic"


class KeyMode(enum.Enum):
    """How a path's SAs are keyed: AAA-issued ESP keys, or IKEv2 with an AAA-issued PSK."""

    MANUAL = "manual"
    IKEV2 = "ikev2"


class EspTransform(enum.Enum):
    """ESP transforms of RFC 8221's MUST list, tunnel mode.

    ``value`` is the strongSwan proposal keyword; :attr:`code` is the number sent
    in RADIUS; :attr:`keymat_length` is the key material per direction
    (RFC 4106 section 8.1: AES key plus 4-byte salt; CBC: AES key plus HMAC key).
    """

    AES_GCM_16_128 = "aes128gcm16"
    AES_GCM_16_256 = "aes256gcm16"
    AES_CBC_128_HMAC_SHA256 = "aes128-sha256"
    AES_CBC_256_HMAC_SHA256 = "aes256-sha256"

    @property
    def code(self) -> int:
        return _TRANSFORM_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> EspTransform:
        for transform, number in _TRANSFORM_CODES.items():
            if number == code:
                return transform
        raise ValueError(f"unknown ESP transform code {code}")

    @property
    def is_aead(self) -> bool:
        return self in (EspTransform.AES_GCM_16_128, EspTransform.AES_GCM_16_256)

    @property
    def encryption_key_length(self) -> int:
        return 16 if self in (EspTransform.AES_GCM_16_128, EspTransform.AES_CBC_128_HMAC_SHA256) else 32

    @property
    def keymat_length(self) -> int:
        return _KEYMAT_LENGTHS[self]


# RFC 4106 section 8.1: AES key + 4-octet salt; CBC: AES key + HMAC-SHA-256 key.
_KEYMAT_LENGTHS = {
    EspTransform.AES_GCM_16_128: 16 + 4,
    EspTransform.AES_GCM_16_256: 32 + 4,
    EspTransform.AES_CBC_128_HMAC_SHA256: 16 + 32,
    EspTransform.AES_CBC_256_HMAC_SHA256: 32 + 32,
}

_TRANSFORM_CODES = {
    EspTransform.AES_GCM_16_128: 1,
    EspTransform.AES_GCM_16_256: 2,
    EspTransform.AES_CBC_128_HMAC_SHA256: 3,
    EspTransform.AES_CBC_256_HMAC_SHA256: 4,
}


__all__ = ["EspTransform", "Flavour", "GatewayMode", "KeyMode", "PskEncoding"]
