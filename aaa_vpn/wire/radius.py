"""The RADIUS kit: every code, attribute number and packet-level primitive the
project's RADIUS clients and servers share, defined once.

* Numbers: :class:`Code` (RFC 2865 section 3, RFC 2866, RFC 5176 section 2.3,
  RFC 5997), :class:`Attr` (the standard attribute types used anywhere here),
  :class:`AaaVpnAttr` (``dictionary.aaa_vpn``, vendor
  :data:`~aaa_vpn.wire.profile.VENDOR_ID`), :class:`ThreeGpp2Attr`
  (X.S0011-005, vendor :data:`THREEGPP2_VENDOR_ID`). The plain-integer
  aliases (``ACCESS_REQUEST``, ``USER_NAME``...) are the same numbers for hot
  paths and short call sites.
* Decoding: :func:`decode_packet` turns a datagram into a :class:`Packet`
  (header checked, attributes split with the bounded reader of
  :mod:`aaa_vpn.wire.reader`: an attribute whose Length runs past the packet's
  end is a :class:`RadiusDecodeError`, never accepted); :func:`iter_attributes`
  splits vendor attributes into ``(vendor, type, value)`` triples.
* Authenticators: :func:`response_authenticator` (RFC 2865 section 3), the
  Message-Authenticator (RFC 3579 section 3.2, RFC 5176 section 3.4):
  :func:`compute_message_authenticator`, :func:`verify_message_authenticator`,
  :func:`check_request_message_authenticator`.
* Encoding: :func:`encode_reply` (a reply to an Access-Request or Status-Server
  or a Dynamic Authorization request, Message-Authenticator first:
  BlastRADIUS, CVE-2024-3596), :func:`seal_request` (an Access-Request or
  Status-Server, Message-Authenticator first), :func:`encode_hashed_request`
  (requests whose Authenticator is an MD5 over the packet: CoA/Disconnect,
  RFC 5176 section 2.3, and Accounting-Request, RFC 2866 section 3), and
  :func:`attribute` / :func:`vendor_attribute`.
* Hiding: :func:`salt_encrypt` / :func:`salt_decrypt`, the salt scheme of RFC
  2868 section 3.5 (Tunnel-Password; dictionaries say ``encrypt=2``), which
  the project uses for every key it sends in an attribute (docs/design.md section
  3); :func:`hide_user_password` / :func:`recover_user_password`, RFC 2865
  section 5.2 (``encrypt=1``).
* Size limits of RFC 2865 sections 3 and 5.
* Dictionaries: :func:`load_dictionary`, the project's full dictionary set as
  a cached :class:`pyrad.dictionary.Dictionary` (pyrad is the attribute
  definition layer and a test oracle; nothing on the hot path builds pyrad
  packets); :func:`prepare_tool_dir`, a directory that radclient (``-d``) and
  tshark (``WIRESHARK_CONFIG_DIR``) can use.

Errors: :class:`RadiusDecodeError` means the peer sent something malformed;
``ValueError`` from an encoder means the caller asked for something that
cannot be built (:class:`ReplyTooLarge` for a packet beyond 4096 octets).

Pure functions: no sockets, no clock. ``hashlib.md5`` and the one-shot
``hmac.digest`` are used directly because servers call these on their hot
path.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import importlib.resources
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aaa_vpn.wire.profile import VENDOR_ID
from aaa_vpn.wire.reader import DecodeError, Reader

if TYPE_CHECKING:  # pyrad has no type hints; import it only where it is used
    from pyrad.dictionary import Dictionary

#: RFC 2865 section 3: the largest RADIUS packet.
MAX_PACKET_LENGTH = 4096
#: RFC 2865 section 3: Code, Identifier, Length, Authenticator.
HEADER_LENGTH = 20
#: RFC 2865 section 3: the Authenticator field.
AUTHENTICATOR_LENGTH = 16
#: RFC 2869 section 5.14: Type 80, Length 18, 16 octets of HMAC-MD5.
MESSAGE_AUTHENTICATOR_TYPE = 80
MESSAGE_AUTHENTICATOR_LENGTH = 18
#: RFC 2865 section 5: one octet of Length covers Type and Length too.
MAX_ATTRIBUTE_VALUE = 253
#: RFC 2865 section 5.26: Vendor-Id (4) and vendor type and length (2) inside
#: the 253 value octets of a Vendor-Specific attribute.
MAX_VSA_VALUE = MAX_ATTRIBUTE_VALUE - 6
#: RFC 2868 section 3.5: Tag (1) and Salt (2) leave 250 octets, i.e. 15 blocks
#: of 16; one of the 240 plaintext octets is the length octet. The same limit
#: holds for a Vendor-Specific attribute (247 - 3 -> 15 blocks).
MAX_SALT_PLAINTEXT = 239
#: Bytes a reply has for attributes after the header and the Message-Authenticator.
DEFAULT_ATTRIBUTE_BUDGET = MAX_PACKET_LENGTH - HEADER_LENGTH - MESSAGE_AUTHENTICATOR_LENGTH
#: 3GPP2's enterprise number (X.S0011-005).
THREEGPP2_VENDOR_ID = 5535
#: 16 zero octets: the Authenticator CoA and Accounting requests are hashed
#: with, and the salt-encryption key of the attributes they carry.
ZERO_AUTHENTICATOR = b"\x00" * AUTHENTICATOR_LENGTH

_BLOCK = 16


class Code(enum.IntEnum):
    """Packet codes (RFC 2865 section 3, RFC 2866 section 4, RFC 5176 section
    2.3, RFC 5997 section 2)."""

    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12
    STATUS_CLIENT = 13
    DISCONNECT_REQUEST = 40
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


#: Names as the RFCs spell them, for errors and logs.
CODE_NAMES: dict[int, str] = {
    Code.ACCESS_REQUEST: "Access-Request",
    Code.ACCESS_ACCEPT: "Access-Accept",
    Code.ACCESS_REJECT: "Access-Reject",
    Code.ACCOUNTING_REQUEST: "Accounting-Request",
    Code.ACCOUNTING_RESPONSE: "Accounting-Response",
    Code.ACCESS_CHALLENGE: "Access-Challenge",
    Code.STATUS_SERVER: "Status-Server",
    Code.STATUS_CLIENT: "Status-Client",
    Code.DISCONNECT_REQUEST: "Disconnect-Request",
    Code.DISCONNECT_ACK: "Disconnect-ACK",
    Code.DISCONNECT_NAK: "Disconnect-NAK",
    Code.COA_REQUEST: "CoA-Request",
    Code.COA_ACK: "CoA-ACK",
    Code.COA_NAK: "CoA-NAK",
}


def code_name(code: int) -> str:
    """The packet code's name (``Access-Request``), or ``code N``."""
    return CODE_NAMES.get(code) or f"code {code}"


