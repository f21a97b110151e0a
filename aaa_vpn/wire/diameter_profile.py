"""The VPN profile in Diameter vendor-specific AVPs: :class:`~aaa_vpn.wire.profile.VpnProfile`
<-> AVPs of the project's vendor (docs/diameter.md, "The VPN profile").

The AVPs have the project's Vendor-ID (:data:`~aaa_vpn.wire.profile.VENDOR_ID`,
the one ``dictionaries/dictionary.aaa_vpn`` names) and the same numbers and
names as the RADIUS vendor attributes, so one table describes both:

* session-level values (Aaa-Vpn-Session-Id 1 ... Aaa-Vpn-Profile-Digest 17)
  are AVPs of their own;
* each path is one grouped AVP, **Aaa-Vpn-Path (64)**, holding that path's
  AVPs 32-50 -- Diameter groups what RADIUS had to tag (RFC 2868), so a
  path's integers are plain Unsigned32, addresses four octets (as the
  RADIUS ``ipaddr`` of the same number; not RFC 6733's Address type with its
  family) and traffic selectors one UTF8String AVP per network;
* keys (the session root key, MN-HA, FA-HA, handoff keys, path keys and
  PSKs, binding keys) are OctetStrings in clear *inside the message*: Diameter
  has no attribute-level encryption (RFC 6733 section 13 leaves it to
  TLS/DTLS or IPsec between peers, and RFC 4004 section 8 to the same), so
  the home AAA puts them only into answers that leave on a protected
  connection (roles/diameter_home.py rule 6, else 5025).

The M bit is clear on every one of them: a peer that does not know the
vendor (a relay) passes them on, and an FA that knows only RFC 4004 ignores
them.

``decode_profile_avps`` raises only :class:`ProfileAvpError` (a
:class:`~aaa_vpn.wire.diameter.DiameterDecodeError`, Result-Code 5004/5005).
Pure: no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from aaa_vpn.secret import Secret
from aaa_vpn.wire.diameter import (
    Avp,
    DiameterDecodeError,
    ResultCode,
    avp_grouped,
    avp_octets,
    avp_text,
    avp_u32,
    encode_avp,
)
from aaa_vpn.wire.enums import EspTransform, GatewayMode, KeyMode
from aaa_vpn.wire.profile import VENDOR_ID, PathProfile, PathRole, QosSpec, VpnProfile
from aaa_vpn.wire.radius import AaaVpnAttr as V

#: The grouped AVP that holds one path (vendor :data:`VENDOR_ID`).
PATH_AVP = 64

_KEY_MODES = {KeyMode.MANUAL: 1, KeyMode.IKEV2: 2}
_GATEWAY_MODES = {GatewayMode.STATIC: 1, GatewayMode.DYNAMIC: 2}

#: Names of the vendor AVPs (the RADIUS dictionary's, plus the path group).
AVP_NAMES: dict[int, str] = {int(t): "Aaa-Vpn-" + t.name.title().replace("_", "-") for t in V}
AVP_NAMES[PATH_AVP] = "Aaa-Vpn-Path"


class ProfileAvpError(DiameterDecodeError):
    """The VPN profile AVPs of an answer do not make a profile (the peer's fault)."""


def _v(code: int, value: bytes) -> Avp:
    return avp_octets(code, value, VENDOR_ID, mandatory=False)


def _u(code: int, value: int) -> Avp:
    return avp_u32(code, value, VENDOR_ID, mandatory=False)


def _t(code: int, value: str) -> Avp:
    return avp_text(code, value, VENDOR_ID, mandatory=False)


def _a(code: int, value: IPv4Address) -> Avp:
    # Four octets, as the RADIUS ipaddr of the same attribute (and as Wireshark
    # reads a vendor AVP of type IPAddress), not RFC 6733's Address with its family.
    return _v(code, value.packed)


def _path_avps(p: PathProfile) -> list[Avp]:
    out = [
        _u(V.PATH_ROLE, int(p.role)),
        _a(V.PATH_LOCAL, p.local),
        _a(V.PATH_PEER, p.peer),
        *(_t(V.PATH_LOCAL_TS, str(n)) for n in p.local_ts),
        *(_t(V.PATH_REMOTE_TS, str(n)) for n in p.remote_ts),
        _u(V.PATH_KEY_MODE, _KEY_MODES[p.key_mode]),
        _u(V.PATH_ESP_TRANSFORM, p.esp_transform.code),
        _u(V.PATH_SPI_IN, p.spi_in),
        _u(V.PATH_SPI_OUT, p.spi_out),
        _v(V.PATH_KEY_IN, p.key_in.value),
        _v(V.PATH_KEY_OUT, p.key_out.value),
        _u(V.PATH_LIFETIME, p.lifetime),
    ]
    if p.ike_proposal is not None:
        out.append(_t(V.PATH_IKE_PROPOSAL, p.ike_proposal))
    if p.ike_psk is not None:
        out.append(_v(V.PATH_IKE_PSK, p.ike_psk.value))
    if p.qos is not None:
        out += [
            _t(V.PATH_QOS_CLASS, p.qos.name),
            _u(V.PATH_DSCP, p.qos.dscp),
            _u(V.PATH_RATE_LIMIT, p.qos.rate_kbps),
        ]
    if p.gateway_mode is not None:
        out.append(_u(V.PATH_GATEWAY_MODE, _GATEWAY_MODES[p.gateway_mode]))
    if p.binding_key is not None:
        out.append(_v(V.PATH_BINDING_KEY, p.binding_key.value))
    return out


def encode_profile_avps(profile: VpnProfile) -> list[Avp]:
    """The AVPs of ``profile`` (module docstring), session level first, then
    one Aaa-Vpn-Path per path in order."""
    p = profile
    out = [
        _t(V.SESSION_ID, p.session_id),
        _a(V.HOME_ADDRESS, p.home_address),
        _a(V.HOME_AGENT, p.home_agent),
        _a(V.CARE_OF_ADDRESS, p.care_of_address),
        _u(V.LIFETIME, p.lifetime),
        _u(V.KEY_EPOCH, p.epoch),
    ]
    if p.mn_ha_spi is not None:
        out.append(_u(V.MN_HA_SPI, p.mn_ha_spi))
    if p.mn_ha_key is not None:
        out.append(_v(V.MN_HA_KEY, p.mn_ha_key.value))
    if p.fa_ha_spi is not None:
        out.append(_u(V.FA_HA_SPI, p.fa_ha_spi))
    if p.fa_ha_key is not None:
        out.append(_v(V.FA_HA_KEY, p.fa_ha_key.value))
    if p.session_root_key is not None:
        out.append(_v(V.SESSION_ROOT_KEY, p.session_root_key.value))
    if p.handoff_key is not None:
        out.append(_v(V.HANDOFF_KEY, p.handoff_key.value))
    if p.previous_fa is not None:
        out.append(_a(V.PREVIOUS_FA, p.previous_fa))
    if p.previous_fa_handoff_key is not None:
        out.append(_v(V.PREVIOUS_FA_HANDOFF_KEY, p.previous_fa_handoff_key.value))
    if p.digest is not None:
        out.append(_v(V.PROFILE_DIGEST, p.digest))
    out += [avp_grouped(PATH_AVP, _path_avps(path), VENDOR_ID, mandatory=False) for path in p.paths]
    return out


# --------------------------------------------------------------------------------------------


def _fail(avp: Avp | None, message: str, code: int = ResultCode.INVALID_AVP_VALUE) -> ProfileAvpError:
    return ProfileAvpError(message, result_code=code, failed_avp=encode_avp(avp) if avp is not None else b"")


class _Values:
    """The vendor AVPs of one level, by code; single-valued unless asked."""

    def __init__(self, avps: Iterable[Avp], what: str) -> None:
        self.what = what
        self.by_code: dict[int, list[Avp]] = {}
        for avp in avps:
            if avp.vendor == VENDOR_ID:
                self.by_code.setdefault(avp.code, []).append(avp)

    def _one(self, code: int, required: bool) -> Avp | None:
        found = self.by_code.get(code, [])
        if len(found) > 1:
            name = AVP_NAMES.get(code, code)
            raise _fail(found[1], f"{self.what}: {name} twice", ResultCode.AVP_OCCURS_TOO_MANY_TIMES)
        if not found:
            if required:
                raise _fail(None, f"{self.what}: {AVP_NAMES.get(code, code)} is missing", ResultCode.MISSING_AVP)
            return None
        return found[0]

    def u32(self, code: int, required: bool = True) -> int | None:
        avp = self._one(code, required)
        return None if avp is None else avp.as_u32()

    def need_u32(self, code: int) -> int:
        value = self.u32(code)
        assert value is not None
        return value

    def text(self, code: int, required: bool = True) -> str | None:
        avp = self._one(code, required)
        return None if avp is None else avp.as_text()

    def secret(self, code: int, required: bool = True) -> Secret | None:
        avp = self._one(code, required)
        return None if avp is None else Secret(avp.value)

    def need_secret(self, code: int) -> Secret:
        value = self.secret(code)
        assert value is not None
        return value

    def address(self, code: int, required: bool = True) -> IPv4Address | None:
        avp = self._one(code, required)
        if avp is None:
            return None
        if len(avp.value) != 4:
            raise _fail(avp, f"{self.what}: {AVP_NAMES.get(code, code)} is not 4 octets (an IPv4 address)")
        return IPv4Address(avp.value)

    def need_address(self, code: int) -> IPv4Address:
        value = self.address(code)
        assert value is not None
        return value

    def networks(self, code: int) -> tuple[IPv4Network, ...]:
        out = []
        for avp in self.by_code.get(code, []):
            try:
                out.append(IPv4Network(avp.as_text()))
            except ValueError:
                raise _fail(avp, f"{self.what}: {AVP_NAMES[code]} is not an IPv4 network") from None
        return tuple(out)


def _enum(values: Mapping[Any, int], number: int, what: str) -> Any:
    for key, value in values.items():
        if value == number:
            return key
    raise _fail(None, f"{what} {number} is unknown")


def _decode_path(avp: Avp) -> PathProfile:
    v = _Values(avp.as_grouped(), "Aaa-Vpn-Path")
    try:
        role = PathRole(v.need_u32(V.PATH_ROLE))
        transform = EspTransform.from_code(v.need_u32(V.PATH_ESP_TRANSFORM))
    except ValueError as exc:
        raise _fail(avp, f"Aaa-Vpn-Path: {exc}") from None
    key_mode = _enum(_KEY_MODES, v.need_u32(V.PATH_KEY_MODE), "Aaa-Vpn-Path-Key-Mode")
    qos_name = v.text(V.PATH_QOS_CLASS, required=False)
    gateway = v.u32(V.PATH_GATEWAY_MODE, required=False)
    try:
        return PathProfile(
            role=role,
            local=v.need_address(V.PATH_LOCAL),
            peer=v.need_address(V.PATH_PEER),
            local_ts=v.networks(V.PATH_LOCAL_TS),
            remote_ts=v.networks(V.PATH_REMOTE_TS),
            key_mode=key_mode,
            esp_transform=transform,
            spi_in=v.need_u32(V.PATH_SPI_IN),
            spi_out=v.need_u32(V.PATH_SPI_OUT),
            key_in=v.need_secret(V.PATH_KEY_IN),
            key_out=v.need_secret(V.PATH_KEY_OUT),
            lifetime=v.need_u32(V.PATH_LIFETIME),
            ike_proposal=v.text(V.PATH_IKE_PROPOSAL, required=False),
            ike_psk=v.secret(V.PATH_IKE_PSK, required=False),
            qos=(
                QosSpec(qos_name, v.need_u32(V.PATH_DSCP), v.need_u32(V.PATH_RATE_LIMIT))
                if qos_name is not None
                else None
            ),
            gateway_mode=(_enum(_GATEWAY_MODES, gateway, "Aaa-Vpn-Path-Gateway-Mode") if gateway is not None else None),
            binding_key=v.secret(V.PATH_BINDING_KEY, required=False),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DiameterDecodeError):
            raise
        raise _fail(avp, f"Aaa-Vpn-Path: {exc}") from None


def has_profile(avps: Sequence[Avp]) -> bool:
    """Whether the AVPs carry a VPN profile (its Aaa-Vpn-Home-Address)."""
    return any(a.vendor == VENDOR_ID and a.code == V.HOME_ADDRESS for a in avps)


def decode_profile_avps(avps: Sequence[Avp]) -> VpnProfile:
    """The VPN profile the project's vendor AVPs among ``avps`` carry."""
    v = _Values(avps, "VPN profile")
    session_id = v.text(V.SESSION_ID)
    assert session_id is not None
    paths = tuple(_decode_path(a) for a in avps if a.vendor == VENDOR_ID and a.code == PATH_AVP)
    digest = v._one(V.PROFILE_DIGEST, False)
    return VpnProfile(
        session_id=session_id,
        home_address=v.need_address(V.HOME_ADDRESS),
        home_agent=v.need_address(V.HOME_AGENT),
        care_of_address=v.need_address(V.CARE_OF_ADDRESS),
        lifetime=v.need_u32(V.LIFETIME),
        epoch=v.need_u32(V.KEY_EPOCH),
        paths=paths,
        mn_ha_spi=v.u32(V.MN_HA_SPI, False),
        mn_ha_key=v.secret(V.MN_HA_KEY, False),
        fa_ha_spi=v.u32(V.FA_HA_SPI, False),
        fa_ha_key=v.secret(V.FA_HA_KEY, False),
        session_root_key=v.secret(V.SESSION_ROOT_KEY, False),
        handoff_key=v.secret(V.HANDOFF_KEY, False),
        previous_fa=v.address(V.PREVIOUS_FA, False),
        previous_fa_handoff_key=v.secret(V.PREVIOUS_FA_HANDOFF_KEY, False),
        digest=None if digest is None else digest.value,
    )


__all__ = ["AVP_NAMES", "PATH_AVP", "ProfileAvpError", "decode_profile_avps", "encode_profile_avps", "has_profile"]
