"""Typed provisioning records: users, RADIUS clients, gateways, services, QoS
classes, per-user VPN records and AAA sessions.

These are the values the database stores, the CLI edits and the home AAA reads.
Every record validates itself on construction (an invalid one cannot exist) and
raises :class:`ValidationError` with a message meant for an operator.
Secrets are :class:`~aaa_vpn.secret.Secret` so that a ``repr`` never shows them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, NamedTuple

from aaa_vpn.secret import Secret
from aaa_vpn.wire.enums import EspTransform, Flavour, GatewayMode, KeyMode, PskEncoding
from aaa_vpn.wire.nai import nai_problem, nai_realm, realm_problem


class ValidationError(ValueError):
    """A record or a value given by the operator is invalid (the caller's fault)."""


#: Shortest RADIUS shared secret accepted, here and by every daemon's settings.
#: RFC 2865 section 3 asks for 16 octets; refusing obviously weak ones while
#: accepting the common 10-octet test secrets.
MIN_SHARED_SECRET = 8


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


def check_nai(nai: str) -> str:
    """Return ``nai`` if it is a ``user@realm`` NAI by the rules of
    :mod:`aaa_vpn.wire.nai` (RFC 7542, UTF-8 allowed), else raise."""
    problem = nai_problem(nai)
    if problem is not None:
        raise ValidationError(f"invalid NAI {nai!r}: {problem}")
    return nai


def check_realm(what: str, realm: str) -> str:
    """Return ``realm`` if it is a NAI realm (:mod:`aaa_vpn.wire.nai`), else raise."""
    problem = realm_problem(realm)
    if problem is not None:
        raise ValidationError(f"invalid {what} {realm!r}: {problem}")
    return realm


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValidationError(
            f"invalid {kind} name {name!r}: 1-63 of letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return name


def parse_ipv4(what: str, value: str | IPv4Address) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    try:
        return IPv4Address(value)
    except (ValueError, TypeError):
        raise ValidationError(f"invalid {what} {value!r}: expected an IPv4 address") from None


def parse_network(what: str, value: str | IPv4Network) -> IPv4Network:
    if isinstance(value, IPv4Network):
        return value
    try:
        return IPv4Network(value, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"invalid {what} {value!r}: {exc}") from None


# -- addresses no node can have (RFC 6890's special-purpose registry) -----------------------------------

#: Ranges that hold no node's address, with the reason given in errors.
_NOT_A_NODE: tuple[tuple[IPv4Network, str], ...] = (
    (
        IPv4Network("0.0.0.0/8"),
        "'this network' (RFC 1122 section 3.2.1.3): a source only while a host starts, never an address to reach",
    ),
    (IPv4Network("224.0.0.0/4"), "multicast (RFC 5771): a group of listeners, not a node"),
    (IPv4Network("255.255.255.255/32"), "the limited broadcast (RFC 919): every host of the link, not a node"),
    (IPv4Network("240.0.0.0/4"), "reserved (RFC 1112 section 4): no host may use it"),
)
_LOOPBACK = (
    IPv4Network("127.0.0.0/8"),
    "loopback (RFC 1122 section 3.2.1.3): it never leaves its host, so no other node can reach it there",
)
#: The broadest RADIUS client network: more addresses sharing one secret are a mistake, not a pool of NASes.
MAX_CLIENT_PREFIX = 8


def _special(network: IPv4Network, *, loopback: bool) -> str | None:
    """Why ``network`` (an address is a /32) overlaps addresses no node can
    have (with ``loopback``: loopback too), or None."""
    ranges = sorted(_NOT_A_NODE + ((_LOOPBACK,) if loopback else ()), key=lambda item: -item[0].prefixlen)
    inside = next((why for special, why in ranges if network.subnet_of(special)), None)  # the narrowest first
    return inside or next((why for special, why in ranges if network.overlaps(special)), None)


def check_node_address(what: str, address: IPv4Address, *, loopback: bool = True) -> IPv4Address:
    """Return ``address`` if a node can have it, else raise: not in 0.0.0.0/8,
    multicast, the limited broadcast or reserved space; nor loopback unless
    ``loopback`` (the whole topology may run on one host's loopback, as the
    demo does; a home address cannot)."""
    why = _special(IPv4Network(address), loopback=not loopback)
    if why is not None:
        raise ValidationError(f"invalid {what} {address}: {why}")
    return address


def check_traffic_network(what: str, network: IPv4Network) -> IPv4Network:
    """Return ``network`` unless it lies wholly in addresses no node can have
    or in loopback (a correspondent network, a protected prefix); one that
    only overlaps them (0.0.0.0/0, a full tunnel) is fine."""
    for special, why in (*_NOT_A_NODE, _LOOPBACK):
        if network.subnet_of(special):
            raise ValidationError(f"invalid {what} {network}: {why}")
    return network


def check_client_network(what: str, network: IPv4Network) -> IPv4Network:
    """Return ``network`` if RADIUS clients can send from all of it: at most
    a /8 (:data:`MAX_CLIENT_PREFIX`), and no address no node can have
    (loopback is fine: a server and its clients may share a host)."""
    if network.prefixlen < MAX_CLIENT_PREFIX:
        scope = "every IPv4 address" if network.prefixlen == 0 else f"{network.num_addresses} addresses"
        raise ValidationError(
            f"invalid {what} {network}: it would let {scope} use this client's secret; a client network is"
            f" at most a /{MAX_CLIENT_PREFIX} (give the NASes' own network, e.g. 192.0.2.0/24)"
        )
    why = _special(network, loopback=False)
    if why is not None:
        raise ValidationError(f"invalid {what} {network}: it holds {why}")
    return network


def _check_spi(what: str, spi: int, low: int = 256) -> int:
    # RFC 5944 section 1.6 reserves 0-255 for Mobile IP security contexts (RFC
    # 4303 section 2.1 the same for ESP); nothing reserves 0xFFFFFFFF.
    if isinstance(spi, bool) or not isinstance(spi, int) or not low <= spi <= 0xFFFFFFFF:
        raise ValidationError(f"invalid {what} {spi!r}: an SPI is {low}..4294967295")
    return spi


def _check_secret(what: str, secret: Secret, minimum: int) -> Secret:
    if not isinstance(secret, Secret):
        raise ValidationError(f"{what} must be a Secret")
    if len(secret) < minimum:
        raise ValidationError(f"{what} is too short: at least {minimum} bytes are required")
    return secret


class ClientRole(enum.Enum):
    """What a RADIUS client is to the home AAA."""

    FA = "fa"
    HA = "ha"
    GW = "gw"
    #: A generic RADIUS proxy of a visited domain (FreeRADIUS, say): it relays
    #: its FAs' requests and gets their views, never the session root key.
    PROXY = "proxy"
    #: This project's foreign AAA (``aaa-vpn serve foreign``): a proxy that
    #: also gets the session root key, so it can answer same-domain handoffs.
    FOREIGN_AAA = "foreign-aaa"

    @property
    def relays(self) -> bool:
        """Whether the client relays FAs' requests (a proxy of either kind)."""
        return self in (ClientRole.PROXY, ClientRole.FOREIGN_AAA)


# IKEv2 proposals in strongSwan syntax: encryption-[integrity-]prf?-dh.
_IKE_PROPOSAL_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+){1,4}$")


@dataclass(frozen=True)
class User:
    """A mobile user: its NAI, home address and the keys its mobile node shares."""

    nai: str
    home_agent: IPv4Address
    mn_aaa_secret: Secret
    mn_ha_spi: int
    mn_ha_key: Secret
    home_address: IPv4Address | None = None  # None: assigned by the home agent
    mn_aaa_spi: int = 2  # RFC 4721 section 8: CHAP_SPI, the 3GPP2 default
    enabled: bool = True

    def __post_init__(self) -> None:
        check_nai(self.nai)
        check_node_address("home agent", parse_ipv4("home agent", self.home_agent))
        if self.home_address is not None:
            check_node_address("home address", parse_ipv4("home address", self.home_address), loopback=False)
        _check_secret("MN-AAA secret", self.mn_aaa_secret, 1)
        _check_secret("MN-HA key", self.mn_ha_key, 16)  # RFC 5944 section 5.1: >= 128 bits
        _check_spi("MN-HA SPI", self.mn_ha_spi)
        # RFC 4721 section 8 and X.S0011 name MN-AAA algorithms by SPIs in the reserved range (CHAP_SPI = 2).
        _check_spi("MN-AAA SPI", self.mn_aaa_spi, low=0)


@dataclass(frozen=True)
class Client:
    """A RADIUS client: an FA, HA, gateway or a foreign-domain proxy."""

    name: str
    network: IPv4Network  # one address (/32) or a CIDR block
    secret: Secret
    role: ClientRole
    domain: str = ""
    coa_port: int = 3799  # RFC 5176 section 2.3
    flavour: Flavour = Flavour.AAA_VPN
    require_message_authenticator: bool = True
    #: The 3gpp2 flavour: how 3GPP2-Pre-Shared-Secret is sent (docs/radius-attributes.md).
    psk_encoding: PskEncoding = PskEncoding.SALT
    #: Believe its CoA/Disconnect ACKs and NAKs only with a Message-Authenticator
    #: (RFC 5176 section 3.4 makes it optional; docs/protocol.md section 6).
    require_coa_message_authenticator: bool = False

    def __post_init__(self) -> None:
        check_name("client", self.name)
        if not isinstance(self.network, IPv4Network):
            raise ValidationError("client network must be an IPv4Network")
        check_client_network("client address", self.network)
        _check_secret("RADIUS shared secret", self.secret, MIN_SHARED_SECRET)
        if not 1 <= self.coa_port <= 65535:
            raise ValidationError(f"invalid CoA port {self.coa_port}")
        if self.domain:
            check_realm("domain", self.domain)


@dataclass(frozen=True)
class Gateway:
    """The network apparatus in front of correspondent hosts."""

    name: str
    address: IPv4Address
    mode: GatewayMode
    protected_prefixes: tuple[IPv4Network, ...]
    gateway_key: Secret  # pairwise HA-GW key for Binding Update key wrapping

    def __post_init__(self) -> None:
        check_name("gateway", self.name)
        check_node_address("gateway address", parse_ipv4("gateway address", self.address))
        if not self.protected_prefixes:
            raise ValidationError("a gateway protects at least one prefix")
        for prefix in self.protected_prefixes:
            check_traffic_network("protected prefix", prefix)
        _check_secret("gateway key", self.gateway_key, 16)


@dataclass(frozen=True)
class Service:
    """A named security service: the IPsec transform set and its lifetimes."""

    name: str
    key_mode: KeyMode = KeyMode.MANUAL
    esp_transform: EspTransform = EspTransform.AES_GCM_16_256
    ike_proposal: str = "aes256gcm16-prfsha256-x25519"
    sa_lifetime: int = 3600
    ike_lifetime: int = 14400

    def __post_init__(self) -> None:
        check_name("service", self.name)
        if not _IKE_PROPOSAL_RE.match(self.ike_proposal):
            raise ValidationError(
                f"invalid IKE proposal {self.ike_proposal!r}: expected strongSwan syntax,"
                " e.g. aes256gcm16-prfsha256-x25519"
            )
        for what, seconds in (("SA lifetime", self.sa_lifetime), ("IKE lifetime", self.ike_lifetime)):
            # Lifetimes ride in 24-bit tagged integers (RFC 2868 section 3 style).
            if not 60 <= seconds <= 0xFFFFFF:
                raise ValidationError(f"invalid {what} {seconds}: 60..16777215 seconds")


@dataclass(frozen=True)
class QosClass:
    """A QoS class: DSCP marking and a rate limit (0 = unlimited)."""

    name: str
    dscp: int = 0
    rate_kbps: int = 0

    def __post_init__(self) -> None:
        check_name("QoS class", self.name)
        if not 0 <= self.dscp <= 63:
            raise ValidationError(f"invalid DSCP {self.dscp}: 0..63")
        if not 0 <= self.rate_kbps <= 0xFFFFFF:
            raise ValidationError(f"invalid rate {self.rate_kbps}: 0..16777215 kbit/s")


@dataclass(frozen=True)
class VpnRecord:
    """One line of a user's VPN: a correspondent network, through which gateway,
    with which security service and QoS class."""

    nai: str
    correspondent: IPv4Network
    gateway: str
    service: str
    qos: str | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        check_nai(self.nai)
        if not isinstance(self.correspondent, IPv4Network):
            raise ValidationError("correspondent must be an IPv4Network")
        check_traffic_network("correspondent", self.correspondent)
        check_name("gateway", self.gateway)
        check_name("service", self.service)
        if self.qos is not None:
            check_name("QoS class", self.qos)


class SpiAllocation(NamedTuple):
    """An ESP SPI allocated on one receiving node for one path of a session.

    A named tuple rather than a dataclass: the home AAA makes several per
    request, and a frozen dataclass costs a few microseconds each to build."""

    node: IPv4Address
    spi: int
    path: str  # "<path label>@<node>", e.g. "fa-ha@192.0.2.1"


@dataclass(frozen=True)
class Session:
    """An AAA session: one registration of one mobile node."""

    session_id: str
    nai: str
    session_root_key: Secret
    epoch: int
    home_address: IPv4Address
    home_agent: IPv4Address
    care_of_address: IPv4Address
    created: float
    expires: float
    spis: tuple[SpiAllocation, ...] = field(default_factory=tuple)
    foreign_domain: str = ""
    #: The epoch the stationary HA <-> GW keys and SPIs were derived in: 1 for a
    #: new session; a re-key sets it to the new epoch (handoffs leave it alone).
    stationary_epoch: int = 1
    #: When the session's keys were last all renewed (created or re-keyed), in
    #: the caller's clock; the SA lifetimes count from here (docs/protocol.md 4).
    keyed_at: float = 0.0
    #: When the session entered its epoch (created, moved or re-keyed): when
    #: the keys of its paths that end at its FA were made (the 3GPP2-KeyID's time).
    epoch_started: float = 0.0
    #: The identification attributes (RFC 5176 section 3) its FA sent in its
    #: latest registration, raw (Type, Length, Value) and in order; what a
    #: Disconnect- or CoA-Request to that FA repeats (aaa_vpn/wire/coa.py).
    fa_identification: bytes = b""
    #: The same of its HA's latest request (b"" until the HA has asked).
    ha_identification: bytes = b""


class WriteKind(enum.Enum):
    """What a :class:`SessionWrite` does."""

    #: Store a new session; the NAI's other sessions go (a new registration replaces them).
    CREATE = "create"
    #: Set the expiry of a session whose epoch is still ``expected_epoch``.
    RENEW = "renew"
    #: Replace a session whose epoch is still ``expected_epoch`` (a move, a re-key,
    #: a VPN change): its care-of address, epoch, SPIs and expiry change.
    REPLACE = "replace"
    #: Delete a session (if ``expected_epoch`` is set, only at that epoch).
    DELETE = "delete"
    #: Set the identification attributes its FA or HA sent (``fa_identification``,
    #: ``ha_identification``: whichever is not None) of a session whose epoch is
    #: still ``expected_epoch``; nothing else changes.
    IDENTIFY = "identify"


class WriteOutcome(enum.Enum):
    """What became of a :class:`SessionWrite`."""

    STORED = "stored"
    #: The condition failed: the session is gone or at another epoch (another
    #: worker or node changed it); nothing was written.
    CONFLICT = "conflict"
    #: An SPI of the session is already allocated on its node; nothing was written.
    SPI_TAKEN = "spi_taken"
    #: The store could not be reached in time (locked, read-only, down); nothing
    #: was written.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class SessionWrite:
    """One change of the sessions table, decided by the home AAA and carried
    out by the service layer (all writes of a batch in one transaction, each
    with its own outcome). The conditions make concurrent changes of one
    session from two workers or nodes safe: the second finds the epoch moved
    and gets :attr:`WriteOutcome.CONFLICT` instead of overwriting."""

    kind: WriteKind
    session_id: str
    #: CREATE and REPLACE: the session as it is to be stored.
    session: Session | None = None
    #: RENEW, REPLACE (and optionally DELETE): the epoch the session must still have.
    expected_epoch: int | None = None
    #: RENEW: the new expiry.
    expires: float = 0.0
    #: RENEW and IDENTIFY: the FA's new identification attributes (None: unchanged).
    fa_identification: bytes | None = None
    #: IDENTIFY: the HA's new identification attributes (None: unchanged).
    ha_identification: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind in (WriteKind.CREATE, WriteKind.REPLACE) and (
            self.session is None or self.session.session_id != self.session_id
        ):
            raise ValidationError(f"a {self.kind.value} write carries the session it stores")
        if self.kind in (WriteKind.RENEW, WriteKind.REPLACE, WriteKind.IDENTIFY) and self.expected_epoch is None:
            raise ValidationError(f"a {self.kind.value} write is conditional on the session's epoch")
        if self.kind is WriteKind.IDENTIFY and self.fa_identification is None and self.ha_identification is None:
            raise ValidationError("an identify write carries the FA's or the HA's identification attributes")


@dataclass(frozen=True)
class AccountingRecord:
    """One accounting session as stored (RFC 2866): what its NAS reported,
    merged over its Start, Interim-Updates and Stop. Counters are None until
    the NAS reports them; times are seconds since the epoch."""

    unique_id: str
    """FreeRADIUS's Acct-Unique-Session-Id (aaa_vpn/wire/accounting.py rule 3)."""
    acct_session_id: str
    nai: str
    client: str
    """The RADIUS client (by its provisioned name) that sent it."""
    nas: str
    """NAS-IP-Address, else NAS-Identifier."""
    session_id: str
    """The aaa_vpn session its Class named ("" for none)."""
    class_value: str
    updated: float
    started: float | None = None
    stopped: float | None = None
    session_time: int | None = None
    input_octets: int | None = None
    output_octets: int | None = None
    input_packets: int | None = None
    output_packets: int | None = None
    terminate_cause: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    """Every other attribute its requests carried, by dictionary name (the
    latest value of each)."""
    updates: int = 1
    """Accounting requests merged into it."""


__all__ = [
    "MAX_CLIENT_PREFIX",
    "MIN_SHARED_SECRET",
    "AccountingRecord",
    "Client",
    "ClientRole",
    "EspTransform",
    "Flavour",
    "Gateway",
    "GatewayMode",
    "KeyMode",
    "PskEncoding",
    "QosClass",
    "Service",
    "Session",
    "SessionWrite",
    "SpiAllocation",
    "User",
    "ValidationError",
    "VpnRecord",
    "WriteKind",
    "WriteOutcome",
    "check_client_network",
    "check_nai",
    "check_node_address",
    "check_realm",
    "check_traffic_network",
    "nai_realm",
    "parse_ipv4",
    "parse_network",
]