class Attr(enum.IntEnum):
    """Standard attribute types used here (RFC 2865 section 5, RFC 2866 section
    5, RFC 2868 section 3, RFC 2869 section 5, RFC 5176 section 3)."""

    USER_NAME = 1
    USER_PASSWORD = 2
    CHAP_PASSWORD = 3
    NAS_IP_ADDRESS = 4
    NAS_PORT = 5
    SERVICE_TYPE = 6
    FRAMED_IP_ADDRESS = 8
    REPLY_MESSAGE = 18
    STATE = 24
    CLASS = 25
    VENDOR_SPECIFIC = 26
    SESSION_TIMEOUT = 27
    CALLED_STATION_ID = 30
    CALLING_STATION_ID = 31
    NAS_IDENTIFIER = 32
    PROXY_STATE = 33
    ACCT_STATUS_TYPE = 40
    ACCT_DELAY_TIME = 41
    ACCT_INPUT_OCTETS = 42
    ACCT_OUTPUT_OCTETS = 43
    ACCT_SESSION_ID = 44
    ACCT_SESSION_TIME = 46
    ACCT_INPUT_PACKETS = 47
    ACCT_OUTPUT_PACKETS = 48
    ACCT_TERMINATE_CAUSE = 49
    ACCT_MULTI_SESSION_ID = 50
    ACCT_INPUT_GIGAWORDS = 52
    ACCT_OUTPUT_GIGAWORDS = 53
    EVENT_TIMESTAMP = 55
    CHAP_CHALLENGE = 60
    TUNNEL_TYPE = 64
    TUNNEL_MEDIUM_TYPE = 65
    TUNNEL_CLIENT_ENDPOINT = 66
    TUNNEL_SERVER_ENDPOINT = 67
    TUNNEL_PASSWORD = 69
    MESSAGE_AUTHENTICATOR = 80
    TUNNEL_PRIVATE_GROUP_ID = 81
    TUNNEL_ASSIGNMENT_ID = 82
    TUNNEL_PREFERENCE = 83
    NAS_PORT_ID = 87
    CHARGEABLE_USER_IDENTITY = 89
    TUNNEL_CLIENT_AUTH_ID = 90
    TUNNEL_SERVER_AUTH_ID = 91
    NAS_IPV6_ADDRESS = 95
    FRAMED_INTERFACE_ID = 96
    FRAMED_IPV6_PREFIX = 97
    ERROR_CAUSE = 101


