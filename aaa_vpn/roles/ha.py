"""The home agent (HA), sans-IO.

Rules (RFC 5944 sections 3.8 and 5.7; docs/design.md flows A and B):

1. A relayed Registration Request must carry the NAI and the MN-AAA proof
   (else 134). The HA asks the home AAA for its part of the profile
   (HA-Registration with the relayed proof and the care-of address); a reject
   becomes 131 (authentication) or 129, an unreachable AAA 130.
2. With the profile it checks the MN-HA authenticator (its SPI and key come
   from AAA; else 131), the FA-HA authenticator (else 132) and the
   Identification timestamp against the last one it accepted from this node
   (RFC 5944 section 5.7.1; else 133, with the HA's time in the high 32 bits).
   A lifetime longer than its maximum, or than the home AAA granted (the
   keys' lifetime), is shortened (section 3.8.2).
3. It asks the service layer to install its own paths (FA <-> HA, HA <-> GW),
   all or nothing (else 130), then sends every gateway of the user's VPN a
   Binding Update carrying that gateway's paths, authenticated and with the
   keys wrapped under the HA-GW binding key (docs/protocol.md section 3.6).
   Only when every gateway acknowledged does it accept the registration; a
   gateway that refuses or does not answer within ``gateway_timeout`` makes
   it remove everything it installed and deny with 130. Each Binding Update
   is sent again, byte for byte, after ``gateway_retransmit`` seconds, then
   twice as long each time, while an answer could still come within
   ``gateway_timeout`` (docs/protocol.md section 3.11). Every Binding Update
   names the session and epoch it is for (the session NVSE), and so does a
   withdrawal (lifetime 0), which then removes only the binding of that
   session, of that epoch or an earlier one (gw.py rule 3): a withdrawal
   never removes a binding that another registration of the node made.
3a. A gateway keeps the binding a Binding Update replaced, paths and all,
   for a while (gw.py rule 3). When every gateway acknowledged and the
   registration is accepted, each gateway whose paths changed gets them once
   more (a confirmation, acknowledged like any Binding Update): its replaced
   binding may go. When the
   registration fails after its Binding Updates went out, a gateway of the
   binding that stands (if any) gets that binding's paths again for its
   remaining lifetime -- it puts back what it replaced, its SAs never having
   left -- and any other gateway a withdrawal of the failed registration's
   session and epoch. So after a failed registration every gateway holds
   the binding the HA holds, or none. A VPN change pushed with CoA (rule 7)
   ends the same way.
4. The Registration Reply carries the NAI, MN-HA authentication and FA-HA
   authentication (RFC 5944 section 3.8.3.3). A new registration of the same
   node replaces the old binding and its paths; a deregistration (lifetime 0,
   authenticated with the MN-HA key of the existing binding) removes them and
   tells the gateways (Binding Update, lifetime 0). A binding that is not
   renewed expires the same way. A retransmitted deregistration (the binding
   is gone, the same FA, authentic under the removed binding's MN-HA key,
   no older than the one that removed it) is accepted again. Every reply to
   the FA of a binding carries FA-HA authentication under that binding's
   key, deregistration replies included (RFC 5944 section 3.5.4 allows it in
   any reply where the two share a key): an FA removes a visitor only on an
   authenticated acceptance (fa.py D2).
4a. A revocation from an FA (a Registration Request with lifetime 0, FA-HA
   authentication and no MN-HA, fa.py rule 4a) removes the binding, or
   ends the registration under way, that this FA relayed for the session and
   epoch it names at this care-of address, if the FA-HA authenticator
   verifies under that registration's key and its timestamp is within
   ``replay_tolerance``; anything else is left alone. It is answered (code 0)
   either way, so the FA stops sending it.
8. Duplicates and retransmissions (RFC 5944 section 3.6.3; docs/protocol.md
   section 3.11). The same relayed request again gets the same reply,
   byte for byte, for ``answer_cache_seconds``. A request relayed by the same
   FA for the same node, care-of address, session and MN-FA challenge as one
   still being worked on (a mobile node's retransmission, with its new
   Identification) is folded into it: once it authenticates (MN-HA, FA-HA,
   timestamp newer), the one reply answers it, not the earlier one, and
   nothing starts twice. The same after the registration was accepted: it
   is answered from the binding (accepted, the binding's remaining lifetime)
   without AAA or gateways.
4b. Keys for the mobile node (RFC 3957; docs/diameter.md): when the home
   AAA's answer carries an MN-HA key for the node (a HAR's
   MIP-HA-to-MN-MSA, with the nonce of its MIP-MN-to-HA-MSA), the accepted
   reply carries, after the NAI, the MN-HA Key Generation Nonce Reply from
   AAA (the key's lifetime, the AAA SPI, the HA SPI -- which this HA
   allocates for the MSA, RFC 4004 section 9.6: random, at least 256, none
   of the provisioned MN-HA and FA-HA SPIs, the binding SPI or any other
   MSA's SPIs it holds --, the algorithm, replay method 2 and the nonce) and
   then MN-HA authentication under the *new* key, the node's SPI (the one
   it asked with: section 9.4, the node allocates the HA-to-MN SPI) and the
   algorithm the MSA names (HMAC-SHA-1, a 20-octet authenticator; RFC 3957
   section 6.4: the node derives the key first, then checks the reply with
   it). An MSA naming any other algorithm gives no key (counted
   ``mn_ha_keys_refused``). The binding keeps that MSA; from then on a
   request (registration, deregistration, retransmission) whose MN-HA
   extension names its HA SPI is checked with it, one naming the
   provisioned SPI of AAA's view with the provisioned key, and each reply is
   authenticated under the MSA its request used (with its algorithm and,
   for an MSA from AAA, the node's SPI; the
   provisioned key stays HMAC-MD5). A later registration
   without a new key keeps the binding's MSA; a VPN push leaves it.
4c. FA-HA authentication: this project's FA computes it with HMAC-MD5 (RFC
   5944's default; it also learns the key over RADIUS, which names no
   algorithm), while a Diameter MIP-FA-to-HA-MSA must announce
   MIP-Algorithm-Type 2, HMAC-SHA-1 (RFC 4004 section 9.8), which an RFC
   4004 FA will use. So a request's FA-HA authenticator is checked under
   the FA-HA key with either algorithm (its length, 16 or 20 octets, says
   which), and the reply's FA-HA authentication uses the algorithm of the
   request it answers.
9. Bounds: at most ``max_pending`` registrations at once (more: 130, counted
   ``limits.pending``); at most ``max_answers`` cached replies (the oldest go
   first, counted ``limits.answers``).
5. Binding Requests (flow G; docs/protocol.md section 3.10). A gateway's
   Binding Request is answered only if the home address has a live binding
   that has paths toward that gateway, the request authenticates under that
   binding's HA-GW binding key, and its timestamp Identification is newer than
   the last one accepted from that gateway for that home address. The answer
   is a Binding Update, without the A flag, carrying the gateway's current
   paths (those it got at registration, so it only refreshes) and the
   binding's remaining lifetime, rounded up. Anything else is counted and not
   answered: a gateway whose node is gone lets its binding expire.
6. Dynamic Authorization (RFC 5176; docs/protocol.md section 6). A
   Disconnect-Request that :mod:`aaa_vpn.roles.coa` accepts and that names a
   binding by NAI and session id removes the binding like a deregistration
   (its SAs; lifetime-0 Binding Updates to the gateways) and is answered
   Disconnect-ACK; no such binding: NAK 503; NAI or session id missing: NAK
   402.
7. A CoA-Request (a VPN change pushed by the home AAA) for a binding carries
   the HA's new view (:func:`aaa_vpn.wire.coa.pushed_profile`). No such
   binding: CoA-NAK 503. A view that does not decode, is for another HA,
   home address, care-of address or session, lacks the MN-HA or FA-HA key,
   or whose epoch is not newer than the binding's (or a registration of the
   node is under way): NAK 404. Otherwise, as in a registration (rule 3), the
   view's stationary paths (re-keyed by the push: a new owner) and the new
   epoch's FA-side paths are installed, then every gateway of the new view
   gets a Binding Update with its new paths (the binding's remaining
   lifetime). Once all acknowledged, the old epoch's FA-side paths, the old
   stationary paths and the bindings of gateways no longer in the view
   (lifetime-0 Binding Update) go,
   the binding takes the new view (its lifetime unchanged): CoA-ACK. An
   installation failure, a refusing gateway or none answering within
   ``gateway_timeout``: what this push installed here is removed, gateways
   new to the view are withdrawn (lifetime 0), and the answer is NAK 506.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn import keys
from aaa_vpn.roles import radius_client
from aaa_vpn.roles.agent import Address, Agent, Channel, DeletePaths, InstallPaths, RegistrationDone, backoff
from aaa_vpn.roles.coa import CoaPeer, CoaResponder, Received
from aaa_vpn.roles.diameter_client import HaDiameterClient
from aaa_vpn.roles.radius_client import RadiusClient, RequestAccepted, RequestFailed, RequestRejected, ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.wire import coa, mip
from aaa_vpn.wire.diameter import Identity
from aaa_vpn.wire.mip import (
    AaaNonce,
    BindingAcknowledge,
    BindingRequest,
    BindingUpdate,
    ChallengeExtension,
    ExtensionType,
    GeneralizedAuthSubtype,
    KeyGenAlgorithm,
    NaiExtension,
    RegistrationReply,
    ReplyCode,
    encode_aaa_nonce,
)
from aaa_vpn.wire.mip_auth import (
    DEFAULT_ALGORITHM,
    FIRST_ALLOCATED_SPI,
    append_authentication,
    append_generalized_authentication,
    authenticator_length,
    find_authentication,
    mn_aaa_proof,
    msa_algorithm,
    verify_authentication,
)
from aaa_vpn.wire.mip_replay import check_timestamp, mismatch_identification, timestamp_identification
from aaa_vpn.wire.mip_vpn import encode_vpn_path, session_extension, session_of
from aaa_vpn.wire.profile import MnKey, PathProfile, PathRole, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import ProfileDecodeError
from aaa_vpn.wire.radius_request import AccessRequest

MIP_PORT = 434
#: The SPI of aaa_vpn's binding authentication extension (the key is chosen by
#: the sender's address; SPIs 0-255 are reserved, RFC 5944 section 1.6).
BINDING_SPI = 256


@dataclass(frozen=True)
class HaConfig:
    """How one home agent runs."""

    address: IPv4Address
    aaa_servers: Sequence[ServerConfig]
    mip_port: int = MIP_PORT
    max_lifetime: int = 1800
    gateway_timeout: float = 4.0
    """How long it waits for every gateway's Binding Acknowledge (rule 3)."""
    gateway_retransmit: float = 0.25
    """Seconds before a Binding Update is sent again (doubled each time, rule 3)."""
    gateway_max_retransmit: float = 0.5
    """The longest wait between two transmissions of a Binding Update (rule 3):
    nine transmissions within the default ``gateway_timeout``."""
    replay_tolerance: float = 7.0  # RFC 5944 section 5.7: SHOULD be more than 3 s
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
    coa_peers: Sequence[CoaPeer] = ()
    """Who else may send it Disconnect-/CoA-Requests (its AAA servers always may, rule 6)."""
    answer_cache_seconds: float = 60.0
    """How long a reply is kept to answer a retransmission of its request (rule 8)."""
    max_pending: int = 1024
    """Registrations worked on at once (rule 9)."""
    max_answers: int = 4096
    """Replies kept for retransmissions (rule 9)."""
    aaa_protocol: str = "radius"
    """``diameter``: the home AAA's HARs (RFC 4004) answer this HA's requests
    for the registrations it authorized (roles/diameter_client.py); RADIUS the rest."""
    diameter_host: str = ""
    """Diameter: this HA's Origin-Host (its RADIUS client name at the home AAA)."""
    diameter_realm: str = ""
    """Diameter: this HA's Origin-Realm."""
    diameter_peer_host: str = ""
    """Diameter: the home AAA's Origin-Host."""


