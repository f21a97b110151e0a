"""VPN information inside Mobile IPv4 messages (docs/protocol.md sections 3.7-3.8).

* One VPN path (:class:`~aaa_vpn.wire.profile.PathProfile`, the *receiver's*
  view) travels in a CVSE (RFC 3115 section 2.1) under the project's
  enterprise number :data:`~aaa_vpn.wire.profile.VENDOR_ID`, Vendor-CVSE-Type
  :attr:`CvseType.VPN_PATH`. Critical, because a receiver that ignored it
  would accept a binding without its VPN (RFC 3115 section 2.3).
* Its keys (ESP key material in both directions, the IKE PSK) are wrapped
  with AES key wrap with padding (RFC 5649) under a pairwise key that AAA
  distributed earlier (docs/design.md section 3: HA-GW, the gateway's provisioned
  key; new FA - previous FA, the per-FA handoff key). The wrapped plaintext
  starts with the path's two SPIs, which the decoder checks against the clear
  ones, so keys cannot be moved to another path even under the same wrapping
  key. The whole message is authenticated besides (generalized authentication,
  :mod:`aaa_vpn.wire.mip_auth`).
* The mobile node names its previous foreign agent in a Registration Request
  with an NVSE (RFC 3115 section 2.2), Vendor-NVSE-Type
  :attr:`NvseType.PREVIOUS_FA`: skippable, because an FA that does not know it
  can still register the node (without the smooth handoff of flow E).

Pure: AES key wrap is deterministic (RFC 5649 section 3), so the same path and
key always give the same bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from aaa_vpn.secret import Secret
from aaa_vpn.wire.enums import EspTransform, GatewayMode, KeyMode
from aaa_vpn.wire.mip import (
    CriticalVendorExtension,
    Extension,
    MipDecodeError,
    MipValueError,
    NormalVendorExtension,
    mip_reader,
)
from aaa_vpn.wire.profile import VENDOR_ID, PathProfile, PathRole, QosSpec
from aaa_vpn.wire.reader import Reader


class CvseType(enum.IntEnum):
    """Vendor-CVSE-Type values under :data:`VENDOR_ID`."""

    VPN_PATH = 1


class NvseType(enum.IntEnum):
    """Vendor-NVSE-Type values under :data:`VENDOR_ID` (a separate number space)."""

    PREVIOUS_FA = 1
    SESSION = 2  # from an FA to the HA: the AAA session id and key epoch it was given


class VpnInformationError(MipDecodeError):
    """The wrapped keys of a VPN path do not unwrap under the given key, or do
    not belong to the path (Binding Acknowledge status 160)."""


# Codes shared with the RADIUS profile (aaa_vpn.wire.radius_profile).
_KEY_MODE_CODE = {KeyMode.MANUAL: 1, KeyMode.IKEV2: 2}
_KEY_MODE_BY_CODE = {v: k for k, v in _KEY_MODE_CODE.items()}
_ESP_BY_CODE = {t.code: t for t in EspTransform}

# Flags octet of the VPN path value.
_F_PROPOSAL = 0x80  # P: an IKEv2 proposal follows the traffic selectors
_F_PSK = 0x40  # K: the wrapped keys end with an IKE PSK
_F_QOS = 0x20  # Q: a QoS block follows
_F_GATEWAY = 0x10  # G: gateway_mode is set ...
_F_DYNAMIC = 0x08  # D: ... and it is DYNAMIC (else STATIC)
_F_DEFINED = _F_PROPOSAL | _F_PSK | _F_QOS | _F_GATEWAY | _F_DYNAMIC

_FIXED = struct.Struct("!BBBBIIIIIBBH")  # role .. remote-TS count, reserved
_TS = struct.Struct("!BI")  # prefix length, network
_QOS = struct.Struct("!BI")  # DSCP, rate kbps
_SPIS = struct.Struct("!II")
#: RFC 5649: the KEK is an AES key.
_KEK_LENGTHS = (16, 24, 32)


def _kek(key: Secret) -> bytes:
    if not isinstance(key, Secret) or len(key) not in _KEK_LENGTHS:
        raise MipValueError("the wrapping key must be a Secret of 16, 24 or 32 octets (AES, RFC 5649)")
    return key.value


def _u(what: str, value: int, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise MipValueError(f"{what} = {value!r} does not fit in {bits} bits")
    return value


def _short_text(what: str, value: str) -> bytes:
    encoded = value.encode("utf-8")
    if not 1 <= len(encoded) <= 255:
        raise MipValueError(f"{what} is {len(encoded)} octets: expected 1..255")
    return bytes((len(encoded),)) + encoded


def encode_vpn_path(path: PathProfile, key: Secret) -> CriticalVendorExtension:
    """The CVSE carrying ``path`` (its receiver's view), keys wrapped under ``key``."""
    kek = _kek(key)
    transform = path.esp_transform
    for what, secret in (("key_in", path.key_in), ("key_out", path.key_out)):
        if len(secret) != transform.keymat_length:
            raise MipValueError(
                f"{what} is {len(secret)} octets; {transform.value} takes {transform.keymat_length} (RFC 4106 8.1)"
            )
    if len(path.local_ts) > 255 or len(path.remote_ts) > 255:
        raise MipValueError("at most 255 traffic selectors per side")
    flags = 0
    if path.ike_proposal is not None:
        flags |= _F_PROPOSAL
    if path.ike_psk is not None:
        flags |= _F_PSK
    if path.qos is not None:
        flags |= _F_QOS
    if path.gateway_mode is not None:
        flags |= _F_GATEWAY | (_F_DYNAMIC if path.gateway_mode is GatewayMode.DYNAMIC else 0)
    parts = [
        _FIXED.pack(
            PathRole(path.role),
            _KEY_MODE_CODE[path.key_mode],
            transform.code,
            flags,
            int(path.local),
            int(path.peer),
            _u("spi_in", path.spi_in, 32),
            _u("spi_out", path.spi_out, 32),
            _u("lifetime", path.lifetime, 32),
            len(path.local_ts),
            len(path.remote_ts),
            0,
        )
    ]
    for network in (*path.local_ts, *path.remote_ts):
        if not isinstance(network, IPv4Network):
            raise MipValueError(f"traffic selector {network!r} is not an IPv4Network")
        parts.append(_TS.pack(network.prefixlen, int(network.network_address)))
    if path.ike_proposal is not None:
        parts.append(_short_text("IKE proposal", path.ike_proposal))
    if path.qos is not None:
        parts.append(_QOS.pack(_u("DSCP", path.qos.dscp, 6), _u("rate", path.qos.rate_kbps, 32)))
        parts.append(_short_text("QoS class name", path.qos.name))
    plain = _SPIS.pack(path.spi_in, path.spi_out) + path.key_in.value + path.key_out.value
    if path.ike_psk is not None:
        plain += path.ike_psk.value
    wrapped = aes_key_wrap_with_padding(kek, plain)
    parts.append(struct.pack("!H", len(wrapped)) + wrapped)
    return CriticalVendorExtension(VENDOR_ID, CvseType.VPN_PATH, b"".join(parts))


def _text(r: Reader, what: str) -> str:
    raw = r.take(r.u8(f"{what} length"), what)
    if not raw:
        raise MipDecodeError(f"VPN path: empty {what}", r.position)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MipDecodeError(f"VPN path: {what} is not UTF-8", r.position) from None


def decode_vpn_path(extension: CriticalVendorExtension, key: Secret) -> PathProfile:
    """The path a :attr:`CvseType.VPN_PATH` CVSE carries, keys unwrapped with ``key``.

    :class:`MipDecodeError` for a malformed value; :class:`VpnInformationError`
    if the keys do not unwrap or are not this path's."""
    if extension.vendor_id != VENDOR_ID or extension.vendor_type != CvseType.VPN_PATH:
        raise MipDecodeError(f"CVSE {extension.vendor_id}/{extension.vendor_type} is not an aaa_vpn VPN path")
    kek = _kek(key)
    r = mip_reader(extension.value)
    role_code, mode_code, transform_code, flags = (r.u8(w) for w in ("role", "key mode", "transform", "flags"))
    local, peer = r.address("local address"), r.address("peer address")
    spi_in, spi_out, lifetime = r.u32("SPI in"), r.u32("SPI out"), r.u32("lifetime")
    n_local, n_remote, reserved = r.u8("local TS count"), r.u8("remote TS count"), r.u16("reserved")
    if reserved:
        raise MipDecodeError("VPN path: reserved field must be 0")
    if flags & ~_F_DEFINED or (flags & _F_DYNAMIC and not flags & _F_GATEWAY):
        raise MipDecodeError(f"VPN path: undefined flags 0x{flags:02x}")
    try:
        role = PathRole(role_code)
    except ValueError:
        raise MipDecodeError(f"VPN path: unknown role {role_code}") from None
    key_mode = _KEY_MODE_BY_CODE.get(mode_code)
    transform = _ESP_BY_CODE.get(transform_code)
    if key_mode is None or transform is None:
        raise MipDecodeError(f"VPN path: unknown key mode {mode_code} or ESP transform {transform_code}")
    selectors = []
    for _ in range(n_local + n_remote):
        prefix_length, network = r.u8("TS prefix length"), r.u32("TS network")
        try:
            selectors.append(IPv4Network((network, prefix_length)))
        except ValueError as exc:
            raise MipDecodeError(f"VPN path: traffic selector: {exc}") from None
    proposal = _text(r, "IKE proposal") if flags & _F_PROPOSAL else None
    qos = None
    if flags & _F_QOS:
        dscp, rate = r.u8("DSCP"), r.u32("rate")
        if dscp > 63:
            raise MipDecodeError(f"VPN path: DSCP {dscp} is not a 6-bit value")
        qos = QosSpec(_text(r, "QoS class name"), dscp, rate)
    wrapped = r.take(r.u16("wrapped keys length"), "wrapped keys")
    r.expect_end("VPN path")
    try:
        plain = aes_key_unwrap_with_padding(kek, wrapped)
    except (InvalidUnwrap, ValueError):
        raise VpnInformationError("VPN path: the keys do not unwrap under this key (RFC 5649)") from None
    keys = mip_reader(plain)
    if keys.u32("wrapped SPI in") != spi_in or keys.u32("wrapped SPI out") != spi_out:
        raise VpnInformationError("VPN path: the wrapped keys belong to other SPIs")
    length = transform.keymat_length
    key_in = Secret(keys.take(length, "key in"))
    key_out = Secret(keys.take(length, "key out"))
    psk = Secret(keys.rest()) if flags & _F_PSK else None
    keys.expect_end("wrapped keys")
    gateway_mode = None
    if flags & _F_GATEWAY:
        gateway_mode = GatewayMode.DYNAMIC if flags & _F_DYNAMIC else GatewayMode.STATIC
    return PathProfile(
        role=role,
        local=local,
        peer=peer,
        local_ts=tuple(selectors[:n_local]),
        remote_ts=tuple(selectors[n_local:]),
        key_mode=key_mode,
        esp_transform=transform,
        spi_in=spi_in,
        spi_out=spi_out,
        key_in=key_in,
        key_out=key_out,
        lifetime=lifetime,
        ike_proposal=proposal,
        ike_psk=psk,
        qos=qos,
        gateway_mode=gateway_mode,
    )


def is_vpn_path(extension: Extension) -> bool:
    return (
        isinstance(extension, CriticalVendorExtension)
        and extension.vendor_id == VENDOR_ID
        and extension.vendor_type == CvseType.VPN_PATH
    )


def vpn_paths(extensions: Iterable[Extension], key: Secret) -> tuple[PathProfile, ...]:
    """Every VPN path in a message's extensions, in order."""
    return tuple(
        decode_vpn_path(e, key) for e in extensions if isinstance(e, CriticalVendorExtension) and is_vpn_path(e)
    )


def unknown_critical_extensions(extensions: Iterable[Extension]) -> tuple[CriticalVendorExtension, ...]:
    """CVSEs this project does not understand: the receiver must reject the
    message (RFC 3115 section 2.3: codes 100/101 at an FA, 140/141 at an HA,
    Binding Acknowledge status 140)."""
    return tuple(e for e in extensions if isinstance(e, CriticalVendorExtension) and not is_vpn_path(e))


def previous_fa_extension(previous_fa: IPv4Address) -> NormalVendorExtension:
    """The NVSE with which a mobile node names its previous foreign agent."""
    if not isinstance(previous_fa, IPv4Address):
        raise MipValueError("the previous FA must be an IPv4Address")
    return NormalVendorExtension(VENDOR_ID, NvseType.PREVIOUS_FA, previous_fa.packed)


def previous_fa(extensions: Iterable[Extension]) -> IPv4Address | None:
    """The previous FA a Registration Request names, if any."""
    for e in extensions:
        if isinstance(e, NormalVendorExtension) and e.vendor_id == VENDOR_ID and e.vendor_type == NvseType.PREVIOUS_FA:
            if len(e.value) != 4:
                raise MipDecodeError(f"previous-FA NVSE value is {len(e.value)} octets, expected 4")
            return IPv4Address(e.value)
    return None


def session_extension(session_id: str, epoch: int) -> NormalVendorExtension:
    """The NVSE with which an FA tells the home agent which AAA session, in
    which key epoch, its SAs belong to (after a same-domain handoff the HA's
    home AAA learns the new epoch from it): ``epoch(4) || session id``."""
    encoded = session_id.encode("ascii")
    if not 1 <= len(encoded) <= 64 or not 0 <= epoch <= 0xFFFFFFFF:
        raise MipValueError("session id of 1..64 ASCII characters and a 32-bit epoch")
    return NormalVendorExtension(VENDOR_ID, NvseType.SESSION, struct.pack("!I", epoch) + encoded)


def session_of(extensions: Iterable[Extension]) -> tuple[str, int] | None:
    """(session id, epoch) of a session NVSE, if the message carries one."""
    for e in extensions:
        if isinstance(e, NormalVendorExtension) and e.vendor_id == VENDOR_ID and e.vendor_type == NvseType.SESSION:
            if not 5 <= len(e.value) <= 68:
                raise MipDecodeError(f"session NVSE value is {len(e.value)} octets, expected 5..68")
            try:
                session_id = e.value[4:].decode("ascii")
            except UnicodeDecodeError:
                raise MipDecodeError("session NVSE: the session id is not ASCII") from None
            return session_id, struct.unpack("!I", e.value[:4])[0]
    return None
