"""The Access-Request as one typed value, and the replies an agent believes:
typed values <-> RADIUS packets, for every sender and receiver of an
Access-Request in the project (the FA, HA and gateway send them; the home and
the foreign AAA decode them; docs/protocol.md section 1).

Rules (everything that decides what goes on the wire and what is believed):

* :class:`AccessRequest` names each attribute it carries (RFC 2865 section 5,
  ``dictionary.aaa_vpn``, X.S0011-005); construction refuses what cannot
  exist (a NAI that is not 1..253 octets of UTF-8, a CHAP-Password without
  its CHAP-Challenge...). Attributes it does not name are kept, raw and in
  order, in ``extra``, so nothing a third-party NAS sends is lost.
* :func:`decode_access_request` turns a received Access-Request (a
  :class:`~aaa_vpn.wire.radius.Packet` whose framing checks out) into one
  :class:`AccessRequest`, decoded once. Message-Authenticator is not part of
  it (the server checks it before). A known attribute with a malformed value,
  a missing or repeated User-Name, or a User-Name that is not UTF-8 raises
  :class:`RequestDecodeError` naming the attribute: the peer's fault, answered
  with an Access-Reject.
* Encoding (RFC 2865 section 4.1): Message-Authenticator is the **first**
  attribute of every Access-Request and Status-Server (RFC 3579 section 3.2,
  RFC 5080 section 2.2.2, RFC 5997 section 3, BlastRADIUS / CVE-2024-3596).
  Then User-Name, NAS-IP-Address, NAS-Identifier, CHAP-Password,
  CHAP-Challenge, the Aaa-Vpn vendor attributes (Request-Type,
  Care-Of-Address, Home-Agent, Session-Id, Previous-FA, Key-Epoch,
  Profile-Digest), the 3GPP2 ones, ``extra``, and Proxy-State last (RFC 2865
  section 5.33: a proxy appends its own). A request needs a NAS-IP-Address or
  a NAS-Identifier (RFC 2865 section 4.1). ``decode(encode(x)) == x``.
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
* An Access-Accept either carries a whole VPN profile, decoded with
  :func:`~aaa_vpn.wire.radius_profile.decode_profile` (the ``aaa-vpn``
  flavour), or -- the answer to a request whose Aaa-Vpn-Profile-Digest named
  the view the sender holds (docs/protocol.md section 1, "Renewals that
  change no key") -- a :class:`Confirmation`: Aaa-Vpn-Profile-Digest without
  Aaa-Vpn-Home-Address, with the session id, key epoch and new lifetime. If an
  authentic Accept is neither, the error is :class:`ProfileReplyError`, a
  subclass of :class:`ReplyError`: the server really said this (wrong flavour
  configured for the client, or a bug), so resending the request would only
  bring the same bytes back.
* An Access-Challenge is treated as an Access-Reject: the agents do not do
  challenge/response (RFC 2865 section 4.4).
* An Access-Reject is decoded leniently: ``Aaa-Vpn-Reject-Reason`` becomes a
  :class:`~aaa_vpn.wire.profile.RejectReason` (``None`` if absent, malformed
  or unknown), the Reply-Messages (RFC 2865 section 5.18) are joined in order.

Errors: :class:`RequestError` (a ``ValueError``) means the caller asked for a
request that cannot be built (the caller's fault); :class:`RequestDecodeError`
and :class:`ReplyError` mean what was received cannot be believed or used (the
peer's fault).

Pure: no sockets, no clock, no randomness (authenticators come from the caller).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import PROFILE_DIGEST_LENGTH, VENDOR_ID, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    ACCESS_REJECT,
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    ACCOUNTING_RESPONSE,
    CHAP_CHALLENGE,
    CHAP_PASSWORD,
    HEADER_LENGTH,
    MAX_ATTRIBUTE_VALUE,
    MAX_PACKET_LENGTH,
    MAX_VSA_VALUE,
    MESSAGE_AUTHENTICATOR_LENGTH,
    MESSAGE_AUTHENTICATOR_TYPE,
    NAS_IDENTIFIER,
    NAS_IP_ADDRESS,
    PROXY_STATE,
    REPLY_MESSAGE,
    STATUS_SERVER,
    THREEGPP2_VENDOR_ID,
    USER_NAME,
    VENDOR_SPECIFIC,
    AaaVpnAttr,
    Packet,
    RadiusDecodeError,
    ReplyTooLarge,
    ThreeGpp2Attr,
    check_message_authenticator,
    check_response_authenticator,
    code_name,
    decode_packet,
)
from aaa_vpn.wire.radius import (
    seal_request as _seal,
)
from aaa_vpn.wire.radius_profile import ProfileDecodeError, decode_profile

#: RFC 2865 section 5.3: CHAP Ident (1) + the 16-octet response.
CHAP_PASSWORD_LENGTH = 17
#: RFC 2865 section 5.40: a CHAP-Challenge is at least 5 octets.
MIN_CHAP_CHALLENGE = 5
#: The largest key epoch a request may name: a session moves to epoch + 1,
#: which must still fit the 32-bit Aaa-Vpn-Key-Epoch.
MAX_KEY_EPOCH = 0xFFFFFFFF - 1

_VSA = struct.Struct("!BBIBB")
_OUR_VSA_PREFIX = VENDOR_ID.to_bytes(4, "big")
_3GPP2_VSA_PREFIX = THREEGPP2_VENDOR_ID.to_bytes(4, "big")


class RequestError(ValueError):
    """The request cannot be built as asked (the caller's fault): a value that
    does not fit its attribute, a malformed extra attribute, a packet beyond
    4096 octets."""


class RequestDecodeError(RadiusDecodeError):
    """A received Access-Request's attributes do not make a request (the
    peer's fault): a malformed value, User-Name missing or repeated."""


class ReplyError(ValueError):
    """A received reply cannot be believed or used (the peer's fault): not a
    reply to this request, a bad authenticator, a missing Message-Authenticator,
    a changed Proxy-State, a malformed packet."""


class ProfileReplyError(ReplyError):
    """The reply is authentic -- authenticators and Proxy-State check out --
    but its VPN profile does not decode (the server's configuration, e.g. a
    non-``aaa-vpn`` flavour for this client, or a bug). Asking again brings the
    same answer."""


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """An Access-Request (docs/protocol.md section 1, request types).
    Validated on construction: an invalid one cannot exist."""

    nai: str
    """User-Name (1): the mobile node's NAI, 1..253 octets of UTF-8."""
    chap_password: bytes | None = None
    """CHAP-Password (3): Challenge[0] || the 16-octet MN-AAA authenticator
    (docs/mn-aaa-chap.md). The MN-AAA proof needs ``chap_challenge`` too;
    plain RFC 2865 CHAP (the Request Authenticator as the challenge) decodes
    without it, and the home AAA refuses it. A GW-Binding carries no proof."""
    chap_challenge: bytes | None = None
    """CHAP-Challenge (60): MD5(preceding data || Type, Subtype, Length, SPI)
    || the FA challenge's last 237 octets; 5..253 octets."""
    nas_ip_address: IPv4Address | None = None
    """NAS-IP-Address (4): the sender's own address. RFC 2865 section 4.1
    requires it or a NAS-Identifier."""
    nas_identifier: str | None = None
    """NAS-Identifier (32), 1..253 octets of UTF-8."""
    request_type: RequestType | None = None
    """Aaa-Vpn-Request-Type; ``None`` lets the server pick by client role."""
    care_of_address: IPv4Address | None = None
    """Aaa-Vpn-Care-Of-Address: the FA's care-of address for the node."""
    home_agent: IPv4Address | None = None
    """Aaa-Vpn-Home-Agent: the HA the node asked for (FA-Registration)."""
    session_id: str | None = None
    """Aaa-Vpn-Session-Id: names the session (renewals, HA-Registration, GW-Binding)."""
    previous_fa: IPv4Address | None = None
    """Aaa-Vpn-Previous-FA: the node's previous FA (handoffs)."""
    key_epoch: int | None = None
    """Aaa-Vpn-Key-Epoch: the epoch the sender's keys were derived in (an HA
    relaying a registration the foreign AAA answered names the FA's)."""
    profile_digest: bytes | None = None
    """Aaa-Vpn-Profile-Digest: the digest of the view the sender holds
    (:func:`aaa_vpn.wire.profile.profile_digest`, 16 octets); a renewal that
    changes nothing is then answered with a :class:`Confirmation`."""
    threegpp2_home_agent: IPv4Address | None = None
    """3GPP2-Home-Agent-IP-Address (26/5535/7): the HA a PDSN asks for."""
    threegpp2_foreign_agent: IPv4Address | None = None
    """3GPP2-Foreign-Agent-Address (26/5535/79): the FA an HA's request names."""
    proxy_states: tuple[bytes, ...] = ()
    """Proxy-State (33) values, 1..253 octets each, sent last and in order;
    the reply must echo them exactly (RFC 2865 section 5.33)."""
    extra: tuple[bytes, ...] = ()
    """Every other attribute, complete and raw (Type, Length, Value), in
    order, placed before the Proxy-States. Message-Authenticator and
    Proxy-State are not allowed here: the codec owns them."""

    def __post_init__(self) -> None:
        nai = self.nai.encode("utf-8")
        if not 1 <= len(nai) <= MAX_ATTRIBUTE_VALUE:
            raise RequestError(f"User-Name: the NAI is {len(nai)} octets, expected 1..{MAX_ATTRIBUTE_VALUE}")
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
        for name in (
            "nas_ip_address",
            "care_of_address",
            "home_agent",
            "previous_fa",
            "threegpp2_home_agent",
            "threegpp2_foreign_agent",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, IPv4Address):
                raise RequestError(f"{name} must be an IPv4Address, not {type(value).__name__}")
        for name, text in (("NAS-Identifier", self.nas_identifier), ("Aaa-Vpn-Session-Id", self.session_id)):
            if text is not None:
                size = len(text.encode("utf-8"))
                limit = MAX_ATTRIBUTE_VALUE if name == "NAS-Identifier" else MAX_VSA_VALUE
                if not 1 <= size <= limit:
                    raise RequestError(f"{name} is {size} octets, expected 1..{limit}")
        if self.key_epoch is not None and (isinstance(self.key_epoch, bool) or not 0 <= self.key_epoch <= 0xFFFFFFFF):
            raise RequestError(f"Aaa-Vpn-Key-Epoch {self.key_epoch!r}: expected 0..4294967295")
        if self.profile_digest is not None and len(self.profile_digest) != PROFILE_DIGEST_LENGTH:
            raise RequestError(
                f"Aaa-Vpn-Profile-Digest is {len(self.profile_digest)} octets, expected {PROFILE_DIGEST_LENGTH}"
            )
        for state in self.proxy_states:
            if not 1 <= len(state) <= MAX_ATTRIBUTE_VALUE:
                raise RequestError(f"a Proxy-State of {len(state)} octets: expected 1..{MAX_ATTRIBUTE_VALUE}")
        for raw in self.extra:
            if len(raw) < 2 or raw[1] != len(raw):
                raise RequestError(f"extra attribute {raw.hex()}: its Length octet must equal its size (2..255)")
            if raw[0] in (MESSAGE_AUTHENTICATOR_TYPE, PROXY_STATE):
                raise RequestError(
                    f"extra attribute of type {raw[0]}: Message-Authenticator and Proxy-State are the codec's"
                )

    @property
    def requested_home_agent(self) -> IPv4Address | None:
        """The HA the request names, in our attribute or the 3GPP2 one."""
        return self.home_agent if self.home_agent is not None else self.threegpp2_home_agent


# --- encoding ------------------------------------------------------------------------------


def _attribute(code: int, value: bytes) -> bytes:
    return bytes((code, len(value) + 2)) + value


def _vsa(vendor_type: int, value: bytes, vendor: int = VENDOR_ID) -> bytes:
    return _VSA.pack(VENDOR_SPECIFIC, len(value) + 8, vendor, vendor_type, len(value) + 2) + value


def _key(secret: bytes | Secret) -> bytes:
    return secret.value if isinstance(secret, Secret) else secret


def encode_request_attributes(request: AccessRequest) -> bytes:
    """The attributes of the Access-Request for ``request``, without the
    Message-Authenticator (:func:`seal_request` puts it first). They depend on
    neither the server nor the authenticator, so a client encodes them once
    per request and seals them anew for every server it tries.

    Raises :class:`RequestError` if there is neither a NAS-IP-Address nor a
    NAS-Identifier (RFC 2865 section 4.1), or the packet would exceed 4096
    octets."""
    r = request
    has_nas_identifier = r.nas_identifier is not None or any(raw[0] == NAS_IDENTIFIER for raw in r.extra)
    if r.nas_ip_address is None and not has_nas_identifier:
        raise RequestError("an Access-Request needs a NAS-IP-Address or a NAS-Identifier (RFC 2865 section 4.1)")
    out = [_attribute(USER_NAME, r.nai.encode("utf-8"))]
    if r.nas_ip_address is not None:
        out.append(_attribute(NAS_IP_ADDRESS, r.nas_ip_address.packed))
    if r.nas_identifier is not None:
        out.append(_attribute(NAS_IDENTIFIER, r.nas_identifier.encode("utf-8")))
    if r.chap_password is not None:
        out.append(_attribute(CHAP_PASSWORD, r.chap_password))
    if r.chap_challenge is not None:
        out.append(_attribute(CHAP_CHALLENGE, r.chap_challenge))
    if r.request_type is not None:
        out.append(_vsa(AaaVpnAttr.REQUEST_TYPE, struct.pack("!I", r.request_type)))
    if r.care_of_address is not None:
        out.append(_vsa(AaaVpnAttr.CARE_OF_ADDRESS, r.care_of_address.packed))
    if r.home_agent is not None:
        out.append(_vsa(AaaVpnAttr.HOME_AGENT, r.home_agent.packed))
    if r.session_id is not None:
        out.append(_vsa(AaaVpnAttr.SESSION_ID, r.session_id.encode("utf-8")))
    if r.previous_fa is not None:
        out.append(_vsa(AaaVpnAttr.PREVIOUS_FA, r.previous_fa.packed))
    if r.key_epoch is not None:
        out.append(_vsa(AaaVpnAttr.KEY_EPOCH, struct.pack("!I", r.key_epoch)))
    if r.profile_digest is not None:
        out.append(_vsa(AaaVpnAttr.PROFILE_DIGEST, r.profile_digest))
    if r.threegpp2_home_agent is not None:
        out.append(_vsa(ThreeGpp2Attr.HOME_AGENT_IP_ADDRESS, r.threegpp2_home_agent.packed, THREEGPP2_VENDOR_ID))
    if r.threegpp2_foreign_agent is not None:
        out.append(_vsa(ThreeGpp2Attr.FOREIGN_AGENT_ADDRESS, r.threegpp2_foreign_agent.packed, THREEGPP2_VENDOR_ID))
    out.extend(r.extra)
    out.extend(_attribute(PROXY_STATE, state) for state in r.proxy_states)
    attributes = b"".join(out)
    length = HEADER_LENGTH + MESSAGE_AUTHENTICATOR_LENGTH + len(attributes)
    if length > MAX_PACKET_LENGTH:
        raise RequestError(f"the Access-Request would be {length} octets; RADIUS allows {MAX_PACKET_LENGTH}")
    return attributes


def seal_request(
    code: int, identifier: int, request_authenticator: bytes, secret: bytes | Secret, attributes: bytes
) -> bytes:
    """A complete request: header, Message-Authenticator first, ``attributes``
    (:func:`aaa_vpn.wire.radius.seal_request`). Raises :class:`RequestError`
    for an Identifier outside 0..255, an authenticator that is not 16 octets
    or a packet beyond 4096 octets."""
    try:
        return _seal(code, identifier, request_authenticator, _key(secret), attributes)
    except ReplyTooLarge as exc:
        raise RequestError(str(exc)) from None
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def encode_access_request(
    request: AccessRequest, identifier: int, request_authenticator: bytes, secret: bytes | Secret
) -> bytes:
    """The raw Access-Request for ``request`` (see the module rules).

    ``request_authenticator`` is 16 random octets from the caller (RFC 2865
    section 3: unpredictable, never reused with the same secret)."""
    return seal_request(ACCESS_REQUEST, identifier, request_authenticator, secret, encode_request_attributes(request))


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


# --- decoding ------------------------------------------------------------------------------


def _ipv4(name: str, value: bytes) -> IPv4Address:
    if len(value) != 4:
        raise RequestDecodeError(f"{name}: {len(value)} octets, expected a 4-octet IPv4 address")
    return IPv4Address(value)


def _u32(name: str, value: bytes) -> int:
    if len(value) != 4:
        raise RequestDecodeError(f"{name}: {len(value)} octets, expected a 4-octet integer")
    return int.from_bytes(value, "big")


def _utf8(name: str, value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestDecodeError(f"{name} is not valid UTF-8") from None
    if not text:
        raise RequestDecodeError(f"{name} is empty")
    return text


def _request_type(value: bytes) -> RequestType:
    number = _u32("Aaa-Vpn-Request-Type", value)
    try:
        return RequestType(number)
    except ValueError:
        raise RequestDecodeError(f"unknown Aaa-Vpn-Request-Type {number}") from None


def _digest(value: bytes) -> bytes:
    if len(value) != PROFILE_DIGEST_LENGTH:
        raise RequestDecodeError(f"Aaa-Vpn-Profile-Digest: {len(value)} octets, expected {PROFILE_DIGEST_LENGTH}")
    return value


#: Our vendor attributes a request may carry: (field, its decoder).
_Decoder = tuple[str, Callable[[bytes], object]]
_OURS: dict[int, _Decoder] = {
    AaaVpnAttr.REQUEST_TYPE: ("request_type", _request_type),
    AaaVpnAttr.CARE_OF_ADDRESS: ("care_of_address", lambda v: _ipv4("Aaa-Vpn-Care-Of-Address", v)),
    AaaVpnAttr.HOME_AGENT: ("home_agent", lambda v: _ipv4("Aaa-Vpn-Home-Agent", v)),
    AaaVpnAttr.SESSION_ID: ("session_id", lambda v: _utf8("Aaa-Vpn-Session-Id", v)),
    AaaVpnAttr.PREVIOUS_FA: ("previous_fa", lambda v: _ipv4("Aaa-Vpn-Previous-FA", v)),
    AaaVpnAttr.KEY_EPOCH: ("key_epoch", lambda v: _u32("Aaa-Vpn-Key-Epoch", v)),
    AaaVpnAttr.PROFILE_DIGEST: ("profile_digest", _digest),
}
_THEIRS: dict[int, _Decoder] = {
    ThreeGpp2Attr.HOME_AGENT_IP_ADDRESS: ("threegpp2_home_agent", lambda v: _ipv4("3GPP2-Home-Agent-IP-Address", v)),
    ThreeGpp2Attr.FOREIGN_AGENT_ADDRESS: (
        "threegpp2_foreign_agent",
        lambda v: _ipv4("3GPP2-Foreign-Agent-Address", v),
    ),
}


def decode_access_request(packet: Packet) -> AccessRequest:
    """The :class:`AccessRequest` a received Access-Request carries (module
    rules). Raises :class:`RequestDecodeError`."""
    fields: dict[str, object] = {}
    nai: str | None = None
    extra: list[bytes] = []
    proxy_states: list[bytes] = []
    for code, value in packet.attributes:
        if code == VENDOR_SPECIFIC:
            # One sub-attribute in the recommended format (RFC 2865 section 5.26)
            # of ours or 3GPP2's: typed; any other VSA is kept in extra.
            if len(value) >= 6 and value[5] + 4 == len(value):
                prefix = value[:4]
                table = _OURS if prefix == _OUR_VSA_PREFIX else _THEIRS if prefix == _3GPP2_VSA_PREFIX else None
                entry = table.get(value[4]) if table is not None else None
                if entry is not None:
                    name, decode = entry
                    if name not in fields:  # the first one counts
                        fields[name] = decode(value[6:])
                    continue
        elif code == USER_NAME:
            if nai is not None:
                raise RequestDecodeError("User-Name appears twice")
            nai = _utf8("User-Name", value)
            continue
        elif code == PROXY_STATE:
            if not value:
                raise RequestDecodeError("an empty Proxy-State")
            proxy_states.append(value)
            continue
        elif code == MESSAGE_AUTHENTICATOR_TYPE:
            continue
        elif code == CHAP_PASSWORD:
            if "chap_password" not in fields:
                if len(value) != CHAP_PASSWORD_LENGTH:
                    raise RequestDecodeError(f"CHAP-Password: {len(value)} octets, expected {CHAP_PASSWORD_LENGTH}")
                fields["chap_password"] = value
            continue
        elif code == CHAP_CHALLENGE:
            if "chap_challenge" not in fields:
                if len(value) < MIN_CHAP_CHALLENGE:
                    raise RequestDecodeError(f"CHAP-Challenge: {len(value)} octets, at least {MIN_CHAP_CHALLENGE}")
                fields["chap_challenge"] = value
            continue
        elif code == NAS_IP_ADDRESS:
            if "nas_ip_address" not in fields:
                fields["nas_ip_address"] = _ipv4("NAS-IP-Address", value)
            continue
        elif code == NAS_IDENTIFIER:
            if "nas_identifier" not in fields:
                fields["nas_identifier"] = _utf8("NAS-Identifier", value)
            continue
        extra.append(bytes((code, len(value) + 2)) + value)
    if nai is None:
        raise RequestDecodeError("User-Name (the mobile node's NAI) is missing")
    try:
        return AccessRequest(nai, proxy_states=tuple(proxy_states), extra=tuple(extra), **fields)  # type: ignore[arg-type]
    except RequestError as exc:
        raise RequestDecodeError(str(exc)) from None


# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confirmation:
    """What an Access-Accept that confirms the sender's view says
    (docs/protocol.md section 1, "Renewals that change no key")."""

    session_id: str
    """Aaa-Vpn-Session-Id: the session the view belongs to."""
    epoch: int
    """Aaa-Vpn-Key-Epoch: the epoch its keys were derived in."""
    lifetime: int
    """Aaa-Vpn-Lifetime (or Session-Timeout): the lifetime now granted."""
    digest: bytes
    """Aaa-Vpn-Profile-Digest: the view confirmed (what the request named)."""


@dataclass(frozen=True)
class Accepted:
    """An authentic Access-Accept: a whole VPN profile, or the confirmation of
    the view the sender holds (exactly one of the two is set)."""

    profile: VpnProfile | None
    """The receiver's view of the VPN (``decode_profile``)."""
    attributes: bytes
    """The reply's raw attribute section (``reply[20:Length]``), for
    ``decode_3gpp2``/``decode_tunnel_attributes`` or anything the profile does
    not cover; salt-encrypted values in it need the request's authenticator."""
    confirmation: Confirmation | None = None
    """Set instead of ``profile`` when the Accept confirms the view the
    request's Aaa-Vpn-Profile-Digest named."""


@dataclass(frozen=True)
class Rejected:
    """An authentic Access-Reject (or Access-Challenge, treated as one)."""

    reason: RejectReason | None
    """``Aaa-Vpn-Reject-Reason``, so an agent can pick its Mobile IP reply code;
    ``None`` if the server sent none or one this code does not know."""
    message: str
    """The Reply-Message text (RFC 2865 section 5.18), for logs."""


def _verify(reply: bytes, request: bytes, secret: bytes, codes: frozenset[int], require_ma: bool = True) -> Packet:
    """Check ``reply`` against ``request`` (module rules) and return it decoded."""
    if len(request) < HEADER_LENGTH:
        raise ValueError("the request is shorter than a RADIUS header")
    try:
        packet = decode_packet(reply)
    except RadiusDecodeError as exc:
        raise ReplyError(f"malformed reply: {exc}") from None
    what = code_name(packet.code)
    if packet.code not in codes:
        raise ReplyError(f"{what} does not answer a {code_name(request[0])}")
    if packet.identifier != request[1]:
        raise ReplyError(f"{what} with Identifier {packet.identifier}; the request's is {request[1]}")
    request_authenticator = request[4:HEADER_LENGTH]
    if not check_response_authenticator(packet, request_authenticator, secret):
        raise ReplyError(
            f"{what}: Response Authenticator {packet.authenticator.hex()} is wrong (RFC 2865 section 3):"
            " another shared secret, or not a reply to this request"
        )
    ma = check_message_authenticator(packet, secret, request_authenticator)
    if ma is None and require_ma:
        raise ReplyError(f"{what} without Message-Authenticator (required: RFC 3579 section 3.2, BlastRADIUS)")
    if ma is False:
        raise ReplyError(f"{what}: the Message-Authenticator is wrong, repeated or malformed (RFC 3579 section 3.2)")
    try:
        sent = decode_packet(request).all(PROXY_STATE)
    except RadiusDecodeError as exc:
        raise ValueError(f"the request does not decode: {exc}") from None
    echoed = packet.all(PROXY_STATE)
    if echoed != sent:
        raise ReplyError(
            f"{what}: Proxy-State {[v.hex() for v in echoed]} does not echo the request's"
            f" {[v.hex() for v in sent]} (RFC 2865 section 5.33)"
        )
    return packet


_ACCESS_REPLIES = frozenset((ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE))
_STATUS_REPLIES = frozenset((ACCESS_ACCEPT,))
_ACCOUNTING_REPLIES = frozenset((ACCOUNTING_RESPONSE,))


def _reply_message(packet: Packet) -> str:
    return b"".join(packet.all(REPLY_MESSAGE)).decode("utf-8", "replace")


def _our_values(packet: Packet) -> dict[int, bytes]:
    """Our single-sub-attribute vendor attributes, first of each type."""
    values: dict[int, bytes] = {}
    for code, value in packet.attributes:
        if code == VENDOR_SPECIFIC and len(value) >= 6 and value[:4] == _OUR_VSA_PREFIX and value[5] + 4 == len(value):
            values.setdefault(value[4], value[6:])
    return values


def _reject_reason(packet: Packet) -> RejectReason | None:
    value = _our_values(packet).get(AaaVpnAttr.REJECT_REASON)
    if value is None or len(value) != 4:
        return None
    try:
        return RejectReason(int.from_bytes(value, "big"))
    except ValueError:
        return None


def _confirmation(packet: Packet) -> Confirmation | None:
    """The confirmation an Accept carries (Profile-Digest without Home-Address), or None."""
    ours = _our_values(packet)
    digest = ours.get(AaaVpnAttr.PROFILE_DIGEST)
    if digest is None or AaaVpnAttr.HOME_ADDRESS in ours:
        return None
    try:
        session_id = ours[AaaVpnAttr.SESSION_ID].decode("utf-8")
        epoch, lifetime = ours[AaaVpnAttr.KEY_EPOCH], ours[AaaVpnAttr.LIFETIME]
    except (KeyError, UnicodeDecodeError):
        raise ProfileReplyError(
            "Access-Accept: a confirmation needs Aaa-Vpn-Session-Id (UTF-8), Aaa-Vpn-Key-Epoch and Aaa-Vpn-Lifetime"
        ) from None
    if len(epoch) != 4 or len(lifetime) != 4 or len(digest) != PROFILE_DIGEST_LENGTH or not session_id:
        raise ProfileReplyError("Access-Accept: a malformed confirmation (epoch, lifetime or digest length)")
    return Confirmation(session_id, int.from_bytes(epoch, "big"), int.from_bytes(lifetime, "big"), digest)


def decode_access_reply(reply: bytes, request: bytes, secret: bytes | Secret) -> Accepted | Rejected:
    """Verify ``reply`` against the Access-Request ``request`` (both raw) and
    decode it.

    Raises :class:`ReplyError` if the reply is not to be believed (see the
    module rules), :class:`ProfileReplyError` if it is an authentic
    Access-Accept that carries neither a VPN profile that decodes nor a
    confirmation."""
    if len(request) < HEADER_LENGTH or request[0] != ACCESS_REQUEST:
        raise ValueError("decode_access_reply needs the raw Access-Request the reply answers")
    key = _key(secret)
    packet = _verify(reply, request, key, _ACCESS_REPLIES)
    attributes = packet.data[HEADER_LENGTH:]
    if packet.code == ACCESS_ACCEPT:
        confirmation = _confirmation(packet)
        if confirmation is not None:
            return Accepted(None, attributes, confirmation)
        try:
            profile = decode_profile(attributes, key, request[4:HEADER_LENGTH])
        except ProfileDecodeError as exc:
            raise ProfileReplyError(f"Access-Accept: the VPN profile does not decode: {exc}") from None
        return Accepted(profile, attributes)
    message = _reply_message(packet)
    if packet.code == ACCESS_CHALLENGE:
        # RFC 2865 section 4.4: without challenge/response, a Challenge is a Reject.
        return Rejected(None, f"Access-Challenge (not supported, treated as Access-Reject): {message}")
    return Rejected(_reject_reason(packet), message)


def decode_status_reply(reply: bytes, request: bytes, secret: bytes | Secret) -> str:
    """Verify ``reply`` against the Status-Server ``request`` (RFC 5997
    section 3: an Access-Accept with a Message-Authenticator) and return its
    Reply-Message text. Raises :class:`ReplyError` like
    :func:`decode_access_reply`."""
    if len(request) < HEADER_LENGTH or request[0] != STATUS_SERVER:
        raise ValueError("decode_status_reply needs the raw Status-Server the reply answers")
    return _reply_message(_verify(reply, request, _key(secret), _STATUS_REPLIES))


def decode_accounting_response(reply: bytes, request: bytes, secret: bytes | Secret) -> None:
    """Verify ``reply`` as the Accounting-Response to the Accounting-Request
    ``request`` (RFC 2866 section 3: Response Authenticator over the request's
    authenticator; a Message-Authenticator is optional there, and checked
    when present). Raises :class:`ReplyError` like :func:`decode_access_reply`."""
    if len(request) < HEADER_LENGTH or request[0] != ACCOUNTING_REQUEST:
        raise ValueError("decode_accounting_response needs the raw Accounting-Request the reply answers")
    _verify(reply, request, _key(secret), _ACCOUNTING_REPLIES, require_ma=False)


__all__ = [
    "MAX_KEY_EPOCH",
    "Accepted",
    "AccessRequest",
    "Confirmation",
    "ProfileReplyError",
    "Rejected",
    "ReplyError",
    "RequestDecodeError",
    "RequestError",
    "build_status_server",
    "decode_access_reply",
    "decode_access_request",
    "decode_accounting_response",
    "decode_status_reply",
    "encode_access_request",
    "encode_request_attributes",
    "seal_request",
]