class AaaVpnAttr(enum.IntEnum):
    """Vendor types of ``dictionary.aaa_vpn`` (names without the ``Aaa-Vpn-`` prefix)."""

    SESSION_ID = 1
    REQUEST_TYPE = 2
    HOME_ADDRESS = 3
    HOME_AGENT = 4
    CARE_OF_ADDRESS = 5
    PREVIOUS_FA = 6
    SESSION_ROOT_KEY = 7
    KEY_EPOCH = 8
    LIFETIME = 9
    MN_HA_SPI = 10
    MN_HA_KEY = 11
    FA_HA_SPI = 12
    FA_HA_KEY = 13
    REJECT_REASON = 14
    HANDOFF_KEY = 15
    PREVIOUS_FA_HANDOFF_KEY = 16
    PROFILE_DIGEST = 17
    PATH_ROLE = 32
    PATH_LOCAL = 33
    PATH_PEER = 34
    PATH_LOCAL_TS = 35
    PATH_REMOTE_TS = 36
    PATH_KEY_MODE = 37
    PATH_ESP_TRANSFORM = 38
    PATH_SPI_IN = 39
    PATH_SPI_OUT = 40
    PATH_KEY_IN = 41
    PATH_KEY_OUT = 42
    PATH_LIFETIME = 43
    PATH_IKE_PROPOSAL = 44
    PATH_IKE_PSK = 45
    PATH_QOS_CLASS = 46
    PATH_DSCP = 47
    PATH_RATE_LIMIT = 48
    PATH_GATEWAY_MODE = 49
    PATH_BINDING_KEY = 50


class ThreeGpp2Attr(enum.IntEnum):
    """3GPP2 vendor types used here (FreeRADIUS ``dictionary.3gpp2`` names)."""

    IKE_PRESHARED_SECRET_REQUEST = 1
    SECURITY_LEVEL = 2
    PRE_SHARED_SECRET = 3
    HOME_AGENT_IP_ADDRESS = 7
    KEY_ID = 8
    SESSION_CONTINUE = 48
    MN_HA_SPI = 57
    MN_HA_SHARED_KEY = 58
    FOREIGN_AGENT_ADDRESS = 79
    SESSION_TERMINATION_CAPABILITY = 88


# Plain-integer aliases of the numbers above (the same values).
ACCESS_REQUEST = int(Code.ACCESS_REQUEST)
ACCESS_ACCEPT = int(Code.ACCESS_ACCEPT)
ACCESS_REJECT = int(Code.ACCESS_REJECT)
ACCOUNTING_REQUEST = int(Code.ACCOUNTING_REQUEST)
ACCOUNTING_RESPONSE = int(Code.ACCOUNTING_RESPONSE)
ACCESS_CHALLENGE = int(Code.ACCESS_CHALLENGE)
STATUS_SERVER = int(Code.STATUS_SERVER)

USER_NAME = int(Attr.USER_NAME)
CHAP_PASSWORD = int(Attr.CHAP_PASSWORD)
NAS_IP_ADDRESS = int(Attr.NAS_IP_ADDRESS)
REPLY_MESSAGE = int(Attr.REPLY_MESSAGE)
VENDOR_SPECIFIC = int(Attr.VENDOR_SPECIFIC)
SESSION_TIMEOUT = int(Attr.SESSION_TIMEOUT)
CLASS = int(Attr.CLASS)
NAS_IDENTIFIER = int(Attr.NAS_IDENTIFIER)
PROXY_STATE = int(Attr.PROXY_STATE)
CHAP_CHALLENGE = int(Attr.CHAP_CHALLENGE)
TUNNEL_PASSWORD = int(Attr.TUNNEL_PASSWORD)
ERROR_CAUSE = int(Attr.ERROR_CAUSE)


class RadiusDecodeError(DecodeError):
    """A received RADIUS packet is malformed (the peer's fault)."""


class Packet:
    """A received RADIUS packet whose header and attribute lengths check out
    (:func:`decode_packet`). Nothing in it is verified yet."""

    __slots__ = ("attributes", "authenticator", "code", "data", "identifier")

    def __init__(
        self, data: bytes, code: int, identifier: int, authenticator: bytes, attributes: list[tuple[int, bytes]]
    ) -> None:
        self.data = data
        """The packet up to its Length (octets beyond it are padding, RFC 2865 section 3)."""
        self.code = code
        self.identifier = identifier
        self.authenticator = authenticator
        """The Request or Response Authenticator field (16 octets)."""
        self.attributes = attributes
        """``(type, value)`` in the order received."""

    def first(self, attribute_type: int) -> bytes | None:
        """The value of the first attribute of ``attribute_type``, or None."""
        for code, value in self.attributes:
            if code == attribute_type:
                return value
        return None

    def all(self, attribute_type: int) -> list[bytes]:
        """The values of every attribute of ``attribute_type``, in order."""
        return [value for code, value in self.attributes if code == attribute_type]

    def proxy_states(self) -> bytes:
        """The Proxy-State attributes, raw and in order: what a reply echoes
        at its end (RFC 2865 section 5.33)."""
        return b"".join(bytes((PROXY_STATE, len(v) + 2)) + v for c, v in self.attributes if c == PROXY_STATE)

    def __repr__(self) -> str:
        return f"Packet({code_name(self.code)}, id={self.identifier}, {len(self.attributes)} attributes)"


