"""The VPN profile as RADIUS attributes: :class:`~aaa_vpn.wire.profile.VpnProfile`
<-> raw attributes, in three flavours (docs/design.md section 4).

Rules (everything that decides the wire format lives here):

* ``Flavour.AAA_VPN``: the vendor attributes of ``dictionaries/dictionary.aaa_vpn``
  (vendor :data:`~aaa_vpn.wire.profile.VENDOR_ID`, RFC 2865 section 5.26
  recommended format: 1-octet type, 1-octet length). Session values (1-31)
  are untagged; every attribute of path *i* (0-based) carries the RFC 2868
  section 3 tag *i* + 1 (1..31). Tagged integers are tag + 24 bits;
  untagged integers 32 bits. Local/Peer are dotted-decimal text, each traffic
  selector one attribute ("198.51.100.10/32"). Keys, PSKs, the session
  root key and the handoff keys are salt-encrypted (RFC 2868 section 3.5);
  a tagged one is ``tag || salt || ciphertext``. Session-Timeout (27, RFC 2865 section 5.27)
  repeats the profile lifetime for equipment that reads only standard
  attributes.
* ``Flavour.RFC2868``: per path, tag *i* + 1: Tunnel-Type = ESP (9),
  Tunnel-Medium-Type = IPv4 (1), Tunnel-Client-Endpoint = local,
  Tunnel-Server-Endpoint = peer, Tunnel-Password = the IKE PSK (omitted if
  the path has none), Tunnel-Assignment-Id = the role ("fa-ha"),
  Tunnel-Preference = tag; plus Session-Timeout. A path the receiver only
  relays -- the gateway's side of a route-optimised path in the HA's view,
  which the HA hands on in a Binding Update -- is marked: its
  Tunnel-Assignment-Id is ``relay:`` + the role (:data:`RELAYED_PREFIX`) and
  its Tunnel-Client-Endpoint is not the receiver's own address (the encoder
  is told that address, ``receiver``). It cannot express SPIs, manual keys,
  transforms, traffic selectors, QoS, lifetimes per path, or any session
  value but the lifetime.
* ``Flavour.THREEGPP2`` (vendor 5535, X.S0011-005 numbers):
  3GPP2-Home-Agent-IP-Address, 3GPP2-MN-HA-SPI and 3GPP2-MN-HA-Shared-Key
  (salt-encrypted) if the profile has them, 3GPP2-Security-Level = 3 (IPsec
  for tunnels and registration messages) when there are paths,
  3GPP2-Pre-Shared-Secret = the IKE PSK of the first FA-HA path --
  salt-encrypted (StarOS) or as it is (the public dictionaries' ``string``),
  per client (:class:`~aaa_vpn.wire.enums.PskEncoding`) -- and with it
  3GPP2-KeyID (:func:`threegpp2_key_id`: the FA and the HA as eight hex
  digits each, then the time the key was made, 32 bits; StarOS's layout,
  docs/radius-attributes.md) when the caller says when the key was made
  (``key_time``), plus Session-Timeout. It cannot express paths other than
  the one FA-HA IKE PSK.
* Never truncate: anything that does not fit (a value beyond one attribute,
  more than 31 paths, a secret beyond 239 octets, the packet beyond its
  budget) raises :class:`ProfileError`, the caller's fault. Anything
  malformed on receipt raises :class:`ProfileDecodeError`, the peer's fault.
* Salts: one ``os.urandom`` per packet gives a random start; attribute *k*
  gets ``0x8000 | (start + k) mod 0x8000``, so salts are unique within the
  packet as RFC 2868 section 3.5 requires (independent random salts collide
  with a few percent probability in a large profile).

Decoding needs no pyrad dictionary (this module never imports pyrad): it
takes the raw attribute section of a packet (``packet[20:length]``) or the
list of raw attributes :func:`encode_profile` returns, skips what it does not
know (other vendors, Message-Authenticator, Proxy-State, unknown vendor
types), and is strict about what it knows.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from aaa_vpn.secret import Secret
from aaa_vpn.wire.enums import EspTransform, Flavour, GatewayMode, KeyMode, PskEncoding
from aaa_vpn.wire.profile import (
    MAX_PATHS,
    PROFILE_DIGEST_LENGTH,
    TAGGED_INT_MAX,
    VENDOR_ID,
    PathProfile,
    PathRole,
    QosSpec,
    VpnProfile,
)
from aaa_vpn.wire.radius import (
    AUTHENTICATOR_LENGTH,
    DEFAULT_ATTRIBUTE_BUDGET,
    MAX_ATTRIBUTE_VALUE,
    MAX_SALT_PLAINTEXT,
    MAX_VSA_VALUE,
    THREEGPP2_VENDOR_ID,
    AaaVpnAttr,
    Attr,
    RadiusDecodeError,
    ThreeGpp2Attr,
    salt_decrypt,
    salt_encrypt,
)
from aaa_vpn.wire.radius import iter_attributes as _radius_iter_attributes
from aaa_vpn.wire.reader import DecodeError

try:  # the compiled hot path, when it was built (setup.py)
    from aaa_vpn.wire import _fast  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a build without a compiler
    _fast = None
from aaa_vpn.wire.text import text as _text_of


class ProfileError(ValueError):
    """The profile cannot be encoded as asked (the caller's fault): a value too
    large for its attribute, too many paths, or more than the packet holds."""


class ProfileDecodeError(DecodeError):
    """Received attributes are malformed or incomplete (the peer's fault)."""


UINT32_MAX = 0xFFFFFFFF


#: RFC 2868 section 3.1 / 3.2 values the RFC2868 flavour sends.
TUNNEL_TYPE_ESP = 9
TUNNEL_MEDIUM_IPV4 = 1
#: STAROS: IPsec for tunnels and registration messages.
SECURITY_LEVEL_IPSEC = 3

# Wire numbers of the model's enums, as in dictionary.aaa_vpn's VALUE lines.
_KEY_MODE_CODE = {KeyMode.MANUAL: 1, KeyMode.IKEV2: 2}
_KEY_MODE_BY_CODE = {v: k for k, v in _KEY_MODE_CODE.items()}
_GATEWAY_MODE_CODE = {GatewayMode.STATIC: 1, GatewayMode.DYNAMIC: 2}
_GATEWAY_MODE_BY_CODE = {v: k for k, v in _GATEWAY_MODE_CODE.items()}
_ESP_BY_CODE = {t.code: t for t in EspTransform}
_ROLE_BY_CODE = {int(r): r for r in PathRole}
_E = TypeVar("_E", bound=enum.Enum)
#: Tunnel-Assignment-Id per role (RFC2868 flavour).
ASSIGNMENT_ID = {
    PathRole.FA_HA: "fa-ha",
    PathRole.HA_GW: "ha-gw",
    PathRole.FA_GW: "fa-gw",
    PathRole.FA_FA: "fa-fa",
}
#: RFC2868 flavour: the Tunnel-Assignment-Id of a tunnel the receiver only
#: relays begins with this (``relay:fa-gw``).
RELAYED_PREFIX = "relay:"
#: 3GPP2-KeyID: two addresses as eight hex digits each and a 32-bit time.
KEY_ID_LENGTH = 20

# --- precomputed headers ------------------------------------------------------------------
# A VSA in the RFC 2865 section 5.26 recommended format:
#   26 | 8 + n | vendor id (4) | vendor type | 2 + n | value (n)
_VSA = struct.Struct("!BBIBB")
# Headers of 4-octet values (integers, tagged integers, ipaddr) never change.
_HDR4 = {t: _VSA.pack(26, 12, VENDOR_ID, t, 6) for t in AaaVpnAttr}
_HDR4_3GPP2 = {t: _VSA.pack(26, 12, THREEGPP2_VENDOR_ID, t, 6) for t in ThreeGpp2Attr}
_U32 = struct.Struct("!I")
_SESSION_TIMEOUT_HDR = bytes((Attr.SESSION_TIMEOUT, 6))


# Dictionary names, for error messages that point at what tshark/radclient show.
_NAMES = {
    AaaVpnAttr.SESSION_ID: "Aaa-Vpn-Session-Id",
    AaaVpnAttr.REQUEST_TYPE: "Aaa-Vpn-Request-Type",
    AaaVpnAttr.HOME_ADDRESS: "Aaa-Vpn-Home-Address",
    AaaVpnAttr.HOME_AGENT: "Aaa-Vpn-Home-Agent",
    AaaVpnAttr.CARE_OF_ADDRESS: "Aaa-Vpn-Care-Of-Address",
    AaaVpnAttr.PREVIOUS_FA: "Aaa-Vpn-Previous-FA",
    AaaVpnAttr.SESSION_ROOT_KEY: "Aaa-Vpn-Session-Root-Key",
    AaaVpnAttr.KEY_EPOCH: "Aaa-Vpn-Key-Epoch",
    AaaVpnAttr.LIFETIME: "Aaa-Vpn-Lifetime",
    AaaVpnAttr.MN_HA_SPI: "Aaa-Vpn-MN-HA-SPI",
    AaaVpnAttr.MN_HA_KEY: "Aaa-Vpn-MN-HA-Key",
    AaaVpnAttr.FA_HA_SPI: "Aaa-Vpn-FA-HA-SPI",
    AaaVpnAttr.FA_HA_KEY: "Aaa-Vpn-FA-HA-Key",
    AaaVpnAttr.REJECT_REASON: "Aaa-Vpn-Reject-Reason",
    AaaVpnAttr.HANDOFF_KEY: "Aaa-Vpn-Handoff-Key",
    AaaVpnAttr.PREVIOUS_FA_HANDOFF_KEY: "Aaa-Vpn-Previous-FA-Handoff-Key",
    AaaVpnAttr.PROFILE_DIGEST: "Aaa-Vpn-Profile-Digest",
    AaaVpnAttr.PATH_ROLE: "Aaa-Vpn-Path-Role",
    AaaVpnAttr.PATH_LOCAL: "Aaa-Vpn-Path-Local",
    AaaVpnAttr.PATH_PEER: "Aaa-Vpn-Path-Peer",
    AaaVpnAttr.PATH_LOCAL_TS: "Aaa-Vpn-Path-Local-TS",
    AaaVpnAttr.PATH_REMOTE_TS: "Aaa-Vpn-Path-Remote-TS",
    AaaVpnAttr.PATH_KEY_MODE: "Aaa-Vpn-Path-Key-Mode",
    AaaVpnAttr.PATH_ESP_TRANSFORM: "Aaa-Vpn-Path-ESP-Transform",
    AaaVpnAttr.PATH_SPI_IN: "Aaa-Vpn-Path-SPI-In",
    AaaVpnAttr.PATH_SPI_OUT: "Aaa-Vpn-Path-SPI-Out",
    AaaVpnAttr.PATH_KEY_IN: "Aaa-Vpn-Path-Key-In",
    AaaVpnAttr.PATH_KEY_OUT: "Aaa-Vpn-Path-Key-Out",
    AaaVpnAttr.PATH_LIFETIME: "Aaa-Vpn-Path-Lifetime",
    AaaVpnAttr.PATH_IKE_PROPOSAL: "Aaa-Vpn-Path-IKE-Proposal",
    AaaVpnAttr.PATH_IKE_PSK: "Aaa-Vpn-Path-IKE-PSK",
    AaaVpnAttr.PATH_QOS_CLASS: "Aaa-Vpn-Path-QoS-Class",
    AaaVpnAttr.PATH_DSCP: "Aaa-Vpn-Path-DSCP",
    AaaVpnAttr.PATH_RATE_LIMIT: "Aaa-Vpn-Path-Rate-Limit",
    AaaVpnAttr.PATH_GATEWAY_MODE: "Aaa-Vpn-Path-Gateway-Mode",
    AaaVpnAttr.PATH_BINDING_KEY: "Aaa-Vpn-Path-Binding-Key",
}
_TUNNEL_NAMES = {
    Attr.SESSION_TIMEOUT: "Session-Timeout",
    Attr.TUNNEL_TYPE: "Tunnel-Type",
    Attr.TUNNEL_MEDIUM_TYPE: "Tunnel-Medium-Type",
    Attr.TUNNEL_CLIENT_ENDPOINT: "Tunnel-Client-Endpoint",
    Attr.TUNNEL_SERVER_ENDPOINT: "Tunnel-Server-Endpoint",
    Attr.TUNNEL_PASSWORD: "Tunnel-Password",
    Attr.TUNNEL_PRIVATE_GROUP_ID: "Tunnel-Private-Group-Id",
    Attr.TUNNEL_ASSIGNMENT_ID: "Tunnel-Assignment-Id",
    Attr.TUNNEL_PREFERENCE: "Tunnel-Preference",
    Attr.TUNNEL_CLIENT_AUTH_ID: "Tunnel-Client-Auth-Id",
    Attr.TUNNEL_SERVER_AUTH_ID: "Tunnel-Server-Auth-Id",
}
_3GPP2_NAMES = {
    ThreeGpp2Attr.IKE_PRESHARED_SECRET_REQUEST: "3GPP2-Ike-Preshared-Secret-Request",
    ThreeGpp2Attr.SECURITY_LEVEL: "3GPP2-Security-Level",
    ThreeGpp2Attr.PRE_SHARED_SECRET: "3GPP2-Pre-Shared-Secret",
    ThreeGpp2Attr.HOME_AGENT_IP_ADDRESS: "3GPP2-Home-Agent-IP-Address",
    ThreeGpp2Attr.MN_HA_SPI: "3GPP2-MN-HA-SPI",
    ThreeGpp2Attr.MN_HA_SHARED_KEY: "3GPP2-MN-HA-Shared-Key",
    ThreeGpp2Attr.KEY_ID: "3GPP2-KeyID",
    ThreeGpp2Attr.FOREIGN_AGENT_ADDRESS: "3GPP2-Foreign-Agent-Address",
    ThreeGpp2Attr.SESSION_TERMINATION_CAPABILITY: "3GPP2-Session-Termination-Capability",
}


def _name(t: AaaVpnAttr) -> str:
    return _NAMES[t]


# Encoded non-secret attributes by (type, tag, value). Most of a profile --
# roles, endpoints, traffic selectors, transforms, lifetimes, QoS -- repeats
# from one registration to the next, and a dictionary lookup is several times
# cheaper than packing the attribute again. Bounded: cleared when full.
_STATIC: dict[tuple[int, int, object], bytes] = {}
_STATIC_LIMIT = 65536


def _remember(key: tuple[int, int, object], encoded: bytes) -> bytes:
    if len(_STATIC) >= _STATIC_LIMIT:
        _STATIC.clear()
    _STATIC[key] = encoded
    return encoded


class _Secret:
    """A salt-encrypted attribute of a template: its header (through the tag,
    if any) is fixed, its salt and ciphertext are made for each packet."""

    __slots__ = ("head", "root_key", "value")

    def __init__(self, head: bytes, value: bytes, root_key: bool = False) -> None:
        self.head = head
        self.value = value
        self.root_key = root_key
        """The session root key: not part of the profile's digest."""


class _DigestSlot:
    """Where Aaa-Vpn-Profile-Digest goes once it is known (:func:`compile_with_digest`)."""

    __slots__ = ()


class _Lifetime:
    """A 4-octet attribute that carries the packet's lifetime."""

    __slots__ = ("head",)

    def __init__(self, head: bytes) -> None:
        self.head = head


def _cipher_length(plain: int) -> int:
    """Salt and ciphertext octets of a salt-encrypted value of ``plain`` octets
    (RFC 2868 section 3.5: a length octet, zero-padded to blocks of 16)."""
    return 2 + 16 * ((plain + 1 + 15) // 16)


class ProfileTemplate:
    """A profile compiled for one flavour (:func:`compile_profile`): every
    attribute that does not change from one packet to the next is encoded
    once; keys are salt-encrypted and the lifetime filled in by
    :meth:`render` for each packet. A server caches a view's template while
    the view does not change, so a renewal re-encodes nothing but that."""

    __slots__ = ("_flat", "length", "parts", "secrets")

    def __init__(self, parts: Sequence[bytes | _Secret | _Lifetime | _DigestSlot]) -> None:
        self._flat: tuple[tuple[int, bytes, bytes], ...] | None = None
        kept: list[bytes | _Secret | _Lifetime] = []
        secrets = length = 0
        for part in parts:
            if isinstance(part, bytes):
                length += len(part)
            elif isinstance(part, _Secret):
                secrets += 1
                length += len(part.head) + _cipher_length(len(part.value))
            elif isinstance(part, _Lifetime):
                length += len(part.head) + 4
            else:  # pragma: no cover - internal
                raise ValueError("a template whose digest slot is not filled")
            kept.append(part)
        self.parts = kept
        self.secrets = secrets
        self.length = length
        """Octets of every rendering."""

    @classmethod
    def prepared(
        cls,
        parts: list[bytes | _Secret | _Lifetime],
        flat: tuple[tuple[int, bytes, bytes], ...],
        length: int,
        secrets: int,
    ) -> ProfileTemplate:
        """A template whose octet count, secrets and flat parts the caller
        has already worked out from ``parts`` (:func:`_with_digest`)."""
        template = cls.__new__(cls)
        template.parts = parts
        template._flat = flat
        template.length = length
        template.secrets = secrets
        return template

    def layout(self) -> tuple[bytes, tuple[int, ...]]:
        """A template without keys as bytes, with the offsets of its 4-octet
        lifetime values (zero here). ValueError if it has keys (they are
        salt-encrypted anew for each packet)."""
        if self.secrets:
            raise ValueError("a template with keys has no fixed layout")
        out = bytearray()
        slots: list[int] = []
        for part in self.parts:
            if isinstance(part, bytes):
                out += part
            elif isinstance(part, _Lifetime):
                out += part.head
                slots.append(len(out))
                out += bytes(4)
        return bytes(out), tuple(slots)

    def render_bytes(
        self,
        lifetime: int,
        secret: bytes | Secret,
        request_authenticator: bytes,
        budget: int = DEFAULT_ATTRIBUTE_BUDGET,
        salt_base: int | None = None,
    ) -> bytes:
        """:meth:`render`'s attributes as one string, by the compiled hot path
        (aaa_vpn/wire/_fast.c) when it is installed."""
        if _fast is None:
            return b"".join(self.render(lifetime, secret, request_authenticator, budget, salt_base))
        self._check(lifetime, request_authenticator, budget)
        flat = self._flat
        if flat is None:
            flat = self._flat = self._flatten()
        key = secret.value if isinstance(secret, Secret) else secret
        if salt_base is None:
            salt_base = int.from_bytes(os.urandom(2), "big")
        rendered: bytes = _fast.render(flat, lifetime, key, request_authenticator, salt_base & 0x7FFF)
        return rendered

    def _check(self, lifetime: int, request_authenticator: bytes, budget: int) -> None:
        """What every rendering needs (ProfileError otherwise)."""
        if len(request_authenticator) != AUTHENTICATOR_LENGTH:
            raise ProfileError("the request authenticator is 16 octets")
        if self.length > budget:
            raise ProfileError(
                f"the profile needs {self.length} octets but only {budget} are free in the packet"
                " (RFC 2865 section 3: at most 4096)"
            )
        if not 0 <= lifetime <= UINT32_MAX:
            raise ProfileError(f"lifetime {lifetime}: a RADIUS integer is 0..{UINT32_MAX}")
        if self.secrets > 0x8000:
            raise ProfileError("more salt-encrypted attributes than distinct salts")

    def _flatten(self) -> tuple[tuple[int, bytes, bytes], ...]:
        """The parts as the compiled renderer takes them, adjacent fixed parts joined."""
        flat: list[tuple[int, bytes, bytes]] = []
        for part in self.parts:
            if isinstance(part, bytes):
                if flat and flat[-1][0] == 0:
                    flat[-1] = (0, flat[-1][1] + part, b"")
                else:
                    flat.append((0, part, b""))
            elif isinstance(part, _Secret):
                flat.append((2, part.head, part.value))
            else:
                flat.append((1, part.head, b""))
        return tuple(flat)

    def render(
        self,
        lifetime: int,
        secret: bytes | Secret,
        request_authenticator: bytes,
        budget: int = DEFAULT_ATTRIBUTE_BUDGET,
        salt_base: int | None = None,
    ) -> list[bytes]:
        """The attributes for one packet: keys salt-encrypted with ``secret``
        and ``request_authenticator`` (the Access-Request's; 16 zero octets in
        a CoA-Request), salts unique in the packet from ``salt_base`` (random
        if None), ``lifetime`` in Session-Timeout and Aaa-Vpn-Lifetime.
        Raises :class:`ProfileError` if it does not fit ``budget`` octets."""
        self._check(lifetime, request_authenticator, budget)
        key = secret.value if isinstance(secret, Secret) else secret
        if salt_base is None:
            salt_base = int.from_bytes(os.urandom(2), "big")
        packed = _U32.pack(lifetime)
        out: list[bytes] = []
        count = 0
        for part in self.parts:
            if isinstance(part, bytes):
                out.append(part)
            elif isinstance(part, _Secret):
                # RFC 2868 section 3.5: salts unique within the packet, MSB set.
                salt = (0x8000 | ((salt_base + count) & 0x7FFF)).to_bytes(2, "big")
                count += 1
                out.append(part.head + salt_encrypt(part.value, key, request_authenticator, salt))
            else:
                out.append(part.head + packed)
        return out


class _Encoder:
    """Builds one template."""

    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out: list[bytes | _Secret | _Lifetime | _DigestSlot] = []

    @staticmethod
    def check_secret_size(what: str, value: bytes) -> None:
        if len(value) > MAX_SALT_PLAINTEXT:
            raise ProfileError(
                f"{what} is {len(value)} octets; salt encryption fits at most {MAX_SALT_PLAINTEXT}"
                " (RFC 2868 section 3.5)"
            )

    # --- vendor attributes ---
    def vsa(self, t: int, value: bytes, vendor: int = VENDOR_ID) -> None:
        n = len(value)
        if n > MAX_VSA_VALUE:
            raise ProfileError(
                f"vendor {vendor} attribute {t}: value of {n} octets, at most {MAX_VSA_VALUE} fit"
                " (RFC 2865 section 5.26)"
            )
        self.out.append(_VSA.pack(26, n + 8, vendor, t, n + 2) + value)

    def secret_vsa(self, what: str, t: int, value: Secret, vendor: int = VENDOR_ID, tag: int | None = None) -> None:
        """A salt-encrypted vendor attribute (``tag || salt || ciphertext`` if tagged)."""
        raw = value.value
        self.check_secret_size(what, raw)
        n = _cipher_length(len(raw)) + (tag is not None)
        head = _VSA.pack(26, n + 8, vendor, t, n + 2) + (bytes((tag,)) if tag is not None else b"")
        root_key = vendor == VENDOR_ID and t == AaaVpnAttr.SESSION_ROOT_KEY
        self.out.append(_Secret(head, raw, root_key))

    def u32(self, t: AaaVpnAttr, value: int) -> None:
        if not 0 <= value <= UINT32_MAX:
            raise ProfileError(f"{_name(t)} = {value}: a RADIUS integer is 0..{UINT32_MAX}")
        self.out.append(_HDR4[t] + _U32.pack(value))

    def lifetime_u32(self, t: AaaVpnAttr) -> None:
        self.out.append(_Lifetime(_HDR4[t]))

    def ip(self, t: AaaVpnAttr, value: IPv4Address) -> None:
        self.out.append(_HDR4[t] + value.packed)

    def tagged_spi(self, t: AaaVpnAttr, tag: int, value: int) -> None:
        """A tagged integer that differs in every profile: not worth caching."""
        # RFC 2868 section 3: the tag replaces the first octet of the integer.
        if not 0 <= value <= TAGGED_INT_MAX:
            raise ProfileError(f"{_name(t)} = {value}: a tagged integer is 0..{TAGGED_INT_MAX} (RFC 2868 section 3)")
        self.out.append(_HDR4[t] + _U32.pack(tag << 24 | value))

    def tagged_u24(self, t: AaaVpnAttr, tag: int, value: int) -> None:
        key = (t, tag, value)
        encoded = _STATIC.get(key)
        if encoded is None:
            # RFC 2868 section 3: the tag replaces the first octet of the integer.
            if not 0 <= value <= TAGGED_INT_MAX:
                raise ProfileError(
                    f"{_name(t)} = {value}: a tagged integer is 0..{TAGGED_INT_MAX} (RFC 2868 section 3)"
                )
            encoded = _remember(key, _HDR4[t] + _U32.pack(tag << 24 | value))
        self.out.append(encoded)

    def tagged_str(self, t: AaaVpnAttr, tag: int, value: str) -> None:
        key = (t, tag, value)
        encoded = _STATIC.get(key)
        if encoded is None:
            self.vsa(t, bytes((tag,)) + value.encode("utf-8"))
            last = self.out[-1]
            assert isinstance(last, bytes)
            _remember(key, last)
        else:
            self.out.append(encoded)

    def tagged_secret(self, t: AaaVpnAttr, tag: int, value: Secret) -> None:
        self.secret_vsa(_name(t), t, value, tag=tag)

    # --- standard attributes ---
    def std(self, t: int, value: bytes) -> None:
        if len(value) > MAX_ATTRIBUTE_VALUE:
            raise ProfileError(f"attribute {t}: value of {len(value)} octets, at most 253 fit")
        self.out.append(bytes((t, len(value) + 2)) + value)

    def std_secret(self, what: str, t: int, value: Secret, tag: int) -> None:
        raw = value.value
        self.check_secret_size(what, raw)
        n = _cipher_length(len(raw)) + 1
        self.out.append(_Secret(bytes((t, n + 2, tag)), raw))

    def session_timeout(self) -> None:
        self.out.append(_Lifetime(_SESSION_TIMEOUT_HDR))


def _compile(
    profile: VpnProfile,
    flavour: Flavour,
    digest_slot: bool = False,
    receiver: IPv4Address | None = None,
    psk_encoding: PskEncoding = PskEncoding.SALT,
    key_time: int | None = None,
) -> _Encoder:
    if len(profile.paths) > MAX_PATHS:
        raise ProfileError(f"{len(profile.paths)} paths: at most {MAX_PATHS} fit (one RFC 2868 tag each)")
    enc = _Encoder()
    if flavour is Flavour.AAA_VPN:
        _encode_aaa_vpn(enc, profile, digest_slot)
    elif flavour is Flavour.RFC2868:
        _encode_rfc2868(enc, profile, receiver)
    elif flavour is Flavour.THREEGPP2:
        _encode_3gpp2(enc, profile, psk_encoding, key_time)
    else:  # pragma: no cover - Flavour is closed
        raise ProfileError(f"unknown flavour {flavour!r}")
    return enc


def compile_profile(
    profile: VpnProfile,
    flavour: Flavour,
    *,
    receiver: IPv4Address | None = None,
    psk_encoding: PskEncoding = PskEncoding.SALT,
    key_time: int | None = None,
) -> ProfileTemplate:
    """``profile`` compiled for ``flavour`` (see the module rules); its
    ``lifetime`` is filled in when the template is rendered.

    ``receiver``: the address of the node the view is for (the FA's care-of
    address, the HA, the gateway); the rfc2868 flavour marks the tunnels
    that do not start there as relayed. ``psk_encoding`` and ``key_time``
    (seconds since 1970: when the FA-HA keys of the view's epoch were made)
    shape the 3gpp2 flavour's pre-shared secret and 3GPP2-KeyID. Raises
    :class:`ProfileError` for anything that does not fit."""
    return ProfileTemplate(_compile(profile, flavour, False, receiver, psk_encoding, key_time).out)


_DIGEST_LABEL = b"aaa-vpn profile digest 2\x00"


def compile_with_digest(profile: VpnProfile) -> tuple[ProfileTemplate, bytes]:
    """``profile`` compiled in the aaa-vpn flavour with its digest (whatever
    ``profile.digest`` says), and that digest.

    The digest is SHA-256, truncated to
    :data:`~aaa_vpn.wire.profile.PROFILE_DIGEST_LENGTH` octets, over the
    compiled attributes: every attribute as encoded, keys in clear (with their
    headers), but the lifetimes (a renewal moves them), the session root key
    (a foreign AAA keeps it, its FA never sees it) and the digest itself. Two
    views with the same digest install the same SAs with the same keys. The
    keys are random and at least 128 bits long, so the digest, which travels
    in clear, tells an observer nothing about them."""
    return _with_digest(_compile(profile, Flavour.AAA_VPN, digest_slot=True).out)


def _with_digest(parts: list[bytes | _Secret | _Lifetime | _DigestSlot]) -> tuple[ProfileTemplate, bytes]:
    """The template of ``parts`` with the digest in its slot, and the digest.

    One pass does what hashing the parts, ``ProfileTemplate(parts)`` and its
    ``_flatten`` would do in three (a first registration compiles a view
    every time): the digest, the octet count, the secrets and the flat parts
    with adjacent fixed ones joined; the slot is filled in afterwards."""
    hashed = hashlib.sha256(_DIGEST_LABEL)
    update = hashed.update
    flat: list[tuple[int, bytes, bytes] | None] = []  # None: the digest slot
    run: list[bytes] = []  # fixed parts not yet joined into ``flat``
    secrets = length = 0
    for part in parts:
        if isinstance(part, bytes):
            update(part)
            length += len(part)
            run.append(part)
            continue
        if run:
            flat.append((0, b"".join(run), b""))
            run = []
        if isinstance(part, _Secret):
            if not part.root_key:
                update(part.head + len(part.value).to_bytes(2, "big") + part.value)
            secrets += 1
            length += len(part.head) + _cipher_length(len(part.value))
            flat.append((2, part.head, part.value))
        elif isinstance(part, _Lifetime):
            update(part.head)
            length += len(part.head) + 4
            flat.append((1, part.head, b""))
        elif isinstance(part, _DigestSlot):
            flat.append(None)
        else:  # pragma: no cover - internal
            raise ValueError(f"a template part of type {type(part).__name__}")
    if run:
        flat.append((0, b"".join(run), b""))
    digest = hashed.digest()[:PROFILE_DIGEST_LENGTH]
    slot = _VSA.pack(26, 24, VENDOR_ID, AaaVpnAttr.PROFILE_DIGEST, 18) + digest
    joined: list[tuple[int, bytes, bytes]] = []
    for entry in flat:
        if entry is None:
            entry = (0, slot, b"")
            length += len(slot)
        if entry[0] == 0 and joined and joined[-1][0] == 0:
            joined[-1] = (0, joined[-1][1] + entry[1], b"")
        else:
            joined.append(entry)
    kept = [slot if isinstance(p, _DigestSlot) else p for p in parts]
    return ProfileTemplate.prepared(kept, tuple(joined), length, secrets), digest


def profile_digest(profile: VpnProfile) -> bytes:
    """The digest of ``profile`` (:func:`compile_with_digest`)."""
    return compile_with_digest(profile)[1]


def with_digest(profile: VpnProfile) -> VpnProfile:
    """``profile`` carrying its own digest."""
    return dataclasses.replace(profile, digest=profile_digest(profile))


def compile_confirmation(session_id: str, epoch: int, digest: bytes) -> ProfileTemplate:
    """The Access-Accept attributes confirming the view of ``digest`` (session
    ``session_id``, key epoch ``epoch``) to a sender that named that digest
    (docs/protocol.md section 1): Session-Timeout, Aaa-Vpn-Session-Id,
    Aaa-Vpn-Key-Epoch, Aaa-Vpn-Lifetime and Aaa-Vpn-Profile-Digest -- no key,
    no Aaa-Vpn-Home-Address."""
    if len(digest) != PROFILE_DIGEST_LENGTH:
        raise ProfileError(f"a confirmation names a digest of {PROFILE_DIGEST_LENGTH} octets")
    enc = _Encoder()
    enc.session_timeout()
    enc.vsa(AaaVpnAttr.SESSION_ID, session_id.encode("utf-8"))
    enc.u32(AaaVpnAttr.KEY_EPOCH, epoch)
    enc.lifetime_u32(AaaVpnAttr.LIFETIME)
    enc.vsa(AaaVpnAttr.PROFILE_DIGEST, digest)
    return ProfileTemplate(enc.out)


def encode_profile(
    profile: VpnProfile,
    flavour: Flavour,
    secret: bytes | Secret,
    request_authenticator: bytes,
    budget: int = DEFAULT_ATTRIBUTE_BUDGET,
    *,
    receiver: IPv4Address | None = None,
    psk_encoding: PskEncoding = PskEncoding.SALT,
    key_time: int | None = None,
) -> list[bytes]:
    """Encode ``profile`` as complete raw attributes in ``flavour``.

    ``secret`` is the RADIUS shared secret with the receiving client and
    ``request_authenticator`` the Authenticator of the Access-Request being
    answered: both key the salt encryption. ``budget`` is the number of
    octets still free in the packet (default: 4096 minus the header and a
    Message-Authenticator). The result goes after the Message-Authenticator.
    ``receiver``, ``psk_encoding`` and ``key_time``: as for :func:`compile_profile`.

    Raises :class:`ProfileError` instead of truncating anything.
    """
    if len(request_authenticator) != AUTHENTICATOR_LENGTH:
        raise ProfileError("the request authenticator is 16 octets")
    template = compile_profile(profile, flavour, receiver=receiver, psk_encoding=psk_encoding, key_time=key_time)
    return template.render(profile.lifetime, secret, request_authenticator, budget)


def _encode_aaa_vpn(enc: _Encoder, p: VpnProfile, digest_slot: bool = False) -> None:
    A = AaaVpnAttr
    enc.session_timeout()
    session_id = p.session_id.encode("utf-8")
    if not session_id:
        # RFC 2865 section 5: zero-length strings are not sent.
        raise ProfileError("the session id is empty")
    enc.vsa(A.SESSION_ID, session_id)
    enc.ip(A.HOME_ADDRESS, p.home_address)
    enc.ip(A.HOME_AGENT, p.home_agent)
    enc.ip(A.CARE_OF_ADDRESS, p.care_of_address)
    enc.u32(A.KEY_EPOCH, p.epoch)
    enc.lifetime_u32(A.LIFETIME)
    if p.session_root_key is not None:
        enc.secret_vsa("Aaa-Vpn-Session-Root-Key", A.SESSION_ROOT_KEY, p.session_root_key)
    if p.mn_ha_spi is not None:
        enc.u32(A.MN_HA_SPI, p.mn_ha_spi)
    if p.mn_ha_key is not None:
        enc.secret_vsa("Aaa-Vpn-MN-HA-Key", A.MN_HA_KEY, p.mn_ha_key)
    if p.fa_ha_spi is not None:
        enc.u32(A.FA_HA_SPI, p.fa_ha_spi)
    if p.fa_ha_key is not None:
        enc.secret_vsa("Aaa-Vpn-FA-HA-Key", A.FA_HA_KEY, p.fa_ha_key)
    # Smooth handoff (flow E): the FA's own handoff key; after a move, the
    # previous FA and its handoff key (the forwarding path is an FA-FA path).
    if p.handoff_key is not None:
        enc.secret_vsa("Aaa-Vpn-Handoff-Key", A.HANDOFF_KEY, p.handoff_key)
    if p.previous_fa is not None:
        enc.ip(A.PREVIOUS_FA, p.previous_fa)
    if p.previous_fa_handoff_key is not None:
        enc.secret_vsa("Aaa-Vpn-Previous-FA-Handoff-Key", A.PREVIOUS_FA_HANDOFF_KEY, p.previous_fa_handoff_key)
    if digest_slot:
        enc.out.append(_DigestSlot())
    elif p.digest is not None:
        enc.vsa(A.PROFILE_DIGEST, p.digest)
    for index, path in enumerate(p.paths):
        _encode_path(enc, index + 1, path)


def _encode_path(enc: _Encoder, tag: int, path: PathProfile) -> None:
    A = AaaVpnAttr
    enc.tagged_u24(A.PATH_ROLE, tag, int(path.role))
    enc.tagged_str(A.PATH_LOCAL, tag, _text_of(path.local))
    enc.tagged_str(A.PATH_PEER, tag, _text_of(path.peer))
    for net in path.local_ts:
        enc.tagged_str(A.PATH_LOCAL_TS, tag, _text_of(net))
    for net in path.remote_ts:
        enc.tagged_str(A.PATH_REMOTE_TS, tag, _text_of(net))
    enc.tagged_u24(A.PATH_KEY_MODE, tag, _KEY_MODE_CODE[path.key_mode])
    enc.tagged_u24(A.PATH_ESP_TRANSFORM, tag, path.esp_transform.code)
    enc.tagged_spi(A.PATH_SPI_IN, tag, path.spi_in)
    enc.tagged_spi(A.PATH_SPI_OUT, tag, path.spi_out)
    enc.tagged_secret(A.PATH_KEY_IN, tag, path.key_in)
    enc.tagged_secret(A.PATH_KEY_OUT, tag, path.key_out)
    enc.tagged_u24(A.PATH_LIFETIME, tag, path.lifetime)
    if path.ike_proposal is not None:
        enc.tagged_str(A.PATH_IKE_PROPOSAL, tag, path.ike_proposal)
    if path.ike_psk is not None:
        enc.tagged_secret(A.PATH_IKE_PSK, tag, path.ike_psk)
    if path.qos is not None:
        enc.tagged_str(A.PATH_QOS_CLASS, tag, path.qos.name)
        enc.tagged_u24(A.PATH_DSCP, tag, path.qos.dscp)
        enc.tagged_u24(A.PATH_RATE_LIMIT, tag, path.qos.rate_kbps)
    if path.gateway_mode is not None:
        enc.tagged_u24(A.PATH_GATEWAY_MODE, tag, _GATEWAY_MODE_CODE[path.gateway_mode])
    if path.binding_key is not None:
        enc.tagged_secret(A.PATH_BINDING_KEY, tag, path.binding_key)


# --- skeletons: a path's attributes compiled once, its SPIs and keys filled in per session ------


class _Open:
    """An SPI or key of a skeleton, filled in by :meth:`PathSkeleton.fill`."""

    __slots__ = ("attribute", "head")

    def __init__(self, attribute: int, head: bytes) -> None:
        self.attribute = attribute
        self.head = head


class _SkeletonEncoder(_Encoder):
    """An encoder that leaves a path's SPIs and keys open."""

    __slots__ = ()

    def tagged_spi(self, t: AaaVpnAttr, tag: int, value: int) -> None:
        self.out.append(_Open(t, _HDR4[t] + bytes((tag,))))  # type: ignore[arg-type]

    def tagged_secret(self, t: AaaVpnAttr, tag: int, value: Secret) -> None:
        self.check_secret_size(_name(t), value.value)
        n = _cipher_length(len(value.value)) + 1
        self.out.append(_Open(t, _VSA.pack(26, n + 8, VENDOR_ID, t, n + 2) + bytes((tag,))))  # type: ignore[arg-type]


class PathSkeleton:
    """One path's aaa-vpn attributes (tag included) with its SPIs and keys
    left open: compiled once for a path as one node sees it, filled in for
    every session of that path (:meth:`fill`). The filled parts are exactly
    what :func:`compile_profile` makes of the path."""

    __slots__ = ("parts",)

    def __init__(self, path: PathProfile, tag: int) -> None:
        """``path``'s SPIs and keys are placeholders of the right sizes."""
        enc = _SkeletonEncoder()
        _encode_path(enc, tag, path)
        parts: list[bytes | _Open] = []
        for part in enc.out:
            if isinstance(part, bytes) and parts and isinstance(parts[-1], bytes):
                parts[-1] += part
            else:
                parts.append(part)  # type: ignore[arg-type]
        self.parts = parts

    def fill(self, values: dict[int, int | Secret]) -> list[bytes | _Secret]:
        """The path's parts with ``values`` (by attribute type: SPIs as ints
        of 24 bits, keys as secrets) in its open places."""
        out: list[bytes | _Secret] = []
        for part in self.parts:
            if isinstance(part, bytes):
                out.append(part)
                continue
            value = values[part.attribute]
            if isinstance(value, int):
                if not 0 <= value <= TAGGED_INT_MAX:
                    raise ProfileError(
                        f"{_name(AaaVpnAttr(part.attribute))} = {value}: a tagged integer is 0..{TAGGED_INT_MAX}"
                    )
                out.append(part.head[:-1] + _U32.pack(part.head[-1] << 24 | value))
            else:
                out.append(_Secret(part.head, value.value))
        return out


def compile_view(session_part: VpnProfile, paths: Sequence[list[bytes | _Secret]]) -> tuple[ProfileTemplate, bytes]:
    """:func:`compile_with_digest` of ``session_part`` (a view without its
    paths) with the filled skeletons of its paths (in tag order) appended:
    the same template and digest as compiling the whole view."""
    enc = _compile(session_part, Flavour.AAA_VPN, digest_slot=True)
    for parts in paths:
        enc.out.extend(parts)
    return _with_digest(enc.out)


_VENDOR_OCTETS = VENDOR_ID.to_bytes(4, "big")
# Integer attributes an OpenView leaves open: SPIs by name (tagged: a path's), the user's MN-HA SPI.
_OPEN_SPIS: dict[int, bool] = {AaaVpnAttr.PATH_SPI_IN: True, AaaVpnAttr.PATH_SPI_OUT: True, AaaVpnAttr.FA_HA_SPI: False}
_OPEN_TS = (AaaVpnAttr.PATH_LOCAL_TS, AaaVpnAttr.PATH_REMOTE_TS)
_FIXED, _SESSION_ID, _HOME, _HOME_TS, _SPI, _MN_HA_SPI, _KEY, _ROOT_KEY, _MN_HA_KEY = range(9)


@dataclasses.dataclass(frozen=True)
class StandIns:
    """What a view was compiled with in place of one session's own values
    (:meth:`OpenView.open`): every value here must be unlike any other in the
    view, so that where it shows, that value and nothing else was put."""

    keys: Mapping[bytes, int]
    """Placeholder -> index of the derivation it stands for."""
    root_key: bytes
    spis: Mapping[int, str]
    """SPI value -> SPI name (``<path label>@<node>``)."""
    home_address: IPv4Address
    mn_ha_key: bytes


class OpenView:
    """A view compiled in the aaa-vpn flavour with what differs from one
    session of the same shape to the next left open -- the session id, the
    home address (its attribute and the traffic selectors that are the home
    address alone), the SPIs (by name), the user's MN-HA SPI and key, the
    session root key and the keys derived from it (by index). :meth:`fill`
    gives the very template and digest that compiling the filled-in view
    would (:func:`compile_with_digest`)."""

    __slots__ = ("_entries", "keys")

    def __init__(self, entries: list[tuple[int, Any, Any]], keys: list[int]) -> None:
        self._entries = entries
        self.keys = keys
        """The derivations :meth:`fill` takes, in its order (the stand-ins' indexes)."""

    @classmethod
    def open(cls, view: VpnProfile, stand_ins: StandIns) -> OpenView:
        """``view``, compiled with ``stand_ins`` for its own values, opened
        where they show. ValueError if an SPI attribute holds no stand-in."""
        entries: list[tuple[int, Any, Any]] = []
        keys: list[int] = []
        home_ts = _text_of(IPv4Network((int(stand_ins.home_address), 32))).encode()
        for part in _compile(view, Flavour.AAA_VPN, digest_slot=True).out:
            if isinstance(part, bytes) and len(part) >= 8 and part[1] == len(part) and part[2:6] == _VENDOR_OCTETS:
                t = part[6]  # one aaa-vpn attribute (the encoder makes one part per attribute)
                if t == AaaVpnAttr.SESSION_ID:
                    entries.append((_SESSION_ID, None, None))
                    continue
                if t == AaaVpnAttr.HOME_ADDRESS:
                    if part[8:] != stand_ins.home_address.packed:
                        raise ValueError("Aaa-Vpn-Home-Address is not the stand-in")
                    entries.append((_HOME, part[:8], None))
                    continue
                if t in _OPEN_TS and part[9:] == home_ts:
                    entries.append((_HOME_TS, part[:9], t))
                    continue
                if t == AaaVpnAttr.MN_HA_SPI and len(part) == 12:
                    entries.append((_MN_HA_SPI, part[:8], None))
                    continue
                tagged = _OPEN_SPIS.get(t) if len(part) == 12 else None
                if tagged is not None:
                    value = int.from_bytes(part[9:12] if tagged else part[8:12], "big")
                    name = stand_ins.spis.get(value)
                    if name is None:
                        raise ValueError(f"{_name(AaaVpnAttr(t))} {value} is not a stand-in")
                    entries.append((_SPI, part[:9] if tagged else part[:8], (tagged, name, t)))
                    continue
            if isinstance(part, _Secret):
                if part.root_key and part.value == stand_ins.root_key:
                    entries.append((_ROOT_KEY, part.head, None))
                    continue
                if part.value == stand_ins.mn_ha_key:
                    entries.append((_MN_HA_KEY, part.head, None))
                    continue
                index = stand_ins.keys.get(part.value)
                if index is not None:
                    entries.append((_KEY, part.head, len(keys)))
                    keys.append(index)
                    continue
            if isinstance(part, bytes) and entries and entries[-1][0] == _FIXED and isinstance(entries[-1][1], bytes):
                entries[-1] = (_FIXED, entries[-1][1] + part, None)  # fewer parts to fill and to digest
            else:
                entries.append((_FIXED, part, None))
        return cls(entries, keys)

    def fill(
        self,
        session_id: str,
        home_address: IPv4Address,
        root_key: bytes,
        derived: Sequence[bytes],
        spis: Mapping[str, int],
        mn_ha_spi: int,
        mn_ha_key: bytes,
    ) -> tuple[ProfileTemplate, bytes]:
        """The template and digest of the view with these values (``derived``:
        the keys of :attr:`keys`, in that order). ProfileError for what the
        encoder would refuse."""
        out: list[bytes | _Secret | _Lifetime | _DigestSlot] = []
        append = out.append
        home_ts = b""
        for kind, a, b in self._entries:
            if kind == _FIXED:
                append(a)
            elif kind == _KEY:
                append(_Secret(a, derived[b]))
            elif kind == _SPI:
                tagged, name, t = b
                value = spis[name]
                if tagged:
                    if not 0 <= value <= TAGGED_INT_MAX:
                        raise ProfileError(f"{_name(AaaVpnAttr(t))} = {value}: a tagged integer is 0..{TAGGED_INT_MAX}")
                    append(a + value.to_bytes(3, "big"))
                else:
                    append(a + _U32.pack(value))
            elif kind == _SESSION_ID:
                encoded = session_id.encode("utf-8")
                if not encoded:
                    raise ProfileError("the session id is empty")  # as _encode_aaa_vpn
                enc = _Encoder()
                enc.vsa(AaaVpnAttr.SESSION_ID, encoded)
                append(enc.out[0])
            elif kind == _HOME:
                append(a + home_address.packed)
            elif kind == _HOME_TS:
                home_ts = home_ts or (_text_of(home_address) + "/32").encode()
                append(_VSA.pack(26, len(home_ts) + 9, VENDOR_ID, b, len(home_ts) + 3) + a[8:9] + home_ts)
            elif kind == _MN_HA_SPI:
                append(a + _U32.pack(mn_ha_spi))
            elif kind == _MN_HA_KEY:
                append(_Secret(a, mn_ha_key))
            else:
                append(_Secret(a, root_key, True))
        return _with_digest(out)


def _encode_rfc2868(enc: _Encoder, p: VpnProfile, receiver: IPv4Address | None) -> None:
    for index, path in enumerate(p.paths):
        tag = index + 1
        t = bytes((tag,))
        relayed = receiver is not None and path.local != receiver
        assignment = (RELAYED_PREFIX if relayed else "") + ASSIGNMENT_ID[path.role]
        enc.std(Attr.TUNNEL_TYPE, _U32.pack(tag << 24 | TUNNEL_TYPE_ESP))
        enc.std(Attr.TUNNEL_MEDIUM_TYPE, _U32.pack(tag << 24 | TUNNEL_MEDIUM_IPV4))
        enc.std(Attr.TUNNEL_CLIENT_ENDPOINT, t + _text_of(path.local).encode("ascii"))
        enc.std(Attr.TUNNEL_SERVER_ENDPOINT, t + _text_of(path.peer).encode("ascii"))
        if path.ike_psk is not None:
            enc.std_secret("Tunnel-Password", Attr.TUNNEL_PASSWORD, path.ike_psk, tag)
        enc.std(Attr.TUNNEL_ASSIGNMENT_ID, t + assignment.encode("ascii"))
        enc.std(Attr.TUNNEL_PREFERENCE, _U32.pack(tag << 24 | tag))
    enc.session_timeout()


def threegpp2_key_id(fa: IPv4Address, ha: IPv4Address, key_time: int) -> bytes:
    """3GPP2-KeyID (26/5535/8) of the IKE pre-shared secret the FA ``fa`` and
    the HA ``ha`` share, made at ``key_time`` (seconds since 1970, UTC).

    StarOS's layout (IPSec Reference, StarOS Release 16, table 4): the FA's
    address in network order as eight hexadecimal characters, the HA's the
    same, then the time as a 4-octet integer in network order -- 20 octets,
    which is what Wireshark's ``dictionary.3gpp2`` ("20 octets") and
    FreeRADIUS's ("22 octets", counting the vendor type and length) give.
    Lower-case hex, as FreeRADIUS's ``%{hex:...}`` and Python print it."""
    if not 0 <= key_time <= UINT32_MAX:
        raise ProfileError(f"3GPP2-KeyID time {key_time}: a 32-bit count of seconds is 0..{UINT32_MAX}")
    return f"{int(fa):08x}{int(ha):08x}".encode("ascii") + _U32.pack(key_time)


def parse_key_id(value: bytes) -> tuple[IPv4Address, IPv4Address, int]:
    """The (FA, HA, time) of a 3GPP2-KeyID made by :func:`threegpp2_key_id`;
    :class:`ProfileDecodeError` if it is not one."""
    if len(value) != KEY_ID_LENGTH:
        raise _fail("3GPP2-KeyID", value, f"{KEY_ID_LENGTH} octets: two addresses in hex and a 32-bit time")
    try:
        text = value[:16].decode("ascii")
        fa, ha = IPv4Address(int(text[:8], 16)), IPv4Address(int(text[8:], 16))
    except ValueError:
        raise _fail("3GPP2-KeyID", value, "two IPv4 addresses as eight hexadecimal characters each") from None
    return fa, ha, int.from_bytes(value[16:], "big")


def _encode_3gpp2(enc: _Encoder, p: VpnProfile, psk_encoding: PskEncoding, key_time: int | None) -> None:
    G = ThreeGpp2Attr
    v = THREEGPP2_VENDOR_ID
    enc.out.append(_HDR4_3GPP2[G.HOME_AGENT_IP_ADDRESS] + p.home_agent.packed)
    if p.mn_ha_spi is not None:
        if not 0 <= p.mn_ha_spi <= UINT32_MAX:
            raise ProfileError(f"3GPP2-MN-HA-SPI = {p.mn_ha_spi}: a RADIUS integer is 0..{UINT32_MAX}")
        enc.out.append(_HDR4_3GPP2[G.MN_HA_SPI] + _U32.pack(p.mn_ha_spi))
    if p.mn_ha_key is not None:
        enc.secret_vsa("3GPP2-MN-HA-Shared-Key", G.MN_HA_SHARED_KEY, p.mn_ha_key, v)
    if p.paths:
        enc.out.append(_HDR4_3GPP2[G.SECURITY_LEVEL] + _U32.pack(SECURITY_LEVEL_IPSEC))
    fa_ha = next((path for path in p.paths if path.role is PathRole.FA_HA), None)
    if fa_ha is not None and fa_ha.ike_psk is not None:
        if psk_encoding is PskEncoding.PLAIN:
            enc.vsa(G.PRE_SHARED_SECRET, fa_ha.ike_psk.value, v)
        else:
            enc.secret_vsa("3GPP2-Pre-Shared-Secret", G.PRE_SHARED_SECRET, fa_ha.ike_psk, v)
        if key_time is not None:
            enc.vsa(G.KEY_ID, threegpp2_key_id(p.care_of_address, p.home_agent, key_time), v)
    enc.session_timeout()


# --- decoding -------------------------------------------------------------------------------


def _as_bytes(attributes: bytes | bytearray | memoryview | Iterable[bytes]) -> bytes:
    if isinstance(attributes, (bytes, bytearray, memoryview)):
        return bytes(attributes)
    try:
        return b"".join(attributes)
    except TypeError:
        raise ProfileDecodeError("attributes must be bytes or an iterable of raw attributes") from None


def iter_attributes(
    attributes: bytes | bytearray | memoryview | Iterable[bytes],
    vendors: Iterable[int] = (VENDOR_ID,),
) -> Iterator[tuple[int, int, bytes]]:
    """:func:`aaa_vpn.wire.radius.iter_attributes` over raw attributes (or a
    list of complete raw attributes), raising :class:`ProfileDecodeError`."""
    try:
        yield from _radius_iter_attributes(_as_bytes(attributes), vendors)
    except RadiusDecodeError as exc:
        raise ProfileDecodeError(str(exc)) from None


def _digest_value(value: bytes) -> bytes:
    if len(value) != PROFILE_DIGEST_LENGTH:
        raise _fail("Aaa-Vpn-Profile-Digest", value, f"{PROFILE_DIGEST_LENGTH} octets")
    return value


def _fail(what: str, value: bytes, expected: str) -> ProfileDecodeError:
    return ProfileDecodeError(f"{what}: got {value.hex() or '(empty)'}, expected {expected}")


def _u32(what: str, value: bytes) -> int:
    if len(value) != 4:
        raise _fail(what, value, "a 4-octet integer")
    return int.from_bytes(value, "big")


def _u24(what: str, value: bytes) -> int:
    # value without its tag octet
    if len(value) != 3:
        raise _fail(what, value, "a tag and a 3-octet integer (RFC 2868 section 3)")
    return int.from_bytes(value, "big")


def _ipaddr(what: str, value: bytes) -> IPv4Address:
    if len(value) != 4:
        raise _fail(what, value, "a 4-octet IPv4 address")
    return IPv4Address(value)


def _text(what: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(what, value, "UTF-8 text") from None


def _address_text(what: str, value: bytes) -> IPv4Address:
    try:
        text = value.decode("ascii")
        address = IPv4Address(text)
    except ValueError:
        raise _fail(what, value, "a dotted-decimal IPv4 address") from None
    if str(address) != text:
        raise _fail(what, value, "a canonical dotted-decimal IPv4 address")
    return address


def _network_text(what: str, value: bytes) -> IPv4Network:
    try:
        text = value.decode("ascii")
        network = IPv4Network(text, strict=True)
    except ValueError:
        raise _fail(what, value, "an IPv4 prefix such as 198.51.100.0/24") from None
    if str(network) != text:
        raise _fail(what, value, "a canonical IPv4 prefix such as 198.51.100.0/24")
    return network


def _decrypt(what: str, value: bytes, secret: bytes, authenticator: bytes, strict: bool) -> Secret:
    try:
        return Secret(salt_decrypt(value, secret, authenticator, strict=strict))
    except ValueError as exc:
        raise ProfileDecodeError(f"{what}: {exc}") from None


def _prepare(secret: bytes | Secret, request_authenticator: bytes) -> bytes:
    if len(request_authenticator) != AUTHENTICATOR_LENGTH:
        raise ValueError("the request authenticator is 16 octets")
    return secret.value if isinstance(secret, Secret) else secret


_SESSION_TYPES = frozenset(
    (
        AaaVpnAttr.SESSION_ID,
        AaaVpnAttr.HOME_ADDRESS,
        AaaVpnAttr.HOME_AGENT,
        AaaVpnAttr.CARE_OF_ADDRESS,
        AaaVpnAttr.SESSION_ROOT_KEY,
        AaaVpnAttr.KEY_EPOCH,
        AaaVpnAttr.LIFETIME,
        AaaVpnAttr.MN_HA_SPI,
        AaaVpnAttr.MN_HA_KEY,
        AaaVpnAttr.FA_HA_SPI,
        AaaVpnAttr.FA_HA_KEY,
        AaaVpnAttr.PREVIOUS_FA,
        AaaVpnAttr.HANDOFF_KEY,
        AaaVpnAttr.PREVIOUS_FA_HANDOFF_KEY,
        AaaVpnAttr.PROFILE_DIGEST,
    )
)
_PATH_TYPES = frozenset(t for t in AaaVpnAttr if t >= 32)
_MULTI_PATH_TYPES = frozenset((AaaVpnAttr.PATH_LOCAL_TS, AaaVpnAttr.PATH_REMOTE_TS))


class _Path:
    """The attributes of one tag, collected before they are checked."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.values: dict[int, bytes] = {}
        self.local_ts: list[IPv4Network] = []
        self.remote_ts: list[IPv4Network] = []

    def need(self, t: AaaVpnAttr) -> bytes:
        try:
            return self.values[t]
        except KeyError:
            raise ProfileDecodeError(f"path with tag {self.tag}: {_name(t)} is missing") from None

    def what(self, t: AaaVpnAttr) -> str:
        return f"{_name(t)}:{self.tag}"


def decode_profile(
    attributes: bytes | bytearray | memoryview | Iterable[bytes],
    secret: bytes | Secret,
    request_authenticator: bytes,
) -> VpnProfile:
    """Decode the AAA_VPN flavour back into a :class:`VpnProfile`.

    ``attributes`` is the raw attribute section of the reply
    (``packet[20:length]``) or a list of complete raw attributes (as
    :func:`encode_profile` returns). ``secret``/``request_authenticator``
    are the shared secret and the Authenticator of the Access-Request this
    reply answers. Paths come out in ascending tag order.

    Raises :class:`ProfileDecodeError` for anything malformed: bad lengths or
    tags, missing mandatory attributes, duplicates of single attributes, bad
    salt-encrypted values, bad address text, unknown enumeration values.
    """
    key = _prepare(secret, request_authenticator)
    A = AaaVpnAttr
    session: dict[int, bytes] = {}
    session_timeout: bytes | None = None
    paths: dict[int, _Path] = {}
    for vendor, t, value in iter_attributes(attributes):
        if vendor == 0:
            if t == Attr.SESSION_TIMEOUT:
                if session_timeout is not None:
                    raise ProfileDecodeError("Session-Timeout appears twice")
                session_timeout = value
            continue
        if t in _SESSION_TYPES:
            if t in session:
                raise ProfileDecodeError(f"{_name(A(t))} appears twice")
            session[t] = value
        elif t in _PATH_TYPES:
            if not value or not 1 <= value[0] <= 0x1F:
                raise _fail(_name(A(t)), value, "a tag 1..31 first (RFC 2868 section 3)")
            tag = value[0]
            path = paths.get(tag)
            if path is None:
                path = paths[tag] = _Path(tag)
            body = value[1:]
            if t == A.PATH_LOCAL_TS:
                path.local_ts.append(_network_text(path.what(A(t)), body))
            elif t == A.PATH_REMOTE_TS:
                path.remote_ts.append(_network_text(path.what(A(t)), body))
            elif t in path.values:
                raise ProfileDecodeError(f"{path.what(A(t))} appears twice")
            else:
                path.values[t] = body
        # other vendor types: a newer sender's additions, skipped by length

    def need(t: AaaVpnAttr) -> bytes:
        try:
            return session[t]
        except KeyError:
            raise ProfileDecodeError(f"{_name(t)} is missing") from None

    def optional_u32(t: AaaVpnAttr) -> int | None:
        return _u32(_name(t), session[t]) if t in session else None

    def optional_key(t: AaaVpnAttr) -> Secret | None:
        return _decrypt(_name(t), session[t], key, request_authenticator, True) if t in session else None

    session_id = _text(_name(A.SESSION_ID), need(A.SESSION_ID))
    if not session_id:
        raise ProfileDecodeError("Aaa-Vpn-Session-Id is empty")
    if A.LIFETIME in session:
        lifetime = _u32(_name(A.LIFETIME), session[A.LIFETIME])
    elif session_timeout is not None:
        lifetime = _u32("Session-Timeout", session_timeout)
    else:
        raise ProfileDecodeError("neither Aaa-Vpn-Lifetime nor Session-Timeout is present")

    decoded_paths = tuple(_decode_path(paths[tag], key, request_authenticator) for tag in sorted(paths))
    return VpnProfile(
        session_id=session_id,
        home_address=_ipaddr(_name(A.HOME_ADDRESS), need(A.HOME_ADDRESS)),
        home_agent=_ipaddr(_name(A.HOME_AGENT), need(A.HOME_AGENT)),
        care_of_address=_ipaddr(_name(A.CARE_OF_ADDRESS), need(A.CARE_OF_ADDRESS)),
        lifetime=lifetime,
        epoch=_u32(_name(A.KEY_EPOCH), need(A.KEY_EPOCH)),
        paths=decoded_paths,
        mn_ha_spi=optional_u32(A.MN_HA_SPI),
        mn_ha_key=optional_key(A.MN_HA_KEY),
        fa_ha_spi=optional_u32(A.FA_HA_SPI),
        fa_ha_key=optional_key(A.FA_HA_KEY),
        session_root_key=optional_key(A.SESSION_ROOT_KEY),
        handoff_key=optional_key(A.HANDOFF_KEY),
        previous_fa=_ipaddr(_name(A.PREVIOUS_FA), session[A.PREVIOUS_FA]) if A.PREVIOUS_FA in session else None,
        previous_fa_handoff_key=optional_key(A.PREVIOUS_FA_HANDOFF_KEY),
        digest=_digest_value(session[A.PROFILE_DIGEST]) if A.PROFILE_DIGEST in session else None,
    )


def _decode_path(p: _Path, key: bytes, authenticator: bytes) -> PathProfile:
    A = AaaVpnAttr

    def u24(t: AaaVpnAttr) -> int:
        return _u24(p.what(t), p.need(t))

    def secret(t: AaaVpnAttr) -> Secret:
        return _decrypt(p.what(t), p.need(t), key, authenticator, True)

    def code(t: AaaVpnAttr, table: dict[int, _E]) -> _E:
        number = u24(t)
        try:
            return table[number]
        except KeyError:
            raise ProfileDecodeError(f"{p.what(t)}: unknown value {number}") from None

    role = code(A.PATH_ROLE, _ROLE_BY_CODE)
    key_mode = code(A.PATH_KEY_MODE, _KEY_MODE_BY_CODE)
    transform = code(A.PATH_ESP_TRANSFORM, _ESP_BY_CODE)
    gateway_mode = code(A.PATH_GATEWAY_MODE, _GATEWAY_MODE_BY_CODE) if A.PATH_GATEWAY_MODE in p.values else None
    qos_present = [t in p.values for t in (A.PATH_QOS_CLASS, A.PATH_DSCP, A.PATH_RATE_LIMIT)]
    if any(qos_present) and not all(qos_present):
        raise ProfileDecodeError(f"path with tag {p.tag}: QoS-Class, DSCP and Rate-Limit come together or not at all")
    qos = (
        QosSpec(
            name=_text(p.what(A.PATH_QOS_CLASS), p.values[A.PATH_QOS_CLASS]),
            dscp=u24(A.PATH_DSCP),
            rate_kbps=u24(A.PATH_RATE_LIMIT),
        )
        if all(qos_present)
        else None
    )
    return PathProfile(
        role=role,
        local=_address_text(p.what(A.PATH_LOCAL), p.need(A.PATH_LOCAL)),
        peer=_address_text(p.what(A.PATH_PEER), p.need(A.PATH_PEER)),
        local_ts=tuple(p.local_ts),
        remote_ts=tuple(p.remote_ts),
        key_mode=key_mode,
        esp_transform=transform,
        spi_in=u24(A.PATH_SPI_IN),
        spi_out=u24(A.PATH_SPI_OUT),
        key_in=secret(A.PATH_KEY_IN),
        key_out=secret(A.PATH_KEY_OUT),
        lifetime=u24(A.PATH_LIFETIME),
        ike_proposal=(
            _text(p.what(A.PATH_IKE_PROPOSAL), p.values[A.PATH_IKE_PROPOSAL])
            if A.PATH_IKE_PROPOSAL in p.values
            else None
        ),
        ike_psk=secret(A.PATH_IKE_PSK) if A.PATH_IKE_PSK in p.values else None,
        qos=qos,
        gateway_mode=gateway_mode,
        binding_key=secret(A.PATH_BINDING_KEY) if A.PATH_BINDING_KEY in p.values else None,
    )


# --- the other flavours, decoded as what they carry -------------------------------------------


@dataclass(frozen=True)
class Tunnel:
    """The RFC 2868 attributes of one tag (0 = untagged). ``None``: absent."""

    tag: int
    tunnel_type: int | None = None  # section 3.1; 9 = ESP
    medium_type: int | None = None  # section 3.2; 1 = IPv4
    client_endpoint: str | None = None  # section 3.3: address text or FQDN
    server_endpoint: str | None = None  # section 3.4
    password: Secret | None = None  # section 3.5, decrypted
    private_group_id: str | None = None  # section 3.6
    assignment_id: str | None = None  # section 3.7
    preference: int | None = None  # section 3.8; lowest = most preferred
    client_auth_id: str | None = None  # section 3.9
    server_auth_id: str | None = None  # section 3.10

    @property
    def relayed(self) -> bool:
        """A tunnel the receiver only relays (its Tunnel-Assignment-Id starts
        with :data:`RELAYED_PREFIX`), not one it sets up itself."""
        return self.assignment_id is not None and self.assignment_id.startswith(RELAYED_PREFIX)


@dataclass(frozen=True)
class TunnelAttributes:
    """What an RFC2868-flavour reply carries: tunnels in ascending tag order."""

    tunnels: tuple[Tunnel, ...]
    session_timeout: int | None = None


@dataclass(frozen=True)
class ThreeGpp2Attributes:
    """What a 3GPP2-flavour reply carries. ``None``: absent."""

    home_agent: IPv4Address | None = None
    mn_ha_spi: int | None = None
    mn_ha_key: Secret | None = None
    security_level: int | None = None
    pre_shared_secret: Secret | None = None  # salt-encrypted or plain on the wire (PskEncoding)
    key_id: bytes | None = None  # 3GPP2-KeyID (parse_key_id)
    foreign_agent: IPv4Address | None = None
    session_timeout: int | None = None


_TUNNEL_FIELDS: dict[int, tuple[str, str]] = {
    Attr.TUNNEL_TYPE: ("tunnel_type", "int"),
    Attr.TUNNEL_MEDIUM_TYPE: ("medium_type", "int"),
    Attr.TUNNEL_CLIENT_ENDPOINT: ("client_endpoint", "str"),
    Attr.TUNNEL_SERVER_ENDPOINT: ("server_endpoint", "str"),
    Attr.TUNNEL_PASSWORD: ("password", "secret"),
    Attr.TUNNEL_PRIVATE_GROUP_ID: ("private_group_id", "str"),
    Attr.TUNNEL_ASSIGNMENT_ID: ("assignment_id", "str"),
    Attr.TUNNEL_PREFERENCE: ("preference", "int"),
    Attr.TUNNEL_CLIENT_AUTH_ID: ("client_auth_id", "str"),
    Attr.TUNNEL_SERVER_AUTH_ID: ("server_auth_id", "str"),
}


def decode_tunnel_attributes(
    attributes: bytes | bytearray | memoryview | Iterable[bytes],
    secret: bytes | Secret,
    request_authenticator: bytes,
) -> TunnelAttributes:
    """Decode the RFC 2868 tunnel attributes (any sender) and Session-Timeout.

    Tags follow RFC 2868 section 3: integers always start with the tag octet;
    Tunnel-Password is ``tag || salt || ciphertext`` (a value of 2 + 16k
    octets is read as untagged, as older pyrad sent it); a string's first
    octet is its tag if it is at most 0x1F (0 = untagged, as pyrad sends it).
    The password's padding is not checked, so senders that pad with garbage
    still decode. Raises :class:`ProfileDecodeError` for malformed values or
    an attribute given twice for one tag.
    """
    key = _prepare(secret, request_authenticator)
    fields: dict[int, dict[str, object]] = {}
    session_timeout: int | None = None
    for vendor, t, value in iter_attributes(attributes, ()):
        if vendor:
            continue
        if t == Attr.SESSION_TIMEOUT:
            if session_timeout is not None:
                raise ProfileDecodeError("Session-Timeout appears twice")
            session_timeout = _u32("Session-Timeout", value)
            continue
        spec = _TUNNEL_FIELDS.get(t)
        if spec is None:
            continue
        name, kind = spec
        what = _TUNNEL_NAMES[Attr(t)]
        decoded: object
        if kind == "int":
            if len(value) != 4 or value[0] > 0x1F:
                raise _fail(
                    what,
                    value,
                    "a tag 0..31 and a 3-octet integer (RFC 2868 section 3)",
                )
            tag, decoded = value[0], int.from_bytes(value[1:], "big")
        elif kind == "secret":
            if len(value) % 16 == 2:
                tag, body = 0, value
            elif value and value[0] <= 0x1F:
                tag, body = value[0], value[1:]
            else:
                raise _fail(what, value, "tag || salt || 16k octets (RFC 2868 section 3.5)")
            decoded = _decrypt(what, body, key, request_authenticator, False)
        else:
            if value and value[0] <= 0x1F:
                tag, body = value[0], value[1:]
            else:
                tag, body = 0, value
            decoded = _text(what, body)
        slot = fields.setdefault(tag, {})
        if name in slot:
            raise ProfileDecodeError(f"{what}:{tag} appears twice")
        slot[name] = decoded
    tunnels = tuple(Tunnel(tag, **fields[tag]) for tag in sorted(fields))  # type: ignore[arg-type]
    return TunnelAttributes(tunnels=tunnels, session_timeout=session_timeout)


def decode_3gpp2(
    attributes: bytes | bytearray | memoryview | Iterable[bytes],
    secret: bytes | Secret,
    request_authenticator: bytes,
    psk_encoding: PskEncoding = PskEncoding.SALT,
) -> ThreeGpp2Attributes:
    """Decode the 3GPP2 attributes the THREEGPP2 flavour sends (plus
    3GPP2-Foreign-Agent-Address) and Session-Timeout.

    3GPP2-MN-HA-Shared-Key is read as ``salt || ciphertext`` (RFC 2868
    section 3.5 without a tag), 3GPP2-Pre-Shared-Secret so too or, with
    ``psk_encoding`` PLAIN, as it is. Raises :class:`ProfileDecodeError` for
    malformed or repeated values.
    """
    key = _prepare(secret, request_authenticator)
    G = ThreeGpp2Attr
    seen: dict[int, bytes] = {}
    session_timeout: int | None = None
    for vendor, t, value in iter_attributes(attributes, (THREEGPP2_VENDOR_ID,)):
        if vendor == 0:
            if t == Attr.SESSION_TIMEOUT:
                if session_timeout is not None:
                    raise ProfileDecodeError("Session-Timeout appears twice")
                session_timeout = _u32("Session-Timeout", value)
            continue
        if t in (
            G.SECURITY_LEVEL,
            G.PRE_SHARED_SECRET,
            G.HOME_AGENT_IP_ADDRESS,
            G.MN_HA_SPI,
            G.MN_HA_SHARED_KEY,
            G.KEY_ID,
            G.FOREIGN_AGENT_ADDRESS,
        ):
            if t in seen:
                raise ProfileDecodeError(f"{_3GPP2_NAMES[G(t)]} appears twice")
            seen[t] = value

    def get(t: ThreeGpp2Attr) -> bytes | None:
        return seen.get(t)

    def name(t: ThreeGpp2Attr) -> str:
        return _3GPP2_NAMES[t]

    def ip(t: ThreeGpp2Attr) -> IPv4Address | None:
        v = get(t)
        return None if v is None else _ipaddr(name(t), v)

    def u32(t: ThreeGpp2Attr) -> int | None:
        v = get(t)
        return None if v is None else _u32(name(t), v)

    def sec(t: ThreeGpp2Attr) -> Secret | None:
        v = get(t)
        return None if v is None else _decrypt(name(t), v, key, request_authenticator, False)

    raw_psk = get(G.PRE_SHARED_SECRET)
    psk = Secret(raw_psk) if raw_psk is not None and psk_encoding is PskEncoding.PLAIN else sec(G.PRE_SHARED_SECRET)
    return ThreeGpp2Attributes(
        home_agent=ip(G.HOME_AGENT_IP_ADDRESS),
        mn_ha_spi=u32(G.MN_HA_SPI),
        mn_ha_key=sec(G.MN_HA_SHARED_KEY),
        security_level=u32(G.SECURITY_LEVEL),
        pre_shared_secret=psk,
        key_id=get(G.KEY_ID),
        foreign_agent=ip(G.FOREIGN_AGENT_ADDRESS),
        session_timeout=session_timeout,
    )


__all__ = [
    "ASSIGNMENT_ID",
    "KEY_ID_LENGTH",
    "RELAYED_PREFIX",
    "SECURITY_LEVEL_IPSEC",
    "THREEGPP2_VENDOR_ID",
    "TUNNEL_MEDIUM_IPV4",
    "TUNNEL_TYPE_ESP",
    "AaaVpnAttr",
    "Attr",
    "OpenView",
    "PathSkeleton",
    "ProfileDecodeError",
    "ProfileError",
    "ProfileTemplate",
    "StandIns",
    "ThreeGpp2Attr",
    "ThreeGpp2Attributes",
    "Tunnel",
    "TunnelAttributes",
    "compile_confirmation",
    "compile_profile",
    "compile_view",
    "compile_with_digest",
    "decode_3gpp2",
    "decode_profile",
    "decode_tunnel_attributes",
    "encode_profile",
    "iter_attributes",
    "parse_key_id",
    "profile_digest",
    "threegpp2_key_id",
    "with_digest",
]