def mirror(path: PathProfile) -> PathProfile:
    """The other end's view of ``path``: ends, selectors, SPIs and keys swapped."""
    return PathProfile(
        role=path.role,
        local=path.peer,
        peer=path.local,
        local_ts=path.remote_ts,
        remote_ts=path.local_ts,
        key_mode=path.key_mode,
        esp_transform=path.esp_transform,
        spi_in=path.spi_out,
        spi_out=path.spi_in,
        key_in=path.key_out,
        key_out=path.key_in,
        lifetime=path.lifetime,
        ike_proposal=path.ike_proposal,
        ike_psk=path.ike_psk,
        qos=path.qos,
        gateway_mode=path.gateway_mode,
    )


def gateway_views(profile: VpnProfile, home_agent: IPv4Address) -> dict[IPv4Address, tuple[Secret, list[PathProfile]]]:
    """Per gateway: the binding key and the gateway's views of its paths.

    An HA <-> GW path is in the HA's view (mirrored here); an FA <-> GW path is
    already the gateway's view (the home AAA gives the HA the gateway's side)."""
    result: dict[IPv4Address, tuple[Secret, list[PathProfile]]] = {}
    for path in profile.paths:
        if path.binding_key is None:
            continue
        if path.role is PathRole.HA_GW and path.local == home_agent:
            gateway, view = path.peer, mirror(path)
        elif path.role is PathRole.FA_GW:
            gateway, view = path.local, path
        else:
            continue
        result.setdefault(gateway, (path.binding_key, []))[1].append(view)
    return result


def fa_owner(profile: VpnProfile) -> str:
    """The owner of the paths that end at the FA: one per session epoch, so a
    handoff or a VPN change installs beside the old ones, then removes them."""
    return f"{profile.session_id}#{profile.epoch}"


def stationary_owner(profile: VpnProfile) -> str:
    """The owner of the HA <-> GW paths, which do not move with the node.

    It names the paths' SPIs (a short digest), so the same stationary paths
    keep their owner across handoffs and renewals, and re-keyed ones (new
    SPIs, roles/home_plan.py rule 8) get a new owner: installed beside the old ones,
    which go once the registration or push is through (make before break)."""
    spis = sorted(
        (int(p.peer), p.spi_in, p.spi_out)
        for p in profile.paths
        if p.role is PathRole.HA_GW and p.local == profile.home_agent
    )
    digest = hashlib.sha256(repr(spis).encode()).hexdigest()[:8]
    return f"{profile.session_id}/stationary#{digest}"


@dataclass
class Binding:
    """A mobility binding: where a mobile node is and what the HA installed for it."""

    nai: str
    home_address: IPv4Address
    care_of_address: IPv4Address
    session_id: str
    expires: float
    identification: int
    profile: VpnProfile = field(repr=False)
    challenge: bytes | None = None
    """The MN-FA challenge of the request that made or renewed it (rule 8)."""
    fa: str = ""
    """The address that request came from."""
    gateway_epoch: int = 0
    """The latest epoch any gateway was told for this node in this session
    (a failed move may have told some): what its withdrawals name."""
    mn_ha: MnKey | None = field(default=None, repr=False)
    """Rule 4b: the MSA with the node that AAA made (RFC 3957), if any."""


@dataclass
class _Pending:
    request: bytes
    message: mip.RegistrationRequest
    source: Address
    nai: str
    profile: VpnProfile | None = None
    lifetime: int = 0
    gateways: dict[IPv4Address, tuple[Secret, list[PathProfile]]] = field(default_factory=dict)
    waiting: dict[IPv4Address, int] = field(default_factory=dict)  # gateway -> BU identification
    installing: set[str] = field(default_factory=set)  # owners whose InstallPaths is not answered yet
    timer: int | None = None
    challenge: bytes | None = None  # the MN-FA challenge (rule 8)
    session: tuple[str, int] | None = None  # the session NVSE
    candidate: tuple[bytes, mip.RegistrationRequest] | None = None  # a retransmission not yet checked (rule 8)
    told: bool = False  # Binding Updates sent
    refused: set[IPv4Address] = field(default_factory=set)  # gateways that refused them (nothing changed there)
    mn_ha: MnKey | None = field(default=None, repr=False)  # rule 4b: a new MSA from AAA for the reply
    used: MnKey | None = field(default=None, repr=False)  # rule 4b: the binding's MSA the request used


@dataclass
class _Outgoing:
    """A Binding Update (A set) waiting for its acknowledgement: sent again with backoff."""

    gateway: IPv4Address
    data: bytes
    deadline: float
    auth_key: Secret = field(repr=False)
    sent: int = 1
    timer: int | None = None
    acknowledged: bool = False


@dataclass
class _Tombstone:
    """A binding removed by a deregistration, kept to answer its retransmissions."""

    profile: VpnProfile = field(repr=False)
    identification: int
    fa: str
    until: float
    mn_ha_algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM  # of the MN-HA key in ``profile`` (rule 4b)
    mn_ha_reply_spi: int | None = None  # the SPI a reply under that MSA names (rule 4b, :func:`_reply_spi`)


@dataclass
class _Push:
    """A CoA-Request being carried out (rule 7)."""

    received: Received
    binding: Binding
    profile: VpnProfile = field(repr=False)
    lifetime: int
    gateways: dict[IPv4Address, tuple[Secret, list[PathProfile]]] = field(default_factory=dict)
    waiting: dict[IPv4Address, int] = field(default_factory=dict)  # gateway -> BU identification
    installing: set[str] = field(default_factory=set)
    told: bool = False  # Binding Updates sent
    timer: int | None = None


def _msa_used(derived: MnKey | None, data: bytes) -> MnKey | None:
    """Rule 4b: ``derived`` if the request's MN-HA extension names its SPI."""
    if derived is None:
        return None
    try:
        site = find_authentication(data, ExtensionType.MN_HA_AUTH)
    except mip.MipDecodeError:
        return None
    return derived if site is not None and site.extension.spi == derived.request_spi else None


def _algorithm(msa: MnKey | None) -> KeyGenAlgorithm | int:
    """Rule 4b: the algorithm of the MN-HA MSA :func:`_with_msa` puts in the
    profile: the MSA's own (HMAC-SHA-1), or HMAC-MD5 for the provisioned one."""
    return msa.algorithm if msa is not None else DEFAULT_ALGORITHM


def _fa_ha_algorithm(message: mip.RegistrationRequest) -> KeyGenAlgorithm | int:
    """Rule 4c: the algorithm of a request's FA-HA authenticator, by its
    length: HMAC-SHA-1 (20 octets) from an FA that follows the
    MIP-FA-to-HA-MSA's MIP-Algorithm-Type 2 (RFC 4004 section 9.8), else
    HMAC-MD5 (16, RFC 5944's default, what this project's FA sends)."""
    for extension in message.extensions:
        if isinstance(extension, mip.AuthenticationExtension) and extension.type == ExtensionType.FA_HA_AUTH:
            if len(extension.authenticator) == authenticator_length(KeyGenAlgorithm.HMAC_SHA1):
                return KeyGenAlgorithm.HMAC_SHA1
    return DEFAULT_ALGORITHM