_HEADER = struct.Struct("!BBH")


def decode_packet(data: bytes) -> Packet:
    """Check a datagram's header and split its attributes (RFC 2865 section 3
    and 5). Octets beyond Length are padding and ignored; a Length below 20,
    above 4096 or beyond the datagram, or an attribute whose Length is below
    2 or runs past the packet's end, raises :class:`RadiusDecodeError`."""
    if len(data) < HEADER_LENGTH:
        raise RadiusDecodeError(f"{len(data)} octets: shorter than the 20-octet RADIUS header", 0)
    code, identifier, length = _HEADER.unpack_from(data)
    if length < HEADER_LENGTH or length > MAX_PACKET_LENGTH:
        raise RadiusDecodeError(f"Length {length}: expected 20..4096 (RFC 2865 section 3)", 2)
    if length > len(data):
        raise RadiusDecodeError(f"Length {length} exceeds the {len(data)} octets received", 2)
    if length != len(data):
        data = data[:length]
    attributes = Reader(data, HEADER_LENGTH, length, RadiusDecodeError).attributes(code_name(code))
    return Packet(data, code, identifier, data[4:HEADER_LENGTH], attributes)


def split_attributes(attributes: bytes, what: str = "attributes") -> list[tuple[int, bytes]]:
    """Raw attributes (``packet[20:length]``, or a concatenation of complete
    attributes) as ``(type, value)`` pairs; :class:`RadiusDecodeError` if a
    Length does not fit."""
    return Reader(attributes, error=RadiusDecodeError).attributes(what)


def iter_attributes(
    attributes: bytes | Iterable[tuple[int, bytes]],
    vendors: Iterable[int] = (VENDOR_ID,),
) -> Iterator[tuple[int, int, bytes]]:
    """Attributes as ``(vendor, type, value)`` triples.

    ``attributes`` is raw (see :func:`split_attributes`) or already split.
    Standard attributes come as vendor 0. Vendor-Specific attributes of the
    ``vendors`` given are split into their sub-attributes (RFC 2865 section
    5.26 recommended format; several per VSA allowed); those of other vendors
    are skipped, since their format is not known here. Raises
    :class:`RadiusDecodeError` if any length is inconsistent."""
    pairs: Iterable[tuple[int, bytes]]
    if isinstance(attributes, (bytes, bytearray, memoryview)):
        pairs = split_attributes(bytes(attributes))
    else:
        pairs = attributes
    wanted = frozenset(vendors)
    for atype, value in pairs:
        if atype != VENDOR_SPECIFIC:
            yield 0, atype, value
            continue
        if len(value) < 5:  # RFC 2865 section 5.26: Length >= 7
            raise RadiusDecodeError(f"Vendor-Specific of {len(value) + 2} octets: at least 7")
        vendor = int.from_bytes(value[:4], "big")
        if vendor in wanted:
            for vtype, vvalue in Reader(value, 4, error=RadiusDecodeError).attributes(f"vendor {vendor} attribute"):
                yield vendor, vtype, vvalue


class ReplyTooLarge(ValueError):
    """A reply would exceed 4096 octets (RFC 2865 section 3)."""


def attribute(code: int, value: bytes) -> bytes:
    """One standard attribute; ValueError if the value exceeds 253 octets."""
    if len(value) > MAX_ATTRIBUTE_VALUE:
        raise ValueError(f"attribute {code}: value of {len(value)} octets, at most {MAX_ATTRIBUTE_VALUE} fit")
    return bytes((code, len(value) + 2)) + value


def vendor_attribute(vendor: int, code: int, value: bytes) -> bytes:
    """One Vendor-Specific attribute in the RFC 2865 section 5.26 recommended form."""
    if len(value) > MAX_VSA_VALUE:
        raise ValueError(f"vendor attribute {vendor}:{code}: value of {len(value)} octets, at most {MAX_VSA_VALUE}")
    return struct.pack("!BBIBB", 26, len(value) + 8, vendor, code, len(value) + 2) + value


def _xor16(a: bytes, b: bytes) -> bytes:
    # int XOR is several times faster than a per-byte generator in CPython.
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(_BLOCK, "big")


