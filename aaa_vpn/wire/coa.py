"""Dynamic Authorization (RFC 5176): Disconnect-Request/ACK/NAK and
CoA-Request/ACK/NAK, as the home AAA sends them to the agents and to any
other RFC 5176 server (FreeRADIUS with ``listen { type = coa }``, a PDSN).

Rules (docs/protocol.md section 6):

* Codes 40-45 (RFC 5176 section 2.3). A request's Authenticator is computed
  as for an Accounting-Request (RFC 2866 section 3)::

      MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret)

* Every request carries a Message-Authenticator, first (BlastRADIUS
  guidance), computed over the packet with 16 zero octets in the
  Authenticator field *before* the Request Authenticator is (RFC 5176
  section 3.4). A request whose Authenticator or Message-Authenticator is
  wrong is invalid (:func:`decode_request` returns None): the receiver drops
  it silently.
* A request names its session as RFC 5176 section 3 asks: User-Name (the
  NAI), then the NAS and session identification attributes the agent itself
  sent in its Access-Request (:data:`IDENTIFICATION_TYPES`, kept raw with the
  session: :func:`identification`), then, to a client of the ``aaa-vpn``
  flavour, ``Aaa-Vpn-Session-Id`` (a vendor identification attribute; other
  receivers would NAK an attribute they do not know, RFC 5176 section 2.3).
  A CoA-Request then carries the agent's view in its client's flavour.
* An answer (ACK/NAK) this module builds is built like an Access-Accept
  (:func:`aaa_vpn.wire.radius.encode_reply`): Message-Authenticator first,
  computed with the request's Authenticator, then the Response
  Authenticator. A NAK carries one Error-Cause (101).
* An answer is believed (:func:`decode_answer`) when its Identifier and code
  answer the request and its Response Authenticator is right (RFC 5176
  section 2.3). Its Message-Authenticator is optional (RFC 5176 section 3.4:
  "MAY"), required only where the client is configured so; one that is
  present must be right, computed either with the request's Authenticator
  (RFC 5176 section 3.4) or with 16 zero octets in its place, as FreeRADIUS
  3.2 computes it (its ``rad_sign`` zeroes the vector of every CoA/Disconnect
  packet; checked against the daemon, tests/test_freeradius_coa.py). The
  leniency costs nothing: either way the HMAC covers the whole answer under
  the shared secret, and the Response Authenticator binds it to the request.
* Salt-encrypted attributes of a CoA-Request (a pushed VPN profile) are
  keyed with 16 zero octets instead of an authenticator, as FreeRADIUS and
  pyrad do (``Packet._salt_vector``): the Request Authenticator covers them,
  so it cannot key them.

Pure functions: no sockets, no clock.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from aaa_vpn.secret import Secret
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.enums import Flavour, PskEncoding
from aaa_vpn.wire.profile import VENDOR_ID, VpnProfile
from aaa_vpn.wire.radius_profile import ProfileDecodeError, decode_profile, encode_profile, iter_attributes

DISCONNECT_REQUEST = 40
DISCONNECT_ACK = 41
DISCONNECT_NAK = 42
COA_REQUEST = 43
COA_ACK = 44
COA_NAK = 45
#: RFC 5176 section 3.5.
ERROR_CAUSE = 101
#: Aaa-Vpn-Session-Id (dictionary.aaa_vpn).
SESSION_ID_TYPE = 1
#: RFC 5176 section 2.3.
COA_PORT = 3799
ZERO_AUTHENTICATOR = b"\x00" * rc.AUTHENTICATOR_LENGTH

#: RFC 5176 section 3: the NAS identification attributes (NAS-IP-Address,
#: NAS-Identifier, NAS-IPv6-Address) and the session identification
#: attributes but User-Name and Vendor-Specific (NAS-Port, Framed-IP-Address,
#: Called-Station-Id, Calling-Station-Id, Acct-Session-Id,
#: Acct-Multi-Session-Id, NAS-Port-Id, Chargeable-User-Identity,
#: Framed-Interface-Id, Framed-IPv6-Prefix). User-Name is the session's NAI
#: as its agent sent it; which vendor attributes identify a session is the
#: vendor's business, so none is kept.
IDENTIFICATION_TYPES = frozenset(
    {
        rc.Attr.NAS_IP_ADDRESS,
        rc.Attr.NAS_IDENTIFIER,
        rc.Attr.NAS_IPV6_ADDRESS,
        rc.Attr.NAS_PORT,
        rc.Attr.FRAMED_IP_ADDRESS,
        rc.Attr.CALLED_STATION_ID,
        rc.Attr.CALLING_STATION_ID,
        rc.Attr.ACCT_SESSION_ID,
        rc.Attr.ACCT_MULTI_SESSION_ID,
        rc.Attr.NAS_PORT_ID,
        rc.Attr.CHARGEABLE_USER_IDENTITY,
        rc.Attr.FRAMED_INTERFACE_ID,
        rc.Attr.FRAMED_IPV6_PREFIX,
    }
)

#: The RFC 2865/2869/3162/4372 names of :data:`IDENTIFICATION_TYPES`.
IDENTIFICATION_NAMES: dict[int, str] = {
    rc.Attr.NAS_IP_ADDRESS: "NAS-IP-Address",
    rc.Attr.NAS_IDENTIFIER: "NAS-Identifier",
    rc.Attr.NAS_IPV6_ADDRESS: "NAS-IPv6-Address",
    rc.Attr.NAS_PORT: "NAS-Port",
    rc.Attr.FRAMED_IP_ADDRESS: "Framed-IP-Address",
    rc.Attr.CALLED_STATION_ID: "Called-Station-Id",
    rc.Attr.CALLING_STATION_ID: "Calling-Station-Id",
    rc.Attr.ACCT_SESSION_ID: "Acct-Session-Id",
    rc.Attr.ACCT_MULTI_SESSION_ID: "Acct-Multi-Session-Id",
    rc.Attr.NAS_PORT_ID: "NAS-Port-Id",
    rc.Attr.CHARGEABLE_USER_IDENTITY: "Chargeable-User-Identity",
    rc.Attr.FRAMED_INTERFACE_ID: "Framed-Interface-Id",
    rc.Attr.FRAMED_IPV6_PREFIX: "Framed-IPv6-Prefix",
}
assert set(IDENTIFICATION_NAMES) == IDENTIFICATION_TYPES

REQUEST_CODES = frozenset({DISCONNECT_REQUEST, COA_REQUEST})
ANSWER_CODES = {DISCONNECT_REQUEST: (DISCONNECT_ACK, DISCONNECT_NAK), COA_REQUEST: (COA_ACK, COA_NAK)}
CODE_NAMES = {
    DISCONNECT_REQUEST: "Disconnect-Request",
    DISCONNECT_ACK: "Disconnect-ACK",
    DISCONNECT_NAK: "Disconnect-NAK",
    COA_REQUEST: "CoA-Request",
    COA_ACK: "CoA-ACK",
    COA_NAK: "CoA-NAK",
}


class ErrorCause(enum.IntEnum):
    """Error-Cause values (RFC 5176 section 3.5) the agents send."""

    RESIDUAL_CONTEXT_REMOVED = 201
    UNSUPPORTED_ATTRIBUTE = 401
    MISSING_ATTRIBUTE = 402
    INVALID_REQUEST = 404
    UNSUPPORTED_SERVICE = 405
    INVALID_ATTRIBUTE_VALUE = 407
    ADMINISTRATIVELY_PROHIBITED = 501
    SESSION_CONTEXT_NOT_FOUND = 503
    SESSION_CONTEXT_NOT_REMOVABLE = 504
    RESOURCES_UNAVAILABLE = 506


class CoaDecodeError(ValueError):
    """A CoA/Disconnect packet that does not parse."""


def error_cause_name(value: int) -> str:
    try:
        return ErrorCause(value).name.replace("_", "-").title()
    except ValueError:
        return f"Error-Cause {value}"


def identification(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    """The identification attributes (:data:`IDENTIFICATION_TYPES`) among an
    Access-Request's ``(type, value)`` pairs, raw (Type, Length, Value), in
    the order received, the first of each type: what a Disconnect- or
    CoA-Request to its sender repeats (RFC 5176 section 3)."""
    seen: set[int] = set()
    out = bytearray()
    for code, value in attributes:
        if code in IDENTIFICATION_TYPES and code not in seen and value:
            seen.add(code)
            out += bytes((code, len(value) + 2)) + value
    return bytes(out)


def session_attributes(
    nai: str, session_id: str, identification: bytes = b"", flavour: Flavour = Flavour.AAA_VPN
) -> list[bytes]:
    """What names the session (module rules): User-Name, the agent's own
    identification attributes (raw, :func:`identification`), and to a client
    of the ``aaa-vpn`` flavour Aaa-Vpn-Session-Id."""
    out = [rc.attribute(rc.USER_NAME, nai.encode("utf-8"))]
    if identification:
        out.append(identification)
    if flavour is Flavour.AAA_VPN:
        out.append(rc.vendor_attribute(VENDOR_ID, SESSION_ID_TYPE, session_id.encode("utf-8")))
    return out


def push_attributes(
    nai: str,
    profile: VpnProfile,
    secret: bytes | Secret,
    identification: bytes = b"",
    flavour: Flavour = Flavour.AAA_VPN,
    *,
    receiver: IPv4Address | None = None,
    psk_encoding: PskEncoding = PskEncoding.SALT,
    key_time: int | None = None,
) -> list[bytes]:
    """A CoA-Request's attributes pushing ``profile`` (one agent's view):
    User-Name, the agent's identification attributes, then the profile in
    ``flavour`` (the ``aaa-vpn`` flavour names the session with its
    Aaa-Vpn-Session-Id), salt encryption keyed with 16 zero octets.
    ``receiver``, ``psk_encoding`` and ``key_time`` as for
    :func:`aaa_vpn.wire.radius_profile.compile_profile`. Raises ProfileError
    if it does not fit in one packet."""
    user_name = rc.attribute(rc.USER_NAME, nai.encode("utf-8"))
    budget = (
        rc.MAX_PACKET_LENGTH - rc.HEADER_LENGTH - rc.MESSAGE_AUTHENTICATOR_LENGTH - len(user_name) - len(identification)
    )
    profile_attributes = encode_profile(
        profile,
        flavour,
        secret,
        ZERO_AUTHENTICATOR,
        budget=budget,
        receiver=receiver,
        psk_encoding=psk_encoding,
        key_time=key_time,
    )
    return [user_name, *([identification] if identification else []), *profile_attributes]


def pushed_profile(request: CoaRequest, secret: bytes | Secret) -> VpnProfile:
    """The profile a verified CoA-Request pushes (:func:`push_attributes`);
    raises :class:`ProfileDecodeError` if it carries none or a malformed one."""
    return decode_profile(request.attributes, secret, ZERO_AUTHENTICATOR)


def encode_request(code: int, identifier: int, secret: bytes, attributes: bytes | Sequence[bytes]) -> bytes:
    """A Disconnect-Request or CoA-Request: Message-Authenticator first
    (computed with a zero Authenticator), then the Request Authenticator."""
    if code not in REQUEST_CODES:
        raise ValueError(f"code {code} is not a Disconnect-Request or CoA-Request")
    body = attributes if isinstance(attributes, bytes) else b"".join(attributes)
    length = rc.HEADER_LENGTH + rc.MESSAGE_AUTHENTICATOR_LENGTH + len(body)
    if length > rc.MAX_PACKET_LENGTH:
        raise rc.ReplyTooLarge(f"request of {length} octets exceeds {rc.MAX_PACKET_LENGTH} (RFC 2865 section 3)")
    head = struct.pack("!BBH", code, identifier & 0xFF, length)
    zero_ma = b"\x50\x12" + ZERO_AUTHENTICATOR
    mac = hmac.new(secret, head + ZERO_AUTHENTICATOR + zero_ma + body, hashlib.md5).digest()
    attrs = b"\x50\x12" + mac + body
    authenticator = hashlib.md5(head + ZERO_AUTHENTICATOR + attrs + secret).digest()
    return head + authenticator + attrs


@dataclass(frozen=True)
class CoaRequest:
    """A verified Disconnect-Request or CoA-Request."""

    code: int
    identifier: int
    authenticator: bytes
    attributes: bytes
    """The raw attribute section (Message-Authenticator included)."""
    nai: str
    session_id: str

    @property
    def name(self) -> str:
        return CODE_NAMES[self.code]


def _header(packet: bytes) -> tuple[int, int, int]:
    if len(packet) < rc.HEADER_LENGTH:
        raise CoaDecodeError(f"{len(packet)} octets: shorter than a RADIUS header")
    code, identifier, length = struct.unpack_from("!BBH", packet)
    if length < rc.HEADER_LENGTH or length > len(packet) or length > rc.MAX_PACKET_LENGTH:
        raise CoaDecodeError(f"length field {length} does not fit the {len(packet)} octets received")
    return code, identifier, length


def decode_request(packet: bytes, secret: bytes) -> CoaRequest | None:
    """Verify and decode a request; None if an authenticator is wrong or the
    Message-Authenticator is missing (drop it). Raises :class:`CoaDecodeError`
    for a packet that is not a well-formed request."""
    code, identifier, length = _header(packet)
    if code not in REQUEST_CODES:
        raise CoaDecodeError(f"code {code} is not a Disconnect-Request or CoA-Request")
    packet = packet[:length]  # RFC 2865 section 3: octets beyond Length are padding
    attributes = packet[rc.HEADER_LENGTH :]
    try:
        triples = list(iter_attributes(attributes))
    except ProfileDecodeError as exc:
        raise CoaDecodeError(str(exc)) from None
    expected = hashlib.md5(packet[:4] + ZERO_AUTHENTICATOR + attributes + secret).digest()
    if not hmac.compare_digest(expected, packet[4:20]):
        return None
    if not rc.verify_message_authenticator(packet, secret, ZERO_AUTHENTICATOR):
        return None
    nai = session_id = ""
    for vendor, atype, value in triples:
        if vendor == 0 and atype == rc.USER_NAME and not nai:
            nai = value.decode("utf-8", "replace")
        elif vendor == VENDOR_ID and atype == SESSION_ID_TYPE and not session_id:
            session_id = value.decode("utf-8", "replace")
    return CoaRequest(code, identifier, packet[4:20], attributes, nai, session_id)


def encode_answer(request: CoaRequest, ack: bool, secret: bytes, error_cause: int | None = None) -> bytes:
    """The ACK or NAK to ``request``; a NAK carries ``error_cause``."""
    ack_code, nak_code = ANSWER_CODES[request.code]
    attributes = b""
    if error_cause is not None:
        attributes = rc.attribute(ERROR_CAUSE, struct.pack("!I", error_cause))
    return rc.encode_reply(ack_code if ack else nak_code, request.identifier, request.authenticator, secret, attributes)


class Signature(enum.Enum):
    """How an answer's Message-Authenticator was computed (module rules)."""

    NONE = "none"
    """There is none (RFC 5176 section 3.4 makes it optional)."""
    RFC5176 = "rfc5176"
    """With the request's Authenticator (RFC 5176 section 3.4)."""
    ZERO = "zero-authenticator"
    """With 16 zero octets in the Authenticator field (FreeRADIUS 3.2)."""


