"""Access-Requests the agents send and the replies they accept: typed values
<-> RADIUS packets, for the FA, HA and gateway (docs/protocol.md section 1).

Rules (everything that decides what goes on the wire and what is believed):

* Requests (RFC 2865 section 4.1): Message-Authenticator is the **first**
  attribute of every Access-Request and Status-Server (RFC 3579 section 3.2,
  RFC 5080 section 2.2.2, RFC 5997 section 3, BlastRADIUS / CVE-2024-3596):
  HMAC-MD5 keyed with the shared secret over the whole packet with the
  Message-Authenticator value zeroed. The Request Authenticator is 16
  unpredictable octets the caller supplies (RFC 2865 section 3).
* Attribute order: Message-Authenticator, User-Name, NAS-IP-Address,
  CHAP-Password, CHAP-Challenge, the Aaa-Vpn vendor attributes
  (Request-Type, Care-Of-Address, Home-Agent, Session-Id, Previous-FA), the
  caller's extra attributes, Proxy-State last (RFC 2865 section 5.33: a proxy
  appends its own).
* A reply is believed only if all of these hold, else :class:`ReplyError`
  (the peer's fault, or an attacker's): it is a well-formed packet whose
  Length fits (octets beyond Length are padding, RFC 2865 section 3); its
  Code answers the request (Access-Accept/Reject/Challenge for an
  Access-Request, Access-Accept for Status-Server, RFC 5997 section 3); its
  Identifier is the request's; its Response Authenticator is
  ``MD5(Code || Identifier || Length || Request Authenticator || Attributes ||
  Secret)`` (RFC 2865 section 3); it carries exactly one Message-Authenticator,
  computed with the Request Authenticator (RFC 3579 section 3.2) -- required,
  as BlastRADIUS demands; and its Proxy-State attributes are exactly the
  request's, in order (RFC 2865 section 5.33).
* An Access-Accept's VPN profile is decoded with
  :func:`~aaa_vpn.wire.radius_profile.decode_profile` (the ``aaa-vpn``
  flavour). If an authentic Accept's profile does not decode, the error is
  :class:`ProfileReplyError`, a subclass of :class:`ReplyError`: the server
  really said this (wrong flavour configured for the client, or a bug), so
  resending the request would only bring the same bytes back.
* An Access-Challenge is treated as an Access-Reject: the agents do not do
  challenge/response (RFC 2865 section 4.4).
* An Access-Reject is decoded leniently: ``Aaa-Vpn-Reject-Reason`` becomes a
  :class:`~aaa_vpn.wire.profile.RejectReason` (``None`` if absent, malformed
  or unknown), the Reply-Messages (RFC 2865 section 5.18) are joined in order.

Errors: :class:`RequestError` (a ``ValueError``) means the caller asked for a
request that cannot be built (the caller's fault); :class:`ReplyError` means
the reply cannot be believed or used (the peer's fault).

Pure: no sockets, no clock, no randomness (authenticators come from the caller).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import VENDOR_ID, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius import (
    AUTHENTICATOR_LENGTH,
    HEADER_LENGTH,
    MAX_ATTRIBUTE_VALUE,
    MAX_PACKET_LENGTH,
    MAX_VSA_VALUE,
    MESSAGE_AUTHENTICATOR_LENGTH,
    MESSAGE_AUTHENTICATOR_TYPE,
    response_authenticator,
)
from aaa_vpn.wire.radius_profile import AaaVpnAttr, ProfileDecodeError, decode_profile

# Codes (RFC 2865 section 3, RFC 5997 section 3).
ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCESS_CHALLENGE = 11
STATUS_SERVER = 12

# Standard attribute types (RFC 2865 section 5).
USER_NAME = 1
CHAP_PASSWORD = 3
NAS_IP_ADDRESS = 4
REPLY_MESSAGE = 18
NAS_IDENTIFIER = 32
PROXY_STATE = 33
CHAP_CHALLENGE = 60
VENDOR_SPECIFIC = 26

#: RFC 2865 section 5.3: CHAP Ident (1) + the 16-octet response.
CHAP_PASSWORD_LENGTH = 17
#: RFC 2865 section 5.40: a CHAP-Challenge is at least 5 octets.
MIN_CHAP_CHALLENGE = 5

_MA_PLACEHOLDER = bytes((MESSAGE_AUTHENTICATOR_TYPE, MESSAGE_AUTHENTICATOR_LENGTH)) + b"\x00" * AUTHENTICATOR_LENGTH
_HEADER = struct.Struct("!BBH")
_VSA = struct.Struct("!BBIBB")
_CODE_NAMES = {
    ACCESS_REQUEST: "Access-Request",
    ACCESS_ACCEPT: "Access-Accept",
    ACCESS_REJECT: "Access-Reject",
    ACCESS_CHALLENGE: "Access-Challenge",
    STATUS_SERVER: "Status-Server",
}


class RequestError(ValueError):
    """The request cannot be built as asked (the caller's fault): a value that
    does not fit its attribute, a malformed extra attribute, a packet beyond
    4096 octets."""


class ReplyError(ValueError):
    """A received reply cannot be believed or used (the peer's fault): not a
    reply to this request, a bad authenticator, a missing Message-Authenticator,
    a changed Proxy-State, a malformed packet."""


class ProfileReplyError(ReplyError):
    """The reply is authentic -- authenticators and Proxy-State check out --
    but its VPN profile does not decode (the server's configuration, e.g. a
    non-``aaa-vpn`` flavour for this client, or a bug). Asking again brings the
    same answer."""


def _code_name(code: int) -> str:
    return _CODE_NAMES.get(code, f"code {code}")


@dataclass(frozen=True)
class AccessRequestInfo:
    """What an agent asks the home AAA (docs/protocol.md section 1, request
    types). Validated on construction: an invalid one cannot exist."""

    nai: str
    """User-Name (1): the mobile node's NAI, 1..253 octets of UTF-8."""
    chap_password: bytes | None = None
    """CHAP-Password (3): Challenge[0] || the 16-octet MN-AAA authenticator
    (docs/mn-aaa-chap.md). Given together with ``chap_challenge``, or neither
    (a GW-Binding carries no proof)."""
    chap_challenge: bytes | None = None
    """CHAP-Challenge (60): MD5(preceding data || Type, Subtype, Length, SPI)
    || the FA challenge's last 237 octets; 5..253 octets."""
    nas_ip_address: IPv4Address | None = None
    """NAS-IP-Address (4): the agent's own address. RFC 2865 section 4.1
    requires it or a NAS-Identifier (32), which may be given in ``extra``."""
    request_type: RequestType | None = None
    """Aaa-Vpn-Request-Type; ``None`` lets the server pick by client role."""
    care_of_address: IPv4Address | None = None
    """Aaa-Vpn-Care-Of-Address: the FA's care-of address for the node."""
    home_agent: IPv4Address | None = None
    """Aaa-Vpn-Home-Agent: the HA the node asked for (FA-Registration)."""
    session_id: str | None = None
    """Aaa-Vpn-Session-Id: names the session (HA-Registration, GW-Binding)."""
    previous_fa: IPv4Address | None = None
    """Aaa-Vpn-Previous-FA: the node's previous FA (handoffs)."""
    proxy_states: tuple[bytes, ...] = ()
    """Proxy-State (33) values, 1..253 octets each, sent last and in order;
    the reply must echo them exactly (a foreign AAA proxying)."""
    extra: tuple[bytes, ...] = ()
    """Escape hatch: further complete raw attributes (Type, Length, Value),
    one per item, placed before the Proxy-States. Message-Authenticator and
    Proxy-State are not allowed here: the builder owns them."""

    def __post_init__(self) -> None:
        nai = self.nai.encode("utf-8")
        if not 1 <= len(nai) <= MAX_ATTRIBUTE_VALUE:
            raise RequestError(f"User-Name: the NAI is {len(nai)} octets, expected 1..{MAX_ATTRIBUTE_VALUE}")
        if (self.chap_password is None) != (self.chap_challenge is None):
            raise RequestError("CHAP-Password and CHAP-Challenge come together or not at all")
        if self.chap_password is not None and len(self.chap_password) != CHAP_PASSWORD_LENGTH:
            raise RequestError(
                f"CHAP-Password is {len(self.chap_password)} octets, expected {CHAP_PASSWORD_LENGTH}"
                " (RFC 2865 section 5.3: Ident + 16-octet response)"
            )
        if self.chap_challenge is not None and not MIN_CHAP_CHALLENGE <= len(self.chap_challenge) <= 253:
            raise RequestError(
                f"CHAP-Challenge is {len(self.chap_challenge)} octets, expected {MIN_CHAP_CHALLENGE}..253"
                " (RFC 2865 section 5.40)"
            )
        if self.request_type is not None and not isinstance(self.request_type, RequestType):
            raise RequestError(f"request_type must be a RequestType, not {self.request_type!r}")
        for name in ("nas_ip_address", "care_of_address", "home_agent", "previous_fa"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, IPv4Address):
                raise RequestError(f"{name} must be an IPv4Address, not {type(value).__name__}")
        if self.session_id is not None:
            size = len(self.session_id.encode("utf-8"))
            if not 1 <= size <= MAX_VSA_VALUE:
                raise RequestError(f"Aaa-Vpn-Session-Id is {size} octets, expected 1..{MAX_VSA_VALUE}")
        for state in self.proxy_states:
            if not 1 <= len(state) <= MAX_ATTRIBUTE_VALUE:
                raise RequestError(f"a Proxy-State of {len(state)} octets: expected 1..{MAX_ATTRIBUTE_VALUE}")
        has_nas_identifier = False
        for raw in self.extra:
            if len(raw) < 2 or raw[1] != len(raw):
                raise RequestError(f"extra attribute {raw.hex()}: its Length octet must equal its size (2..255)")
            if raw[0] in (MESSAGE_AUTHENTICATOR_TYPE, PROXY_STATE):
                raise RequestError(
                    f"extra attribute of type {raw[0]}: Message-Authenticator and Proxy-State are the builder's"
                )
            has_nas_identifier = has_nas_identifier or raw[0] == NAS_IDENTIFIER
        if self.nas_ip_address is None and not has_nas_identifier:
            raise RequestError("an Access-Request needs a NAS-IP-Address or a NAS-Identifier (RFC 2865 section 4.1)")


# --- requests ------------------------------------------------------------------------------


def _attribute(code: int, value: bytes) -> bytes:
    return bytes((code, len(value) + 2)) + value


def _vsa(vendor_type: int, value: bytes) -> bytes:
    return _VSA.pack(VENDOR_SPECIFIC, len(value) + 8, VENDOR_ID, vendor_type, len(value) + 2) + value


def _key(secret: bytes | Secret) -> bytes:
    return secret.value if isinstance(secret, Secret) else secret


def encode_request_attributes(info: AccessRequestInfo) -> bytes:
    """The attributes of the Access-Request for ``info``, without the
    Message-Authenticator (:func:`seal_request` puts it first). They depend on
    neither the server nor the authenticator, so a client encodes them once
    per request and seals them anew for every server it tries.

    Raises :class:`RequestError` if the packet would exceed 4096 octets."""
    out = [_attribute(USER_NAME, info.nai.encode("utf-8"))]
    if info.nas_ip_address is not None:
        out.append(_attribute(NAS_IP_ADDRESS, info.nas_ip_address.packed))
    if info.chap_password is not None and info.chap_challenge is not None:
        out.append(_attribute(CHAP_PASSWORD, info.chap_password))
        out.append(_attribute(CHAP_CHALLENGE, info.chap_challenge))
    if info.request_type is not None:
        out.append(_vsa(AaaVpnAttr.REQUEST_TYPE, struct.pack("!I", info.request_type)))
    if info.care_of_address is not None:
        out.append(_vsa(AaaVpnAttr.CARE_OF_ADDRESS, info.care_of_address.packed))
    if info.home_agent is not None:
        out.append(_vsa(AaaVpnAttr.HOME_AGENT, info.home_agent.packed))
    if info.session_id is not None:
        out.append(_vsa(AaaVpnAttr.SESSION_ID, info.session_id.encode("utf-8")))
    if info.previous_fa is not None:
        out.append(_vsa(AaaVpnAttr.PREVIOUS_FA, info.previous_fa.packed))
    out.extend(info.extra)
    out.extend(_attribute(PROXY_STATE, state) for state in info.proxy_states)
    attributes = b"".join(out)
    length = HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(attributes)
    if length > MAX_PACKET_LENGTH:
        raise RequestError(f"the Access-Request would be {length} octets; RADIUS allows {MAX_PACKET_LENGTH}")
    return attributes


def seal_request(
    code: int, identifier: int, request_authenticator: bytes, secret: bytes | Secret, attributes: bytes
) -> bytes:
    """A complete request: header, Message-Authenticator first, ``attributes``.

    The Message-Authenticator is HMAC-MD5(secret, packet with its value zeroed)
    (RFC 3579 section 3.2). Raises :class:`RequestError` for an Identifier
    outside 0..255, an authenticator that is not 16 octets or a packet beyond
    4096 octets."""
    if not 0 <= identifier <= 255:
        raise RequestError(f"Identifier {identifier}: expected 0..255")
    if len(request_authenticator) != AUTHENTICATOR_LENGTH:
        raise RequestError(f"the Request Authenticator is {len(request_authenticator)} octets, expected 16")
    length = HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(attributes)
    if length > MAX_PACKET_LENGTH:
        raise RequestError(f"the request would be {length} octets; RADIUS allows {MAX_PACKET_LENGTH}")
    head = _HEADER.pack(code, identifier, length) + request_authenticator
    mac = hmac.new(_key(secret), head + _MA_PLACEHOLDER + attributes, hashlib.md5).digest()
    return head + bytes((MESSAGE_AUTHENTICATOR_TYPE, MESSAGE_AUTHENTICATOR_LENGTH)) + mac + attributes


def build_access_request(
    info: AccessRequestInfo, identifier: int, request_authenticator: bytes, secret: bytes | Secret
) -> bytes:
    """The raw Access-Request for ``info`` (see the module rules).

    ``request_authenticator`` is 16 random octets from the caller (RFC 2865
    section 3: unpredictable, never reused with the same secret)."""
    return seal_request(ACCESS_REQUEST, identifier, request_authenticator, secret, encode_request_attributes(info))


def build_status_server(
    identifier: int,
    request_authenticator: bytes,
    secret: bytes | Secret,
    nas_ip_address: IPv4Address | None = None,
) -> bytes:
    """A Status-Server (RFC 5997 section 3) with its Message-Authenticator
    first and, if given, a NAS-IP-Address."""
    attributes = b"" if nas_ip_address is None else _attribute(NAS_IP_ADDRESS, nas_ip_address.packed)
    return seal_request(STATUS_SERVER, identifier, request_authenticator, secret, attributes)


# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """An authentic Access-Accept and the VPN profile it carries."""

    profile: VpnProfile
    """The receiver's view of the VPN (``decode_profile``)."""
    attributes: bytes
    """The reply's raw attribute section (``reply[20:Length]``), for
    ``decode_3gpp2``/``decode_tunnel_attributes`` or anything the profile does
    not cover; salt-encrypted values in it need the request's authenticator."""


@dataclass(frozen=True)
class Rejected:
    """An authentic Access-Reject (or Access-Challenge, treated as one)."""

    reason: RejectReason | None
    """``Aaa-Vpn-Reject-Reason``, so an agent can pick its Mobile IP reply code;
    ``None`` if the server sent none or one this code does not know."""
    message: str
    """The Reply-Message text (RFC 2865 section 5.18), for logs."""


def _split(attributes: bytes, what: str) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    position, end = 0, len(attributes)
    while position < end:
        if end - position < 2:
            raise ReplyError(f"{what}: truncated attribute at offset {HEADER_LENGTH + position}")
        code, length = attributes[position], attributes[position + 1]
        if length < 2 or position + length > end:
            raise ReplyError(
                f"{what}: attribute {code} at offset {HEADER_LENGTH + position} has Length {length},"
                f" {end - position} octets are left"
            )
        out.append((code, attributes[position + 2 : position + length]))
        position += length
    return out


def _verify(
    reply: bytes, request: bytes, secret: bytes, codes: frozenset[int]
) -> tuple[int, bytes, list[tuple[int, bytes]]]:
    """Check ``reply`` against ``request`` (module rules); return its Code, raw
    attribute section and split attributes."""
    if len(request) < HEADER_LENGTH:
        raise ValueError("the request is shorter than a RADIUS header")
    if len(reply) < HEADER_LENGTH:
        raise ReplyError(f"a reply of {len(reply)} octets is shorter than the 20-octet RADIUS header")
    code, identifier, length = _HEADER.unpack_from(reply)
    if not HEADER_LENGTH <= length <= MAX_PACKET_LENGTH:
        raise ReplyError(f"reply Length {length}: expected 20..4096 (RFC 2865 section 3)")
    if length > len(reply):
        raise ReplyError(f"reply Length {length} exceeds the {len(reply)} octets received")
    reply = reply[:length]  # RFC 2865 section 3: octets beyond Length are padding
    what = _code_name(code)
    if code not in codes:
        raise ReplyError(f"{what} does not answer a {_code_name(request[0])}")
    if identifier != request[1]:
        raise ReplyError(f"{what} with Identifier {identifier}; the request's is {request[1]}")
    request_authenticator = request[4:HEADER_LENGTH]
    expected = response_authenticator(reply, request_authenticator, secret)
    if not hmac.compare_digest(reply[4:HEADER_LENGTH], expected):
        raise ReplyError(
            f"{what}: Response Authenticator {reply[4:20].hex()} is wrong (RFC 2865 section 3):"
            " another shared secret, or not a reply to this request"
        )
    attributes = reply[HEADER_LENGTH:]
    split = _split(attributes, what)
    offsets = []
    position = HEADER_LENGTH
    for attribute_type, value in split:
        if attribute_type == MESSAGE_AUTHENTICATOR_TYPE:
            if len(value) != AUTHENTICATOR_LENGTH:
                raise ReplyError(f"{what}: Message-Authenticator of {len(value)} octets, expected 16")
            offsets.append(position + 2)
        position += len(value) + 2
    if not offsets:
        raise ReplyError(f"{what} without Message-Authenticator (required: RFC 3579 section 3.2, BlastRADIUS)")
    if len(offsets) > 1:
        raise ReplyError(f"{what} with {len(offsets)} Message-Authenticators (RFC 3579 section 3.2: at most one)")
    offset = offsets[0]
    mac = hmac.new(secret, digestmod=hashlib.md5)
    mac.update(reply[:4])
    mac.update(request_authenticator)
    mac.update(reply[HEADER_LENGTH:offset])
    mac.update(b"\x00" * AUTHENTICATOR_LENGTH)
    mac.update(reply[offset + AUTHENTICATOR_LENGTH :])
    if not hmac.compare_digest(reply[offset : offset + AUTHENTICATOR_LENGTH], mac.digest()):
        raise ReplyError(f"{what}: Message-Authenticator {reply[offset : offset + 16].hex()} is wrong")
    sent = [
        value for attribute_type, value in _split(request[HEADER_LENGTH:], "request") if attribute_type == PROXY_STATE
    ]
    echoed = [value for attribute_type, value in split if attribute_type == PROXY_STATE]
    if echoed != sent:
        raise ReplyError(
            f"{what}: Proxy-State {[v.hex() for v in echoed]} does not echo the request's"
            f" {[v.hex() for v in sent]} (RFC 2865 section 5.33)"
        )
    return code, attributes, split


_ACCESS_REPLIES = frozenset((ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE))
_STATUS_REPLIES = frozenset((ACCESS_ACCEPT,))


def _reply_message(split: list[tuple[int, bytes]]) -> str:
    return b"".join(value for code, value in split if code == REPLY_MESSAGE).decode("utf-8", "replace")


def _reject_reason(split: list[tuple[int, bytes]]) -> RejectReason | None:
    for code, value in split:
        # RFC 2865 section 5.26 recommended format: Vendor-Id, vendor type, length, value.
        if (
            code == VENDOR_SPECIFIC
            and len(value) == 10
            and int.from_bytes(value[:4], "big") == VENDOR_ID
            and value[4] == AaaVpnAttr.REJECT_REASON
            and value[5] == 6
        ):
            number = int.from_bytes(value[6:], "big")
            try:
                return RejectReason(number)
            except ValueError:
                return None
    return None


def decode_access_reply(reply: bytes, request: bytes, secret: bytes | Secret) -> Accepted | Rejected:
    """Verify ``reply`` against the Access-Request ``request`` (both raw) and
    decode it.

    Raises :class:`ReplyError` if the reply is not to be believed (see the
    module rules), :class:`ProfileReplyError` if it is an authentic
    Access-Accept whose VPN profile does not decode."""
    if len(request) < HEADER_LENGTH or request[0] != ACCESS_REQUEST:
        raise ValueError("decode_access_reply needs the raw Access-Request the reply answers")
    key = _key(secret)
    code, attributes, split = _verify(reply, request, key, _ACCESS_REPLIES)
    if code == ACCESS_ACCEPT:
        try:
            profile = decode_profile(attributes, key, request[4:HEADER_LENGTH])
        except ProfileDecodeError as exc:
            raise ProfileReplyError(f"Access-Accept: the VPN profile does not decode: {exc}") from None
        return Accepted(profile, attributes)
    message = _reply_message(split)
    if code == ACCESS_CHALLENGE:
        # RFC 2865 section 4.4: without challenge/response, a Challenge is a Reject.
        return Rejected(None, f"Access-Challenge (not supported, treated as Access-Reject): {message}")
    return Rejected(_reject_reason(split), message)


def decode_status_reply(reply: bytes, request: bytes, secret: bytes | Secret) -> str:
    """Verify ``reply`` against the Status-Server ``request`` (RFC 5997
    section 3: an Access-Accept with a Message-Authenticator) and return its
    Reply-Message text. Raises :class:`ReplyError` like
    :func:`decode_access_reply`."""
    if len(request) < HEADER_LENGTH or request[0] != STATUS_SERVER:
        raise ValueError("decode_status_reply needs the raw Status-Server the reply answers")
    _code, _attributes, split = _verify(reply, request, _key(secret), _STATUS_REPLIES)
    return _reply_message(split)


__all__ = [
    "ACCESS_ACCEPT",
    "ACCESS_CHALLENGE",
    "ACCESS_REJECT",
    "ACCESS_REQUEST",
    "STATUS_SERVER",
    "Accepted",
    "AccessRequestInfo",
    "ProfileReplyError",
    "Rejected",
    "ReplyError",
    "RequestError",
    "build_access_request",
    "build_status_server",
    "decode_access_reply",
    "decode_status_reply",
    "encode_request_attributes",
    "seal_request",
]