def salt_encrypt(value: bytes, secret: bytes, request_authenticator: bytes, salt: bytes) -> bytes:
    """Encrypt ``value`` per RFC 2868 section 3.5 and return ``salt || ciphertext``.

    ``request_authenticator`` is the one of the Access-Request being answered
    (for CoA-Request and Accounting-Request, whose authenticator covers the
    attributes, 16 zero octets, as FreeRADIUS and pyrad do). ``salt`` is two
    octets with the most significant bit set, unique per attribute in the
    packet (the caller guarantees uniqueness). The plaintext is the length
    octet and ``value``, zero-padded to a multiple of 16::

        b(1) = MD5(S + R + A)    c(1) = p(1) xor b(1)
        b(i) = MD5(S + c(i-1))   c(i) = p(i) xor b(i)

    Raises ValueError if ``value`` is longer than :data:`MAX_SALT_PLAINTEXT`
    (it could never fit into an attribute) or the salt is malformed.
    """
    if len(value) > MAX_SALT_PLAINTEXT:
        raise ValueError(f"salt-encrypted value is {len(value)} octets, at most {MAX_SALT_PLAINTEXT} fit")
    if len(salt) != 2 or not salt[0] & 0x80:
        raise ValueError("the salt is two octets with the most significant bit set (RFC 2868 section 3.5)")
    plain = bytes((len(value),)) + value
    plain += b"\x00" * (-len(plain) % _BLOCK)
    keyed = hashlib.md5(secret)
    out = [salt]
    chain = request_authenticator + salt
    for i in range(0, len(plain), _BLOCK):
        h = keyed.copy()
        h.update(chain)
        chain = _xor16(plain[i : i + _BLOCK], h.digest())
        out.append(chain)
    return b"".join(out)


def salt_decrypt(data: bytes, secret: bytes, request_authenticator: bytes, *, strict: bool = True) -> bytes:
    """Reverse :func:`salt_encrypt`: ``data`` is ``salt || ciphertext``.

    Raises ValueError if the length is not 2 + a multiple of 16, the salt's
    most significant bit is clear, or the decrypted length octet is larger
    than the plaintext. With ``strict`` (the default) the padding must be
    zeros too (RFC 2868 section 3.5), which also catches most wrong secrets.
    """
    if len(data) < 2 + _BLOCK or (len(data) - 2) % _BLOCK:
        raise ValueError(f"salt-encrypted value of {len(data)} octets: expected 2 + a multiple of 16")
    salt = data[:2]
    if not salt[0] & 0x80:
        raise ValueError("salt without its most significant bit (RFC 2868 section 3.5)")
    keyed = hashlib.md5(secret)
    chain = request_authenticator + salt
    out = []
    for i in range(2, len(data), _BLOCK):
        block = data[i : i + _BLOCK]
        h = keyed.copy()
        h.update(chain)
        out.append(_xor16(block, h.digest()))
        chain = block  # RFC 2868 section 3.5: chain on the ciphertext
    plain = b"".join(out)
    length = plain[0]
    if length > len(plain) - 1:
        raise ValueError("salt-encrypted value: the length octet exceeds the data (wrong secret?)")
    if strict and any(plain[1 + length :]):
        raise ValueError("salt-encrypted value: non-zero padding (wrong secret or authenticator?)")
    return plain[1 : 1 + length]


