"""The foreign agent (FA), sans-IO.

Rules (RFC 5944 sections 3.7 and 5; RFC 4721; docs/design.md flow A):

1. A Registration Request from a mobile node must carry the NAI (RFC 2794;
   else code 97), a fresh MN-FA challenge this FA issued and nobody used yet
   (RFC 4721 section 9; missing: 105, unknown: 104, stale: 106 -- each reply
   carries a new challenge, which is how a mobile node without advertisements
   learns one) and an MN-AAA authenticator with CHAP_SPI (else 70). A
   lifetime above the FA's maximum gets 69 with the maximum (RFC 5944
   section 3.7.2.3). A request that does not decode is dropped (section 1.8)
   or, if its fixed part decodes, answered with 70.
2. The FA asks its AAA servers (an Access-Request with the MN-AAA proof as
   CHAP, docs/mn-aaa-chap.md). A reject is answered with 67 (unknown user,
   failed authentication, no session), 65 (disabled, bad request) or 66; AAA
   unreachable with 66 (the FA cannot serve the node now). No SA exists yet
   in any of these cases.
3. On an Access-Accept the FA asks the service layer to install its paths
   (all or nothing) and only then relays the request to the home agent with
   FA-HA authentication (RFC 5944 section 3.7.2.2). If the SAs cannot be
   installed the node gets 66 and nothing is relayed. The relayed request is
   sent again, byte for byte, after ``ha_retransmit`` seconds, then twice as
   long each time, while a reply could still come within ``ha_timeout``.
4. The home agent's reply must carry a valid FA-HA authenticator (else 68 to
   the node); a denial or no reply within ``ha_timeout`` (78) removes the
   paths again: a registration is either fully set up or rolled back. A
   renewal installs nothing new, so a refused one leaves the registration it
   renews (and its SAs) in place until it expires; the FA then asks for fresh
   keys at the next registration (Aaa-Vpn-Request-Type Service-Update, which
   re-keys the session: something on the path refused the old ones).
4a. When ``ha_timeout`` ends a new registration it relayed, the home agent
   may have accepted it and lost its reply: the FA sends it a revocation, a
   Registration Request with lifetime 0 that carries the NAI, the session
   NVSE of the registration and FA-HA authentication (and no MN-HA: the FA
   has no such key), with its own timestamp Identification, retransmitted
   like a relayed request until answered under that FA-HA key or
   ``ha_timeout`` (ha.py rule 4a).
5. An accepted reply is relayed to the node (FA-HA stripped, a fresh
   challenge appended for its next registration; when AAA gave an MN-FA key
   for the node -- over Diameter, asked with a Generalized MN-FA Key
   Generation Nonce Request, RFC 3957 -- the MN-FA Key Generation Nonce
   Reply from AAA (the key's lifetime, the AAA SPI, the FA SPI -- which this
   FA allocates for the MSA, RFC 4004 section 9.5: random, at least 256,
   none of the handoff SPI, the FA-HA SPIs or any other MSA's SPIs it holds
   --, the algorithm and the nonce) and MN-FA authentication under the new
   key, the node's SPI (the one it asked with: section 9.1, the node
   allocates the FA-to-MN SPI) and the algorithm the MSA names
   (HMAC-SHA-1, a 20-octet authenticator; an MSA naming any other gives no
   key, counted ``mn_fa_keys_refused``), RFC 3957 section 6.2 and RFC 5944
   section 3.7.3.2; the visitor keeps the key), and the same octets again
   ``reply_repeats`` later (0.25 and 0.75 s: nothing acknowledges a reply,
   and the node's own retransmissions back off exponentially, RFC 5944
   section 3.6.3; a node that has its answer discards the copies), and the
   node becomes a visitor until its lifetime ends, when its paths are removed. A denial
   reaches the node with the home agent's code, with or without an MN-HA
   extension (when the home agent could not add one, the FA sends the
   reply's fixed part and NAI on).
5a. While a visitor holds an MN-FA key from AAA, the node's requests
   (registrations, retransmissions, deregistrations) must end with MN-FA
   authentication under that key's FA SPI and algorithm (RFC 5944 sections
   3.5.3 and 3.7.2.1); a wrong or missing one is answered 67 (counted
   ``mn_fa_auth_failed`` / ``mn_fa_auth_missing``) and goes nowhere. Until a
   request verified under a new key the node may not have it (its reply was
   lost): a request under the key before -- or, where there was none, without
   MN-FA authentication -- is accepted as well, and once that registration
   is accepted the visitor goes back to that key (or to none; a request that
   is not accepted changes nothing). A registration without MN-FA
   authentication that asks for a new MN-FA key (rule 5b) is a node that
   lost its MSA (a restart) establishing a new one through AAA (RFC 3957):
   it goes to AAA like the above, whose MN-AAA check stands for it (counted
   ``mn_fa_rekeyed``), so a node that lost a key it had used is not locked
   out until the visitor expires. What the FA relays never carries MN-FA
   authentication (section 3.7.2.2).
5b. A registration whose request asked for an MN-FA key (a Generalized
   MN-FA Key Generation Nonce Request of subtype AAA, RFC 3957 section 6.1)
   when AAA's answer brings none this FA can use (no MSA -- RADIUS, say --
   or one naming another algorithm) and the visitor holds none either is
   answered 107 (RFC 3957 section 7: missing MN-FA Key Generation Nonce
   Reply extension; counted ``mn_fa_keys_unavailable``) with a fresh
   challenge, before anything is installed or relayed to the home agent. A
   renewal of a visitor that holds a key goes on without a new one.

Retransmissions (RFC 5944 section 3.6.3, RFC 4721; docs/protocol.md
section 3.11):

R1. The same request again (same home agent and Identification) while it
    is worked on is absorbed. A request from the same node (NAI, source
    address and port) with the MN-FA challenge of a registration still being
    worked on is that
    registration retransmitted by the node with a new Identification: it is
    folded into it -- no second AAA request, SA or relay, never 104 -- and
    becomes the request the FA relays (at once, if the registration is
    already with the home agent) and answers, so the reply carries the
    Identification the node sent last.
R2. The same, for a registration accepted less than ``challenge_lifetime``
    ago whose reply the node evidently lost: the request is relayed to the
    home agent again as it is (no AAA, no SA), which answers it from its
    binding (ha.py rule 8); the reply goes to the node, nothing else changes.

Deregistrations (lifetime 0) carry no challenge and are not sent to AAA:

D1. The FA relays one only when it is well formed (NAI, and an MN-HA or
    MN-AAA extension to relay it by; else 97 or 70) and names a home agent
    it may talk to: the home agent of a visitor it holds with that NAI and
    home address (that home agent accepted the visitor's registration with
    FA-HA authentication), or of one it removed by an accepted
    deregistration less than ``answer_lifetime`` ago (so a retransmitted
    deregistration is answered again). Anything else gets 194 (invalid home
    agent address) and is relayed nowhere.
D2. At most one deregistration per visitor is worked on; retransmissions
    fold into it as in R1. It is timed (``ha_timeout``, then 78) and
    retransmitted like a registration. An accepted reply removes the visitor
    only if it carries a valid FA-HA authenticator under the visitor's FA-HA
    key (RFC 5944 sections 3.5.4, 3.7.3.1: the home agent authenticates
    every reply to an FA it shares a key with); without one it is dropped
    and counted, and the deregistration goes on. A denial removes nothing
    and reaches the node as rule 5 says.

Bounds (docs/protocol.md section 3.11): at most ``max_pending``
registrations and deregistrations at once (more: 66, counted
``limits.pending``), at most ``max_challenges`` issued challenges (the
oldest is forgotten first, counted ``limits.challenges``), at most
:data:`MAX_FOLDED` retransmissions folded into one registration.

Smooth handoff (docs/design.md flow E, docs/protocol.md section 5):

6. As the *new* FA: when AAA's view names a previous FA (with that FA's
   handoff key) and carries the FA-FA forwarding path, the path's receiving
   end is installed with the registration's own paths (first, so that it
   never wins an outbound lookup). Only once the node has its reply does the
   FA send the previous FA a Previous-FA Notification (binding message
   sub-type 5, A set, lifetime ``forwarding_lifetime``) with the session
   NVSE of the previous FA's epoch and the previous FA's view of the path in
   a VPN-path CVSE, its keys wrapped, the message authenticated, under the
   two subkeys of the previous FA's handoff key (:func:`aaa_vpn.keys.handoff_subkeys`;
   SPI :data:`HANDOFF_SPI`). It retransmits ``notification_retries`` times,
   after ``notification_timeout`` seconds, then twice as long each time;
   unanswered or refused, it removes its end of the path (counted) and the
   node's registration does not change. Acknowledged, its end goes when the
   granted lifetime ends. Unanswered, or refused with 161 (the previous FA
   keeps the visitor), it then *releases* the previous FA's visitor: the
   notification with Lifetime 0 and a fresh identification each time, backed
   off up to ``release_max_interval``, until any answer comes or its own
   registration of the node ends.
7. As the *previous* FA: a notification must authenticate under the handoff
   key of a visitor it has with that home address (otherwise it is dropped,
   counted, never answered); without such a visitor it is answered with
   status 131 (this FA holds no security association to check it with),
   unauthenticated. Then the session and epoch must be the visitor's (129),
   the timestamp fresh (RFC 5944 section 5.7; 133), no unknown CVSE (140),
   and exactly one FA-FA path from this FA to the sender covering the home
   address that unwraps (160). The path is installed (else 161), then the
   visitor and its SAs toward the HA and the gateways go, and the
   acknowledgement (status 0, the granted lifetime, at most
   ``max_forwarding_lifetime``) is authenticated with the same key. The
   forwarding path is removed when that lifetime ends, or at once if the
   node registers here again.

Dynamic Authorization (RFC 5176; docs/protocol.md section 6):

8. A Disconnect-Request that :mod:`aaa_vpn.roles.coa` accepts (from one of
   its AAA servers, authenticators valid, not a duplicate) and that names a
   visitor by NAI and session id removes the visitor and all its SAs and is
   answered Disconnect-ACK; no such visitor: Disconnect-NAK 503; NAI or
   session id missing: NAK 402.
9. A CoA-Request (a VPN change pushed by the home AAA) for a visitor carries
   its new view (:func:`aaa_vpn.wire.coa.pushed_profile`). No such visitor:
   CoA-NAK 503. A view that does not decode, is for another FA, home agent or
   session, has no FA-HA key, or whose epoch is not newer than the
   visitor's: NAK 404 (Invalid-Request). Otherwise the new epoch's paths are
   installed under their own owner (all or nothing; failure: NAK 506
   Resources-Unavailable, the old paths untouched), then the old epoch's
   paths go, the visitor takes the new view (its lifetime is unchanged) and
   the answer is CoA-ACK.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn import keys
from aaa_vpn.roles import radius_client
from aaa_vpn.roles.agent import Address, Agent, Channel, DeletePaths, InstallPaths, RegistrationDone, backoff
from aaa_vpn.roles.coa import CoaPeer, CoaResponder, Received
from aaa_vpn.roles.diameter_client import FaDiameterClient
from aaa_vpn.roles.ha import mirror, mn_key_from_state, mn_key_state, own_msa
from aaa_vpn.roles.radius_client import (
    RadiusClient,
    RequestAccepted,
    RequestFailed,
    RequestRejected,
    ServerConfig,
)
from aaa_vpn.secret import Secret
from aaa_vpn.wire import coa, mip
from aaa_vpn.wire.mip import (
    AaaNonce,
    BindingAcknowledge,
    BindingStatus,
    ChallengeExtension,
    ExtensionType,
    GeneralizedAuthSubtype,
    NaiExtension,
    PreviousFaNotification,
    RegistrationReply,
    ReplyCode,
    encode_aaa_nonce,
)
from aaa_vpn.wire.mip_auth import (
    CHAP_SPI,
    append_authentication,
    append_generalized_authentication,
    find_authentication,
    mn_aaa_proof,
    msa_algorithm,
    relay_reply,
    relay_request,
    verify_authentication,
)
from aaa_vpn.wire.mip_replay import check_timestamp, timestamp_identification
from aaa_vpn.wire.mip_vpn import (
    VpnInformationError,
    encode_vpn_path,
    previous_fa,
    session_extension,
    session_of,
    unknown_critical_extensions,
    vpn_paths,
)
from aaa_vpn.wire.profile import MnKey, PathProfile, PathRole, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import ProfileDecodeError
from aaa_vpn.wire.radius_request import AccessRequest

MIP_PORT = 434  # RFC 5944 section 1.8
CHALLENGE_LENGTH = 16
#: The SPI of the binding authentication between a new and a previous FA (rule
#: 6); the key is the previous FA's handoff key for the node's session and
#: epoch. 256 is the HA-GW one (aaa_vpn.roles.ha.BINDING_SPI).
HANDOFF_SPI = 257
#: Retransmissions of the node folded into one registration (R1); more are dropped.
MAX_FOLDED = 8


@dataclass(frozen=True)
class FaConfig:
    """How one foreign agent runs."""

    address: IPv4Address
    """Its address: the care-of address it offers and the source of its RADIUS requests."""
    aaa_servers: Sequence[ServerConfig]
    """Its AAA servers (the visited domain's foreign AAA, or the home AAA), in order."""
    mip_port: int = MIP_PORT
    """The Mobile IP port of home agents."""
    max_lifetime: int = 1800
    """The longest registration it grants (RFC 5944 section 3.7.2.3)."""
    challenge_lifetime: float = 30.0
    """How long an issued challenge may be answered (RFC 4721 CHALLENGE_WINDOW in time)."""
    reply_repeats: tuple[float, ...] = (0.25, 0.75)
    """Seconds after an accepted reply went to the node at which it is sent
    to the node again, byte for byte (rule 5)."""
    answer_lifetime: float = 60.0
    """How long a node removed by an accepted deregistration is remembered, so
    that the node's retransmissions of it are relayed again (D1): longer than
    a node retransmits (docs/protocol.md section 3.11)."""
    ha_timeout: float = 15.0
    """How long it waits for the home agent's reply before answering 78
    (longer than the home agent's own work: its AAA request and gateway_timeout)."""
    ha_retransmit: float = 1.0
    """Seconds before a relayed request is sent to the home agent again (doubled each time, rule 3)."""
    ha_max_retransmit: float = 2.0
    """The longest wait between two relays of one request (rule 3)."""
    radius_timeout: float = radius_client.DEFAULT_TIMEOUT
    """Seconds before the first RADIUS retransmission (radius_client.py rule 1)."""
    radius_retries: int = radius_client.DEFAULT_RETRIES
    radius_max_timeout: float = radius_client.DEFAULT_MAX_TIMEOUT
    """The longest wait between two RADIUS transmissions (rule 1)."""
    radius_pool: str = "fail-over"
    """How requests are spread over the AAA servers (radius_client.py rule 4a)."""
    radius_zombie_period: float = radius_client.DEFAULT_ZOMBIE_PERIOD
    """Seconds a server that let a request time out is a zombie before it is dead (rule 4)."""
    radius_dead_time: float = radius_client.DEFAULT_DEAD_TIME
    """Seconds a dead server gets no requests unless it answers a probe (rule 4)."""
    forwarding_lifetime: int = 10
    """Smooth handoff (rule 6): how long the previous FA is asked to forward (seconds; 0: not at all)."""
    max_forwarding_lifetime: int = 60
    """As a previous FA (rule 7): the longest forwarding it grants."""
    notification_timeout: float = 1.0
    """How long it waits for the previous FA's Binding Acknowledge before sending
    again; twice as long after each retransmission (1, 2, 4 s: it gives up at 7 s)."""
    notification_retries: int = 2
    """How many times it sends a Previous-FA Notification again before giving up
    on forwarding (it then releases the previous FA's visitor, rule 6)."""
    release_max_interval: float = 16.0
    """The longest wait between two releases (Lifetime-0 notifications) to a
    previous FA that did not answer (rule 6)."""
    replay_tolerance: float = 7.0
    """RFC 5944 section 5.7: how far a notification's timestamp may be from this FA's clock."""
    coa_peers: Sequence[CoaPeer] = ()
    """Who else may send it Disconnect-/CoA-Requests (its AAA servers always may, rule 8)."""
    max_pending: int = 1024
    """Registrations and deregistrations worked on at once (bounds)."""
    max_challenges: int = 4096
    """Challenges issued and not yet answered (bounds)."""
    aaa_protocol: str = "radius"
    """``radius``, or ``diameter``: registrations are authorized with AMRs
    (RFC 4004, roles/diameter_client.py) to ``diameter_peer_host``; CoA and
    Disconnect still come over RADIUS from ``aaa_servers``."""
    diameter_host: str = ""
    """Diameter: this FA's Origin-Host (the home AAA knows it as its RADIUS client's name)."""
    diameter_realm: str = ""
    """Diameter: this FA's Origin-Realm."""
    diameter_peer_host: str = ""
    """Diameter: the Origin-Host of the peer AMRs go to (the home AAA, or a relay)."""


@dataclass
class _Pending:
    request: bytes  # the node's latest transmission (R1)
    message: mip.RegistrationRequest
    source: Address
    nai: str
    profile: VpnProfile | None = None
    timer: int | None = None  # ha_timeout, from the first relay
    challenge: bytes | None = None
    keys: list[object] = field(default_factory=list)  # every transmission's (home agent, identification)
    relayed: bytes | None = None  # what went to the home agent last
    sent: int = 0  # how often it went
    retransmit: int | None = None
    repeat: bool = False  # R2: a retransmission of an accepted registration, nothing to install
    deadline: float = 0.0  # when ha_timeout ends
    revocation: bool = False  # rule 4a
    # (SPI, key) a reply must authenticate under (FA-HA) before it may remove anything (D2, rule 4a)
    authenticator: tuple[int, Secret] | None = field(default=None, repr=False)
    mn_fa: MnKey | None = field(default=None, repr=False)  # rule 5: the node's new MN-FA key from AAA
    mn_fa_fallback: bool = False  # rule 5a: the request showed the node lacks the visitor's unconfirmed key


@dataclass
class Visitor:
    """A mobile node registered through this FA."""

    nai: str
    home_address: IPv4Address
    home_agent: IPv4Address
    source: Address
    session_id: str
    owner: str  # what its paths are installed under
    expires: float
    profile: VpnProfile = field(repr=False)
    #: The HA denied the last renewal (a gateway lost its binding and refused
    #: the same keys, say): the next registration asks for fresh keys
    #: (a service update, docs/protocol.md section 4) instead of a renewal.
    renewal_refused: bool = False
    #: The MN-FA challenge of the registration that made or renewed it, and
    #: when (R2: a retransmission of it is answered again).
    challenge: bytes | None = None
    registered_at: float = 0.0
    #: Rule 5: the MSA with the node that AAA made (RFC 3957), if any.
    mn_fa: MnKey | None = field(default=None, repr=False)
    #: Rule 5a: until a request verified under ``mn_fa`` (``mn_fa_confirmed``)
    #: the node may not have it (the reply that brought it was lost): a request
    #: authenticated under the key before (``mn_fa_before``; without one, a
    #: request with no MN-FA authentication) is accepted too.
    mn_fa_before: MnKey | None = field(default=None, repr=False)
    mn_fa_confirmed: bool = True


@dataclass
class Forwarding:
    """What a previous FA forwards for a node that moved on (flow E)."""

    nai: str
    home_address: IPv4Address
    new_fa: IPv4Address
    owner: str  # what the forwarding path is installed under
    identification: int  # of the notification, to recognise its retransmissions
    lifetime: int
    expires: float
    auth_key: Secret = field(repr=False)
    timer: int | None = None


@dataclass
class _Notification:
    """A Previous-FA Notification this FA (the new one) waits to see
    acknowledged: first the forwarding request, then, if that went
    unanswered, the releases (Lifetime 0) that remove the previous FA's
    visitor without forwarding."""

    previous: IPv4Address
    owner: str  # the visitor's owner, under which the forwarding path's receiving end is installed
    data: bytes
    auth_key: Secret = field(repr=False)
    wrap_key: Secret = field(repr=False)
    home_address: IPv4Address
    session: tuple[str, int]  # the previous FA's registration: the session in the epoch before
    path: PathProfile  # the previous FA's view of the forwarding path
    identification: int  # of the forwarding request (its retransmissions are the same bytes)
    until: float  # when this FA's own registration of the node ends: the previous FA's has by then
    sent: int = 1
    timer: int | None = None
    releasing: bool = False
    release: int | None = None  # the identification of the last release sent


@dataclass
class _Forwarding:
    """A notification whose forwarding path is being installed (rule 7)."""

    visitor: Visitor
    message: PreviousFaNotification
    source: Address
    auth_key: Secret = field(repr=False)
    lifetime: int


@dataclass
class _Push:
    """A CoA-Request whose new epoch's paths are being installed (rule 9)."""

    received: Received
    visitor: Visitor
    profile: VpnProfile = field(repr=False)


def _owner(profile: VpnProfile) -> str:
    # One owner per session epoch: after a handoff away and back, the paths of
    # the earlier visit (other keys, other SPIs) are told apart from the new.
    return f"{profile.session_id}#{profile.epoch}"


def _asks_mn_fa_key(message: mip.RegistrationRequest) -> bool:
    """Rule 5b: the request carries a Generalized MN-FA Key Generation Nonce
    Request of subtype AAA (RFC 3957 section 6.1)."""
    return ExtensionType.MN_FA_KEY_REQUEST in mip.aaa_key_requests(message.extensions)


def _key(home_agent: IPv4Address, identification: int) -> object:
    # RFC 5944 section 5.7: the low-order 32 bits of the Identification match
    # a reply to its request; with the home agent they name one registration.
    return (int(home_agent), identification & 0xFFFFFFFF)


def _diameter_client(
    config: FaConfig, random_bytes: Callable[[int], bytes], registration_of: Callable[[object], bytes | None]
) -> FaDiameterClient:
    from aaa_vpn.wire.diameter import Identity

    client = FaDiameterClient(
        Identity(config.diameter_host, config.diameter_realm, (config.address,)),
        {"*": [config.diameter_peer_host]},
        # RFC 6733's Tx timer: TCP retransmits, so one wait as long as the RADIUS
        # client's whole patience (at least 5 s) stands for its retransmissions.
        timeout=max(5.0, config.radius_timeout * (1 + config.radius_retries)),
        random_u32=lambda: int.from_bytes(random_bytes(4), "big"),
    )
    client.registration_of = registration_of
    return client


class ForeignAgent(Agent):
    """One foreign agent."""

    def __init__(self, config: FaConfig, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.config = config
        self.random_bytes = random_bytes
        self.radius: RadiusClient | FaDiameterClient = RadiusClient.for_agent(config, random_bytes)
        #: The Diameter AAA client when ``aaa_protocol`` is ``diameter`` (its
        #: transport is the service layer's: net/agents.py).
        self.diameter: FaDiameterClient | None = None
        if config.aaa_protocol == "diameter":
            self.radius = self.diameter = _diameter_client(config, random_bytes, self._registration_of)
        self.visitors: dict[str, Visitor] = {}
        self._challenges: dict[bytes, float] = {}  # issued, not yet used: challenge -> issued at
        self._pending: dict[object, _Pending] = {}  # by the key of its first transmission
        self._keys: dict[object, object] = {}  # every transmission's key -> the first's (R1)
        self._by_challenge: dict[tuple[str, bytes | None], object] = {}  # (NAI, challenge; None: deregistration)
        self._deregistered: dict[str, tuple[Visitor, float]] = {}  # D1: removed visitors, until
        self._by_owner: dict[str, object] = {}
        self._visitor_timers: dict[str, int] = {}
        # smooth handoff: as the new FA, notifications by (previous FA, identification)
        self._notifications: dict[tuple[IPv4Address, int], _Notification] = {}
        #: (previous FA, a release's identification) -> the key of its notification
        self._release_ids: dict[tuple[IPv4Address, int], tuple[IPv4Address, int]] = {}
        # as the previous FA: forwarding by home address, installations by owner,
        # the last notification timestamp accepted per (new FA, home address)
        self.forwarding: dict[IPv4Address, Forwarding] = {}
        self._installing: dict[str, _Forwarding] = {}
        self._last_notification: dict[tuple[IPv4Address, IPv4Address], int] = {}
        self._last_sent = 0
        self._pushes: dict[str, _Push] = {}  # rule 9: pushed views being installed, by new owner
        self.coa = CoaResponder(
            [CoaPeer(IPv4Address(s.address), s.secret) for s in config.aaa_servers] + list(config.coa_peers),
            self.counters,
        )

    # -- inputs ---------------------------------------------------------------------------------
    def receive_datagram(self, channel: Channel, data: bytes, source: Address, now: float) -> None:
        if channel is Channel.RADIUS:
            self.radius.receive_datagram(data, source, now)
            self._radius_events(now)
            return
        if channel is Channel.COA:
            self._coa_datagram(data, source, now)
            return
        try:
            message = mip.decode_message(data)
        except mip.MipDecodeError as exc:
            self.counters["dropped.malformed"] += 1
            fixed = self._fixed_part(data)
            if fixed is not None:
                self._deny(fixed, source, ReplyCode.FA_POORLY_FORMED_REQUEST, "", f"poorly formed: {exc}")
            return
        if isinstance(message, mip.RegistrationRequest):
            self._registration_request(data, message, source, now)
        elif isinstance(message, mip.RegistrationReply):
            self._registration_reply(data, message, source, now)
        elif isinstance(message, PreviousFaNotification):
            self._notification(data, message, source, now)
        elif isinstance(message, BindingAcknowledge):
            self._acknowledged(data, message, source, now)
        else:
            self.counters["dropped.unexpected"] += 1

    def paths_installed(self, owner: str, error: str | None, now: float) -> None:
        """The service layer's answer to :class:`InstallPaths`."""
        if owner in self._installing:
            self._forwarding_installed(owner, error, now)
            return
        if owner in self._pushes:
            self._push_installed(owner, error, now)
            return
        key = self._by_owner.get(owner)
        pending = self._pending.get(key) if key is not None else None
        if key is None or pending is None or pending.profile is None:
            return
        if error is not None:
            self._forget(key)
            self._deny(pending.message, pending.source, ReplyCode.FA_INSUFFICIENT_RESOURCES, pending.nai, error)
            return
        self._wait_for_ha(key, pending, now)
        # The node is back here: what this FA still forwarded for it elsewhere
        # (flow E, from an earlier visit) goes now, not when the reply comes:
        # the HA sends here as soon as it accepts, and the forwarding path
        # would take those packets away from the node.
        self._stop_forwarding(pending.message.home_address)

    def _relay(self, key: object, pending: _Pending, now: float) -> None:
        """Send the node's latest transmission to the home agent and keep sending
        it, with backoff, until a reply or ``ha_timeout`` (rule 3)."""
        profile = pending.profile
        if pending.message.lifetime == 0 or profile is None:
            relayed = relay_request(pending.request)  # RFC 5944 section 3.5.4: no FA-HA on a deregistration
        else:
            relayed = relay_request(
                pending.request,
                # Which session and key epoch these SAs belong to: after a handoff
                # answered by the foreign AAA, the HA's home AAA learns it here.
                extensions=[session_extension(profile.session_id, profile.epoch)],
                fa_ha_spi=profile.fa_ha_spi,
                fa_ha_key=profile.fa_ha_key,
            )
        pending.relayed = relayed
        pending.sent = 0
        self._relay_again(key, now)

    def _relay_again(self, key: object, now: float) -> None:
        pending = self._pending.get(key)
        if pending is None or pending.relayed is None:
            return
        if pending.sent:
            self.counters["relays_retransmitted"] += 1
        pending.sent += 1
        self._send(Channel.MIP, pending.relayed, (str(pending.message.home_agent), self.config.mip_port))
        self._cancel(pending.retransmit)
        pending.retransmit = None
        delay = backoff(self.config.ha_retransmit, pending.sent, self.config.ha_max_retransmit)
        if now + delay < pending.deadline:
            pending.retransmit = self._call_at(now + delay, functools.partial(self._relay_again, key))

    def _wait_for_ha(self, key: object, pending: _Pending, now: float) -> None:
        """Relay, and give the home agent ``ha_timeout`` from now (rule 4)."""
        pending.deadline = now + self.config.ha_timeout
        pending.timer = self._call_at(pending.deadline, functools.partial(self._ha_timeout, key))
        self._relay(key, pending, now)

    # -- the registration request -------------------------------------------------------------------
    def _registration_request(self, data: bytes, message: mip.RegistrationRequest, source: Address, now: float) -> None:
        self.counters["requests"] += 1
        nai = next((e.nai for e in message.extensions if isinstance(e, NaiExtension)), "")
        key = _key(message.home_agent, message.identification)
        if key in self._keys:
            self.counters["duplicates"] += 1  # the same transmission while we are still working on it
            return
        if message.lifetime == 0:
            self._deregistration(data, message, source, nai, key, now)
            return
        if not nai:
            self._deny(message, source, ReplyCode.FA_MISSING_NAI, nai, "no NAI extension")
            return
        mn_fa_check = self._mn_fa_authentic(self.visitors.get(nai), data, message, source, nai)
        if mn_fa_check is None:
            return
        fallback = mn_fa_check == "before"
        challenges = [e.challenge for e in message.extensions if isinstance(e, ChallengeExtension)]
        if challenges:
            first = self._by_challenge.get((nai, challenges[-1]))
            if first is not None:
                self._fold(first, key, data, message, source, now)
                return
            visitor = self.visitors.get(nai)
            if (
                visitor is not None
                and visitor.challenge == challenges[-1]
                and now - visitor.registered_at <= self.config.challenge_lifetime
                and (visitor.home_address, visitor.home_agent) == (message.home_address, message.home_agent)
                and message.care_of_address == self.config.address
            ):
                self._repeat(visitor, key, data, message, source, now)
                return
        if not challenges:
            self._deny(
                message, source, ReplyCode.FA_MISSING_CHALLENGE, nai, "no MN-FA challenge", challenge=True, now=now
            )
            return
        issued = self._challenges.get(challenges[-1])
        if issued is None:
            self._deny(
                message,
                source,
                ReplyCode.FA_UNKNOWN_CHALLENGE,
                nai,
                "challenge not issued here or used",
                challenge=True,
                now=now,
            )
            return
        if now - issued > self.config.challenge_lifetime:
            del self._challenges[challenges[-1]]
            self._deny(message, source, ReplyCode.FA_STALE_CHALLENGE, nai, "challenge too old", challenge=True, now=now)
            return
        if message.lifetime > self.config.max_lifetime:  # 0xFFFF (infinity) included
            self._deny(
                message,
                source,
                ReplyCode.FA_LIFETIME_TOO_LONG,
                nai,
                "lifetime too long",
                lifetime=self.config.max_lifetime,
            )
            return
        try:
            proof = mn_aaa_proof(data)
            if proof.spi != CHAP_SPI:
                raise mip.MipValueError(f"MN-AAA SPI {proof.spi} cannot be checked through RADIUS")
            chap_password, chap_challenge = proof.chap_attributes()
        except (mip.MipDecodeError, mip.MipValueError) as exc:
            self._deny(message, source, ReplyCode.FA_POORLY_FORMED_REQUEST, nai, str(exc))
            return
        if self._full(message, source, nai, now):
            return
        del self._challenges[challenges[-1]]  # RFC 4721 section 9: each challenge is answered once
        home_agent = message.home_agent if int(message.home_agent) else None
        try:
            previous = previous_fa(message.extensions)
        except mip.MipDecodeError as exc:
            self._deny(message, source, ReplyCode.FA_POORLY_FORMED_REQUEST, nai, str(exc))
            return
        visitor = self.visitors.get(nai)
        info = AccessRequest(
            nai=nai,
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=self.config.address,
            request_type=(
                RequestType.SERVICE_UPDATE
                if visitor is not None and visitor.renewal_refused
                else RequestType.FA_REGISTRATION
            ),
            care_of_address=self.config.address,
            home_agent=home_agent,
            previous_fa=previous,
            # A renewal names the session this FA holds for the node: only then
            # may the AAA keep its keys (after a deregistration or an expiry the
            # SAs are gone here, and keys once removed are never installed again).
            session_id=visitor.session_id if visitor is not None else None,
            # ... and the view it holds: if nothing changed the AAA confirms it
            # rather than sending every key again (docs/protocol.md section 1).
            # (Not when the node asks for an MN-FA key the visitor lacks: only a full answer brings one, rule 5b.)
            profile_digest=(
                visitor.profile.digest
                if visitor is not None
                and not visitor.renewal_refused
                and ((visitor.mn_fa is not None and not fallback) or not _asks_mn_fa_key(message))
                else None
            ),
        )
        self._start(key, _Pending(data, message, source, nai, challenge=challenges[-1], mn_fa_fallback=fallback))
        self.radius.request(info, now, tag=key)
        self._radius_events(now)

    def _mn_fa_authentic(
        self, visitor: Visitor | None, data: bytes, message: mip.RegistrationRequest, source: Address, nai: str
    ) -> str | None:
        """Rule 5a: a request of a visitor that holds an MN-FA key from AAA must
        end with MN-FA authentication under it (RFC 5944 section 3.7.2.1);
        otherwise it is answered 67 (counted ``mn_fa_auth_missing`` or
        ``mn_fa_auth_failed``; the decision is logged with its detail) and
        None returned. ``"key"``: verified under the visitor's key (now
        confirmed); ``"before"``: accepted as the node's while that key is
        unconfirmed (the visitor changes only when the registration is
        accepted: :meth:`_add_visitor`); ``"none"``: no key required."""
        if visitor is None or visitor.mn_fa is None:
            return "none"
        try:
            site = find_authentication(data, ExtensionType.MN_FA_AUTH)
        except mip.MipDecodeError:
            site = None
        if self._mn_fa_verifies(data, visitor.mn_fa):
            visitor.mn_fa_confirmed, visitor.mn_fa_before = True, None
            self.counters["mn_fa_auth_verified"] += 1
            return "key"
        if not visitor.mn_fa_confirmed and (
            self._mn_fa_verifies(data, visitor.mn_fa_before) if visitor.mn_fa_before is not None else site is None
        ):
            self.counters["mn_fa_auth_previous"] += 1
            return "before"
        if site is None and message.lifetime and _asks_mn_fa_key(message):
            # A node without the MSA asks AAA for a new one: MN-AAA speaks for it.
            self.counters["mn_fa_rekeyed"] += 1
            return "before"
        detail = "no MN-FA authentication" if site is None else "MN-FA authentication failed"
        self.counters["mn_fa_auth_missing" if site is None else "mn_fa_auth_failed"] += 1
        self._deny(message, source, ReplyCode.FA_MN_FAILED_AUTHENTICATION, nai, detail)  # logged with its detail
        return None

    def _holds_mn_fa_key(self, nai: str, fallback: bool) -> bool:
        """Rule 5b: the visitor already holds an MN-FA key the node has (it keeps
        it): its key, or the one before when the request showed (``fallback``,
        rule 5a) that the node never got that one."""
        visitor = self.visitors.get(nai)
        return visitor is not None and (visitor.mn_fa_before if fallback else visitor.mn_fa) is not None

    @staticmethod
    def _mn_fa_verifies(data: bytes, key: MnKey) -> bool:
        algorithm = msa_algorithm(key.algorithm)
        if algorithm is None:
            return False
        return verify_authentication(data, ExtensionType.MN_FA_AUTH, key.key, spi=key.request_spi, algorithm=algorithm)

    def _spis_taken(self, profile: VpnProfile) -> set[int]:
        """Rule 5: the SPIs a new MN-to-FA SPI must not be: the handoff SPI,
        the FA-HA SPIs of ``profile`` and of every visitor and registration in
        progress, and both SPIs of every MN-FA MSA this FA holds."""
        taken = {HANDOFF_SPI, CHAP_SPI}
        profiles = [profile, *(v.profile for v in self.visitors.values())]
        profiles += [p.profile for p in self._pending.values() if p.profile is not None]
        taken.update(p.fa_ha_spi for p in profiles if p.fa_ha_spi is not None)
        keys = [k for v in self.visitors.values() for k in (v.mn_fa, v.mn_fa_before)]
        keys += [p.mn_fa for p in self._pending.values()]
        for key in keys:
            if key is not None:
                taken.update((key.spi, key.request_spi))
        return taken

    def _full(self, message: mip.RegistrationRequest, source: Address, nai: str, now: float) -> bool:
        """Bounds: no room for one more registration (answered 66)."""
        if len(self._pending) < self.config.max_pending:
            return False
        self._limit_hit("pending", self.config.max_pending, now)
        self._deny(message, source, ReplyCode.FA_INSUFFICIENT_RESOURCES, nai, "too many registrations at once")
        return True

    def _start(self, key: object, pending: _Pending) -> None:
        self._pending[key] = pending
        pending.keys.append(key)
        self._keys[key] = key
        self._by_challenge[(pending.nai, pending.challenge)] = key

    def _fold(
        self, first: object, key: object, data: bytes, message: mip.RegistrationRequest, source: Address, now: float
    ) -> None:
        """R1/D2: the node retransmitted a registration still worked on. Only
        from where the registration came from, for the same registration, and
        only what can be relayed (else dropped and counted)."""
        pending = self._pending[first]
        old = pending.message
        try:
            relay_request(data)
        except mip.MipDecodeError:
            relayable = False
        else:
            relayable = True
        if (
            not relayable
            or source != pending.source
            or (message.home_address, message.home_agent, message.care_of_address, message.lifetime)
            != (old.home_address, old.home_agent, old.care_of_address, old.lifetime)
            or len(pending.keys) > MAX_FOLDED
        ):
            self.counters["dropped.retransmission_mismatch"] += 1
            return
        self.counters["retransmissions_folded"] += 1
        pending.request, pending.message = data, message
        pending.keys.append(key)
        self._keys[key] = first
        if pending.relayed is not None:
            self._relay(first, pending, now)  # with the home agent already: the latest goes now

    def _repeat(
        self,
        visitor: Visitor,
        key: object,
        data: bytes,
        message: mip.RegistrationRequest,
        source: Address,
        now: float,
    ) -> None:
        """R2: the node retransmitted a registration already accepted."""
        if self._full(message, source, visitor.nai, now):
            return
        self.counters["retransmissions_repeated"] += 1
        pending = _Pending(data, message, source, visitor.nai, visitor.profile, challenge=visitor.challenge)
        pending.repeat = True
        self._start(key, pending)
        self._wait_for_ha(key, pending, now)

    def _deregistration(
        self, data: bytes, message: mip.RegistrationRequest, source: Address, nai: str, key: object, now: float
    ) -> None:
        """D1, D2."""
        if not nai:
            self._deny(message, source, ReplyCode.FA_MISSING_NAI, nai, "deregistration without NAI")
            return
        first = self._by_challenge.get((nai, None))
        if first is not None:
            self._fold(first, key, data, message, source, now)
            return
        visitor = self.visitors.get(nai)
        if visitor is None:
            removed = self._deregistered.get(nai)
            visitor = removed[0] if removed is not None and removed[1] > now else None
        if visitor is None or (visitor.home_address, visitor.home_agent) != (message.home_address, message.home_agent):
            self.counters["dropped.deregistration_unknown_home_agent"] += 1
            self._deny(message, source, ReplyCode.INVALID_HOME_AGENT_ADDRESS, nai, "no visitor of that home agent here")
            return
        if self._mn_fa_authentic(visitor, data, message, source, nai) is None:
            return
        try:
            relay_request(data)
        except mip.MipDecodeError as exc:
            self._deny(message, source, ReplyCode.FA_POORLY_FORMED_REQUEST, nai, str(exc))
            return
        if self._full(message, source, nai, now):
            return
        pending = _Pending(data, message, source, nai)
        if visitor.profile.fa_ha_spi is not None and visitor.profile.fa_ha_key is not None:
            pending.authenticator = (visitor.profile.fa_ha_spi, visitor.profile.fa_ha_key)
        self._start(key, pending)
        self._wait_for_ha(key, pending, now)

    # -- AAA answers ---------------------------------------------------------------------------------
    def _radius_events(self, now: float) -> None:
        for datagram, address in self.radius.datagrams_to_send(now):
            self._send(Channel.RADIUS, datagram, address)
        while (event := self.radius.next_event()) is not None:
            if isinstance(event, RequestAccepted):
                self._accepted(event, now)
            elif isinstance(event, RequestRejected):
                self._rejected(event)
            elif isinstance(event, RequestFailed):
                self._aaa_failed(event)

    def _accepted(self, event: RequestAccepted, now: float) -> None:
        key = event.tag
        pending = self._pending.get(key)
        if pending is None:
            return
        profile = event.profile
        if profile is None:
            # A confirmation: the view this FA holds stands, with a new lifetime.
            visitor = self.visitors.get(pending.nai)
            confirmation = event.confirmation
            if (
                visitor is None
                or confirmation is None
                or (visitor.session_id, visitor.profile.epoch, visitor.profile.digest)
                != (confirmation.session_id, confirmation.epoch, confirmation.digest)
            ):
                self._forget(key)
                self._deny(
                    pending.message,
                    pending.source,
                    ReplyCode.FA_INSUFFICIENT_RESOURCES,
                    pending.nai,
                    "AAA confirmed a view this FA does not hold",
                )
                return
            self.counters["renewals_confirmed"] += 1
            profile = dataclasses.replace(visitor.profile, lifetime=confirmation.lifetime)
        if profile.fa_ha_key is None or profile.fa_ha_spi is None:
            self._forget(key)
            self._deny(
                pending.message,
                pending.source,
                ReplyCode.FA_INSUFFICIENT_RESOURCES,
                pending.nai,
                "no FA-HA key from AAA",
            )
            return
        pending.profile = profile
        pending.mn_fa = None
        if event.mn_fa_key is not None:  # rule 5
            pending.mn_fa = own_msa(event.mn_fa_key, self.random_bytes, self._spis_taken(profile))
            if pending.mn_fa is None:
                self.counters["mn_fa_keys_refused"] += 1
        if (
            pending.mn_fa is None
            and _asks_mn_fa_key(pending.message)
            and not self._holds_mn_fa_key(pending.nai, pending.mn_fa_fallback)
        ):
            # Rule 5b: the node asked for an MN-FA key and none can be given (RFC 3957 section 7).
            self.counters["mn_fa_keys_unavailable"] += 1
            self._forget(key)
            self._deny(
                pending.message,
                pending.source,
                ReplyCode.FA_MISSING_MN_FA_KEY,
                pending.nai,
                "no MN-FA key for the node from AAA",
                challenge=True,
                now=now,
            )
            return
        owner = _owner(profile)
        self._by_owner[owner] = key
        current = self.visitors.get(pending.nai)
        renewal = current is not None and current.owner == owner
        # Rule 6: the forwarding path's receiving end last, and only when the
        # node arrives (a renewal would install its keys again once the
        # forwarding is over, which no SA database may accept). Backends
        # prefer the node's own paths for outbound traffic (the forwarding
        # path only receives here); installed first, they also win where a
        # backend breaks ties by age (strongSwan's libipsec).
        paths = tuple(
            p
            for p in sorted(profile.paths, key=lambda p: p.role is PathRole.FA_FA)
            if p.local == self.config.address
            and not (p.role is PathRole.FA_FA and (renewal or self.config.forwarding_lifetime == 0))
        )
        self._emit(InstallPaths(owner, paths))

    def _rejected(self, event: RequestRejected) -> None:
        pending = self._pending.get(event.tag)
        if pending is None:
            return
        self._forget(event.tag)
        code = (
            {
                RejectReason.UNKNOWN_USER: ReplyCode.FA_MN_FAILED_AUTHENTICATION,
                RejectReason.AUTHENTICATION_FAILED: ReplyCode.FA_MN_FAILED_AUTHENTICATION,
                RejectReason.NO_SESSION: ReplyCode.FA_MN_FAILED_AUTHENTICATION,
                RejectReason.USER_DISABLED: ReplyCode.FA_ADMINISTRATIVELY_PROHIBITED,
                RejectReason.BAD_REQUEST: ReplyCode.FA_ADMINISTRATIVELY_PROHIBITED,
            }.get(event.reason, ReplyCode.FA_INSUFFICIENT_RESOURCES)
            if event.reason is not None
            else ReplyCode.FA_INSUFFICIENT_RESOURCES
        )
        self._deny(pending.message, pending.source, code, pending.nai, f"AAA rejected: {event.message}")

    def _aaa_failed(self, event: RequestFailed) -> None:
        pending = self._pending.get(event.tag)
        if pending is not None:
            self._forget(event.tag)
            self._deny(
                pending.message,
                pending.source,
                ReplyCode.FA_INSUFFICIENT_RESOURCES,
                pending.nai,
                f"AAA unreachable: {event.reason}",
            )

    # -- the home agent's reply ----------------------------------------------------------------------
    def _registration_reply(self, data: bytes, message: RegistrationReply, source: Address, now: float) -> None:
        key = self._keys.get(_key(message.home_agent, message.identification))
        pending = self._pending.get(key) if key is not None else None
        if key is None or pending is None or source[0] != str(message.home_agent):
            self.counters["dropped.unmatched_reply"] += 1
            return
        if pending.authenticator is not None and (pending.revocation or message.accepted):
            # D2, rule 4a: only the home agent that holds this registration's
            # FA-HA key can end a revocation or remove a visitor
            spi, fa_ha_key = pending.authenticator
            if not verify_authentication(data, ExtensionType.FA_HA_AUTH, fa_ha_key, spi=spi):
                self.counters["dropped.bad_fa_ha_auth"] += 1
                return
        if pending.revocation:  # the answer to a revocation (rule 4a)
            self.counters["revocations_answered"] += 1
            self._forget(key)
            return
        if pending.message.lifetime == 0:  # deregistration (D2)
            self._forget(key)
            if message.accepted:
                visitor = self.visitors.get(pending.nai)
                if visitor is not None:
                    self._remember_deregistered(visitor, now)
                self._remove_visitor(pending.nai)
            self._to_node(self._relayed_reply(data, message), pending.source, message.accepted, now)
            self._emit(RegistrationDone(pending.nai, message.home_address, int(message.code), 0, "deregistration"))
            return
        profile = pending.profile
        if profile is None or pending.timer is None:
            self.counters["dropped.early_reply"] += 1
            return
        assert profile.fa_ha_key is not None
        if not verify_authentication(data, ExtensionType.FA_HA_AUTH, profile.fa_ha_key, spi=profile.fa_ha_spi):
            self.counters["dropped.bad_fa_ha_auth"] += 1
            self._forget(key)
            if not pending.repeat:
                self._discard(pending.nai, profile)
            self._deny(
                pending.message,
                pending.source,
                ReplyCode.FA_HA_FAILED_AUTHENTICATION,
                pending.nai,
                "home agent failed FA-HA authentication",
            )
            return
        self._forget(key)
        if pending.repeat:
            # R2: the answer to a retransmission; the registration stands as it is
            # (with the MN-FA key it was given, whose reply the node may have lost).
            visitor = self.visitors.get(pending.nai)
            mn_fa = visitor.mn_fa if visitor is not None and message.accepted else None
            self._to_node(self._node_reply(data, message, mn_fa, now), pending.source, message.accepted, now)
            return
        if not message.accepted:
            current = self.visitors.get(pending.nai)
            if current is not None and current.owner == _owner(profile):
                # A refused renewal: the registration it renews stands until it
                # expires (so do its SAs), and the next one asks for new keys.
                current.renewal_refused = True
                self.counters["renewals_refused"] += 1
            self._discard(pending.nai, profile)
            self._send(Channel.MIP, self._relayed_reply(data, message), pending.source)
            self._emit(
                RegistrationDone(pending.nai, message.home_address, int(message.code), 0, "denied by the home agent")
            )
            return
        old = self.visitors.get(pending.nai)
        if old is not None and old.owner != _owner(profile):
            self._emit(DeletePaths(old.owner))
        self._add_visitor(pending, profile, message, now)
        relayed = self._node_reply(data, message, pending.mn_fa, now)
        self._to_node(relayed, pending.source, True, now)
        self._emit(RegistrationDone(pending.nai, message.home_address, int(message.code), message.lifetime))
        # The node is back here: what this FA still forwarded for it elsewhere goes.
        self._stop_forwarding(message.home_address)
        if old is None or old.owner != _owner(profile):
            # Rule 6, after the reply: the node never waits for the previous FA.
            self._notify_previous_fa(self.visitors[pending.nai], now)

    def _node_reply(self, data: bytes, message: RegistrationReply, mn_fa: MnKey | None, now: float) -> bytes:
        """Rule 5: an accepted reply as the node gets it: a fresh challenge and,
        with an MN-FA key from AAA, its Key Generation Nonce Reply and MN-FA
        authentication under it (RFC 3957 section 6.2: the reply precedes it)."""
        if not message.accepted:
            return self._relayed_reply(data, message)
        extensions: list[mip.Extension] = [ChallengeExtension(self._new_challenge(now))]
        algorithm = msa_algorithm(mn_fa.algorithm) if mn_fa is not None else None
        if mn_fa is None or algorithm is None:
            return relay_reply(data, extensions=extensions)
        nonce = AaaNonce(mn_fa.aaa_spi, mn_fa.request_spi, algorithm, mn_fa.nonce)  # the FA SPI: this FA's
        extensions.append(encode_aaa_nonce(ExtensionType.MN_FA_KEY_REPLY, mn_fa.lifetime, nonce))
        self.counters["mn_fa_keys_relayed"] += 1
        return relay_reply(
            data, extensions=extensions, mn_fa_spi=mn_fa.spi, mn_fa_key=mn_fa.key, mn_fa_algorithm=algorithm
        )

    def _to_node(self, reply: bytes, node: Address, accepted: bool, now: float) -> None:
        """Send the node a reply from its home agent; an accepted one again
        after each of ``reply_repeats`` (rule 5): the node's own
        retransmissions back off exponentially, so a lost acceptance would
        otherwise wait seconds for its next attempt."""
        self._send(Channel.MIP, reply, node)
        if accepted:
            for delay in self.config.reply_repeats:
                self._call_at(now + delay, functools.partial(self._repeat_reply, reply, node))

    def _repeat_reply(self, reply: bytes, node: Address, now: float) -> None:
        self.counters["replies_repeated"] += 1
        self._send(Channel.MIP, reply, node)

    def _relayed_reply(
        self, data: bytes, message: RegistrationReply, extensions: Sequence[mip.Extension] = ()
    ) -> bytes:
        """The home agent's reply as the node gets it (rule 5). A denial the
        home agent could not authenticate (it had no MN-HA key: no binding, an
        unknown node) has nothing to keep intact: its fixed part, code and
        NAI go on."""
        try:
            return relay_reply(data, extensions=extensions)
        except mip.MipDecodeError:
            if message.accepted:
                raise
            self.counters["relayed_unauthenticated_denials"] += 1
            bare = dataclasses.replace(
                message, extensions=tuple(e for e in message.extensions if isinstance(e, NaiExtension))
            )
            return mip.encode_registration_reply(bare)

    def _remember_deregistered(self, visitor: Visitor, now: float) -> None:
        """D1: a retransmission of the deregistration is relayed for a while."""
        for nai in [n for n, (_v, until) in self._deregistered.items() if until <= now]:
            del self._deregistered[nai]
        if len(self._deregistered) >= self.config.max_pending:
            self._limit_hit("deregistered", self.config.max_pending, now)
            del self._deregistered[next(iter(self._deregistered))]
        self._deregistered[visitor.nai] = (visitor, now + self.config.answer_lifetime)

    def _ha_timeout(self, key: object, now: float) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        self._forget(key)
        if pending.profile is not None and not pending.repeat:
            current = self.visitors.get(pending.nai)
            if pending.relayed is not None and (current is None or current.owner != _owner(pending.profile)):
                self._revoke(pending, now)
            self._discard(pending.nai, pending.profile)
        self._deny(
            pending.message,
            pending.source,
            ReplyCode.FA_REGISTRATION_TIMEOUT,
            pending.nai,
            "no reply from the home agent",
        )

    def _revoke(self, pending: _Pending, now: float) -> None:
        """Rule 4a: the home agent may have accepted what this FA gave up on
        (its reply lost): ask it to drop the binding of this registration's
        session and epoch at this care-of address, if it made one."""
        profile = pending.profile
        assert profile is not None and profile.fa_ha_key is not None and profile.fa_ha_spi is not None
        revocation = mip.RegistrationRequest(
            flags=mip.RegistrationFlags(0),
            lifetime=0,
            home_address=pending.message.home_address,
            home_agent=pending.message.home_agent,
            care_of_address=self.config.address,
            identification=self._identification(now),
            extensions=(NaiExtension(pending.nai), session_extension(profile.session_id, profile.epoch)),
        )
        data = append_authentication(
            mip.encode_registration_request(revocation), ExtensionType.FA_HA_AUTH, profile.fa_ha_spi, profile.fa_ha_key
        )
        key = _key(revocation.home_agent, revocation.identification)
        state = _Pending(data, revocation, (str(self.config.address), self.config.mip_port), pending.nai)
        state.relayed, state.repeat, state.revocation = data, True, True
        state.authenticator = (profile.fa_ha_spi, profile.fa_ha_key)
        state.deadline = now + self.config.ha_timeout
        self._pending[key] = state
        state.keys.append(key)
        self._keys[key] = key
        state.timer = self._call_at(state.deadline, functools.partial(self._revocation_unanswered, key))
        self.counters["revocations_sent"] += 1
        self._relay_again(key, now)

    def _revocation_unanswered(self, key: object, now: float) -> None:
        if key in self._pending:
            self.counters["revocations_unanswered"] += 1
            self._forget(key)

    def _discard(self, nai: str, profile: VpnProfile) -> None:
        """Remove what a failed registration installed, unless the node's
        current registration uses it (a renewal installs nothing new)."""
        current = self.visitors.get(nai)
        if current is None or current.owner != _owner(profile):
            self._emit(DeletePaths(_owner(profile)))

    def node_routes(self) -> list[tuple[IPv4Address, str]]:
        """(home address, where its registration came from) for every node the
        data path should deliver to: the visitors, and the registrations
        relayed to the HA (their SAs are up, and the HA and the gateways send
        here as soon as they accept, before the reply is back)."""
        routes = {v.home_address: v.source[0] for v in self.visitors.values()}
        for pending in self._pending.values():
            if pending.profile is not None and pending.timer is not None and pending.message.lifetime:
                routes.setdefault(pending.message.home_address, pending.source[0])
        return list(routes.items())

    # -- restart (docs/agents.md, "Restart") ------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        return {
            "visitors": [
                {
                    "nai": v.nai,
                    "home_address": str(v.home_address),
                    "home_agent": str(v.home_agent),
                    "source": [v.source[0], v.source[1]],
                    "session_id": v.session_id,
                    "owner": v.owner,
                    "expires": v.expires,
                    "renewal_refused": v.renewal_refused,
                    "profile": v.profile,
                    "mn_fa": mn_key_state(v.mn_fa),
                    **(
                        {"mn_fa_before": mn_key_state(v.mn_fa_before), "mn_fa_confirmed": v.mn_fa_confirmed}
                        if v.mn_fa is not None
                        else {}
                    ),
                }
                for v in self.visitors.values()
            ],
            "forwarding": [
                {
                    "nai": f.nai,
                    "home_address": str(f.home_address),
                    "new_fa": str(f.new_fa),
                    "owner": f.owner,
                    "identification": f.identification,
                    "lifetime": f.lifetime,
                    "expires": f.expires,
                    "auth_key": f.auth_key,
                }
                for f in self.forwarding.values()
            ],
            "last_notification": [[str(s), str(h), i] for (s, h), i in self._last_notification.items()],
            "last_sent": self._last_sent,
        }

    def restore_state(self, state: dict[str, Any], now: float) -> None:
        for entry in state.get("visitors", []):
            if entry["expires"] <= now:
                continue
            visitor = Visitor(
                nai=entry["nai"],
                home_address=IPv4Address(entry["home_address"]),
                home_agent=IPv4Address(entry["home_agent"]),
                source=(entry["source"][0], int(entry["source"][1])),
                session_id=entry["session_id"],
                owner=entry["owner"],
                expires=entry["expires"],
                profile=entry["profile"],
                renewal_refused=bool(entry.get("renewal_refused", False)),
                mn_fa=mn_key_from_state(entry.get("mn_fa")),
                mn_fa_before=mn_key_from_state(entry.get("mn_fa_before")),
                mn_fa_confirmed=bool(entry.get("mn_fa_confirmed", True)),
            )
            self.visitors[visitor.nai] = visitor
            self._visitor_timers[visitor.nai] = self._call_at(
                visitor.expires, functools.partial(self._expire, visitor.nai)
            )
        for entry in state.get("forwarding", []):
            if entry["expires"] <= now:
                continue
            forwarding = Forwarding(
                nai=entry["nai"],
                home_address=IPv4Address(entry["home_address"]),
                new_fa=IPv4Address(entry["new_fa"]),
                owner=entry["owner"],
                identification=int(entry["identification"]),
                lifetime=int(entry["lifetime"]),
                expires=entry["expires"],
                auth_key=entry["auth_key"],
            )
            forwarding.timer = self._call_at(
                forwarding.expires, functools.partial(self._forwarding_expired, forwarding.home_address)
            )
            self.forwarding[forwarding.home_address] = forwarding
        for sender, home, identification in state.get("last_notification", []):
            self._last_notification[(IPv4Address(sender), IPv4Address(home))] = int(identification)
        self._last_sent = max(self._last_sent, int(state.get("last_sent", 0)))

    def owners(self) -> set[str]:
        return {v.owner for v in self.visitors.values()} | {f.owner for f in self.forwarding.values()}

    def exchanges(self) -> int:
        return (
            len(self._pending)
            + len(self._notifications)
            + len(self._installing)
            + len(self._pushes)
            + self.radius.outstanding
            + self.radius.waiting
        )

    def forget_unbacked(self, installed: set[str], now: float) -> None:
        for nai in [n for n, v in self.visitors.items() if v.owner not in installed]:
            self.counters["restart.visitors_without_sas"] += 1
            self._remove_visitor(nai)
        for home in [h for h, f in self.forwarding.items() if f.owner not in installed]:
            self.counters["restart.forwarding_without_sas"] += 1
            self._stop_forwarding(home)

    # -- visitors ------------------------------------------------------------------------------------
    def _add_visitor(self, pending: _Pending, profile: VpnProfile, reply: RegistrationReply, now: float) -> None:
        # A renewal that brought no new MN-FA key keeps the one the node has.
        previous = self.visitors.get(pending.nai)
        self._remove_visitor(pending.nai, delete=False)
        visitor = Visitor(
            nai=pending.nai,
            home_address=reply.home_address,
            home_agent=reply.home_agent,
            source=pending.source,
            session_id=profile.session_id,
            owner=_owner(profile),
            expires=now + reply.lifetime,
            profile=profile,
            challenge=pending.challenge,
            registered_at=now,
        )
        # Rule 5a: the key the node has -- the visitor's, or the one before if the request showed
        # the node never got that one.
        held = None if previous is None else previous.mn_fa_before if pending.mn_fa_fallback else previous.mn_fa
        if pending.mn_fa is not None:  # a new key, not yet shown to be the node's
            visitor.mn_fa, visitor.mn_fa_confirmed, visitor.mn_fa_before = pending.mn_fa, False, held
        elif pending.mn_fa_fallback:
            visitor.mn_fa, visitor.mn_fa_confirmed, visitor.mn_fa_before = held, True, None
        elif previous is not None:
            visitor.mn_fa, visitor.mn_fa_before = previous.mn_fa, previous.mn_fa_before
            visitor.mn_fa_confirmed = previous.mn_fa_confirmed
        self.visitors[pending.nai] = visitor
        self._deregistered.pop(pending.nai, None)
        self._visitor_timers[pending.nai] = self._call_at(visitor.expires, functools.partial(self._expire, pending.nai))

    def _expire(self, nai: str, now: float) -> None:
        visitor = self.visitors.get(nai)
        if visitor is not None and visitor.expires <= now:
            self.counters["visitors_expired"] += 1
            self._remove_visitor(nai)

    def _remove_visitor(self, nai: str, delete: bool = True) -> None:
        visitor = self.visitors.pop(nai, None)
        self._cancel(self._visitor_timers.pop(nai, None))
        if visitor is not None and delete:
            self._emit(DeletePaths(visitor.owner))

    # -- smooth handoff, as the new FA (rule 6) ----------------------------------------------------------
    def _notify_previous_fa(self, visitor: Visitor, now: float) -> None:
        profile = visitor.profile
        previous, handoff_key = profile.previous_fa, profile.previous_fa_handoff_key
        if previous is None or handoff_key is None or previous == self.config.address:
            return
        path = next((p for p in profile.paths if p.role is PathRole.FA_FA and p.local == self.config.address), None)
        if path is None or path.peer != previous:
            self.counters["handoff.no_forwarding_path"] += 1
            return
        if self.config.forwarding_lifetime <= 0:
            self._emit(DeletePaths(visitor.owner, previous))
            return
        auth_key, wrap_key = keys.handoff_subkeys(handoff_key)
        identification = self._identification(now)
        state = _Notification(
            previous=previous,
            owner=visitor.owner,
            data=b"",
            auth_key=auth_key,
            wrap_key=wrap_key,
            home_address=visitor.home_address,
            session=(profile.session_id, profile.epoch - 1),
            path=mirror(path),
            identification=identification,
            until=visitor.expires,
        )
        state.data = self._notification_data(state, self.config.forwarding_lifetime, identification)
        self._notifications[(previous, identification)] = state
        self.counters["handoff.notifications_sent"] += 1
        self._send(Channel.MIP, state.data, (str(previous), self.config.mip_port))
        state.timer = self._call_at(
            now + self.config.notification_timeout,
            functools.partial(self._notification_timeout, previous, identification),
        )

    def _notification_data(self, state: _Notification, lifetime: int, identification: int) -> bytes:
        notification = PreviousFaNotification(
            lifetime=lifetime,
            home_address=state.home_address,
            care_of_address=self.config.address,
            identification=identification,
            acknowledge=True,
            extensions=(session_extension(*state.session), encode_vpn_path(state.path, state.wrap_key)),
        )
        return append_generalized_authentication(
            mip.encode_binding_message(notification), GeneralizedAuthSubtype.BINDING, HANDOFF_SPI, state.auth_key
        )

    def _notification_timeout(self, previous: IPv4Address, identification: int, now: float) -> None:
        state = self._notifications.get((previous, identification))
        if state is None:
            return
        if state.releasing:
            self._send_release(state, now)
            return
        if state.sent <= self.config.notification_retries:
            state.sent += 1
            self.counters["handoff.notifications_retransmitted"] += 1
            self._send(Channel.MIP, state.data, (str(previous), self.config.mip_port))
            state.timer = self._call_at(
                now + backoff(self.config.notification_timeout, state.sent),
                functools.partial(self._notification_timeout, previous, identification),
            )
            return
        # The previous FA is gone, silent or unreachable: the node is registered all
        # the same; the receiving end of the forwarding path, now useless, goes.
        self.counters["handoff.unanswered"] += 1
        self._emit(DeletePaths(state.owner, previous))
        self._start_releasing(state, now)

    def _start_releasing(self, state: _Notification, now: float) -> None:
        """The previous FA may still hold the node as a visitor, with SAs toward
        the HA and the gateways that nobody else has any more: tell it to let the
        node go (a notification with Lifetime 0, a fresh identification each
        time so that its timestamp stays fresh), until it answers or until this
        FA's own registration of the node ends (the previous one has by then)."""
        state.releasing, state.sent = True, 0
        if sum(1 for n in self._notifications.values() if n.releasing) > self.config.max_pending:
            self._limit_hit("releases", self.config.max_pending, now)
            self._end_notification(state)
            return
        self._send_release(state, now)

    def _send_release(self, state: _Notification, now: float) -> None:
        key = (state.previous, state.identification)
        if state.release is not None:
            self._release_ids.pop((state.previous, state.release), None)
        if now >= state.until:
            self.counters["handoff.release_unanswered"] += 1
            self._end_notification(state)
            return
        state.sent += 1
        state.release = self._identification(now)
        self._release_ids[(state.previous, state.release)] = key
        self.counters["handoff.releases_sent"] += 1
        self._send(
            Channel.MIP, self._notification_data(state, 0, state.release), (str(state.previous), self.config.mip_port)
        )
        wait = backoff(self.config.notification_timeout, state.sent, self.config.release_max_interval)
        state.timer = self._call_at(min(now + wait, state.until), functools.partial(self._notification_timeout, *key))

    def _end_notification(self, state: _Notification) -> None:
        self._notifications.pop((state.previous, state.identification), None)
        if state.release is not None:
            self._release_ids.pop((state.previous, state.release), None)
        self._cancel(state.timer)

    def _acknowledged(self, data: bytes, message: BindingAcknowledge, source: Address, now: float) -> None:
        previous = IPv4Address(source[0])
        key = (previous, message.identification)
        state = self._notifications.get(key) or self._notifications.get(self._release_ids.get(key, key))
        if state is None:
            self.counters["dropped.unmatched_ack"] += 1
            return
        authentic = verify_authentication(
            data,
            ExtensionType.GENERALIZED_AUTH,
            state.auth_key,
            subtype=GeneralizedAuthSubtype.BINDING,
            spi=HANDOFF_SPI,
        )
        if not authentic and message.accepted:
            # Only a refusal is believed unauthenticated (a previous FA without
            # the visitor has no key to sign with); it merely ends the retries.
            self.counters["dropped.bad_handoff_auth"] += 1
            return
        forwarding = message.identification == state.identification
        if state.releasing and not forwarding:
            self._end_notification(state)
            if message.accepted:
                self.counters["handoff.released"] += 1
            else:
                # 131: it holds no such visitor (any more); 129: it holds the node
                # in another session or epoch, which is not this FA's to remove.
                self.counters[f"handoff.release_refused.{int(message.status)}"] += 1
            return
        if not message.accepted:
            self.counters[f"handoff.refused.{int(message.status)}"] += 1
            if state.releasing:
                # a late answer to the forwarding request: only "no such visitor" ends the releases
                if message.status == BindingStatus.AUTHENTICATION_FAILED:
                    self._end_notification(state)
                return
            self._emit(DeletePaths(state.owner, previous))
            if message.status == BindingStatus.SA_INSTALL_FAILED and authentic:
                # It kept the visitor because the forwarding path did not install:
                # the node still goes from it, without forwarding.
                self._cancel(state.timer)
                self._start_releasing(state, now)
            else:
                self._end_notification(state)
            return
        self._end_notification(state)
        self.counters["handoff.acknowledged"] += 1
        if state.releasing:
            return  # the answer came late: the receiving end is gone already
        # The receiving end lives as long as the previous FA forwards.
        self._call_at(now + message.lifetime, lambda _now: self._emit(DeletePaths(state.owner, previous)))

    # -- smooth handoff, as the previous FA (rule 7) ------------------------------------------------------
    def _notification(self, data: bytes, message: PreviousFaNotification, source: Address, now: float) -> None:
        self.counters["handoff.notifications_received"] += 1
        sender = IPv4Address(source[0])
        visitor = next((v for v in self.visitors.values() if v.home_address == message.home_address), None)
        handoff_key = visitor.profile.handoff_key if visitor is not None else None
        if visitor is None or handoff_key is None:
            done = self.forwarding.get(message.home_address)
            if (
                done is not None
                and (done.new_fa, done.identification) == (sender, message.identification)
                and self._authentic(data, done.auth_key)
            ):
                # A retransmission of one already carried out: the same answer again.
                self.counters["handoff.duplicates"] += 1
                self._acknowledge(source, done.auth_key, message, BindingStatus.ACCEPTED, done.lifetime)
                return
            self.counters["handoff.unknown_visitor"] += 1
            self._acknowledge(source, None, message, BindingStatus.AUTHENTICATION_FAILED, 0)
            return
        auth_key, wrap_key = keys.handoff_subkeys(handoff_key)
        if not self._authentic(data, auth_key):
            self.counters["dropped.bad_handoff_auth"] += 1
            return
        if any(p.visitor is visitor for p in self._installing.values()):
            self.counters["handoff.duplicates"] += 1  # answered when the installation ends
            return
        verdict = check_timestamp(
            message.identification,
            now,
            self._last_notification.get((sender, message.home_address)),
            self.config.replay_tolerance,
        )
        if not verdict.ok:
            self._acknowledge(source, auth_key, message, BindingStatus.IDENTIFICATION_MISMATCH, 0)
            return
        self._last_notification[(sender, message.home_address)] = message.identification
        try:
            session = session_of(message.extensions)
        except mip.MipDecodeError:
            session = None
        if session is None:
            self._acknowledge(source, auth_key, message, BindingStatus.POORLY_FORMED, 0)
            return
        if session != (visitor.session_id, visitor.profile.epoch):
            self._acknowledge(source, auth_key, message, BindingStatus.ADMINISTRATIVELY_PROHIBITED, 0)
            return
        if unknown_critical_extensions(message.extensions):
            self._acknowledge(source, auth_key, message, BindingStatus.UNKNOWN_VPN_INFORMATION, 0)
            return
        try:
            paths = vpn_paths(message.extensions, wrap_key)
        except (VpnInformationError, mip.MipDecodeError):
            self._acknowledge(source, auth_key, message, BindingStatus.VPN_INFORMATION_INVALID, 0)
            return
        if not self._forwarding_path_ok(paths, message, sender):
            self._acknowledge(source, auth_key, message, BindingStatus.VPN_INFORMATION_INVALID, 0)
            return
        lifetime = min(message.lifetime, self.config.max_forwarding_lifetime)
        if lifetime == 0:  # the new FA wants no forwarding: the visitor just goes
            self._remove_visitor(visitor.nai)
            self._acknowledge(source, auth_key, message, BindingStatus.ACCEPTED, 0)
            return
        owner = f"{visitor.owner}/forward"
        self._installing[owner] = _Forwarding(visitor, message, source, auth_key, lifetime)
        self._emit(InstallPaths(owner, paths))

    def _forwarding_path_ok(
        self, paths: tuple[PathProfile, ...], message: PreviousFaNotification, sender: IPv4Address
    ) -> bool:
        """Exactly one FA-FA path, from this FA to the sender, which is the new
        care-of address, for traffic to the node's home address."""
        if len(paths) != 1:
            return False
        (path,) = paths
        return (
            path.role is PathRole.FA_FA
            and path.local == self.config.address
            and path.peer == sender == message.care_of_address
            and any(message.home_address in network for network in path.remote_ts)
        )

    def _forwarding_installed(self, owner: str, error: str | None, now: float) -> None:
        pending = self._installing.pop(owner)
        message, visitor = pending.message, pending.visitor
        if error is not None:
            self._acknowledge(pending.source, pending.auth_key, message, BindingStatus.SA_INSTALL_FAILED, 0)
            return
        if self.visitors.get(visitor.nai) is not visitor:
            # The node registered here again meanwhile: nothing to forward.
            self._emit(DeletePaths(owner))
            self._acknowledge(pending.source, pending.auth_key, message, BindingStatus.ADMINISTRATIVELY_PROHIBITED, 0)
            return
        self._stop_forwarding(message.home_address)
        # Its SAs toward the HA and the gateways go; packets still arriving for
        # the node leave through the forwarding path to the new FA.
        self._remove_visitor(visitor.nai)
        forwarding = Forwarding(
            nai=visitor.nai,
            home_address=message.home_address,
            new_fa=message.care_of_address,
            owner=owner,
            identification=message.identification,
            lifetime=pending.lifetime,
            expires=now + pending.lifetime,
            auth_key=pending.auth_key,
        )
        forwarding.timer = self._call_at(
            forwarding.expires, functools.partial(self._forwarding_expired, message.home_address)
        )
        self.forwarding[message.home_address] = forwarding
        self.counters["handoff.forwarding"] += 1
        self._acknowledge(pending.source, pending.auth_key, message, BindingStatus.ACCEPTED, pending.lifetime)

    def _forwarding_expired(self, home_address: IPv4Address, now: float) -> None:
        forwarding = self.forwarding.get(home_address)
        if forwarding is not None and forwarding.expires <= now:
            self.counters["handoff.forwarding_expired"] += 1
            self._stop_forwarding(home_address)

    def _stop_forwarding(self, home_address: IPv4Address) -> None:
        forwarding = self.forwarding.pop(home_address, None)
        if forwarding is not None:
            self._cancel(forwarding.timer)
            self._emit(DeletePaths(forwarding.owner))

    def _authentic(self, data: bytes, auth_key: Secret) -> bool:
        return verify_authentication(
            data, ExtensionType.GENERALIZED_AUTH, auth_key, subtype=GeneralizedAuthSubtype.BINDING, spi=HANDOFF_SPI
        )

    def _acknowledge(
        self,
        source: Address,
        auth_key: Secret | None,
        message: PreviousFaNotification,
        status: BindingStatus,
        lifetime: int,
    ) -> None:
        """A Binding Acknowledge (if asked for): home address, care-of address and
        identification echoed; authenticated when there is a key to do it with."""
        self.counters[f"handoff.acknowledged.{int(status)}"] += 1
        if not message.acknowledge:
            return
        ack = BindingAcknowledge(
            status=status,
            lifetime=lifetime,
            home_address=message.home_address,
            care_of_address=message.care_of_address,
            identification=message.identification,
        )
        data = mip.encode_binding_message(ack)
        if auth_key is not None:
            data = append_generalized_authentication(data, GeneralizedAuthSubtype.BINDING, HANDOFF_SPI, auth_key)
        self._send(Channel.MIP, data, source)

    def _identification(self, now: float) -> int:
        """A timestamp Identification (RFC 5944 section 5.7), strictly increasing."""
        identification = max(
            timestamp_identification(now, int.from_bytes(self.random_bytes(2), "big") & 0xFFF), self._last_sent + 1
        )
        self._last_sent = identification
        return identification

    # -- Dynamic Authorization (rule 8) ------------------------------------------------------------------
    def _coa_datagram(self, data: bytes, source: Address, now: float) -> None:
        received = self.coa.receive(data, source, now)
        if isinstance(received, bytes):
            self._send(Channel.COA, received, source)  # a retransmission: the same answer
        if not isinstance(received, Received):
            return
        request = received.request
        if not request.nai or not request.session_id:
            self._coa_answer(received, False, now, coa.ErrorCause.MISSING_ATTRIBUTE)
            return
        visitor = self.visitors.get(request.nai)
        if visitor is None or visitor.session_id != request.session_id:
            self._coa_answer(received, False, now, coa.ErrorCause.SESSION_CONTEXT_NOT_FOUND)
            return
        if request.code == coa.DISCONNECT_REQUEST:
            self.counters["coa.disconnected"] += 1
            self._remove_visitor(request.nai)
            self._emit(RegistrationDone(visitor.nai, visitor.home_address, 0, 0, "disconnected by AAA"))
            self._coa_answer(received, True, now)
            return
        self._push(received, visitor, now)

    def _push(self, received: Received, visitor: Visitor, now: float) -> None:
        """Rule 9: install a pushed view's paths beside the current ones."""
        try:
            profile = coa.pushed_profile(received.request, received.secret)
        except ProfileDecodeError:
            self.counters["coa.push.undecodable"] += 1
            self._coa_answer(received, False, now, coa.ErrorCause.INVALID_REQUEST)
            return
        owner = _owner(profile)
        if (
            profile.session_id != visitor.session_id
            or profile.care_of_address != self.config.address
            or profile.home_agent != visitor.home_agent
            or profile.home_address != visitor.home_address
            or profile.epoch <= visitor.profile.epoch
            or profile.fa_ha_key is None
            or profile.fa_ha_spi is None
            or owner in self._pushes
            or owner in self._by_owner
        ):
            self.counters["coa.push.invalid"] += 1
            self._coa_answer(received, False, now, coa.ErrorCause.INVALID_REQUEST)
            return
        paths = tuple(p for p in profile.paths if p.local == self.config.address and p.role is not PathRole.FA_FA)
        self._pushes[owner] = _Push(received, visitor, profile)
        self._emit(InstallPaths(owner, paths))

    def _push_installed(self, owner: str, error: str | None, now: float) -> None:
        push = self._pushes.pop(owner)
        visitor = push.visitor
        if error is not None:
            self.counters["coa.push.install_failed"] += 1
            self._coa_answer(push.received, False, now, coa.ErrorCause.RESOURCES_UNAVAILABLE)
            return
        if self.visitors.get(visitor.nai) is not visitor or visitor.profile.epoch >= push.profile.epoch:
            # The node deregistered, expired or registered again meanwhile.
            self._emit(DeletePaths(owner))
            self._coa_answer(push.received, False, now, coa.ErrorCause.SESSION_CONTEXT_NOT_FOUND)
            return
        old_owner = visitor.owner
        visitor.owner, visitor.profile = owner, push.profile
        self._emit(DeletePaths(old_owner))  # make before break
        self.counters["coa.pushed"] += 1
        self._coa_answer(push.received, True, now)

    def _coa_answer(self, received: Received, ack: bool, now: float, cause: int | None = None) -> None:
        self._send(Channel.COA, self.coa.answer(received, ack, now, cause), received.source)

    # -- helpers -----------------------------------------------------------------------------------------
    def _forget(self, key: object) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._cancel(pending.timer)
            self._cancel(pending.retransmit)
            for alias in pending.keys:
                self._keys.pop(alias, None)
            if self._by_challenge.get((pending.nai, pending.challenge)) == key:
                del self._by_challenge[(pending.nai, pending.challenge)]
            if pending.profile is not None and not pending.repeat:
                self._by_owner.pop(_owner(pending.profile), None)

    def _new_challenge(self, now: float) -> bytes:
        while self._challenges:  # in the order they were issued
            oldest, issued = next(iter(self._challenges.items()))
            if now - issued <= self.config.challenge_lifetime:
                break
            del self._challenges[oldest]
        if len(self._challenges) >= self.config.max_challenges:
            # Bounds: whoever asks for challenges faster than they expire
            # pushes the oldest out (its node gets 104 and a fresh one).
            self._limit_hit("challenges", self.config.max_challenges, now)
            del self._challenges[next(iter(self._challenges))]
        challenge = self.random_bytes(CHALLENGE_LENGTH)
        self._challenges[challenge] = now
        return challenge

    @staticmethod
    def _fixed_part(data: bytes) -> mip.RegistrationRequest | None:
        if len(data) < mip.REGISTRATION_REQUEST_LENGTH or data[0] != mip.MessageType.REGISTRATION_REQUEST:
            return None
        try:
            return mip.decode_registration_request(data[: mip.REGISTRATION_REQUEST_LENGTH])
        except mip.MipDecodeError:
            return None

    def _deny(
        self,
        message: mip.RegistrationRequest,
        source: Address,
        code: ReplyCode,
        nai: str,
        detail: str,
        *,
        challenge: bool = False,
        now: float = 0.0,
        lifetime: int = 0,
    ) -> None:
        """An FA denial (RFC 5944 section 3.7.2.3): home address, home agent and
        identification copied; lifetime meaningful only for code 69."""
        extensions: list[mip.Extension] = []
        if nai:
            extensions.append(NaiExtension(nai))
        if challenge:
            extensions.append(ChallengeExtension(self._new_challenge(now)))
        reply = RegistrationReply(
            code=code,
            lifetime=lifetime,
            home_address=message.home_address,
            home_agent=message.home_agent,
            identification=message.identification,
            extensions=tuple(extensions),
        )
        self.counters[f"denied.{int(code)}"] += 1
        self._send(Channel.MIP, mip.encode_registration_reply(reply), source)
        self._emit(RegistrationDone(nai, message.home_address, int(code), 0, detail))

    def aaa_events(self, now: float) -> None:
        """Answers that arrived for the AAA client outside :meth:`receive_datagram`
        (the Diameter stream): act on them."""
        self._radius_events(now)

    def _registration_of(self, key: object) -> bytes | None:
        pending = self._pending.get(self._keys.get(key, key))
        return pending.request if pending is not None else None

    def _inner_timer(self) -> float | None:
        return self.radius.get_timer()

    def _inner_handle_timer(self, now: float) -> None:
        self.radius.handle_timer(now)
        self._radius_events(now)