@dataclass(frozen=True)
class CoaAnswer:
    """A verified ACK or NAK."""

    code: int
    error_cause: int | None
    signature: Signature = field(default=Signature.NONE, compare=False)
    """Its Message-Authenticator, if any, and how it was computed."""

    @property
    def acknowledged(self) -> bool:
        return self.code in (DISCONNECT_ACK, COA_ACK)

    @property
    def name(self) -> str:
        return CODE_NAMES[self.code]


def decode_answer(
    answer: bytes, request: bytes, secret: bytes, require_message_authenticator: bool = False
) -> CoaAnswer | None:
    """Verify ``answer`` against the ``request`` it answers; None if it is not
    an answer to it (identifier or code wrong, Response Authenticator wrong,
    a Message-Authenticator that is wrong either way or repeated, or none
    when ``require_message_authenticator``). Raises :class:`CoaDecodeError`
    if malformed."""
    code, identifier, length = _header(answer)
    answer = answer[:length]
    if identifier != request[1] or code not in ANSWER_CODES.get(request[0], ()):
        return None
    try:
        packet = rc.decode_packet(answer)
        triples = list(iter_attributes(answer[rc.HEADER_LENGTH :]))
    except (rc.RadiusDecodeError, ProfileDecodeError) as exc:
        raise CoaDecodeError(str(exc)) from None
    authenticator = request[4:20]
    if not rc.check_response_authenticator(packet, authenticator, secret):
        return None
    signed = rc.check_message_authenticator(packet, secret, authenticator)
    if signed is None:
        if require_message_authenticator:
            return None
        signature = Signature.NONE
    elif signed:
        signature = Signature.RFC5176
    elif rc.check_message_authenticator(packet, secret, ZERO_AUTHENTICATOR):
        signature = Signature.ZERO
    else:
        return None
    cause = next((int.from_bytes(v, "big") for vend, t, v in triples if vend == 0 and t == ERROR_CAUSE), None)
    return CoaAnswer(code, cause, signature)


__all__ = [
    "ANSWER_CODES",
    "COA_ACK",
    "COA_NAK",
    "COA_PORT",
    "COA_REQUEST",
    "CODE_NAMES",
    "DISCONNECT_ACK",
    "DISCONNECT_NAK",
    "DISCONNECT_REQUEST",
    "ERROR_CAUSE",
    "IDENTIFICATION_NAMES",
    "IDENTIFICATION_TYPES",
    "ZERO_AUTHENTICATOR",
    "CoaAnswer",
    "CoaDecodeError",
    "CoaRequest",
    "ErrorCause",
    "Signature",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "error_cause_name",
    "identification",
    "push_attributes",
    "pushed_profile",
    "session_attributes",
]