def hide_user_password(password: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """User-Password hiding of RFC 2865 section 5.2 (at most 128 octets)."""
    if not 1 <= len(password) <= 128:
        raise ValueError("a User-Password is 1..128 octets (RFC 2865 section 5.2)")
    plain = password + b"\x00" * (-len(password) % _BLOCK)
    keyed = hashlib.md5(secret)
    chain = request_authenticator
    out = []
    for i in range(0, len(plain), _BLOCK):
        h = keyed.copy()
        h.update(chain)
        chain = _xor16(plain[i : i + _BLOCK], h.digest())
        out.append(chain)
    return b"".join(out)


def recover_user_password(hidden: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """Reverse :func:`hide_user_password`; trailing NUL padding is removed."""
    if not hidden or len(hidden) % _BLOCK or len(hidden) > 128:
        raise ValueError("a hidden User-Password is 16..128 octets, a multiple of 16")
    keyed = hashlib.md5(secret)
    chain = request_authenticator
    out = []
    for i in range(0, len(hidden), _BLOCK):
        block = hidden[i : i + _BLOCK]
        h = keyed.copy()
        h.update(chain)
        out.append(_xor16(block, h.digest()))
        chain = block
    return b"".join(out).rstrip(b"\x00")


def response_authenticator(packet: bytes, request_authenticator: bytes, secret: bytes) -> bytes:
    """RFC 2865 section 3: MD5(Code + Identifier + Length + RequestAuth + Attributes + Secret).

    ``packet`` is the complete reply; its own Authenticator field is ignored.
    """
    return hashlib.md5(packet[:4] + request_authenticator + packet[HEADER_LENGTH:] + secret).digest()


def _find_message_authenticator(packet: bytes) -> int:
    """Offset of the Message-Authenticator's value in ``packet``, or -1."""
    pos = HEADER_LENGTH
    end = len(packet)
    while pos + 2 <= end:
        atype, alen = packet[pos], packet[pos + 1]
        if alen < 2:
            return -1
        if atype == MESSAGE_AUTHENTICATOR_TYPE:
            return pos + 2 if alen == MESSAGE_AUTHENTICATOR_LENGTH else -1
        pos += alen
    return -1


def _mac(secret: bytes, packet: bytes, offset: int, authenticator: bytes) -> bytes:
    """HMAC-MD5 over ``packet`` with ``authenticator`` in the Authenticator
    field and the Message-Authenticator value at ``offset`` zeroed."""
    return hmac.digest(
        secret,
        packet[:4] + authenticator + packet[HEADER_LENGTH:offset] + ZERO_AUTHENTICATOR + packet[offset + 16 :],
        "md5",
    )


def compute_message_authenticator(packet: bytes, secret: bytes, request_authenticator: bytes | None = None) -> bytes:
    """HMAC-MD5 of RFC 3579 section 3.2 over ``packet``.

    The Message-Authenticator value is taken as 16 zero octets. For a reply
    (Access-Accept/Reject/Challenge, CoA/Disconnect-ACK/NAK) pass the
    request's authenticator as ``request_authenticator``: it replaces the
    packet's Authenticator field in the computation. For CoA/Disconnect-Request
    and Accounting-Request pass 16 zero octets (RFC 5176 section 3.4). Raises
    ValueError if the packet has no well-formed Message-Authenticator.
    """
    offset = _find_message_authenticator(packet)
    if offset < 0:
        raise ValueError("the packet has no Message-Authenticator (type 80, length 18)")
    authenticator = packet[4:HEADER_LENGTH] if request_authenticator is None else request_authenticator
    return _mac(secret, packet, offset, authenticator)


def verify_message_authenticator(packet: bytes, secret: bytes, request_authenticator: bytes | None = None) -> bool:
    """True if ``packet`` carries a valid Message-Authenticator (constant-time compare)."""
    offset = _find_message_authenticator(packet)
    if offset < 0:
        return False
    expected = compute_message_authenticator(packet, secret, request_authenticator)
    return hmac.compare_digest(packet[offset : offset + AUTHENTICATOR_LENGTH], expected)


def check_message_authenticator(packet: Packet, secret: bytes, authenticator: bytes | None = None) -> bool | None:
    """The Message-Authenticator of a decoded packet: None when it has none,
    else whether it is valid (constant-time compare). More than one, or one
    whose value is not 16 octets, is invalid (RFC 3579 section 3.2).

    ``authenticator`` replaces the packet's Authenticator field in the
    computation: None for an Access-Request or Status-Server (its own), the
    request's for a reply, 16 zero octets for a CoA/Disconnect or Accounting
    request."""
    position = HEADER_LENGTH
    found = -1
    for code, value in packet.attributes:
        if code == MESSAGE_AUTHENTICATOR_TYPE:
            if found >= 0 or len(value) != AUTHENTICATOR_LENGTH:
                return False
            found = position + 2
        position += len(value) + 2
    if found < 0:
        return None
    data = packet.data
    expected = _mac(secret, data, found, packet.authenticator if authenticator is None else authenticator)
    return hmac.compare_digest(data[found : found + AUTHENTICATOR_LENGTH], expected)


def check_request_message_authenticator(packet: bytes, secret: bytes) -> bool | None:
    """:func:`check_message_authenticator` of a raw *request* (Access-Request,
    Status-Server): None when it has none, else whether it is valid; a
    malformed packet is False rather than an exception."""
    try:
        decoded = decode_packet(packet)
    except RadiusDecodeError:
        return False
    return check_message_authenticator(decoded, secret)


_MA_ZERO = bytes((MESSAGE_AUTHENTICATOR_TYPE, MESSAGE_AUTHENTICATOR_LENGTH)) + ZERO_AUTHENTICATOR
_MA_HEAD = bytes((MESSAGE_AUTHENTICATOR_TYPE, MESSAGE_AUTHENTICATOR_LENGTH))


def encode_reply(
    code: int,
    identifier: int,
    request_authenticator: bytes,
    secret: bytes,
    attributes: bytes | Sequence[bytes],
    message_authenticator: bool = True,
) -> bytes:
    """A complete reply: header, Message-Authenticator first (FreeRADIUS'
    BlastRADIUS guidance), then ``attributes`` (raw: one byte string, or a
    list of complete attributes). Right for Access-Accept/Reject/Challenge,
    Status-Server replies (RFC 5997 section 3) and CoA/Disconnect ACKs and
    NAKs (RFC 5176 section 3.4).

    The Message-Authenticator is computed before the Response Authenticator
    (RFC 3579 section 3.2). Without ``message_authenticator`` there is none:
    an Accounting-Response (RFC 2866 section 4.2 defines none, and its peers
    disagree on how one would be computed). Raises :class:`ReplyTooLarge`
    beyond 4096 octets."""
    body = attributes if isinstance(attributes, bytes) else b"".join(attributes)
    if not message_authenticator:
        length = HEADER_LENGTH + len(body)
        if length > MAX_PACKET_LENGTH:
            raise ReplyTooLarge(f"reply of {length} octets exceeds {MAX_PACKET_LENGTH} (RFC 2865 section 3)")
        head = _HEADER.pack(code, identifier, length)
        return head + hashlib.md5(head + request_authenticator + body + secret).digest() + body
    length = HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(body)
    if length > MAX_PACKET_LENGTH:
        raise ReplyTooLarge(f"reply of {length} octets exceeds {MAX_PACKET_LENGTH} (RFC 2865 section 3)")
    head = _HEADER.pack(code, identifier, length)
    attrs = _MA_HEAD + hmac.digest(secret, head + request_authenticator + _MA_ZERO + body, "md5") + body
    return head + hashlib.md5(head + request_authenticator + attrs + secret).digest() + attrs


def seal_request(code: int, identifier: int, request_authenticator: bytes, secret: bytes, attributes: bytes) -> bytes:
    """A complete Access-Request or Status-Server: header, Message-Authenticator
    first, ``attributes``. The Message-Authenticator is HMAC-MD5(secret, packet
    with its value zeroed) (RFC 3579 section 3.2). ValueError for an
    Identifier outside 0..255 or an authenticator that is not 16 octets;
    :class:`ReplyTooLarge` beyond 4096 octets."""
    if not 0 <= identifier <= 255:
        raise ValueError(f"Identifier {identifier}: expected 0..255")
    if len(request_authenticator) != AUTHENTICATOR_LENGTH:
        raise ValueError(f"the Request Authenticator is {len(request_authenticator)} octets, expected 16")
    length = HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(attributes)
    if length > MAX_PACKET_LENGTH:
        raise ReplyTooLarge(f"the request would be {length} octets; RADIUS allows {MAX_PACKET_LENGTH}")
    head = _HEADER.pack(code, identifier, length) + request_authenticator
    return head + _MA_HEAD + hmac.digest(secret, head + _MA_ZERO + attributes, "md5") + attributes


def encode_hashed_request(code: int, identifier: int, secret: bytes, attributes: bytes | Sequence[bytes]) -> bytes:
    """A request whose Authenticator is ``MD5(Code + Identifier + Length + 16
    zero octets + Attributes + Secret)``: CoA-Request and Disconnect-Request
    (RFC 5176 section 2.3) and Accounting-Request (RFC 2866 section 3). The
    Message-Authenticator comes first, computed with 16 zero octets in the
    Authenticator field before the Request Authenticator is (RFC 5176 section
    3.4). :class:`ReplyTooLarge` beyond 4096 octets."""
    body = attributes if isinstance(attributes, bytes) else b"".join(attributes)
    length = HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(body)
    if length > MAX_PACKET_LENGTH:
        raise ReplyTooLarge(f"request of {length} octets exceeds {MAX_PACKET_LENGTH} (RFC 2865 section 3)")
    head = _HEADER.pack(code, identifier & 0xFF, length)
    attrs = _MA_HEAD + hmac.digest(secret, head + ZERO_AUTHENTICATOR + _MA_ZERO + body, "md5") + body
    return head + hashlib.md5(head + ZERO_AUTHENTICATOR + attrs + secret).digest() + attrs


def check_hashed_request(packet: Packet, secret: bytes) -> bool:
    """Whether a CoA/Disconnect or Accounting request's Request Authenticator
    (:func:`encode_hashed_request`) is right (constant-time compare)."""
    data = packet.data
    expected = hashlib.md5(data[:4] + ZERO_AUTHENTICATOR + data[HEADER_LENGTH:] + secret).digest()
    return hmac.compare_digest(expected, packet.authenticator)


def check_response_authenticator(packet: Packet, request_authenticator: bytes, secret: bytes) -> bool:
    """Whether a reply's Response Authenticator is right (RFC 2865 section 3;
    constant-time compare)."""
    return hmac.compare_digest(response_authenticator(packet.data, request_authenticator, secret), packet.authenticator)


# --- dictionaries ---------------------------------------------------------------------------

#: The root file of the full set (what pyrad loads).
ROOT_DICTIONARY = "dictionary"
#: The vendor file: the only one radclient and tshark need.
VENDOR_DICTIONARY = "dictionary.aaa_vpn"
#: Corrections to tshark's own dictionary, appended for tshark only.
WIRESHARK_FIXES = "dictionary.wireshark"


@functools.cache
def dictionary_dir() -> Path:
    """The directory holding the project's dictionaries.

    Normally the package directory itself; if the package is not on a file
    system (a zip), the files are copied once to a temporary directory,
    because ``$INCLUDE`` needs real paths.
    """
    root = importlib.resources.files("aaa_vpn") / "dictionaries"
    if isinstance(root, Path):
        return root
    target = Path(tempfile.mkdtemp(prefix="aaa_vpn-dictionaries-"))

    def copy(node: importlib.resources.abc.Traversable, dest: Path) -> None:
        for child in node.iterdir():
            if child.is_dir():
                (dest / child.name).mkdir()
                copy(child, dest / child.name)
            else:
                (dest / child.name).write_bytes(child.read_bytes())

    copy(root, target)
    return target


@functools.cache
def load_dictionary() -> Dictionary:
    """The full dictionary set (RFC 2865/2866/2868/2869/5176, 3GPP2 subset,
    aaa_vpn vendor) as one pyrad Dictionary, parsed once and cached.

    The object is shared: do not modify it.
    """
    from pyrad.dictionary import Dictionary

    return Dictionary(str(dictionary_dir() / ROOT_DICTIONARY))


def prepare_tool_dir(directory: str | os.PathLike[str]) -> Path:
    """Make ``directory`` usable both as ``radclient -d <directory>`` and as
    ``WIRESHARK_CONFIG_DIR=<directory>`` for tshark, and return it.

    * ``<directory>/dictionary``: a copy of the vendor dictionary. radclient
      reads ``/usr/share/freeradius/dictionary`` and then ``<dir>/dictionary``.
    * ``<directory>/radius/dictionary``: the vendor dictionary followed by
      ``dictionary.wireshark`` (fixes for tshark's own 3GPP2 file). tshark
      loads it in addition to its global RADIUS dictionary.

    Only vendor attributes are written: both tools bring their own standard,
    RFC 2868 and 3GPP2 definitions. Copies, not ``$INCLUDE``, so the
    directory stands alone. Existing files of these names are replaced.
    """
    path = Path(directory)
    (path / "radius").mkdir(parents=True, exist_ok=True)
    source = dictionary_dir()
    vendor = (source / VENDOR_DICTIONARY).read_bytes()
    (path / "dictionary").write_bytes(vendor)
    fixes = (source / WIRESHARK_FIXES).read_bytes()
    (path / "radius" / "dictionary").write_bytes(vendor + b"\n" + fixes)
    return path


__all__ = [
    "AUTHENTICATOR_LENGTH",
    "CODE_NAMES",
    "DEFAULT_ATTRIBUTE_BUDGET",
    "HEADER_LENGTH",
    "MAX_ATTRIBUTE_VALUE",
    "MAX_PACKET_LENGTH",
    "MAX_SALT_PLAINTEXT",
    "MAX_VSA_VALUE",
    "MESSAGE_AUTHENTICATOR_LENGTH",
    "MESSAGE_AUTHENTICATOR_TYPE",
    "ROOT_DICTIONARY",
    "THREEGPP2_VENDOR_ID",
    "VENDOR_DICTIONARY",
    "WIRESHARK_FIXES",
    "ZERO_AUTHENTICATOR",
    "AaaVpnAttr",
    "Attr",
    "Code",
    "Packet",
    "RadiusDecodeError",
    "ReplyTooLarge",
    "ThreeGpp2Attr",
    "attribute",
    "check_hashed_request",
    "check_message_authenticator",
    "check_request_message_authenticator",
    "check_response_authenticator",
    "code_name",
    "compute_message_authenticator",
    "decode_packet",
    "dictionary_dir",
    "encode_hashed_request",
    "encode_reply",
    "hide_user_password",
    "iter_attributes",
    "load_dictionary",
    "prepare_tool_dir",
    "recover_user_password",
    "response_authenticator",
    "salt_decrypt",
    "salt_encrypt",
    "seal_request",
    "split_attributes",
    "vendor_attribute",
    "verify_message_authenticator",
]