def _fa_ha_authentic(data: bytes, key: Secret, spi: int | None) -> bool:
    """Rule 4c: FA-HA authentication under ``key`` with either algorithm the
    key may be used with (the authenticator's length says which)."""
    return any(
        verify_authentication(data, ExtensionType.FA_HA_AUTH, key, spi=spi, algorithm=algorithm)
        for algorithm in (DEFAULT_ALGORITHM, KeyGenAlgorithm.HMAC_SHA1)
    )


def _with_msa(profile: VpnProfile, msa: MnKey | None) -> VpnProfile:
    """Rule 4b: ``profile`` with the MN-HA MSA ``msa`` (the one a request used,
    :func:`_msa_used`) in place of the provisioned one, under the SPI the
    node's requests name (the HA's, :attr:`MnKey.request_spi`); a reply names
    the node's own (:func:`_reply_spi`). None: the provisioned one stays."""
    if msa is None:
        return profile
    return dataclasses.replace(profile, mn_ha_spi=msa.request_spi, mn_ha_key=msa.key)


def _reply_spi(msa: MnKey | None) -> int | None:
    """Rule 4b: the SPI a reply under the MSA of :func:`_with_msa` names: the
    node's (RFC 4004 section 9.4, the MIP-HA-to-MN-SPI the node allocated);
    None for the provisioned key (its one SPI)."""
    return msa.spi if msa is not None else None


def mn_key_state(key: MnKey | None) -> dict[str, Any] | None:
    """An MSA from AAA as an agent's state journal keeps it (the key stays a
    Secret: the journal encrypts it)."""
    if key is None:
        return None
    return {
        "spi": key.spi,
        "aaa_spi": key.aaa_spi,
        "algorithm": key.algorithm,
        "nonce": key.nonce.hex(),
        "key": key.key,
        "lifetime": key.lifetime,
        "replay_method": key.replay_method,
        **({"agent_spi": key.agent_spi} if key.agent_spi is not None else {}),
    }


def allocate_spi(random_bytes: Callable[[int], bytes], taken: Collection[int]) -> int:
    """An SPI for a new MSA of the node with this agent (RFC 4004 sections 9.5
    and 9.6: the receiving agent allocates it): random, never below
    :data:`FIRST_ALLOCATED_SPI`, never one in ``taken`` (the agent's
    provisioned SPIs and every other MSA's)."""
    while True:
        spi = int.from_bytes(random_bytes(4), "big")
        if spi >= FIRST_ALLOCATED_SPI and spi not in taken:
            return spi


def own_msa(key: MnKey, random_bytes: Callable[[int], bytes], taken: Collection[int]) -> MnKey | None:
    """The node's MSA with this agent from the MSA AAA gave (FA rule 5, HA rule
    4b): None if it names an algorithm this agent does not compute, else
    ``key`` with the SPI of the node's requests to this agent allocated here
    (:func:`allocate_spi`; never the node's own SPI of that MSA either)."""
    if msa_algorithm(key.algorithm) is None:
        return None
    return dataclasses.replace(key, agent_spi=allocate_spi(random_bytes, {*taken, key.spi}))


def mn_key_from_state(entry: dict[str, Any] | None) -> MnKey | None:
    """The MSA :func:`mn_key_state` kept, or None (none kept, or one naming an
    algorithm this agent does not compute)."""
    if not entry or msa_algorithm(int(entry["algorithm"])) is None:
        return None
    replay = entry.get("replay_method")
    return MnKey(
        spi=int(entry["spi"]),
        aaa_spi=int(entry["aaa_spi"]),
        algorithm=int(entry["algorithm"]),
        nonce=bytes.fromhex(entry["nonce"]),
        key=entry["key"],
        lifetime=int(entry["lifetime"]),
        replay_method=int(replay) if replay is not None else None,
        agent_spi=int(entry["agent_spi"]) if entry.get("agent_spi") is not None else None,
    )


