"""The VPN profile as typed values: what one network element is told about its
part of a mobile user's VPN.

A :class:`VpnProfile` is always *one receiver's view*: ``PathProfile.local`` is
the receiving node's own end, ``peer`` the other end; ``spi_in``/``key_in``
protect traffic peer -> local, ``spi_out``/``key_out`` local -> peer. The FA's
and the HA's views of the same path are mirror images (same keys, swapped).

Wire mapping (implemented in :mod:`aaa_vpn.wire.radius_profile`; the full
table with numbers is in ``docs/radius-attributes.md`` and ``dictionaries/dictionary.aaa_vpn``;
the decisions behind it in ``docs/protocol.md``):

* vendor id :data:`VENDOR_ID` (RFC 5612's documentation number 32473, a
  placeholder a deployment replaces here and in the dictionary's VENDOR line);
* session-level values are untagged vendor attributes;
* every attribute of one path carries the same RFC 2868 tag (1..31), so a
  profile with several paths is unambiguous even if a proxy reorders
  attributes of different types. Tagged integers have 24 value bits
  (RFC 2868 section 3), which bounds SPIs, lifetimes and rates;
* keys, PSKs, the session root key and the handoff keys are salt-encrypted
  (RFC 2868 section 3.5);
* every view carries its digest (:func:`aaa_vpn.wire.radius_profile.profile_digest`),
  which its receiver names in
  its next request so that a renewal that changes nothing need not carry the
  keys again (docs/protocol.md section 1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from aaa_vpn.secret import Secret
from aaa_vpn.wire.enums import EspTransform, GatewayMode, KeyMode

#: The project's enterprise number (RFC 5612 documentation PEN: a placeholder).
VENDOR_ID = 32473
#: Largest value of a tagged integer attribute (RFC 2868 section 3: 24 bits).
TAGGED_INT_MAX = 0xFFFFFF
#: ESP SPIs the home AAA allocates: 24 bits (tagged integers), never 0-255 (RFC 4303 section 2.1).
SPI_MIN = 0x100
SPI_MAX = TAGGED_INT_MAX
#: At most this many paths in one profile (one RFC 2868 tag each).
MAX_PATHS = 31


class PathRole(enum.IntEnum):
    """Which two network elements a path joins."""

    FA_HA = 1  # foreign agent <-> home agent
    HA_GW = 2  # home agent <-> static correspondent gateway (stationary tunnel)
    FA_GW = 3  # foreign agent <-> dynamic correspondent gateway (route optimisation)
    FA_FA = 4  # old FA -> new FA forwarding path (smooth handoff)


class RequestType(enum.IntEnum):
    """What an Access-Request to the home AAA asks for (Aaa-Vpn-Request-Type)."""

    FA_REGISTRATION = 1
    HA_REGISTRATION = 2
    GW_BINDING = 3
    HANDOFF = 4
    SERVICE_UPDATE = 5


class RejectReason(enum.IntEnum):
    """Why the home AAA rejected a request (Aaa-Vpn-Reject-Reason), so an agent
    can pick the right Mobile IP reply code."""

    UNKNOWN_USER = 1
    USER_DISABLED = 2
    AUTHENTICATION_FAILED = 3
    NO_SESSION = 4
    BAD_REQUEST = 5
    PROFILE_TOO_LARGE = 6
    NO_RESOURCES = 7


@dataclass(frozen=True)
class QosSpec:
    """The QoS a path applies: class name, DSCP marking, rate limit (0 = none)."""

    name: str
    dscp: int
    rate_kbps: int


@dataclass(frozen=True)
class PathProfile:
    """One path of the VPN, as seen by the node at ``local``."""

    role: PathRole
    local: IPv4Address
    peer: IPv4Address
    local_ts: tuple[IPv4Network, ...]
    remote_ts: tuple[IPv4Network, ...]
    key_mode: KeyMode
    esp_transform: EspTransform
    spi_in: int
    spi_out: int
    key_in: Secret
    key_out: Secret
    lifetime: int
    ike_proposal: str | None = None  # set when key_mode is IKEV2
    ike_psk: Secret | None = None  # set when key_mode is IKEV2
    qos: QosSpec | None = None
    gateway_mode: GatewayMode | None = None  # set on paths that end at a gateway
    #: HA only, on paths that end at a gateway: the HA-GW pairwise key with which
    #: the HA authenticates its Binding Update to that gateway and wraps the
    #: keys it forwards (docs/design.md section 3; keys.derive_binding_key).
    binding_key: Secret | None = None


@dataclass(frozen=True)
class VpnProfile:
    """Everything one receiver is told in one Access-Accept."""

    session_id: str
    home_address: IPv4Address
    home_agent: IPv4Address
    care_of_address: IPv4Address
    lifetime: int  # registration/session lifetime in seconds (also Session-Timeout)
    epoch: int
    paths: tuple[PathProfile, ...] = field(default_factory=tuple)
    mn_ha_spi: int | None = None  # HA only: the MN-HA security association
    mn_ha_key: Secret | None = None
    fa_ha_spi: int | None = None  # FA and HA: Mobile IP FA-HA authentication (RFC 5944 3.5.4)
    fa_ha_key: Secret | None = None
    session_root_key: Secret | None = None  # HA and foreign AAA only (least privilege)
    #: FA (and the foreign AAA's copy) only: this FA's own handoff key for the
    #: session and epoch it registers in (keys.derive_handoff_key); a later new
    #: FA's Previous-FA Notification is authenticated with it (flow E).
    handoff_key: Secret | None = None
    #: A new FA after a move only: the FA the node was at in the epoch before
    #: (``epoch - 1``) and that FA's handoff key, with which the new FA
    #: authenticates its Previous-FA Notification and wraps the forwarding
    #: path's keys. The forwarding path itself is the FA_FA path in ``paths``.
    previous_fa: IPv4Address | None = None
    previous_fa_handoff_key: Secret | None = None
    #: :func:`aaa_vpn.wire.radius_profile.profile_digest` of this view as its
    #: sender computed it (Aaa-Vpn-Profile-Digest). A receiver keeps it and
    #: names it in its next request; a server that would send the same view
    #: again then sends a confirmation instead (docs/protocol.md section 1).
    digest: bytes | None = None


@dataclass(frozen=True)
class MnKey:
    """A key the home AAA generated for one mobility security association of
    the mobile node -- with its FA or its HA -- and what the node derives it
    from (RFC 3957 sections 5 and 6; carried by RFC 4004's MSA AVPs over
    Diameter). ``key`` is ``HMAC-SHA1(MN-AAA secret, nonce || NAI)``."""

    spi: int
    """The Mobile Node SPI the node asked with: the node allocated it, and the
    agent's messages to the node name it (RFC 4004 sections 9.1 and 9.4:
    MIP-FA-to-MN-SPI, MIP-HA-to-MN-SPI)."""
    aaa_spi: int
    """The node's security association with the home AAA the key is derived
    under (the SPI of its MN-AAA extension)."""
    algorithm: int
    """MIP-Algorithm-Type / Algorithm Identifier."""
    nonce: bytes
    """The Key Generation Nonce the node derives the key from."""
    key: Secret = field(repr=False)
    lifetime: int = 0
    """Seconds the key is valid (MIP-MSA-Lifetime)."""
    replay_method: int | None = None
    """MN-HA only: the replay protection of the MSA (RFC 3957 section 4)."""
    agent_spi: int | None = None
    """The SPI the agent allocated for the node's messages to it, which the
    agent's Key Generation Nonce Reply names (its FA SPI or HA SPI; RFC 4004
    sections 9.5 and 9.6: the FA allocates the MN-to-FA SPI, the HA the
    MN-to-HA SPI). None until the agent allocated one (as the home AAA sends
    it): then :attr:`spi` names the MSA in both directions."""

    @property
    def request_spi(self) -> int:
        """The SPI the node's messages to the agent name (:attr:`agent_spi`)."""
        return self.spi if self.agent_spi is None else self.agent_spi


#: Octets of a profile digest (a truncated SHA-256).
PROFILE_DIGEST_LENGTH = 16
