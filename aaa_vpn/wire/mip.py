"""Mobile IPv4 messages and extensions: bytes <-> typed values.

What is here (numbers and layouts: ``docs/protocol.md`` section 3):

* Registration Request (type 1, RFC 5944 section 3.3) and Registration Reply
  (type 3, RFC 5944 section 3.4) with every flag and every reply code
  (:class:`ReplyCode`: RFC 5944 section 3.4, RFC 3024 section 3.4, RFC 2794
  section 5, RFC 4721 section 10, RFC 3115 section 2.4, RFC 4433 section 7,
  RFC 3957 section 7, RFC 3519 section 8, RFC 4857 sections 9.5 and 10.3,
  RFC 5563 section 12.2, RFC 4064 section 5). A code no RFC we read defines
  still decodes, as a plain ``int``.
* The aaa_vpn binding messages (Binding Warning, Request, Update, Acknowledge
  and the Previous-FA Notification) in the experimental message type 255
  (RFC 4064 section 3) with a one-octet sub-type: the route-optimisation draft
  never became an RFC and its type numbers were given to other messages.
* Extensions (RFC 5944 sections 1.8-1.11): one-byte padding (0), MN-HA (32),
  MN-FA (33) and FA-HA (34) authentication (RFC 5944 section 3.5), generalized
  authentication (36, long format, RFC 4721 section 5), CVSE (38) and NVSE
  (134) (RFC 3115 section 2), Mobile Node NAI (131, RFC 2794 section 2),
  MN-FA challenge (132, RFC 4721 section 4), and the Generalized MN-FA (40,
  41) and MN-HA (42, 43) Key Generation Nonce Request and Reply (long
  format, RFC 3957 section 6), with the subtype data of a reply "from AAA"
  (subtype 1) read and built by :func:`decode_aaa_nonce` /
  :func:`encode_aaa_nonce`. An unknown *skippable* extension
  (type 128-255) is kept as :class:`UnknownExtension` and re-encodes byte for
  byte; an unknown *non-skippable* one (type 1-127) makes the whole message
  undecodable (:class:`UnknownNonSkippableExtension`): RFC 5944 section 1.8
  says such a message is silently discarded.

House rules (docs/protocol.md, STYLE.md):

* Pure: no sockets, no clock, no randomness.
* ``decode_*`` raises only :class:`MipDecodeError` (the *peer's* fault); a
  value that cannot be built or encoded raises :class:`MipValueError` (the
  *caller's* fault). Both are ``ValueError``.
* Values are frozen dataclasses that validate on construction, so an invalid
  one cannot exist, and decoding is lossless: ``encode(decode(b)) == b`` for
  every ``b`` that decodes, and ``decode(encode(x)) == x``.
* A reader cannot read past a length-prefixed field: each extension is decoded
  from a sub-reader restricted to its Length, which must be consumed exactly.

Authentication (RFC 5944 section 3.5.1, RFC 4721 section 6) is in
:mod:`aaa_vpn.wire.mip_auth`, timestamp replay protection (RFC 5944 section
5.7) in :mod:`aaa_vpn.wire.mip_replay`, and the VPN information carried in a
CVSE in :mod:`aaa_vpn.wire.mip_vpn`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import NamedTuple, TypeAlias, TypeVar

from aaa_vpn.wire.profile import VENDOR_ID
from aaa_vpn.wire.reader import DecodeError, Reader

#: RFC 5944 section 1.1: the Mobile IP control port (UDP).
MIP_PORT = 434
#: RFC 5944 section 3.3: Lifetime 0xffff means infinity.
INFINITE_LIFETIME = 0xFFFF
#: RFC 5944 section 1.8: extension types below this are non-skippable.
FIRST_SKIPPABLE_TYPE = 128
#: RFC 3115 section 2.1: Vendor/Org-ID is 0 followed by a 3-octet SMI enterprise code.
MAX_VENDOR_ID = 0xFFFFFF
#: RFC 4721 section 5: the generalized authentication Length "MUST be at least 20":
#: SPI (4) and at least 16 octets of authenticator.
MIN_GENERALIZED_AUTHENTICATOR = 16

_U8_MAX = 0xFF
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


class MipDecodeError(DecodeError):
    """Bytes received from a peer are not a valid Mobile IP message (the peer's fault).

    ``offset`` is where in the message the problem was found, when known."""


class UnknownNonSkippableExtension(MipDecodeError):
    """The message carries a non-skippable extension (type 1-127) this codec does
    not know. RFC 5944 section 1.8: the whole message is silently discarded."""

    def __init__(self, extension_type: int, offset: int) -> None:
        super().__init__(
            f"unknown non-skippable extension type {extension_type}: "
            "the message must be discarded (RFC 5944 section 1.8)",
            offset,
        )
        self.extension_type = extension_type


class MipValueError(ValueError):
    """A value given by the caller cannot be built or encoded (the caller's bug)."""


# --------------------------------------------------------------------------------------------
# Numbers


class MessageType(enum.IntEnum):
    """First octet of the UDP payload (RFC 5944 section 1.8; RFC 4064 section 3)."""

    REGISTRATION_REQUEST = 1
    REGISTRATION_REPLY = 3
    EXPERIMENTAL = 255  # RFC 4064: aaa_vpn's binding messages


class RegistrationFlags(enum.IntFlag):
    """Octet 1 of a Registration Request (RFC 5944 section 3.3; T: RFC 3024).

    ``R`` (0x04, the old Van Jacobson bit of RFC 2002) and ``X`` (0x01) are sent
    as zero and ignored on receipt; they are kept so that decoding is lossless."""

    S = 0x80  # simultaneous bindings
    B = 0x40  # broadcast datagrams
    D = 0x20  # decapsulation by the mobile node (co-located care-of address)
    M = 0x10  # minimal encapsulation
    G = 0x08  # GRE encapsulation
    R = 0x04  # reserved 'r'
    T = 0x02  # reverse tunnelling
    X = 0x01  # reserved 'x'


class ReplyCode(enum.IntEnum):
    """Registration Reply codes. 0-8 success, 64-127 foreign agent, 128-192 home
    agent, 193-200 gateway FA (RFC 5944 section 6.4)."""

    ACCEPTED = 0
    ACCEPTED_NO_SIMULTANEOUS_BINDINGS = 1
    # Denied by the foreign agent (RFC 5944 section 3.4 unless noted).
    FA_REASON_UNSPECIFIED = 64
    FA_ADMINISTRATIVELY_PROHIBITED = 65
    FA_INSUFFICIENT_RESOURCES = 66
    FA_MN_FAILED_AUTHENTICATION = 67  # also challenge/response failures (RFC 4721 section 10)
    FA_HA_FAILED_AUTHENTICATION = 68
    FA_LIFETIME_TOO_LONG = 69
    FA_POORLY_FORMED_REQUEST = 70
    FA_POORLY_FORMED_REPLY = 71
    FA_ENCAPSULATION_UNAVAILABLE = 72
    FA_RESERVED_UNAVAILABLE = 73
    FA_REVERSE_TUNNEL_UNAVAILABLE = 74  # RFC 3024 section 3.4
    FA_REVERSE_TUNNEL_MANDATORY = 75  # RFC 3024
    FA_MN_TOO_DISTANT = 76  # RFC 3024
    FA_INVALID_CARE_OF_ADDRESS = 77
    FA_REGISTRATION_TIMEOUT = 78
    FA_DELIVERY_STYLE_NOT_SUPPORTED = 79  # RFC 3024
    FA_HOME_NETWORK_UNREACHABLE = 80
    FA_HA_HOST_UNREACHABLE = 81
    FA_HA_PORT_UNREACHABLE = 82
    FA_HA_UNREACHABLE = 88
    FA_NONZERO_HA_REQUIRED = 90  # RFC 4433 section 7
    FA_NONZERO_HOME_ADDRESS_REQUIRED = 96  # RFC 2794 section 5
    FA_MISSING_NAI = 97  # RFC 2794
    FA_MISSING_HOME_AGENT = 98  # RFC 2794
    FA_MISSING_HOME_ADDRESS = 99  # RFC 2794
    FA_UNKNOWN_CVSE_FROM_MN = 100  # RFC 3115 section 2.4
    FA_UNKNOWN_CVSE_FROM_HA = 101  # RFC 3115
    FA_UNKNOWN_CHALLENGE = 104  # RFC 4721 section 10
    FA_MISSING_CHALLENGE = 105  # RFC 4721
    FA_STALE_CHALLENGE = 106  # RFC 4721
    FA_MISSING_MN_FA_KEY = 107  # RFC 3957 section 7
    FA_BAD_AAA_AUTHENTICATION = 108  # RFC 4721
    FA_HA_WRONG_CHALLENGE = 109  # RFC 4721
    FA_REPLAY_PROTECTION_UNAVAILABLE = 110  # RFC 4857 section 9.5 (denied by a GFA)
    FA_ZERO_CARE_OF_ADDRESS_NOT_SUPPORTED = 111  # RFC 4857
    FA_UNKNOWN_GFA = 112  # RFC 4857 section 10.3
    FA_GFA_UNREACHABLE = 113
    FA_GFA_HOST_UNREACHABLE = 114
    FA_GFA_PORT_UNREACHABLE = 115
    FA_EXPERIMENTAL = 127  # RFC 4064 section 5 (EXP-FA-ERROR-CODE)
    # Denied by the home agent (RFC 5944 section 3.4 unless noted).
    HA_REASON_UNSPECIFIED = 128
    HA_ADMINISTRATIVELY_PROHIBITED = 129
    HA_INSUFFICIENT_RESOURCES = 130
    HA_MN_FAILED_AUTHENTICATION = 131
    HA_FA_FAILED_AUTHENTICATION = 132
    HA_IDENTIFICATION_MISMATCH = 133
    HA_POORLY_FORMED_REQUEST = 134
    HA_TOO_MANY_BINDINGS = 135
    HA_UNKNOWN_HOME_AGENT_ADDRESS = 136
    HA_REVERSE_TUNNEL_UNAVAILABLE = 137  # RFC 3024 section 3.4
    HA_REVERSE_TUNNEL_MANDATORY = 138  # RFC 3024
    HA_ENCAPSULATION_UNAVAILABLE = 139  # RFC 3024
    HA_UNKNOWN_CVSE_FROM_MN = 140  # RFC 3115 section 2.4
    HA_UNKNOWN_CVSE_FROM_FA = 141  # RFC 3115
    HA_UDP_ENCAPSULATION_UNAVAILABLE = 142  # RFC 3519 section 8
    HA_REDIRECT = 143  # RFC 4433 section 7
    HA_BAD_AAA_AUTHENTICATION = 144  # RFC 4721 section 10
    HA_ZERO_CARE_OF_ADDRESS = 145  # RFC 4857 section 9.5
    HA_DYNAMIC_GFA_NOT_SUPPORTED = 146  # RFC 4857
    HA_PMIP_UNSUPPORTED = 149  # RFC 5563 section 12.2
    HA_PMIP_DISALLOWED = 150  # RFC 5563
    HA_EXPERIMENTAL = 192  # RFC 4064 section 5 (EXP-HA-ERROR-CODE)
    GFA_NO_HOME_REGISTRATION = 193  # RFC 4857 section 10.3
    INVALID_HOME_AGENT_ADDRESS = 194  # RFC 5944 section 3.4 (listed with the FA codes)


def is_accepted(code: int) -> bool:
    """Whether a reply code means success (RFC 5944 section 6.4: 0-8)."""
    return 0 <= code <= 8


class ExtensionType(enum.IntEnum):
    """Registration-message extension types this codec knows (RFC 5944 section 1.8)."""

    PADDING = 0  # RFC 5944 section 1.8: one octet, no Length
    MN_HA_AUTH = 32  # RFC 5944 section 3.5.2
    MN_FA_AUTH = 33  # RFC 5944 section 3.5.3
    FA_HA_AUTH = 34  # RFC 5944 section 3.5.4
    GENERALIZED_AUTH = 36  # RFC 4721 section 5 (long format)
    CVSE = 38  # RFC 3115 section 2.1
    MN_FA_KEY_REQUEST = 40  # RFC 3957 section 6.1 (long format)
    MN_FA_KEY_REPLY = 41  # RFC 3957 section 6.2
    MN_HA_KEY_REQUEST = 42  # RFC 3957 section 6.3
    MN_HA_KEY_REPLY = 43  # RFC 3957 section 6.4
    NAI = 131  # RFC 2794 section 2
    MN_FA_CHALLENGE = 132  # RFC 4721 section 4
    NVSE = 134  # RFC 3115 section 2.2


class GeneralizedAuthSubtype(enum.IntEnum):
    """Sub-types of the generalized authentication extension (36)."""

    MN_AAA = 1  # RFC 4721 section 5
    FA_FA = 2  # RFC 4857 section 11
    MN_GFA = 3  # RFC 4857 section 11
    MN_PAR = 4  # RFC 4988 section 8
    #: aaa_vpn: authenticates the binding messages (docs/protocol.md section 3.6).
    #: Only meaningful inside aaa_vpn's experimental (type 255) messages.
    BINDING = 255


class KeyGenSubtype(enum.IntEnum):
    """Sub-types of the Key Generation Nonce Request and Reply extensions (40-43)."""

    #: RFC 3957 section 6: the nonce comes from the mobile node's home AAA
    #: (RFC 4004 section 7.5 calls it "the AAA subtype (1)").
    AAA = 1


class KeyGenAlgorithm(enum.IntEnum):
    """The Algorithm Identifier of a Key Generation Nonce Reply: the algorithm of
    the new MSA's authenticators. RFC 4004 section 9.8's MIP-Algorithm-Type
    defines only 2 (HMAC-SHA-1), taken here as the same number; 1 and 2 are
    the values of the ISAKMP "Authentication Algorithm" registry (RFC 2407
    section 4.5), which the reference notes say RFC 3957 section 4 uses (not
    re-read here). ``HMAC_MD5`` also names the default algorithm of the
    provisioned security associations (RFC 5944 section 3.5.1); an MSA from
    AAA naming it is refused (:data:`aaa_vpn.wire.mip_auth.MSA_ALGORITHMS`)."""

    HMAC_MD5 = 1
    HMAC_SHA1 = 2


class ReplayMethod(enum.IntEnum):
    """Replay Method of an MN-HA Key Generation Nonce Reply (RFC 3957 section 4;
    0 and 1 reserved)."""

    TIMESTAMPS = 2
    NONCES = 3


_E = TypeVar("_E", bound=enum.IntEnum)


def _known(enum_type: type[_E], value: int) -> _E | int:
    # dnspython habit: enums accept unknown numbers (they stay plain ints).
    try:
        return enum_type(value)
    except ValueError:
        return value


# --------------------------------------------------------------------------------------------
# The reader (the shared bounded reader, raising MipDecodeError)


def mip_reader(data: bytes, start: int = 0, end: int | None = None) -> Reader:
    """A bounded reader (:class:`aaa_vpn.wire.reader.Reader`) over a Mobile IP
    message: every error it raises is a :class:`MipDecodeError`."""
    return Reader(data, start, end, MipDecodeError)


# --------------------------------------------------------------------------------------------
# Extensions


def _check_int(what: str, value: int, high: int, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MipValueError(f"{what} = {value!r}: expected an integer {low}..{high}")


def _check_bytes(what: str, value: bytes, high: int, low: int = 0) -> None:
    if not isinstance(value, bytes):
        raise MipValueError(f"{what} must be bytes, not {type(value).__name__}")
    if not low <= len(value) <= high:
        raise MipValueError(f"{what} is {len(value)} octets: expected {low}..{high}")


def _check_address(what: str, value: IPv4Address) -> None:
    if not isinstance(value, IPv4Address):
        raise MipValueError(f"{what} must be an IPv4Address, not {type(value).__name__}")


@dataclass(frozen=True)
class PaddingExtension:
    """One-byte padding (type 0, RFC 5944 section 1.8): a single zero octet."""


@dataclass(frozen=True)
class NaiExtension:
    """Mobile Node NAI (131, RFC 2794 section 2): ``Type | Length | NAI``.

    The NAI is UTF-8 (RFC 7542); 1..255 octets on the wire."""

    nai: str

    def __post_init__(self) -> None:
        if not isinstance(self.nai, str):
            raise MipValueError(f"NAI must be a str, not {type(self.nai).__name__}")
        try:
            encoded = self.nai.encode("utf-8")
        except UnicodeEncodeError:
            raise MipValueError(f"NAI {self.nai!r} cannot be encoded as UTF-8") from None
        if not 1 <= len(encoded) <= _U8_MAX:
            raise MipValueError(f"NAI is {len(encoded)} octets: expected 1..255 (one-octet Length)")


_AUTH_TYPES = (ExtensionType.MN_HA_AUTH, ExtensionType.MN_FA_AUTH, ExtensionType.FA_HA_AUTH)


@dataclass(frozen=True)
class AuthenticationExtension:
    """MN-HA (32), MN-FA (33) or FA-HA (34) authentication (RFC 5944 section 3.5):
    ``Type | Length = 4 + len(Authenticator) | SPI (4) | Authenticator``.

    The codec accepts any SPI; that SPIs 0-255 name no security association
    (RFC 5944 section 1.6) is for the receiving role to enforce."""

    type: ExtensionType
    spi: int
    authenticator: bytes

    def __post_init__(self) -> None:
        if self.type not in _AUTH_TYPES:
            raise MipValueError(f"authentication extension type {self.type!r}: expected 32, 33 or 34")
        object.__setattr__(self, "type", ExtensionType(self.type))
        _check_int("SPI", self.spi, _U32_MAX)
        _check_bytes("authenticator", self.authenticator, _U8_MAX - 4)


@dataclass(frozen=True)
class GeneralizedAuthExtension:
    """Generalized Mobile IP authentication (36, RFC 4721 section 5), long format:
    ``Type | Subtype | Length (16) = 4 + len(Authenticator) | SPI (4) | Authenticator``.

    Length MUST be at least 20, i.e. the authenticator has at least 16 octets."""

    subtype: GeneralizedAuthSubtype | int
    spi: int
    authenticator: bytes

    def __post_init__(self) -> None:
        _check_int("generalized authentication subtype", self.subtype, _U8_MAX)
        object.__setattr__(self, "subtype", _known(GeneralizedAuthSubtype, int(self.subtype)))
        _check_int("SPI", self.spi, _U32_MAX)
        _check_bytes("authenticator", self.authenticator, _U16_MAX - 4, MIN_GENERALIZED_AUTHENTICATOR)


@dataclass(frozen=True)
class ChallengeExtension:
    """MN-FA challenge (132, RFC 4721 section 4): ``Type | Length | Challenge``.

    RFC 4721 says the challenge SHOULD be at least 4 octets; whether a short
    one is acceptable is the FA's decision, so the codec takes 0..255."""

    challenge: bytes

    def __post_init__(self) -> None:
        _check_bytes("challenge", self.challenge, _U8_MAX)


@dataclass(frozen=True)
class CriticalVendorExtension:
    """CVSE (38, RFC 3115 section 2.1):
    ``Type | Reserved | Length (16) | Vendor/Org-ID (4) | Vendor-CVSE-Type (2) | Value``.

    Length counts Vendor/Org-ID, Vendor-CVSE-Type and Value. ``reserved`` is
    sent as 0 and ignored by receivers; it is kept so decoding is lossless."""

    vendor_id: int
    vendor_type: int
    value: bytes
    reserved: int = 0

    def __post_init__(self) -> None:
        _check_int("CVSE Vendor/Org-ID", self.vendor_id, MAX_VENDOR_ID)
        _check_int("Vendor-CVSE-Type", self.vendor_type, _U16_MAX)
        _check_bytes("CVSE value", self.value, _U16_MAX - 6)
        _check_int("CVSE reserved octet", self.reserved, _U8_MAX)


@dataclass(frozen=True)
class NormalVendorExtension:
    """NVSE (134, RFC 3115 section 2.2):
    ``Type | Length | Reserved (16) | Vendor/Org-ID (4) | Vendor-NVSE-Type (2) | Value``.

    Length counts Reserved, Vendor/Org-ID, Vendor-NVSE-Type and Value."""

    vendor_id: int
    vendor_type: int
    value: bytes
    reserved: int = 0

    def __post_init__(self) -> None:
        _check_int("NVSE Vendor/Org-ID", self.vendor_id, MAX_VENDOR_ID)
        _check_int("Vendor-NVSE-Type", self.vendor_type, _U16_MAX)
        _check_bytes("NVSE value", self.value, _U8_MAX - 8)
        _check_int("NVSE reserved field", self.reserved, _U16_MAX)


_KEY_REQUEST_TYPES = (ExtensionType.MN_FA_KEY_REQUEST, ExtensionType.MN_HA_KEY_REQUEST)
_KEY_REPLY_TYPES = (ExtensionType.MN_FA_KEY_REPLY, ExtensionType.MN_HA_KEY_REPLY)


@dataclass(frozen=True)
class KeyRequestExtension:
    """Generalized MN-FA (40) or MN-HA (42) Key Generation Nonce Request (RFC 3957
    sections 6.1 and 6.3), long format:
    ``Type | Subtype | Length (16) = 4 + len(data) | Mobile Node SPI (4) | Subtype data``.

    ``mn_spi`` is the SPI the mobile node will give the new MSA. With subtype
    1 (AAA) the subtype data is empty."""

    type: ExtensionType
    mn_spi: int
    subtype: KeyGenSubtype | int = KeyGenSubtype.AAA
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.type not in _KEY_REQUEST_TYPES:
            raise MipValueError(f"key generation request type {self.type!r}: expected 40 or 42")
        object.__setattr__(self, "type", ExtensionType(self.type))
        _check_int("key generation subtype", self.subtype, _U8_MAX)
        object.__setattr__(self, "subtype", _known(KeyGenSubtype, int(self.subtype)))
        _check_int("Mobile Node SPI", self.mn_spi, _U32_MAX)
        _check_bytes("key generation request subtype data", self.data, _U16_MAX - 4)


def aaa_key_requests(extensions: Iterable[object]) -> dict[ExtensionType, KeyRequestExtension]:
    """The Key Generation Nonce Requests of subtype AAA among ``extensions``
    (RFC 3957 section 6.1 and 6.3: the node asks its home AAA for an MN-FA or
    MN-HA key), by type (:attr:`ExtensionType.MN_FA_KEY_REQUEST` or
    :attr:`ExtensionType.MN_HA_KEY_REQUEST`); the last one of a type counts."""
    return {e.type: e for e in extensions if isinstance(e, KeyRequestExtension) and e.subtype == KeyGenSubtype.AAA}


@dataclass(frozen=True)
class KeyReplyExtension:
    """Generalized MN-FA (41) or MN-HA (43) Key Generation Nonce Reply (RFC 3957
    sections 6.2 and 6.4), long format:
    ``Type | Subtype | Length (16) = 4 + len(data) | Lifetime (4) | Subtype data``.

    ``lifetime`` is how many seconds the key is valid. The subtype data of a
    reply from AAA (subtype 1) is :class:`AaaNonce`."""

    type: ExtensionType
    lifetime: int
    subtype: KeyGenSubtype | int = KeyGenSubtype.AAA
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.type not in _KEY_REPLY_TYPES:
            raise MipValueError(f"key generation reply type {self.type!r}: expected 41 or 43")
        object.__setattr__(self, "type", ExtensionType(self.type))
        _check_int("key generation subtype", self.subtype, _U8_MAX)
        object.__setattr__(self, "subtype", _known(KeyGenSubtype, int(self.subtype)))
        _check_int("key lifetime", self.lifetime, _U32_MAX)
        _check_bytes("key generation reply subtype data", self.data, _U16_MAX - 4)


@dataclass(frozen=True)
class AaaNonce:
    """The subtype data of a Key Generation Nonce Reply from AAA (subtype 1, RFC
    3957 section 6.2 for MN-FA, 6.4 for MN-HA)::

        MN-FA: AAA SPI (4) | FA SPI (4) | Algorithm Identifier (2) | Key Generation Nonce
        MN-HA: AAA SPI (4) | HA SPI (4) | Algorithm Identifier (2) | Replay Method (2) | Key Generation Nonce

    ``aaa_spi`` names the mobile node's security association with its home
    AAA whose key the new key is derived from (:func:`aaa_vpn.wire.mip_auth.derive_aaa_key`);
    ``agent_spi`` is the SPI the FA or HA gave the new MSA; ``replay_method``
    is set exactly for MN-HA."""

    aaa_spi: int
    agent_spi: int
    algorithm: KeyGenAlgorithm | int
    nonce: bytes
    replay_method: ReplayMethod | int | None = None

    def __post_init__(self) -> None:
        _check_int("AAA SPI", self.aaa_spi, _U32_MAX)
        _check_int("agent SPI", self.agent_spi, _U32_MAX)
        _check_int("algorithm identifier", self.algorithm, _U16_MAX)
        object.__setattr__(self, "algorithm", _known(KeyGenAlgorithm, int(self.algorithm)))
        if self.replay_method is not None:
            _check_int("replay method", self.replay_method, _U16_MAX)
            object.__setattr__(self, "replay_method", _known(ReplayMethod, int(self.replay_method)))
        _check_bytes("key generation nonce", self.nonce, _U16_MAX - 18, 1)


_AAA_NONCE_FA = struct.Struct("!IIH")
_AAA_NONCE_HA = struct.Struct("!IIHH")


def encode_aaa_nonce(reply_type: ExtensionType, lifetime: int, nonce: AaaNonce) -> KeyReplyExtension:
    """The Key Generation Nonce Reply from AAA of type 41 (MN-FA, no replay
    method) or 43 (MN-HA, with one)."""
    if reply_type == ExtensionType.MN_FA_KEY_REPLY and nonce.replay_method is None:
        data = _AAA_NONCE_FA.pack(nonce.aaa_spi, nonce.agent_spi, nonce.algorithm) + nonce.nonce
    elif reply_type == ExtensionType.MN_HA_KEY_REPLY and nonce.replay_method is not None:
        head = _AAA_NONCE_HA.pack(nonce.aaa_spi, nonce.agent_spi, nonce.algorithm, nonce.replay_method)
        data = head + nonce.nonce
    else:
        raise MipValueError(f"type {reply_type!r}: an MN-HA reply (43) has a replay method, an MN-FA one (41) none")
    return KeyReplyExtension(reply_type, lifetime, KeyGenSubtype.AAA, data)


def decode_aaa_nonce(extension: KeyReplyExtension) -> AaaNonce:
    """The subtype data of a reply from AAA; :class:`MipDecodeError` if it is
    another subtype or does not hold the fields (the nonce at least one octet)."""
    if extension.subtype != KeyGenSubtype.AAA:
        raise MipDecodeError(f"key generation reply subtype {int(extension.subtype)}: expected 1 (AAA)")
    r = mip_reader(extension.data)
    aaa_spi = r.u32("AAA SPI")
    agent_spi = r.u32("FA or HA SPI")
    algorithm = r.u16("algorithm identifier")
    replay = r.u16("replay method") if extension.type == ExtensionType.MN_HA_KEY_REPLY else None
    nonce = r.rest()
    if not nonce:
        raise MipDecodeError("key generation reply from AAA without a nonce")
    return AaaNonce(aaa_spi, agent_spi, algorithm, nonce, replay)


@dataclass(frozen=True)
class UnknownExtension:
    """A skippable extension (128-255) this codec does not interpret: ``Type |
    Length | Data``, kept so it can be relayed and re-encoded unchanged."""

    type: int
    data: bytes

    def __post_init__(self) -> None:
        _check_int("unknown extension type", self.type, _U8_MAX, FIRST_SKIPPABLE_TYPE)
        if self.type in _DECODERS_SHORT:
            raise MipValueError(f"extension type {self.type} is known: use its own class")
        _check_bytes("extension data", self.data, _U8_MAX)


Extension: TypeAlias = (
    PaddingExtension
    | NaiExtension
    | AuthenticationExtension
    | GeneralizedAuthExtension
    | ChallengeExtension
    | CriticalVendorExtension
    | NormalVendorExtension
    | KeyRequestExtension
    | KeyReplyExtension
    | UnknownExtension
)

_EXTENSION_CLASSES = (
    PaddingExtension,
    NaiExtension,
    AuthenticationExtension,
    GeneralizedAuthExtension,
    ChallengeExtension,
    CriticalVendorExtension,
    NormalVendorExtension,
    KeyRequestExtension,
    KeyReplyExtension,
    UnknownExtension,
)

_SHORT = struct.Struct("!BB")
_AUTH_HEADER = struct.Struct("!BBI")
_LONG_HEADER = struct.Struct("!BBH")
_GEN_AUTH_HEADER = struct.Struct("!BBHI")
_CVSE_HEADER = struct.Struct("!BBHIH")
_NVSE_HEADER = struct.Struct("!BBHIH")
_KEYGEN_HEADER = struct.Struct("!BBHI")  # Type, Subtype, Length, Mobile Node SPI or Lifetime

#: Octets from the start of an authentication extension up to and including its
#: SPI: what the authenticator covers of its own extension (RFC 5944 section 3.5.1).
AUTH_HEADER_LENGTH = _AUTH_HEADER.size
GENERALIZED_AUTH_HEADER_LENGTH = _GEN_AUTH_HEADER.size


def encode_extension(extension: Extension) -> bytes:
    """The wire form of one extension."""
    if isinstance(extension, NaiExtension):
        nai = extension.nai.encode("utf-8")
        return _SHORT.pack(ExtensionType.NAI, len(nai)) + nai
    if isinstance(extension, AuthenticationExtension):
        auth = extension.authenticator
        return _AUTH_HEADER.pack(extension.type, 4 + len(auth), extension.spi) + auth
    if isinstance(extension, GeneralizedAuthExtension):
        auth = extension.authenticator
        header = _GEN_AUTH_HEADER.pack(ExtensionType.GENERALIZED_AUTH, extension.subtype, 4 + len(auth), extension.spi)
        return header + auth
    if isinstance(extension, ChallengeExtension):
        return _SHORT.pack(ExtensionType.MN_FA_CHALLENGE, len(extension.challenge)) + extension.challenge
    if isinstance(extension, CriticalVendorExtension):
        value = extension.value
        header = _CVSE_HEADER.pack(
            ExtensionType.CVSE, extension.reserved, 6 + len(value), extension.vendor_id, extension.vendor_type
        )
        return header + value
    if isinstance(extension, NormalVendorExtension):
        value = extension.value
        header = _NVSE_HEADER.pack(
            ExtensionType.NVSE, 8 + len(value), extension.reserved, extension.vendor_id, extension.vendor_type
        )
        return header + value
    if isinstance(extension, KeyRequestExtension):
        header = _KEYGEN_HEADER.pack(extension.type, extension.subtype, 4 + len(extension.data), extension.mn_spi)
        return header + extension.data
    if isinstance(extension, KeyReplyExtension):
        header = _KEYGEN_HEADER.pack(extension.type, extension.subtype, 4 + len(extension.data), extension.lifetime)
        return header + extension.data
    if isinstance(extension, UnknownExtension):
        return _SHORT.pack(extension.type, len(extension.data)) + extension.data
    if isinstance(extension, PaddingExtension):
        return b"\x00"
    raise MipValueError(f"not a Mobile IP extension: {extension!r}")


def encode_extensions(extensions: Iterable[Extension]) -> bytes:
    return b"".join(encode_extension(e) for e in extensions)


_ShortDecoder: TypeAlias = Callable[[Reader], Extension]


def _decode_nai(body: Reader) -> NaiExtension:
    raw = body.rest()
    try:
        return NaiExtension(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise MipDecodeError("NAI extension: the NAI is not UTF-8 (RFC 7542)") from None


def _auth_decoder(extension_type: ExtensionType) -> _ShortDecoder:
    def decode(body: Reader) -> AuthenticationExtension:
        spi = body.u32(f"{extension_type.name} extension SPI")
        return AuthenticationExtension(extension_type, spi, body.rest())

    return decode


def _decode_challenge(body: Reader) -> ChallengeExtension:
    return ChallengeExtension(body.rest())


def _decode_nvse(body: Reader) -> NormalVendorExtension:
    reserved = body.u16("NVSE reserved field")
    vendor_id = body.u32("NVSE Vendor/Org-ID")
    vendor_type = body.u16("Vendor-NVSE-Type")
    if vendor_id > MAX_VENDOR_ID:
        raise MipDecodeError(f"NVSE Vendor/Org-ID 0x{vendor_id:08x}: the high-order octet must be 0 (RFC 3115)")
    return NormalVendorExtension(vendor_id, vendor_type, body.rest(), reserved)


# Short-format (Type | Length(8) | Data) extensions, by type.
_DECODERS_SHORT: dict[int, _ShortDecoder] = {
    ExtensionType.MN_HA_AUTH: _auth_decoder(ExtensionType.MN_HA_AUTH),
    ExtensionType.MN_FA_AUTH: _auth_decoder(ExtensionType.MN_FA_AUTH),
    ExtensionType.FA_HA_AUTH: _auth_decoder(ExtensionType.FA_HA_AUTH),
    ExtensionType.NAI: _decode_nai,
    ExtensionType.MN_FA_CHALLENGE: _decode_challenge,
    ExtensionType.NVSE: _decode_nvse,
}


def _decode_one(r: Reader) -> Extension:
    start = r.position
    extension_type = r.u8("extension type")
    if extension_type == ExtensionType.PADDING:
        return PaddingExtension()
    if extension_type == ExtensionType.GENERALIZED_AUTH:
        # RFC 4721 section 5: Type | Subtype | Length(16) | SPI | Authenticator.
        subtype = r.u8("generalized authentication subtype")
        body = r.sub(r.u16("generalized authentication length"), "generalized authentication extension")
        spi = body.u32("generalized authentication SPI")
        authenticator = body.rest()
        if len(authenticator) < MIN_GENERALIZED_AUTHENTICATOR:
            raise MipDecodeError(
                f"generalized authentication Length {4 + len(authenticator)}: must be at least 20 (RFC 4721 section 5)",
                start,
            )
        return GeneralizedAuthExtension(subtype, spi, authenticator)
    if extension_type == ExtensionType.CVSE:
        # RFC 3115 section 2.1: Type | Reserved | Length(16) | Vendor/Org-ID | Vendor-CVSE-Type | Value.
        reserved = r.u8("CVSE reserved octet")
        body = r.sub(r.u16("CVSE length"), "CVSE")
        vendor_id = body.u32("CVSE Vendor/Org-ID")
        vendor_type = body.u16("Vendor-CVSE-Type")
        if vendor_id > MAX_VENDOR_ID:
            raise MipDecodeError(
                f"CVSE Vendor/Org-ID 0x{vendor_id:08x}: the high-order octet must be 0 (RFC 3115)", start
            )
        return CriticalVendorExtension(vendor_id, vendor_type, body.rest(), reserved)
    if extension_type in _KEY_REQUEST_TYPES or extension_type in _KEY_REPLY_TYPES:
        # RFC 3957 section 6: Type | Subtype | Length(16) | Mobile Node SPI or Lifetime | Subtype data.
        name = ExtensionType(extension_type).name
        subtype = r.u8(f"{name} subtype")
        body = r.sub(r.u16(f"{name} length"), f"{name} extension")
        field_value = body.u32(f"{name} SPI or lifetime")
        kind = KeyRequestExtension if extension_type in _KEY_REQUEST_TYPES else KeyReplyExtension
        return kind(ExtensionType(extension_type), field_value, subtype, body.rest())
    decoder = _DECODERS_SHORT.get(extension_type)
    if decoder is None and extension_type < FIRST_SKIPPABLE_TYPE:
        # Its format (short or long) is unknown too: nothing after it can be trusted.
        raise UnknownNonSkippableExtension(extension_type, start)
    length = r.u8("extension length")
    body = r.sub(length, f"extension {extension_type} (Length {length})")
    if decoder is None:
        return UnknownExtension(extension_type, body.rest())
    extension = decoder(body)
    body.expect_end(f"extension {extension_type}")
    return extension


class ExtensionSpan(NamedTuple):
    """One decoded extension and where it lies in the message: ``data[start:end]``."""

    extension: Extension
    start: int
    end: int


def _decode_spans(r: Reader) -> tuple[ExtensionSpan, ...]:
    # RFC 5944 section 1.8: the extensions run to the end of the UDP payload.
    spans = []
    while r.remaining:
        start = r.position
        try:
            extension = _decode_one(r)
        except MipValueError as exc:
            raise MipDecodeError(f"extension at offset {start}: {exc}", start) from None
        spans.append(ExtensionSpan(extension, start, r.position))
    return tuple(spans)


def decode_extension(data: bytes) -> Extension:
    """Exactly one extension; raises :class:`MipDecodeError` if ``data`` is not one."""
    r = mip_reader(bytes(data))
    spans = _decode_spans(r)
    if len(spans) != 1:
        raise MipDecodeError(f"expected one extension, found {len(spans)}")
    return spans[0].extension


def decode_extensions(data: bytes) -> tuple[Extension, ...]:
    """A run of extensions filling ``data``."""
    return tuple(span.extension for span in _decode_spans(mip_reader(bytes(data))))


def _check_extensions(extensions: Sequence[Extension]) -> tuple[Extension, ...]:
    if isinstance(extensions, (bytes, str)) or not isinstance(extensions, Iterable):
        raise MipValueError("extensions must be a sequence of extension values")
    result = tuple(extensions)
    for extension in result:
        if not isinstance(extension, _EXTENSION_CLASSES):
            raise MipValueError(f"not a Mobile IP extension: {extension!r}")
    return result


# --------------------------------------------------------------------------------------------
# Registration Request and Reply


@dataclass(frozen=True)
class RegistrationRequest:
    """Registration Request (type 1, RFC 5944 section 3.3)::

    Type=1 | S B D M G r T x | Lifetime(16) | Home Address | Home Agent |
    Care-of Address | Identification(64) | Extensions
    """

    flags: RegistrationFlags
    lifetime: int
    home_address: IPv4Address
    home_agent: IPv4Address
    care_of_address: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_int("flags", self.flags, _U8_MAX)
        object.__setattr__(self, "flags", RegistrationFlags(int(self.flags)))
        _check_int("lifetime", self.lifetime, _U16_MAX)
        _check_address("home address", self.home_address)
        _check_address("home agent", self.home_agent)
        _check_address("care-of address", self.care_of_address)
        _check_int("identification", self.identification, _U64_MAX)
        object.__setattr__(self, "extensions", _check_extensions(self.extensions))


@dataclass(frozen=True)
class RegistrationReply:
    """Registration Reply (type 3, RFC 5944 section 3.4)::

    Type=3 | Code | Lifetime(16) | Home Address | Home Agent | Identification(64) | Extensions
    """

    code: ReplyCode | int
    lifetime: int
    home_address: IPv4Address
    home_agent: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_int("reply code", self.code, _U8_MAX)
        object.__setattr__(self, "code", _known(ReplyCode, int(self.code)))
        _check_int("lifetime", self.lifetime, _U16_MAX)
        _check_address("home address", self.home_address)
        _check_address("home agent", self.home_agent)
        _check_int("identification", self.identification, _U64_MAX)
        object.__setattr__(self, "extensions", _check_extensions(self.extensions))

    @property
    def accepted(self) -> bool:
        return is_accepted(self.code)


_RRQ = struct.Struct("!BBHIIIQ")
_RRP = struct.Struct("!BBHIIQ")
REGISTRATION_REQUEST_LENGTH = _RRQ.size  # 24
REGISTRATION_REPLY_LENGTH = _RRP.size  # 20


def encode_registration_request(message: RegistrationRequest) -> bytes:
    fixed = _RRQ.pack(
        MessageType.REGISTRATION_REQUEST,
        message.flags,
        message.lifetime,
        int(message.home_address),
        int(message.home_agent),
        int(message.care_of_address),
        message.identification,
    )
    return fixed + encode_extensions(message.extensions)


def encode_registration_reply(message: RegistrationReply) -> bytes:
    fixed = _RRP.pack(
        MessageType.REGISTRATION_REPLY,
        message.code,
        message.lifetime,
        int(message.home_address),
        int(message.home_agent),
        message.identification,
    )
    return fixed + encode_extensions(message.extensions)


def _expect_type(r: Reader, expected: MessageType) -> None:
    got = r.u8("message type")
    if got != expected:
        raise MipDecodeError(f"message type {got}: expected {int(expected)} ({expected.name})", 0)


def _decode_request(r: Reader) -> tuple[RegistrationRequest, tuple[ExtensionSpan, ...]]:
    _expect_type(r, MessageType.REGISTRATION_REQUEST)
    flags = r.u8("flags")
    lifetime = r.u16("lifetime")
    home_address = r.address("home address")
    home_agent = r.address("home agent")
    care_of = r.address("care-of address")
    identification = r.u64("identification")
    spans = _decode_spans(r)
    message = RegistrationRequest(
        RegistrationFlags(flags),
        lifetime,
        home_address,
        home_agent,
        care_of,
        identification,
        tuple(s.extension for s in spans),
    )
    return message, spans


def _decode_reply(r: Reader) -> tuple[RegistrationReply, tuple[ExtensionSpan, ...]]:
    _expect_type(r, MessageType.REGISTRATION_REPLY)
    code = r.u8("code")
    lifetime = r.u16("lifetime")
    home_address = r.address("home address")
    home_agent = r.address("home agent")
    identification = r.u64("identification")
    spans = _decode_spans(r)
    message = RegistrationReply(
        code, lifetime, home_address, home_agent, identification, tuple(s.extension for s in spans)
    )
    return message, spans


def decode_registration_request(data: bytes) -> RegistrationRequest:
    return _decode_request(mip_reader(bytes(data)))[0]


def decode_registration_reply(data: bytes) -> RegistrationReply:
    return _decode_reply(mip_reader(bytes(data)))[0]


# --------------------------------------------------------------------------------------------
# Binding messages (experimental message type 255, RFC 4064 section 3)


class BindingSubtype(enum.IntEnum):
    """Octet 1 of an aaa_vpn experimental message (docs/protocol.md section 3.6)."""

    BINDING_WARNING = 1
    BINDING_REQUEST = 2
    BINDING_UPDATE = 3
    BINDING_ACKNOWLEDGE = 4
    PREVIOUS_FA_NOTIFICATION = 5


class BindingFlags(enum.IntFlag):
    """Octet 2 of a binding message. Only A is defined, and only in Binding Update
    and Previous-FA Notification; everything else MUST be zero."""

    A = 0x80  # acknowledge requested


class BindingStatus(enum.IntEnum):
    """Octet 3 of a Binding Acknowledge. Values mirror the Registration Reply
    codes of the same meaning (RFC 5944 section 3.4); 160 and up are aaa_vpn's."""

    ACCEPTED = 0
    REASON_UNSPECIFIED = 128
    ADMINISTRATIVELY_PROHIBITED = 129
    INSUFFICIENT_RESOURCES = 130
    AUTHENTICATION_FAILED = 131  # the sender failed authentication
    IDENTIFICATION_MISMATCH = 133  # timestamp out of window or not newer (RFC 5944 section 5.7)
    POORLY_FORMED = 134
    UNKNOWN_VPN_INFORMATION = 140  # a CVSE the receiver does not know (cf. RFC 3115 code 140)
    VPN_INFORMATION_INVALID = 160  # key unwrap failed, or the path does not end at the receiver
    SA_INSTALL_FAILED = 161  # the receiver could not install the SAs


@dataclass(frozen=True)
class BindingWarning:
    """A mobility agent tells the home agent that ``target_address`` (a
    correspondent gateway) holds a stale binding for ``home_address``."""

    home_address: IPv4Address
    target_address: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_binding_common(self)
        _check_address("target address", self.target_address)


@dataclass(frozen=True)
class BindingRequest:
    """A correspondent gateway asks the home agent to refresh its binding for
    ``home_address`` (flow G); answered with a Binding Update if registered."""

    home_address: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_binding_common(self)


@dataclass(frozen=True)
class BindingUpdate:
    """The home agent tells a correspondent gateway where ``home_address`` now is
    (``care_of_address``: the FA), with the VPN information in CVSEs (flow B).
    Lifetime 0 removes the binding."""

    lifetime: int
    home_address: IPv4Address
    care_of_address: IPv4Address
    identification: int
    acknowledge: bool = True
    extensions: tuple[Extension, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_binding_common(self)
        _check_int("lifetime", self.lifetime, _U16_MAX)
        _check_address("care-of address", self.care_of_address)
        if not isinstance(self.acknowledge, bool):
            raise MipValueError("acknowledge must be a bool")


@dataclass(frozen=True)
class PreviousFaNotification:
    """The new FA tells the previous FA that ``home_address`` moved to
    ``care_of_address`` (the new FA), with the re-targeted forwarding path in a
    CVSE (flow E, smooth handoff). ``lifetime``: how long to keep forwarding."""

    lifetime: int
    home_address: IPv4Address
    care_of_address: IPv4Address
    identification: int
    acknowledge: bool = True
    extensions: tuple[Extension, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_binding_common(self)
        _check_int("lifetime", self.lifetime, _U16_MAX)
        _check_address("care-of address", self.care_of_address)
        if not isinstance(self.acknowledge, bool):
            raise MipValueError("acknowledge must be a bool")


@dataclass(frozen=True)
class BindingAcknowledge:
    """Answer to a Binding Update or Previous-FA Notification with the A flag:
    same home address, care-of address and identification; ``lifetime`` granted."""

    status: BindingStatus | int
    lifetime: int
    home_address: IPv4Address
    care_of_address: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_binding_common(self)
        _check_int("status", self.status, _U8_MAX)
        object.__setattr__(self, "status", _known(BindingStatus, int(self.status)))
        _check_int("lifetime", self.lifetime, _U16_MAX)
        _check_address("care-of address", self.care_of_address)

    @property
    def accepted(self) -> bool:
        return self.status == BindingStatus.ACCEPTED


BindingMessage: TypeAlias = (
    BindingWarning | BindingRequest | BindingUpdate | PreviousFaNotification | BindingAcknowledge
)
Message: TypeAlias = RegistrationRequest | RegistrationReply | BindingMessage


def _check_binding_common(message: BindingMessage) -> None:
    _check_address("home address", message.home_address)
    _check_int("identification", message.identification, _U64_MAX)
    object.__setattr__(message, "extensions", _check_extensions(message.extensions))


# Common header: Type(255) | Sub-Type | Flags | Status, then Vendor/Org-ID (4).
_BINDING_HEADER = struct.Struct("!BBBBI")
_BW = struct.Struct("!IIQ")  # home address, target address, identification
_BR = struct.Struct("!IQ")  # home address, identification
_BU = struct.Struct("!HHIIQ")  # lifetime, reserved, home address, care-of address, identification
BINDING_HEADER_LENGTH = _BINDING_HEADER.size  # 8
BINDING_FIXED_LENGTHS = {
    BindingSubtype.BINDING_WARNING: _BINDING_HEADER.size + _BW.size,  # 24
    BindingSubtype.BINDING_REQUEST: _BINDING_HEADER.size + _BR.size,  # 20
    BindingSubtype.BINDING_UPDATE: _BINDING_HEADER.size + _BU.size,  # 28
    BindingSubtype.BINDING_ACKNOWLEDGE: _BINDING_HEADER.size + _BU.size,  # 28
    BindingSubtype.PREVIOUS_FA_NOTIFICATION: _BINDING_HEADER.size + _BU.size,  # 28
}


def encode_binding_message(message: BindingMessage) -> bytes:
    extensions = encode_extensions(message.extensions)
    if isinstance(message, BindingWarning):
        header = _BINDING_HEADER.pack(255, BindingSubtype.BINDING_WARNING, 0, 0, VENDOR_ID)
        body = _BW.pack(int(message.home_address), int(message.target_address), message.identification)
    elif isinstance(message, BindingRequest):
        header = _BINDING_HEADER.pack(255, BindingSubtype.BINDING_REQUEST, 0, 0, VENDOR_ID)
        body = _BR.pack(int(message.home_address), message.identification)
    elif isinstance(message, BindingAcknowledge):
        header = _BINDING_HEADER.pack(255, BindingSubtype.BINDING_ACKNOWLEDGE, 0, message.status, VENDOR_ID)
        body = _BU.pack(
            message.lifetime, 0, int(message.home_address), int(message.care_of_address), message.identification
        )
    elif isinstance(message, (BindingUpdate, PreviousFaNotification)):
        subtype = (
            BindingSubtype.BINDING_UPDATE
            if isinstance(message, BindingUpdate)
            else BindingSubtype.PREVIOUS_FA_NOTIFICATION
        )
        flags = BindingFlags.A if message.acknowledge else 0
        header = _BINDING_HEADER.pack(255, subtype, flags, 0, VENDOR_ID)
        body = _BU.pack(
            message.lifetime, 0, int(message.home_address), int(message.care_of_address), message.identification
        )
    else:
        raise MipValueError(f"not a binding message: {message!r}")
    return header + body + extensions


def _decode_binding(r: Reader) -> tuple[BindingMessage, tuple[ExtensionSpan, ...]]:
    _expect_type(r, MessageType.EXPERIMENTAL)
    raw_subtype = r.u8("binding message sub-type")
    flags = r.u8("binding message flags")
    status = r.u8("binding message status")
    vendor_id = r.u32("binding message Vendor/Org-ID")
    # RFC 4064 section 6: an experimental message one does not understand is
    # discarded. The Vendor/Org-ID tells aaa_vpn's experiment from anybody else's.
    if vendor_id != VENDOR_ID:
        raise MipDecodeError(f"experimental message of Vendor/Org-ID {vendor_id}, not aaa_vpn's ({VENDOR_ID})", 4)
    try:
        subtype = BindingSubtype(raw_subtype)
    except ValueError:
        raise MipDecodeError(
            f"experimental message sub-type {raw_subtype} is not an aaa_vpn binding message", 1
        ) from None
    allowed_flags = (
        BindingFlags.A if subtype in (BindingSubtype.BINDING_UPDATE, BindingSubtype.PREVIOUS_FA_NOTIFICATION) else 0
    )
    if flags & ~allowed_flags:
        raise MipDecodeError(f"{subtype.name}: undefined flag bits 0x{flags & ~allowed_flags:02x} set", 2)
    if status and subtype != BindingSubtype.BINDING_ACKNOWLEDGE:
        raise MipDecodeError(f"{subtype.name}: status octet must be 0, is {status}", 3)

    message: BindingMessage
    if subtype == BindingSubtype.BINDING_WARNING:
        home, target = r.address("home address"), r.address("target address")
        identification = r.u64("identification")
        spans = _decode_spans(r)
        message = BindingWarning(home, target, identification, _exts(spans))
    elif subtype == BindingSubtype.BINDING_REQUEST:
        home = r.address("home address")
        identification = r.u64("identification")
        spans = _decode_spans(r)
        message = BindingRequest(home, identification, _exts(spans))
    else:
        lifetime = r.u16("lifetime")
        reserved_at = r.position
        if r.u16("reserved"):
            raise MipDecodeError(f"{subtype.name}: reserved field must be 0", reserved_at)
        home, care_of = r.address("home address"), r.address("care-of address")
        identification = r.u64("identification")
        spans = _decode_spans(r)
        if subtype == BindingSubtype.BINDING_ACKNOWLEDGE:
            message = BindingAcknowledge(status, lifetime, home, care_of, identification, _exts(spans))
        elif subtype == BindingSubtype.BINDING_UPDATE:
            message = BindingUpdate(lifetime, home, care_of, identification, bool(flags), _exts(spans))
        else:
            message = PreviousFaNotification(lifetime, home, care_of, identification, bool(flags), _exts(spans))
    return message, spans


def _exts(spans: tuple[ExtensionSpan, ...]) -> tuple[Extension, ...]:
    return tuple(s.extension for s in spans)


def decode_binding_message(data: bytes) -> BindingMessage:
    return _decode_binding(mip_reader(bytes(data)))[0]


# --------------------------------------------------------------------------------------------
# Any message


def decode_message_spans(data: bytes) -> tuple[Message, tuple[ExtensionSpan, ...]]:
    """Decode any message this codec knows, with where each extension lies
    (the authentication helpers need the offsets)."""
    data = bytes(data)
    if not data:
        raise MipDecodeError("empty message", 0)
    r = mip_reader(data)
    try:
        if data[0] == MessageType.REGISTRATION_REQUEST:
            return _decode_request(r)
        if data[0] == MessageType.REGISTRATION_REPLY:
            return _decode_reply(r)
        if data[0] == MessageType.EXPERIMENTAL:
            return _decode_binding(r)
    except MipValueError as exc:  # a field out of range for its type
        raise MipDecodeError(str(exc)) from None
    raise MipDecodeError(f"message type {data[0]} is not one this codec knows (1, 3, 255)", 0)


def decode_message(data: bytes) -> Message:
    """Decode a Registration Request, Registration Reply or binding message."""
    return decode_message_spans(data)[0]


def encode_message(message: Message) -> bytes:
    if isinstance(message, RegistrationRequest):
        return encode_registration_request(message)
    if isinstance(message, RegistrationReply):
        return encode_registration_reply(message)
    return encode_binding_message(message)


def extension_spans(data: bytes) -> tuple[ExtensionSpan, ...]:
    """Where each extension of an encoded message lies."""
    return decode_message_spans(data)[1]