class HomeAgent(Agent):
    """One home agent."""

    def __init__(self, config: HaConfig, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.config = config
        self.random_bytes = random_bytes
        self.radius: RadiusClient | HaDiameterClient = RadiusClient.for_agent(config, random_bytes)
        #: With ``aaa_protocol`` ``diameter``: the HARs of the home AAA answer
        #: this HA's requests, RADIUS the rest (its transport: net/agents.py).
        self.diameter: HaDiameterClient | None = None
        if config.aaa_protocol == "diameter":
            self.radius = self.diameter = HaDiameterClient(
                Identity(config.diameter_host, config.diameter_realm, (config.address,)),
                {"*": [config.diameter_peer_host]},
                self.radius,
                random_u32=lambda: int.from_bytes(random_bytes(4), "big"),
            )
        self.bindings: dict[str, Binding] = {}
        self._last_identification: dict[str, int] = {}
        self._pending: dict[object, _Pending] = {}
        self._by_owner: dict[str, object] = {}
        self._binding_timers: dict[str, int] = {}
        self._last_sent = 0
        # (gateway, home address) -> Identification of the last Binding Request accepted
        self._last_request: dict[tuple[IPv4Address, IPv4Address], int] = {}
        self._nai_of: dict[IPv4Address, str] = {}  # home address -> NAI of its binding
        self._pushes: dict[str, _Push] = {}  # rule 7, by NAI
        self._push_owners: dict[str, str] = {}  # owner being installed -> NAI
        self._outgoing: dict[tuple[IPv4Address, int], _Outgoing] = {}  # (gateway, identification)
        self._answers: dict[bytes, tuple[float, bytes]] = {}  # rule 8: request digest -> (until, reply)
        self._request_answers: dict[tuple[IPv4Address, IPv4Address], tuple[int, bytes]] = {}  # rule 5
        self._deregistered: dict[str, _Tombstone] = {}  # rule 4, by NAI
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
        except mip.MipDecodeError:
            self.counters["dropped.malformed"] += 1
            return
        if isinstance(message, mip.RegistrationRequest):
            self._registration_request(data, message, source, now)
        elif isinstance(message, BindingAcknowledge):
            self._binding_acknowledge(data, message, source, now)
        elif isinstance(message, BindingRequest):
            self._binding_request(data, message, source, now)
        else:
            self.counters["dropped.unexpected"] += 1

    def paths_installed(self, owner: str, error: str | None, now: float) -> None:
        """The service layer's answer to :class:`InstallPaths`."""
        if owner in self._push_owners:
            self._push_installed(owner, error, now)
            return
        key = self._by_owner.get(owner)
        pending = self._pending.get(key) if key is not None else None
        if key is None or pending is None or pending.profile is None:
            return
        if error is not None:
            self._fail(key, ReplyCode.HA_INSUFFICIENT_RESOURCES, f"cannot install SAs: {error}", now=now)
            return
        pending.installing.discard(owner)
        self._by_owner.pop(owner, None)
        if pending.installing:
            return
        if pending.told:  # the gateways were told while the paths were negotiated (paths_started)
            if not pending.waiting:
                self._accept(key, now)
            return
        if not pending.gateways:
            self._accept(key, now)
            return
        self._tell_gateways(key, pending, now)

    def paths_started(self, owner: str, now: float) -> None:
        """The service layer began installing ``owner``'s paths and reports with
        :meth:`paths_installed` when its peer has answered (a backend that
        negotiates them: strongSwan). If they are the last paths a registration
        waits for, its gateways are told now, so that their own negotiations
        with the new FA run while this one does; the reply still waits for
        both (a failure here is handled as a gateway's would be, by _fail)."""
        key = self._by_owner.get(owner)
        pending = self._pending.get(key) if key is not None else None
        if pending is None or pending.profile is None or pending.told or not pending.gateways:
            return
        if pending.installing == {owner}:
            self.counters["gateways_told_while_installing"] += 1
            self._tell_gateways(key, pending, now)

    def _tell_gateways(self, key: object, pending: _Pending, now: float) -> None:
        """Send every gateway of ``pending`` its Binding Update; wait for the acknowledgements."""
        assert pending.profile is not None
        label = (pending.profile.session_id, pending.profile.epoch)
        pending.told = True
        for gateway, (binding_key, views) in pending.gateways.items():
            identification = self._identification(now)
            pending.waiting[gateway] = identification
            self._send_binding_update(
                gateway,
                binding_key,
                views,
                pending.lifetime,
                pending.message.home_address,
                pending.message.care_of_address,
                identification,
                label,
                now=now,
            )
        pending.timer = self._call_at(now + self.config.gateway_timeout, functools.partial(self._gateway_timeout, key))

    # -- registration ---------------------------------------------------------------------------
    def _registration_request(self, data: bytes, message: mip.RegistrationRequest, source: Address, now: float) -> None:
        self.counters["requests"] += 1
        nai = next((e.nai for e in message.extensions if isinstance(e, NaiExtension)), "")
        key = (source[0], nai, message.identification)
        if key in self._pending:
            self.counters["duplicates"] += 1
            return
        answer = self._answers.get(_digest(source, data))
        if answer is not None and answer[0] > now:
            self.counters["duplicates_answered"] += 1  # rule 8: the same reply again
            self._send(Channel.MIP, answer[1], source)
            return
        if not nai:
            self._deny(message, source, ReplyCode.HA_POORLY_FORMED_REQUEST, nai, "no NAI", None)
            return
        if message.home_agent != self.config.address:
            self._deny(message, source, ReplyCode.HA_UNKNOWN_HOME_AGENT_ADDRESS, nai, "not this home agent", None)
            return
        if message.lifetime == 0:
            auth = {e.type for e in message.extensions if isinstance(e, mip.AuthenticationExtension)}
            if ExtensionType.FA_HA_AUTH in auth and ExtensionType.MN_HA_AUTH not in auth:
                self._revocation(data, message, source, nai, now)
                return
            self._deregistration(data, message, source, nai, now)
            return
        try:
            chap_password, chap_challenge = mn_aaa_proof(data).chap_attributes()
        except (mip.MipDecodeError, mip.MipValueError) as exc:
            self._deny(message, source, ReplyCode.HA_POORLY_FORMED_REQUEST, nai, str(exc), None)
            return
        try:
            session = session_of(message.extensions)
        except mip.MipDecodeError as exc:
            self._deny(message, source, ReplyCode.HA_POORLY_FORMED_REQUEST, nai, str(exc), None)
            return
        challenge = _challenge(message)
        if challenge is not None and self._fold(data, message, source, nai, session, challenge, now):
            return
        binding = self.bindings.get(nai)
        if challenge is not None and self._answer_from_binding(data, message, source, nai, session, challenge, now):
            return
        if len(self._pending) >= self.config.max_pending:
            self._limit_hit("pending", self.config.max_pending, now)
            self._deny(message, source, ReplyCode.HA_INSUFFICIENT_RESOURCES, nai, "too many at once", None)
            return
        holds = (
            binding is not None
            and session is not None
            and (binding.session_id, binding.profile.epoch) == session
            and binding.care_of_address == message.care_of_address
        )
        info = AccessRequest(
            nai=nai,
            chap_password=chap_password,
            chap_challenge=chap_challenge,
            nas_ip_address=self.config.address,
            request_type=RequestType.HA_REGISTRATION,
            care_of_address=message.care_of_address,
            session_id=session[0] if session else None,
            # The epoch the FA's SAs were derived in.
            key_epoch=session[1] if session else None,
            # A renewal of the binding this HA holds names its view: if nothing
            # changed, the home AAA confirms it instead of sending the keys again.
            profile_digest=binding.profile.digest if holds and binding is not None else None,
        )
        self._pending[key] = _Pending(data, message, source, nai, challenge=challenge, session=session)
        self.radius.request(info, now, tag=key)
        self._radius_events(now)

    def _fold(
        self,
        data: bytes,
        message: mip.RegistrationRequest,
        source: Address,
        nai: str,
        session: tuple[str, int] | None,
        challenge: bytes,
        now: float,
    ) -> bool:
        """Rule 8: a retransmission of a registration still being worked on is
        folded into it (True), never started again."""
        pending = next(
            (
                p
                for p in self._pending.values()
                if p.nai == nai
                and p.source[0] == source[0]
                and p.challenge == challenge
                and p.session == session
                and p.message.care_of_address == message.care_of_address
                and p.message.lifetime != 0
            ),
            None,
        )
        if pending is None:
            return False
        self.counters["retransmissions_folded"] += 1
        if pending.profile is None:
            pending.candidate = (data, message)  # checked when AAA has answered
        else:
            self._adopt(pending, data, message, source, now)
        return True

    def _adopt(
        self, pending: _Pending, data: bytes, message: mip.RegistrationRequest, source: Address, now: float
    ) -> None:
        """Answer ``message`` instead of the pending request if it authenticates
        as the same node through the same FA and is newer."""
        if message.identification == pending.message.identification:
            return  # the very transmission again
        assert pending.profile is not None
        profile = _with_msa(pending.profile, pending.used)
        assert profile.mn_ha_key is not None and profile.fa_ha_key is not None
        if (
            verify_authentication(
                data,
                ExtensionType.MN_HA_AUTH,
                profile.mn_ha_key,
                spi=profile.mn_ha_spi,
                algorithm=_algorithm(pending.used),
            )
            and _fa_ha_authentic(data, profile.fa_ha_key, profile.fa_ha_spi)
            and check_timestamp(
                message.identification, now, pending.message.identification, self.config.replay_tolerance
            ).ok
        ):
            pending.request, pending.message, pending.source = data, message, source
            if self._last_identification.get(pending.nai, 0) < message.identification:
                self._last_identification[pending.nai] = message.identification
        else:
            self.counters["retransmissions_refused"] += 1

    def _answer_from_binding(
        self,
        data: bytes,
        message: mip.RegistrationRequest,
        source: Address,
        nai: str,
        session: tuple[str, int] | None,
        challenge: bytes,
        now: float,
    ) -> bool:
        """Rule 8: a retransmission of the registration that made (or renewed)
        the binding is answered from it (True), with nothing started again."""
        binding = self.bindings.get(nai)
        if (
            binding is None
            or binding.expires <= now
            or binding.challenge != challenge
            or binding.fa != source[0]
            or binding.care_of_address != message.care_of_address
            or session != (binding.session_id, binding.profile.epoch)
            or any(p.nai == nai for p in self._pending.values())
        ):
            return False
        used = _msa_used(binding.mn_ha, data)
        profile = _with_msa(binding.profile, used)
        algorithm = _algorithm(used)
        assert profile.mn_ha_key is not None and profile.fa_ha_key is not None
        if not (
            verify_authentication(
                data, ExtensionType.MN_HA_AUTH, profile.mn_ha_key, spi=profile.mn_ha_spi, algorithm=algorithm
            )
            and _fa_ha_authentic(data, profile.fa_ha_key, profile.fa_ha_spi)
        ):
            return False
        if message.identification != binding.identification:
            verdict = check_timestamp(
                message.identification, now, self._last_identification.get(nai), self.config.replay_tolerance
            )
            if not verdict.ok:
                return False
            self._last_identification[nai] = binding.identification = message.identification
        self.counters["retransmissions_answered"] += 1
        lifetime = max(1, math.ceil(binding.expires - now))
        self._reply(
            message,
            source,
            ReplyCode.ACCEPTED,
            lifetime,
            nai,
            profile,
            mn_ha_algorithm=algorithm,
            mn_ha_reply_spi=_reply_spi(used),
        )
        return True

    def _remember_answer(self, source: Address, request: bytes, reply: bytes, now: float) -> None:
        """Rule 8: keep ``reply`` for retransmissions of ``request`` (bounded, oldest out first)."""
        answers = self._answers
        for old in [k for k, (until, _) in itertools.islice(answers.items(), 64) if until <= now]:
            del answers[old]
        if len(answers) >= self.config.max_answers:
            self._limit_hit("answers", self.config.max_answers, now)
            del answers[next(iter(answers))]
        answers[_digest(source, request)] = (now + self.config.answer_cache_seconds, reply)

    def _radius_events(self, now: float) -> None:
        for datagram, address in self.radius.datagrams_to_send(now):
            self._send(Channel.RADIUS, datagram, address)
        while (event := self.radius.next_event()) is not None:
            if isinstance(event, RequestAccepted):
                self._accepted(event, now)
            elif isinstance(event, RequestRejected):
                code = {
                    RejectReason.UNKNOWN_USER: ReplyCode.HA_MN_FAILED_AUTHENTICATION,
                    RejectReason.AUTHENTICATION_FAILED: ReplyCode.HA_MN_FAILED_AUTHENTICATION,
                    RejectReason.NO_RESOURCES: ReplyCode.HA_INSUFFICIENT_RESOURCES,
                }.get(event.reason or RejectReason.BAD_REQUEST, ReplyCode.HA_ADMINISTRATIVELY_PROHIBITED)
                self._fail(event.tag, code, f"AAA rejected: {event.message}", delete=False, now=now)
            elif isinstance(event, RequestFailed):
                reason = f"AAA unreachable: {event.reason}"
                self._fail(event.tag, ReplyCode.HA_INSUFFICIENT_RESOURCES, reason, delete=False, now=now)

    def _accepted(self, event: RequestAccepted, now: float) -> None:
        key = event.tag
        pending = self._pending.get(key)
        if pending is None:
            return
        profile = self._accepted_profile(event, pending.nai)
        message, data = pending.message, pending.request
        if profile is None:
            reason = "AAA confirmed a view this HA does not hold"
            self._fail(key, ReplyCode.HA_INSUFFICIENT_RESOURCES, reason, delete=False, now=now)
            return
        if profile.mn_ha_key is None or profile.fa_ha_key is None:
            self._fail(
                key, ReplyCode.HA_INSUFFICIENT_RESOURCES, "AAA gave no MN-HA or FA-HA key", delete=False, now=now
            )
            return
        binding = self.bindings.get(pending.nai)
        pending.mn_ha = None
        if event.mn_ha_key is not None:  # rule 4b
            pending.mn_ha = own_msa(event.mn_ha_key, self.random_bytes, self._spis_taken(profile))
            if pending.mn_ha is None:
                self.counters["mn_ha_keys_refused"] += 1
        pending.used = _msa_used(binding.mn_ha if binding is not None else None, data)
        checked = _with_msa(profile, pending.used)
        assert checked.mn_ha_key is not None
        if not verify_authentication(
            data, ExtensionType.MN_HA_AUTH, checked.mn_ha_key, spi=checked.mn_ha_spi, algorithm=_algorithm(pending.used)
        ):
            self._fail(key, ReplyCode.HA_MN_FAILED_AUTHENTICATION, "MN-HA authentication failed", delete=False, now=now)
            return
        if not _fa_ha_authentic(data, profile.fa_ha_key, profile.fa_ha_spi):
            self._fail(key, ReplyCode.HA_FA_FAILED_AUTHENTICATION, "FA-HA authentication failed", delete=False, now=now)
            return
        verdict = check_timestamp(
            message.identification, now, self._last_identification.get(pending.nai), self.config.replay_tolerance
        )
        pending.profile = profile
        if not verdict.ok:
            self._fail(key, ReplyCode.HA_IDENTIFICATION_MISMATCH, verdict.reason, delete=False, now=now)
            return
        self._last_identification[pending.nai] = message.identification
        if pending.candidate is not None:
            candidate, pending.candidate = pending.candidate, None
            self._adopt(pending, *candidate, pending.source, now)
        # Never past what the home AAA granted (its keys' lifetime, roles/home_plan.py rule 8).
        pending.lifetime = min(message.lifetime, self.config.max_lifetime, profile.lifetime or message.lifetime)
        pending.gateways = gateway_views(profile, self.config.address)
        own = [p for p in profile.paths if p.local == self.config.address]
        stationary = tuple(p for p in own if p.role is PathRole.HA_GW)
        moving = tuple(p for p in own if p.role is not PathRole.HA_GW)
        for owner, paths in ((stationary_owner(profile), stationary), (fa_owner(profile), moving)):
            if paths:
                pending.installing.add(owner)
                self._by_owner[owner] = key
        # Stationary first: it is usually there already (a no-op), and the
        # request fails before anything moves if it cannot be.
        for owner, paths in ((stationary_owner(profile), stationary), (fa_owner(profile), moving)):
            if paths:
                self._emit(InstallPaths(owner, paths))

    def _spis_taken(self, profile: VpnProfile) -> set[int]:
        """Rule 4b: the SPIs a new MN-to-HA SPI must not be: the provisioned
        MN-HA and FA-HA SPIs of ``profile`` and of every binding, tombstone
        and registration in progress, every MSA's, and the binding SPI."""
        taken = {BINDING_SPI}
        profiles = [profile, *(b.profile for b in self.bindings.values())]
        profiles += [t.profile for t in self._deregistered.values()]
        profiles += [p.profile for p in self._pending.values() if p.profile is not None]
        for each in profiles:
            taken.update(spi for spi in (each.mn_ha_spi, each.fa_ha_spi) if spi is not None)
        msas = [b.mn_ha for b in self.bindings.values()]
        msas += [m for p in self._pending.values() for m in (p.mn_ha, p.used)]
        for msa in msas:
            if msa is not None:
                taken.update((msa.spi, msa.request_spi))
        return taken

    def _accepted_profile(self, event: RequestAccepted, nai: str) -> VpnProfile | None:
        """The view an Accept gives: its profile, or -- a confirmation -- the
        binding's own view with the new lifetime (None if it is not the view
        confirmed)."""
        if event.profile is not None:
            return event.profile
        confirmation = event.confirmation
        binding = self.bindings.get(nai)
        if confirmation is None or binding is None:
            return None
        held = binding.profile
        if (held.session_id, held.epoch, held.digest) != (
            confirmation.session_id,
            confirmation.epoch,
            confirmation.digest,
        ):
            return None
        self.counters["renewals_confirmed"] += 1
        return dataclasses.replace(held, lifetime=confirmation.lifetime)

    def _accept(self, key: object, now: float) -> None:
        pending = self._pending.pop(key)
        self._cancel(pending.timer)
        profile = pending.profile
        assert profile is not None
        old = self.bindings.get(pending.nai)
        if old is not None and old.session_id != profile.session_id:
            self._emit(DeletePaths(fa_owner(old.profile)))
            self._emit(DeletePaths(stationary_owner(old.profile)))
        elif old is not None:
            if fa_owner(old.profile) != fa_owner(profile):
                # A handoff, a VPN change or a re-key: the paths toward the new
                # FA are up, the old ones go (make before break).
                self._emit(DeletePaths(fa_owner(old.profile)))
                if old.care_of_address != pending.message.care_of_address:
                    self.counters["handoffs"] += 1
            if stationary_owner(old.profile) != stationary_owner(profile):
                # Re-keyed stationary paths (roles/home_plan.py rule 8); otherwise they stay.
                self._emit(DeletePaths(stationary_owner(old.profile)))
        binding = Binding(
            pending.nai,
            pending.message.home_address,
            pending.message.care_of_address,
            profile.session_id,
            now + pending.lifetime,
            pending.message.identification,
            profile,
            challenge=pending.challenge,
            fa=pending.source[0],
            gateway_epoch=old.gateway_epoch if old is not None and old.session_id == profile.session_id else 0,
            # Rule 4b: a new MSA from AAA, else the one this request used (kept).
            mn_ha=pending.mn_ha or pending.used,
        )
        self._deregistered.pop(pending.nai, None)
        self.bindings[pending.nai] = binding
        if old is not None and self._nai_of.get(old.home_address) == pending.nai:
            del self._nai_of[old.home_address]
        self._nai_of[binding.home_address] = pending.nai
        self._cancel(self._binding_timers.pop(pending.nai, None))
        self._binding_timers[pending.nai] = self._call_at(binding.expires, functools.partial(self._expire, pending.nai))
        self._confirm(binding, old.profile if old is not None else None, pending.gateways, pending.lifetime, now)
        reply = self._reply(
            pending.message,
            pending.source,
            ReplyCode.ACCEPTED,
            pending.lifetime,
            pending.nai,
            _with_msa(profile, binding.mn_ha),
            key_reply=pending.mn_ha,
            mn_ha_algorithm=_algorithm(binding.mn_ha),
            mn_ha_reply_spi=_reply_spi(binding.mn_ha),
        )
        self._remember_answer(pending.source, pending.request, reply, now)
        self.counters["accepted"] += 1
        self._emit(RegistrationDone(pending.nai, pending.message.home_address, 0, pending.lifetime))

    # -- gateways -------------------------------------------------------------------------------
    def _identification(self, now: float) -> int:
        """A timestamp Identification (RFC 5944 section 5.7), strictly greater
        than any this HA sent before: gateways refuse one that is not newer."""
        identification = max(
            timestamp_identification(now, int.from_bytes(self.random_bytes(2), "big") & 0xFFF), self._last_sent + 1
        )
        self._last_sent = identification
        return identification

    def _send_binding_update(
        self,
        gateway: IPv4Address,
        binding_key: Secret,
        views: list[PathProfile],
        lifetime: int,
        home_address: IPv4Address,
        care_of_address: IPv4Address,
        identification: int,
        label: tuple[str, int],
        acknowledge: bool = True,
        *,
        now: float,
    ) -> bytes:
        """Send a Binding Update naming the session and epoch ``label``; one
        with A set is sent again until acknowledged or ``gateway_timeout``
        (rule 3). Returns the datagram."""
        auth_key, wrap_key = keys.binding_subkeys(binding_key)
        update = BindingUpdate(
            lifetime=lifetime,
            home_address=home_address,
            care_of_address=care_of_address,
            identification=identification,
            acknowledge=acknowledge,
            extensions=(*(encode_vpn_path(view, wrap_key) for view in views), session_extension(*label)),
        )
        signed = append_generalized_authentication(
            mip.encode_binding_message(update), GeneralizedAuthSubtype.BINDING, BINDING_SPI, auth_key
        )
        self.counters["binding_updates"] += 1
        self._send(Channel.MIP, signed, (str(gateway), self.config.mip_port))
        if acknowledge:
            outgoing = _Outgoing(gateway, signed, now + self.config.gateway_timeout, auth_key)
            self._outgoing[(gateway, identification)] = outgoing
            self._arm_update(outgoing, identification, now)
        return signed

    def _arm_update(self, outgoing: _Outgoing, identification: int, now: float) -> None:
        delay = backoff(self.config.gateway_retransmit, outgoing.sent, self.config.gateway_max_retransmit)
        if now + delay < outgoing.deadline:
            outgoing.timer = self._call_at(
                now + delay, functools.partial(self._update_again, outgoing.gateway, identification)
            )
        else:
            outgoing.timer = self._call_at(
                outgoing.deadline, functools.partial(self._update_expired, outgoing.gateway, identification)
            )

    def _update_expired(self, gateway: IPv4Address, identification: int, now: float) -> None:
        self._outgoing.pop((gateway, identification), None)

    def _update_again(self, gateway: IPv4Address, identification: int, now: float) -> None:
        outgoing = self._outgoing.get((gateway, identification))
        if outgoing is None:
            return
        outgoing.sent += 1
        self.counters["binding_updates_retransmitted"] += 1
        self._send(Channel.MIP, outgoing.data, (str(gateway), self.config.mip_port))
        self._arm_update(outgoing, identification, now)

    def _stop_updates(self, waiting: dict[IPv4Address, int]) -> None:
        """No more retransmissions of these Binding Updates (their exchange ended)."""
        for gateway, identification in waiting.items():
            outgoing = self._outgoing.pop((gateway, identification), None)
            if outgoing is not None:
                self._cancel(outgoing.timer)

    def _binding_acknowledge(self, data: bytes, message: BindingAcknowledge, source: Address, now: float) -> None:
        gateway = IPv4Address(source[0])
        outgoing = self._outgoing.get((gateway, message.identification))
        if outgoing is not None and self._acknowledges(data, outgoing):
            del self._outgoing[(gateway, message.identification)]
            self._cancel(outgoing.timer)
            outgoing.acknowledged = True
        push = next((p for p in self._pushes.values() if p.waiting.get(gateway) == message.identification), None)
        if push is not None:
            self._push_acknowledged(push, gateway, data, message, now)
            return
        found = next(
            ((k, p) for k, p in self._pending.items() if p.waiting.get(gateway) == message.identification), None
        )
        if found is None:
            if outgoing is not None and outgoing.acknowledged:
                # a withdrawal, restoration or confirmation: its exchange is over
                self.counters[f"gateway_acknowledged.{int(message.status)}"] += 1
            else:
                self.counters["dropped.unmatched_ack"] += 1
            return
        key, pending = found
        binding_key = pending.gateways[gateway][0]
        auth_key, _ = keys.binding_subkeys(binding_key)
        if not verify_authentication(
            data, ExtensionType.GENERALIZED_AUTH, auth_key, subtype=GeneralizedAuthSubtype.BINDING, spi=BINDING_SPI
        ):
            self.counters["dropped.bad_binding_auth"] += 1
            return
        if not message.accepted:
            pending.refused.add(gateway)
            self._fail(
                key, ReplyCode.HA_INSUFFICIENT_RESOURCES, f"gateway {gateway} refused: {message.status}", now=now
            )
            return
        del pending.waiting[gateway]
        if not pending.waiting and not pending.installing:
            self._accept(key, now)

    def _acknowledges(self, data: bytes, outgoing: _Outgoing) -> bool:
        """Whether ``data`` authenticates under the key ``outgoing`` was sent with."""
        return verify_authentication(
            data,
            ExtensionType.GENERALIZED_AUTH,
            outgoing.auth_key,
            subtype=GeneralizedAuthSubtype.BINDING,
            spi=BINDING_SPI,
        )

    def _binding_request(self, data: bytes, request: BindingRequest, source: Address, now: float) -> None:
        """A gateway asks for a refresh of its binding (rule 5)."""
        self.counters["binding_requests"] += 1
        gateway = IPv4Address(source[0])
        binding = self.bindings.get(self._nai_of.get(request.home_address, ""))
        if binding is None or binding.expires <= now:
            # The node deregistered or its binding expired: no answer, so the
            # gateway's binding expires (and there is no key to check with).
            self.counters["binding_requests.no_binding"] += 1
            return
        views = gateway_views(binding.profile, self.config.address).get(gateway)
        if views is None:
            self.counters["binding_requests.not_a_gateway"] += 1
            return
        binding_key, paths = views
        auth_key, _ = keys.binding_subkeys(binding_key)
        if not verify_authentication(
            data, ExtensionType.GENERALIZED_AUTH, auth_key, subtype=GeneralizedAuthSubtype.BINDING, spi=BINDING_SPI
        ):
            self.counters["dropped.bad_binding_auth"] += 1
            return
        last = self._last_request.get((gateway, request.home_address))
        answered = self._request_answers.get((gateway, request.home_address))
        if answered is not None and answered[0] == request.identification:
            self.counters["binding_requests.duplicates"] += 1  # the same answer again
            self._send(Channel.MIP, answered[1], (str(gateway), self.config.mip_port))
            return
        if not check_timestamp(request.identification, now, last, self.config.replay_tolerance).ok:
            self.counters["binding_requests.identification_mismatch"] += 1
            return
        self._last_request[(gateway, request.home_address)] = request.identification
        self.counters["binding_requests.answered"] += 1
        answer = self._send_binding_update(
            gateway,
            binding_key,
            paths,
            math.ceil(binding.expires - now),  # never below 1 here: the binding is live
            binding.home_address,
            binding.care_of_address,
            self._identification(now),
            (binding.session_id, binding.profile.epoch),
            acknowledge=False,  # the update is the answer; the gateway asks again if it is lost
            now=now,
        )
        self._request_answers[(gateway, request.home_address)] = (request.identification, answer)

    def _gateway_timeout(self, key: object, now: float) -> None:
        pending = self._pending.get(key)
        if pending is not None and pending.waiting:
            missing = ", ".join(str(g) for g in pending.waiting)
            self._fail(key, ReplyCode.HA_INSUFFICIENT_RESOURCES, f"no Binding Acknowledge from {missing}", now=now)

    def _undo_at_gateways(self, pending: _Pending, current: Binding | None, now: float) -> None:
        """A registration failed after its Binding Updates went out (rule 3a):
        a gateway of the binding that stands gets that binding's paths again
        (it puts back the binding it may have replaced, or only refreshes);
        any other gets a withdrawal of this registration's session and epoch.
        A gateway that refused the update changed nothing and gets neither."""
        assert pending.profile is not None
        label = (pending.profile.session_id, pending.profile.epoch)
        standing = gateway_views(current.profile, self.config.address) if current is not None else {}
        message = pending.message
        for gateway, (binding_key, views) in pending.gateways.items():
            if gateway in pending.refused:
                continue  # it changed nothing
            if current is not None and gateway in standing:
                self._restore_at(gateway, current, standing[gateway], now)
                continue
            self._send_binding_update(
                gateway,
                binding_key,
                views,
                0,
                message.home_address,
                message.care_of_address,
                self._identification(now),
                label,
                now=now,
            )

    def _restore_at(
        self, gateway: IPv4Address, binding: Binding, view: tuple[Secret, list[PathProfile]], now: float
    ) -> None:
        """Rule 3a: the gateway's paths of ``binding`` again, for its remaining lifetime."""
        self.counters["gateway_restorations"] += 1
        binding_key, paths = view
        self._send_binding_update(
            gateway,
            binding_key,
            paths,
            max(1, math.ceil(binding.expires - now)),
            binding.home_address,
            binding.care_of_address,
            self._identification(now),
            (binding.session_id, binding.profile.epoch),
            now=now,
        )

    def _confirm(
        self,
        binding: Binding,
        previous: VpnProfile | None,
        gateways: dict[IPv4Address, tuple[Secret, list[PathProfile]]],
        lifetime: int,
        now: float,
    ) -> None:
        """Rule 3a: a gateway whose paths changed gets them once more (sent
        again until acknowledged, like any Binding Update): the registration
        is through, and the binding they replaced there may go."""
        before = gateway_views(previous, self.config.address) if previous is not None else {}
        for gateway, (binding_key, views) in gateways.items():
            if previous is None or (gateway in before and before[gateway][1] == views):
                continue
            self.counters["gateway_confirmations"] += 1
            self._send_binding_update(
                gateway,
                binding_key,
                views,
                lifetime,
                binding.home_address,
                binding.care_of_address,
                self._identification(now),
                (binding.session_id, binding.profile.epoch),
                now=now,
            )

    # -- restart (docs/agents.md, "Restart") ------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        return {
            "bindings": [
                {
                    "nai": b.nai,
                    "home_address": str(b.home_address),
                    "care_of_address": str(b.care_of_address),
                    "session_id": b.session_id,
                    "expires": b.expires,
                    "identification": b.identification,
                    "profile": b.profile,
                    "mn_ha": mn_key_state(b.mn_ha),
                }
                for b in self.bindings.values()
            ],
            # Replay protection must survive a restart (RFC 5944 section 5.7).
            "last_identification": dict(self._last_identification),
            "last_request": [[str(g), str(h), i] for (g, h), i in self._last_request.items()],
            "last_sent": self._last_sent,
        }

    def restore_state(self, state: dict[str, Any], now: float) -> None:
        for nai, identification in state.get("last_identification", {}).items():
            self._last_identification[nai] = int(identification)
        for gateway, home, identification in state.get("last_request", []):
            self._last_request[(IPv4Address(gateway), IPv4Address(home))] = int(identification)
        self._last_sent = max(self._last_sent, int(state.get("last_sent", 0)))
        for entry in state.get("bindings", []):
            if entry["expires"] <= now:
                continue
            binding = Binding(
                nai=entry["nai"],
                home_address=IPv4Address(entry["home_address"]),
                care_of_address=IPv4Address(entry["care_of_address"]),
                session_id=entry["session_id"],
                expires=entry["expires"],
                identification=int(entry["identification"]),
                profile=entry["profile"],
                mn_ha=mn_key_from_state(entry.get("mn_ha")),
            )
            self.bindings[binding.nai] = binding
            self._nai_of[binding.home_address] = binding.nai
            self._binding_timers[binding.nai] = self._call_at(
                binding.expires, functools.partial(self._expire, binding.nai)
            )

    def owners(self) -> set[str]:
        owners: set[str] = set()
        for binding in self.bindings.values():
            owners |= {fa_owner(binding.profile), stationary_owner(binding.profile)}
        return owners

    def exchanges(self) -> int:
        return (
            len(self._pending) + len(self._outgoing) + len(self._pushes) + self.radius.outstanding + self.radius.waiting
        )

    def forget_unbacked(self, installed: set[str], now: float) -> None:
        """A binding whose FA-side SAs are gone ends (its gateways are told,
        lifetime 0); the node registers again. Missing stationary SAs alone
        (a user without static gateways has none) do not end it."""
        for nai in [n for n, b in self.bindings.items() if fa_owner(b.profile) not in installed]:
            self.counters["restart.bindings_without_sas"] += 1
            self._remove_binding(nai, now)

    def _revocation(self, data: bytes, message: mip.RegistrationRequest, source: Address, nai: str, now: float) -> None:
        """Rule 4a: an FA gave up on a registration it relayed."""
        try:
            session = session_of(message.extensions)
        except mip.MipDecodeError:
            session = None
        fresh = check_timestamp(message.identification, now, None, self.config.replay_tolerance).ok
        binding = self.bindings.get(nai)
        pending_key = next(
            (
                k
                for k, p in self._pending.items()
                if p.nai == nai and p.source[0] == source[0] and p.session == session and p.message.lifetime
            ),
            None,
        )
        profile: VpnProfile | None = None
        if (
            binding is not None
            and binding.fa == source[0]
            and binding.care_of_address == message.care_of_address
            and session == (binding.session_id, binding.profile.epoch)
        ):
            profile = binding.profile
        elif pending_key is not None:
            profile = self._pending[pending_key].profile
        authentic = (
            profile is not None
            and profile.fa_ha_key is not None
            and _fa_ha_authentic(data, profile.fa_ha_key, profile.fa_ha_spi)
        )
        if profile is not None and not (authentic and fresh):
            self.counters["dropped.bad_revocation"] += 1
            return
        if profile is not None and binding is not None and profile is binding.profile:
            self.counters["revocations"] += 1
            self._remove_binding(nai, now)
            self._emit(RegistrationDone(nai, message.home_address, 0, 0, "revoked by the FA"))
        elif profile is not None and pending_key is not None:
            self.counters["revocations"] += 1
            self._fail(pending_key, ReplyCode.HA_REASON_UNSPECIFIED, "revoked by the FA", now=now)
        else:
            self.counters["revocations.nothing"] += 1  # nothing of that registration here: nothing to do
        # The answer only ends the FA's retransmissions.
        self._reply(message, source, ReplyCode.ACCEPTED, 0, nai, profile if authentic else None, fa_ha=authentic)

    # -- deregistration and expiry ----------------------------------------------------------------------
    def _deregistration(
        self, data: bytes, message: mip.RegistrationRequest, source: Address, nai: str, now: float
    ) -> None:
        binding = self.bindings.get(nai)
        used = _msa_used(binding.mn_ha, data) if binding is not None else None
        profile = _with_msa(binding.profile, used) if binding is not None else None
        algorithm, reply_spi = _algorithm(used), _reply_spi(used)
        tomb = self._deregistered.get(nai)
        if binding is None and tomb is not None and tomb.until > now and tomb.fa == source[0]:
            # Rule 4: a retransmission of the deregistration that removed it.
            key = tomb.profile.mn_ha_key
            if (
                key is not None
                and verify_authentication(
                    data, ExtensionType.MN_HA_AUTH, key, spi=tomb.profile.mn_ha_spi, algorithm=tomb.mn_ha_algorithm
                )
                and message.identification >= tomb.identification
                and (
                    message.identification == tomb.identification
                    or check_timestamp(
                        message.identification, now, self._last_identification.get(nai), self.config.replay_tolerance
                    ).ok
                )
            ):
                self.counters["deregistrations_repeated"] += 1
                self._last_identification[nai] = max(message.identification, self._last_identification.get(nai, 0))
                reply = self._reply(
                    message,
                    source,
                    ReplyCode.ACCEPTED,
                    0,
                    nai,
                    tomb.profile,
                    mn_ha_algorithm=tomb.mn_ha_algorithm,
                    mn_ha_reply_spi=tomb.mn_ha_reply_spi,
                )
                self._remember_answer(source, data, reply, now)  # rule 8: the FA's relay again
                return
        if profile is None or profile.mn_ha_key is None:
            self._deny(message, source, ReplyCode.HA_MN_FAILED_AUTHENTICATION, nai, "no binding to deregister", None)
            return
        if not verify_authentication(
            data, ExtensionType.MN_HA_AUTH, profile.mn_ha_key, spi=profile.mn_ha_spi, algorithm=algorithm
        ):
            self._deny(message, source, ReplyCode.HA_MN_FAILED_AUTHENTICATION, nai, "MN-HA authentication failed", None)
            return
        verdict = check_timestamp(
            message.identification, now, self._last_identification.get(nai), self.config.replay_tolerance
        )
        if not verdict.ok:
            self._deny(
                message,
                source,
                ReplyCode.HA_IDENTIFICATION_MISMATCH,
                nai,
                verdict.reason,
                profile,
                now=now,
                mn_ha_algorithm=algorithm,
                mn_ha_reply_spi=reply_spi,
            )
            return
        self._last_identification[nai] = message.identification
        assert binding is not None
        # the FA-HA key is that FA's: only a reply to it is authenticated with it (rule 4)
        through_its_fa = source[0] in (binding.fa, str(binding.care_of_address))
        self._remove_binding(nai, now)
        for old in [n for n, t in self._deregistered.items() if t.until <= now]:
            del self._deregistered[old]
        self._deregistered[nai] = _Tombstone(
            profile, message.identification, source[0], now + self.config.answer_cache_seconds, algorithm, reply_spi
        )
        reply = self._reply(
            message,
            source,
            ReplyCode.ACCEPTED,
            0,
            nai,
            profile,
            fa_ha=through_its_fa,
            mn_ha_algorithm=algorithm,
            mn_ha_reply_spi=reply_spi,
        )
        self._remember_answer(source, data, reply, now)  # rule 8: the FA's relay again
        self._emit(RegistrationDone(nai, message.home_address, 0, 0, "deregistered"))

    def _expire(self, nai: str, now: float) -> None:
        binding = self.bindings.get(nai)
        if binding is not None and binding.expires <= now:
            self.counters["bindings_expired"] += 1
            self._remove_binding(nai, now)

    def _remove_binding(self, nai: str, now: float) -> None:
        binding = self.bindings.pop(nai, None)
        self._cancel(self._binding_timers.pop(nai, None))
        if binding is None:
            return
        if self._nai_of.get(binding.home_address) == nai:
            del self._nai_of[binding.home_address]
        self._emit(DeletePaths(fa_owner(binding.profile)))
        self._emit(DeletePaths(stationary_owner(binding.profile)))
        label = (binding.session_id, max(binding.profile.epoch, binding.gateway_epoch))
        for gateway, (binding_key, views) in gateway_views(binding.profile, self.config.address).items():
            identification = self._identification(now)
            self._send_binding_update(
                gateway,
                binding_key,
                views,
                0,
                binding.home_address,
                binding.care_of_address,
                identification,
                label,
                now=now,
            )
            self._last_request.pop((gateway, binding.home_address), None)

    # -- Dynamic Authorization (rule 6) ------------------------------------------------------------------
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
        binding = self.bindings.get(request.nai)
        if binding is None or binding.session_id != request.session_id:
            self._coa_answer(received, False, now, coa.ErrorCause.SESSION_CONTEXT_NOT_FOUND)
            return
        if request.code == coa.DISCONNECT_REQUEST:
            self.counters["coa.disconnected"] += 1
            self._remove_binding(request.nai, now)  # its SAs, and lifetime-0 Binding Updates to the gateways
            self._emit(RegistrationDone(binding.nai, binding.home_address, 0, 0, "disconnected by AAA"))
            self._coa_answer(received, True, now)
            return
        self._push(received, binding, now)

    def _push(self, received: Received, binding: Binding, now: float) -> None:
        """Rule 7: install a pushed view beside the binding's current one."""
        try:
            profile = coa.pushed_profile(received.request, received.secret)
        except ProfileDecodeError:
            self.counters["coa.push.undecodable"] += 1
            self._coa_answer(received, False, now, coa.ErrorCause.INVALID_REQUEST)
            return
        nai = binding.nai
        if (
            profile.session_id != binding.session_id
            or profile.home_agent != self.config.address
            or profile.home_address != binding.home_address
            or profile.care_of_address != binding.care_of_address
            or profile.epoch <= binding.profile.epoch
            or profile.mn_ha_key is None
            or profile.fa_ha_key is None
            or nai in self._pushes
            or any(p.nai == nai for p in self._pending.values())
        ):
            self.counters["coa.push.invalid"] += 1
            self._coa_answer(received, False, now, coa.ErrorCause.INVALID_REQUEST)
            return
        own = [p for p in profile.paths if p.local == self.config.address]
        stationary = tuple(p for p in own if p.role is PathRole.HA_GW)
        moving = tuple(p for p in own if p.role is not PathRole.HA_GW)
        push = _Push(
            received,
            binding,
            profile,
            lifetime=max(1, math.ceil(binding.expires - now)),
            gateways=gateway_views(profile, self.config.address),
        )
        self._pushes[nai] = push
        work = [(o, paths) for o, paths in ((stationary_owner(profile), stationary), (fa_owner(profile), moving))]
        for owner, paths in work:
            if paths:
                push.installing.add(owner)
                self._push_owners[owner] = nai
        if not push.installing:
            self._push_send_updates(push, now)
            return
        for owner, paths in work:
            if paths:
                self._emit(InstallPaths(owner, paths))

    def _push_installed(self, owner: str, error: str | None, now: float) -> None:
        nai = self._push_owners.pop(owner)
        push = self._pushes.get(nai)
        if push is None:
            return
        push.installing.discard(owner)
        if error is not None:
            self.counters["coa.push.install_failed"] += 1
            self._push_failed(push, now)
            return
        if not push.installing:
            self._push_send_updates(push, now)

    def _push_send_updates(self, push: _Push, now: float) -> None:
        if self.bindings.get(push.binding.nai) is not push.binding:
            self._push_failed(push, now, coa.ErrorCause.SESSION_CONTEXT_NOT_FOUND)  # gone meanwhile
            return
        if not push.gateways:
            self._push_done(push, now)
            return
        binding = push.binding
        push.told = True
        for gateway, (binding_key, views) in push.gateways.items():
            identification = self._identification(now)
            push.waiting[gateway] = identification
            self._send_binding_update(
                gateway,
                binding_key,
                views,
                push.lifetime,
                binding.home_address,
                binding.care_of_address,
                identification,
                (push.profile.session_id, push.profile.epoch),
                now=now,
            )
        push.timer = self._call_at(
            now + self.config.gateway_timeout, functools.partial(self._push_timeout, binding.nai, push)
        )

    def _push_acknowledged(
        self, push: _Push, gateway: IPv4Address, data: bytes, message: BindingAcknowledge, now: float
    ) -> None:
        auth_key, _ = keys.binding_subkeys(push.gateways[gateway][0])
        if not verify_authentication(
            data, ExtensionType.GENERALIZED_AUTH, auth_key, subtype=GeneralizedAuthSubtype.BINDING, spi=BINDING_SPI
        ):
            self.counters["dropped.bad_binding_auth"] += 1
            return
        if not message.accepted:
            self.counters["coa.push.gateway_refused"] += 1
            self._push_failed(push, now)
            return
        del push.waiting[gateway]
        if not push.waiting:
            self._push_done(push, now)

    def _push_timeout(self, nai: str, push: _Push, now: float) -> None:
        if self._pushes.get(nai) is push and push.waiting:
            self.counters["coa.push.gateway_timeout"] += 1
            self._push_failed(push, now)

    def _push_done(self, push: _Push, now: float) -> None:
        binding, old, profile = push.binding, push.binding.profile, push.profile
        del self._pushes[binding.nai]
        self._cancel(push.timer)
        self._stop_updates(push.waiting)
        if self.bindings.get(binding.nai) is not binding:
            self._push_failed(push, now, coa.ErrorCause.SESSION_CONTEXT_NOT_FOUND)
            return
        # Make before break: the old epoch's FA-side paths, stationary paths
        # and gateways the new view no longer has.
        self._emit(DeletePaths(fa_owner(old)))
        if stationary_owner(old) != stationary_owner(profile):
            self._emit(DeletePaths(stationary_owner(old)))
        for gateway, (binding_key, views) in gateway_views(old, self.config.address).items():
            if gateway not in push.gateways:
                self._send_binding_update(
                    gateway,
                    binding_key,
                    views,
                    0,
                    binding.home_address,
                    binding.care_of_address,
                    self._identification(now),
                    (binding.session_id, max(old.epoch, binding.gateway_epoch)),
                    now=now,
                )
                self._last_request.pop((gateway, binding.home_address), None)
        binding.profile = profile
        self._confirm(binding, old, push.gateways, push.lifetime, now)
        self.counters["coa.pushed"] += 1
        self._coa_answer(push.received, True, now)

    def _push_failed(
        self, push: _Push, now: float, cause: coa.ErrorCause = coa.ErrorCause.RESOURCES_UNAVAILABLE
    ) -> None:
        """Remove what this push installed here; withdraw gateways new to the view."""
        binding, profile = push.binding, push.profile
        self._pushes.pop(binding.nai, None)
        self._cancel(push.timer)
        for owner in (fa_owner(profile), stationary_owner(profile)):
            self._push_owners.pop(owner, None)
        self._emit(DeletePaths(fa_owner(profile)))
        if stationary_owner(profile) != stationary_owner(binding.profile):
            self._emit(DeletePaths(stationary_owner(profile)))
        old_gateways = gateway_views(binding.profile, self.config.address)
        self._stop_updates(push.waiting)
        if push.told:
            binding.gateway_epoch = max(binding.gateway_epoch, profile.epoch)
        for gateway, (binding_key, views) in push.gateways.items():
            if not push.told:
                continue
            if gateway in old_gateways:
                # it keeps its binding: the paths of the view that stands (rule 3a)
                self._restore_at(gateway, binding, old_gateways[gateway], now)
                continue
            self._send_binding_update(
                gateway,
                binding_key,
                views,
                0,
                binding.home_address,
                binding.care_of_address,
                self._identification(now),
                (profile.session_id, profile.epoch),
                now=now,
            )
        self._coa_answer(push.received, False, now, cause)

    def _coa_answer(self, received: Received, ack: bool, now: float, cause: int | None = None) -> None:
        self._send(Channel.COA, self.coa.answer(received, ack, now, cause), received.source)

    # -- replies ----------------------------------------------------------------------------------
    def _fail(self, key: object, code: ReplyCode, detail: str, *, delete: bool = True, now: float) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        self._cancel(pending.timer)
        self._stop_updates(pending.waiting)
        profile = pending.profile
        if profile is not None:
            for owner in (fa_owner(profile), stationary_owner(profile)):
                self._by_owner.pop(owner, None)
            if delete:
                # Remove what this registration installed, never what a live
                # binding of the same session still uses.
                current = self.bindings.get(pending.nai)
                same_session = current is not None and current.session_id == profile.session_id
                if not same_session or fa_owner(current.profile) != fa_owner(profile):  # type: ignore[union-attr]
                    self._emit(DeletePaths(fa_owner(profile)))
                if not same_session or stationary_owner(current.profile) != stationary_owner(profile):  # type: ignore[union-attr]
                    self._emit(DeletePaths(stationary_owner(profile)))
                if pending.told and same_session and current is not None:
                    # The binding stays; a gateway whose restoration is lost may
                    # hold this epoch: its withdrawals must name it (rule 3).
                    current.gateway_epoch = max(current.gateway_epoch, profile.epoch)
                if pending.told:
                    self._undo_at_gateways(pending, current, now)
        reply = self._deny(
            pending.message,
            pending.source,
            code,
            pending.nai,
            detail,
            _with_msa(profile, pending.used) if profile is not None else None,
            now=now,
            mn_ha_algorithm=_algorithm(pending.used),
            mn_ha_reply_spi=_reply_spi(pending.used),
        )
        self._remember_answer(pending.source, pending.request, reply, now)

    def _deny(
        self,
        message: mip.RegistrationRequest,
        source: Address,
        code: ReplyCode,
        nai: str,
        detail: str,
        profile: VpnProfile | None,
        now: float = 0.0,
        mn_ha_algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM,
        mn_ha_reply_spi: int | None = None,
    ) -> bytes:
        self.counters[f"denied.{int(code)}"] += 1
        identification = message.identification
        if code == ReplyCode.HA_IDENTIFICATION_MISMATCH:
            identification = mismatch_identification(message.identification, now)  # RFC 5944 section 5.7.1
        reply_message = mip.RegistrationRequest(
            flags=message.flags,
            lifetime=message.lifetime,
            home_address=message.home_address,
            home_agent=message.home_agent,
            care_of_address=message.care_of_address,
            identification=identification,
        )
        reply = self._reply(
            reply_message,
            source,
            code,
            0,
            nai,
            profile,
            mn_ha_algorithm=mn_ha_algorithm,
            mn_ha_reply_spi=mn_ha_reply_spi,
        )
        self._emit(RegistrationDone(nai, message.home_address, int(code), 0, detail))
        return reply

    def _reply(
        self,
        message: mip.RegistrationRequest,
        source: Address,
        code: ReplyCode,
        lifetime: int,
        nai: str,
        profile: VpnProfile | None,
        fa_ha: bool = True,
        key_reply: MnKey | None = None,
        mn_ha_algorithm: KeyGenAlgorithm | int = DEFAULT_ALGORITHM,
        mn_ha_reply_spi: int | None = None,
    ) -> bytes:
        """A Registration Reply: NAI, the MN-HA Key Generation Nonce Reply of
        ``key_reply`` (rule 4b), then MN-HA authentication (under
        ``mn_ha_algorithm``: HMAC-MD5 with the provisioned key, the MSA's own
        with one from AAA, and then under ``mn_ha_reply_spi``, the node's SPI)
        and FA-HA authentication when the keys are known (RFC 5944 section
        3.8.3.3), under the algorithm of the request's (rule 4c). The key reply names the HA SPI this HA allocated."""
        extensions: list[mip.Extension] = [NaiExtension(nai)] if nai else []
        if key_reply is not None:
            nonce = AaaNonce(
                key_reply.aaa_spi,
                key_reply.request_spi,
                key_reply.algorithm,
                key_reply.nonce,
                key_reply.replay_method or 2,
            )
            extensions.append(encode_aaa_nonce(ExtensionType.MN_HA_KEY_REPLY, key_reply.lifetime, nonce))
            self.counters["mn_ha_keys_given"] += 1
        reply = RegistrationReply(
            code=code,
            lifetime=lifetime,
            home_address=message.home_address,
            home_agent=self.config.address,
            identification=message.identification,
            extensions=tuple(extensions),
        )
        data = mip.encode_registration_reply(reply)
        if profile is not None and profile.mn_ha_key is not None and profile.mn_ha_spi is not None:
            spi = profile.mn_ha_spi if mn_ha_reply_spi is None else mn_ha_reply_spi
            data = append_authentication(data, ExtensionType.MN_HA_AUTH, spi, profile.mn_ha_key, mn_ha_algorithm)
        if fa_ha and profile is not None and profile.fa_ha_key is not None and profile.fa_ha_spi is not None:
            data = append_authentication(
                data, ExtensionType.FA_HA_AUTH, profile.fa_ha_spi, profile.fa_ha_key, _fa_ha_algorithm(message)
            )
        self._send(Channel.MIP, data, source)
        return data

    def aaa_events(self, now: float) -> None:
        """Requests and answers that arrived outside :meth:`receive_datagram`
        (the Diameter stream): act on them."""
        self._radius_events(now)

    def _inner_timer(self) -> float | None:
        return self.radius.get_timer()

    def _inner_handle_timer(self, now: float) -> None:
        self.radius.handle_timer(now)
        self._radius_events(now)


def _digest(source: Address, request: bytes) -> bytes:
    """What names a request in the reply cache (rule 8): its sender and every octet."""
    return hashlib.sha256(source[0].encode() + b"\0" + request).digest()


def _challenge(message: mip.RegistrationRequest) -> bytes | None:
    """The MN-FA challenge a relayed request carries (RFC 4721 section 4), if any."""
    return next((e.challenge for e in reversed(message.extensions) if isinstance(e, ChallengeExtension)), None)
