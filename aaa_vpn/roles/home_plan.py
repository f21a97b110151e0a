"""The home AAA's plans: how a user's VPN record becomes a session's paths,
SPIs and keys, how a session moves or is re-keyed, and what each network
element is told of it. Pure functions; the role that uses them to answer
requests is :mod:`aaa_vpn.roles.home_aaa`.

Rules (everything that decides what a node is told lives here; the home AAA
role and the docs cite them as "plan rule N"):

1. The mobile node is authenticated from the MN-AAA authenticator carried as
   RADIUS CHAP attributes in the 3GPP2 manner (RFC 4721 section 8, CHAP_SPI):
   CHAP-Password = Challenge[0] || MN-AAA authenticator, CHAP-Challenge =
   MD5(preceding Mobile IP data || Type, Subtype, Length, SPI) ||
   least-significant 237 octets of the FA challenge. The check is plain RADIUS
   CHAP (RFC 1994): MD5(CHAP-ID || MN-AAA secret || CHAP-Challenge). See
   docs/mn-aaa-chap.md.
2. A session has one FA <-> HA path, one HA <-> GW path per VPN record through a
   static gateway and one FA <-> GW path per record through a dynamic gateway
   (route optimisation). At most :data:`~aaa_vpn.wire.profile.MAX_PATHS`.
3. The FA <-> HA path carries everything the MN sends through its home agent
   (remote traffic selector 0.0.0.0/0: reverse tunnelling, RFC 3024) and uses
   the security service and QoS class of the user's first VPN record (lowest
   id), or the built-in default service when the user has none.
4. Keys come from the session root key (keys.py); every direction of every
   path has its own key; SPIs are allocated per receiving node.
5. Least privilege (docs/design.md section 3): the FA sees only paths that end at the
   FA; the HA sees its own paths plus the gateway's side of FA <-> GW paths (it
   forwards those in a Binding Update) and the SRK; this project's foreign AAA
   (client role ``foreign-aaa``) sees the FA's view plus the SRK, so it can
   answer same-domain handoffs; a generic proxy (role ``proxy``, FreeRADIUS
   say) sees exactly what its FA sees, never the SRK; a gateway sees only
   paths that end at it.
6. A registration through another FA that names the previous one moves the
   live session (flows C/D): same session and session root key, care-of
   address rewritten, epoch + 1, fresh SPIs and keys for every path that ends
   at the FA; the stationary HA <-> GW paths keep theirs. A registration by
   the FA that names the session (its current visitor) renews it. Any other
   registration starts a new session (fresh root key): keys that nodes
   removed are never handed out again.
7. Smooth handoff (flow E, docs/protocol.md section 5): every FA view carries
   the FA's own handoff key for the session and epoch it registers in
   (:func:`aaa_vpn.keys.derive_handoff_key`). After a move to another FA the
   new FA's view also names the previous FA (the FA of ``epoch - 1``) with
   that FA's handoff key, and carries the FA <-> FA forwarding path (label
   ``fa-fa:<previous FA>``, keys and SPIs derived from the SRK in the new
   epoch, selectors: the home address at the new FA, anything at the previous
   one). Nobody else is told any of it. Its SPIs sit in the session's SPI
   table like any path's, which is also how the stored session remembers the
   previous FA.
8. Re-keying (docs/protocol.md section 4): a session's keys are due once a
   fraction of the shortest SA lifetime of its paths has passed since they
   were last all renewed (``keyed_at``). A re-key is a move to the next epoch
   at the same care-of address in which the stationary HA <-> GW paths get
   new keys and SPIs as well (``stationary_epoch`` = the new epoch). A
   registration is never granted past the keys' lifetime, so no SA outlives
   its keys even if the node stops renewing.

Pure: no sockets, no database, no clock (``now`` is passed in), no randomness
except through the ``random_bytes`` callable the caller gives.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import itertools
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import NamedTuple

from aaa_vpn import keys
from aaa_vpn.model import (
    ClientRole,
    Gateway,
    GatewayMode,
    KeyMode,
    QosClass,
    Service,
    Session,
    SpiAllocation,
    User,
    VpnRecord,
)
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import (
    MAX_PATHS,
    SPI_MAX,
    SPI_MIN,
    PathProfile,
    PathRole,
    QosSpec,
    RejectReason,
    RequestType,
    VpnProfile,
)
from aaa_vpn.wire.radius import AaaVpnAttr
from aaa_vpn.wire.radius_profile import (
    OpenView,
    PathSkeleton,
    ProfileTemplate,
    StandIns,
    compile_view,
    with_digest,
)
from aaa_vpn.wire.text import text

#: The service used for the FA <-> HA path of a user without VPN records.
DEFAULT_SERVICE = Service("default")
ANY = IPv4Network("0.0.0.0/0")
#: Label of the Mobile IP FA-HA security association in a session's SPI list.
FA_HA_MIP_LABEL = "mip-fa-ha"
#: Label prefix of the smooth-handoff forwarding path (rule 7): ``fa-fa:<previous FA>``.
FORWARDING_LABEL_PREFIX = "fa-fa:"


class Rejected(Exception):
    """The request is refused; ``reason`` and ``message`` go into the Access-Reject."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def verify_mn_aaa_chap(chap_password: bytes, chap_challenge: bytes, secret: Secret) -> bool:
    """Check an MN-AAA authenticator carried as CHAP attributes (rule 1)."""
    if len(chap_password) != 17 or not chap_challenge:
        return False
    expected = hashlib.md5(chap_password[:1] + secret.value + chap_challenge).digest()
    return hmac.compare_digest(expected, chap_password[1:])


def mn_aaa_chap_attributes(challenge: bytes, preceding: bytes, secret: Secret) -> tuple[bytes, bytes]:
    """The (CHAP-Password, CHAP-Challenge) an FA sends for an RRQ whose MN-AAA
    authenticator was computed with CHAP_SPI; also what a mobile node computes.

    ``preceding`` is the Mobile IP data up to and including the MN-AAA
    extension's Type, Subtype, Length and SPI fields (RFC 4721 section 6)."""
    if not challenge:
        raise ValueError("an MN-FA challenge is required")
    chap_challenge = hashlib.md5(preceding).digest() + challenge[-237:]
    chap_id = challenge[:1]
    response = hashlib.md5(chap_id + secret.value + chap_challenge).digest()
    return chap_id + response, chap_challenge


@dataclass(frozen=True)
class UserContext:
    """Everything the planner needs about one user, read from provisioning."""

    user: User
    records: tuple[VpnRecord, ...]
    gateways: Mapping[str, Gateway]
    services: Mapping[str, Service]
    qos: Mapping[str, QosClass]


@dataclass(frozen=True)
class PlannedPath:
    """One path of a session in neutral form: endpoint ``a`` is the mobile
    side (FA, or HA for HA <-> GW), ``b`` the other."""

    label: str
    role: PathRole
    a: IPv4Address
    b: IPv4Address
    a_ts: tuple[IPv4Network, ...]
    b_ts: tuple[IPv4Network, ...]
    service: Service
    qos: QosClass | None
    gateway_mode: GatewayMode | None
    gateway_key: Secret | None = field(default=None, compare=False, repr=False)

    #: Names of the SPIs allocated at ``a`` and at ``b`` (derived, see __post_init__).
    a_key: str = field(default="", compare=False)
    b_key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Computed once per (cached) plan rather than for every registration.
        object.__setattr__(self, "a_key", _spi_key(self.label, self.a))
        object.__setattr__(self, "b_key", _spi_key(self.label, self.b))

    def spi_key(self, node: IPv4Address) -> str:
        """The name of the SPI allocated at ``node`` (one of the endpoints)."""
        return self.a_key if node == self.a else self.b_key


def path_label(role: PathRole, gateway: IPv4Address | None = None, correspondent: IPv4Network | None = None) -> str:
    """The label a path's keys and SPIs are derived and named with.

    Built only from what every node of the path sees in its own view (the
    role, the gateway end and the correspondent selector), so that a foreign
    AAA or an agent holding the session root key can re-derive a moved path's
    keys without being told the home AAA's record ids:
    ``fa-ha``, ``ha-gw:<gateway>:<correspondent>``, ``fa-gw:<gateway>:<correspondent>``.
    """
    if role is PathRole.FA_HA:
        return "fa-ha"
    if gateway is None or correspondent is None:
        raise ValueError(f"a {role.name} path label names its gateway and correspondent")
    prefix = "ha-gw" if role is PathRole.HA_GW else "fa-gw"
    return f"{prefix}:{text(gateway)}:{text(correspondent)}"


def forwarding_label(previous_fa: IPv4Address) -> str:
    """The label of the forwarding path from ``previous_fa`` to the node's new FA (rule 7)."""
    return FORWARDING_LABEL_PREFIX + text(previous_fa)


@functools.lru_cache(maxsize=1 << 16)
def _host_network(address: IPv4Address) -> IPv4Network:
    return IPv4Network((int(address), 32))


def plan_paths(
    ctx: UserContext, home_address: IPv4Address, home_agent: IPv4Address, care_of: IPv4Address
) -> list[PlannedPath]:
    """The paths of a session (rules 2 and 3)."""
    records = sorted(ctx.records, key=lambda r: r.id or 0)
    mn = (IPv4Network(f"{home_address}/32"),)
    first_service = ctx.services[records[0].service] if records else DEFAULT_SERVICE
    first_qos = ctx.qos.get(records[0].qos) if records and records[0].qos else None
    paths = [
        PlannedPath(
            path_label(PathRole.FA_HA), PathRole.FA_HA, care_of, home_agent, mn, (ANY,), first_service, first_qos, None
        )
    ]
    for record in records:
        gateway = ctx.gateways[record.gateway]
        service = ctx.services[record.service]
        qos = ctx.qos.get(record.qos) if record.qos else None
        if gateway.mode is GatewayMode.STATIC:
            paths.append(
                PlannedPath(
                    path_label(PathRole.HA_GW, gateway.address, record.correspondent),
                    PathRole.HA_GW,
                    home_agent,
                    gateway.address,
                    mn,
                    (record.correspondent,),
                    service,
                    qos,
                    GatewayMode.STATIC,
                    gateway.gateway_key,
                )
            )
        else:
            paths.append(
                PlannedPath(
                    path_label(PathRole.FA_GW, gateway.address, record.correspondent),
                    PathRole.FA_GW,
                    care_of,
                    gateway.address,
                    mn,
                    (record.correspondent,),
                    service,
                    qos,
                    GatewayMode.DYNAMIC,
                    gateway.gateway_key,
                )
            )
    if len(paths) > MAX_PATHS:
        raise Rejected(
            RejectReason.PROFILE_TOO_LARGE,
            f"user has {len(paths)} VPN paths, at most {MAX_PATHS} fit in one profile",
        )
    return paths


def path_epoch(role: PathRole, session_epoch: int, stationary_epoch: int = 1) -> int:
    """The epoch a path's keys are derived with (rules 6 and 8).

    Paths that end at the FA follow the session's epoch, which a handoff
    increments: their keys never repeat, even when the node comes back to an
    FA it used before (an AES-GCM key must never restart its counter). A
    stationary HA <-> GW path does not move: it keeps the epoch of the last
    re-key (``stationary_epoch``, 1 until the first), so its SAs survive
    handoffs untouched."""
    return stationary_epoch if role is PathRole.HA_GW else session_epoch


def key_lifetime(paths: Sequence[PlannedPath]) -> int | None:
    """The shortest SA lifetime of ``paths`` (seconds), None without paths."""
    return min((p.service.sa_lifetime for p in paths), default=None)


def rekey_due(session: Session, key_life: int | None, now: float, fraction: float) -> bool:
    """Rule 8: are the session's keys due for renewal? True once ``fraction``
    of the shortest SA lifetime (``key_life``, :func:`key_lifetime`) has
    passed since they were last all renewed."""
    return key_life is not None and now >= session.keyed_at + fraction * key_life


def key_capped_expiry(now: float, lifetime: float, keyed_at: float, key_life: int | None) -> float:
    """Rule 8: the expiry of a registration granted ``lifetime`` seconds at
    ``now``, no later than its keys' (keyed at ``keyed_at``, shortest SA
    lifetime ``key_life``): a node that stops renewing loses its
    registration, and with it its SAs, before any SA outlives its lifetime.
    Never less than one second."""
    if key_life is None:
        return now + lifetime
    left = keyed_at + key_life - now
    return now + lifetime if lifetime <= left else now + max(1, int(left))


def _spi_key(label: str, node: IPv4Address) -> str:
    return label + "@" + text(node)


def allocate_spis(
    paths: Sequence[PlannedPath],
    fa_ha_nodes: tuple[IPv4Address, IPv4Address],
    existing: Sequence[SpiAllocation],
    random_bytes: Callable[[int], bytes],
) -> tuple[SpiAllocation, ...]:
    """SPIs for every (path, receiving node), keeping those already allocated.

    ESP SPIs are drawn at random from [SPI_MIN, SPI_MAX] (24 bits: they ride in
    tagged integers); the Mobile IP FA-HA SPI is drawn from 256..2**32-1. The
    database's UNIQUE(node, spi) catches the rare collision with another
    session; the caller then retries with fresh draws."""
    have = {a.path: a for a in existing}
    taken: dict[int, set[int]] = {}  # by int(node): IPv4Address hashes in Python
    for allocation in existing:
        taken.setdefault(int(allocation.node), set()).add(allocation.spi)
    result: list[SpiAllocation] = []

    # One call for all the randomness of a typical allocation (the source is
    # os.urandom: a system call per request rather than per SPI), as 32-bit
    # words taken in order; another call only after a collision.
    chunk = 4 * (2 * len(paths) + 1)
    words: list[int] = []

    def draw(node: int, low: int, high: int) -> int:
        used = taken.get(node)
        if used is None:
            used = taken[node] = set()
        span = high - low + 1
        while True:
            if not words:
                more = random_bytes(chunk)
                words.extend(reversed(struct.unpack(f"!{len(more) // 4}I", more[: len(more) // 4 * 4])))
            spi = low + words.pop() % span
            if spi not in used:
                used.add(spi)
                return spi

    for path in paths:
        a_key, b_key = path.a_key, path.b_key
        found = have.get(a_key) if have else None
        result.append(found or SpiAllocation(path.a, draw(int(path.a), SPI_MIN, SPI_MAX), a_key))
        found = have.get(b_key) if have else None
        result.append(found or SpiAllocation(path.b, draw(int(path.b), SPI_MIN, SPI_MAX), b_key))
    # The Mobile IP FA-HA security association is indexed by SPI at the HA
    # (RFC 5944 section 3.5.4); its SPI lives in the same per-node table.
    ha = fa_ha_nodes[1]
    key = _spi_key(FA_HA_MIP_LABEL, ha)
    result.append(have.get(key) or SpiAllocation(ha, draw(int(ha), 256, 0xFFFFFFFF), key))
    # The forwarding path of the last move (rule 7) is not planned: it stays
    # as the move derived it, so that a renewal finds the same table.
    result += [a for a in existing if a.path.startswith(FORWARDING_LABEL_PREFIX)]
    return tuple(result)


def planned_spi_names(paths: Sequence[PlannedPath], home_agent: IPv4Address) -> frozenset[str]:
    """The names of the SPIs :func:`allocate_spis` gives a session of
    ``paths`` (the forwarding path's aside): a session whose SPI names differ
    has paths its user's VPN no longer has, or lacks some it has now."""
    names = {key for path in paths for key in (path.a_key, path.b_key)}
    names.add(_spi_key(FA_HA_MIP_LABEL, home_agent))
    return frozenset(names)


def _spi_table(session: Session) -> dict[str, int]:
    return {allocation.path: allocation.spi for allocation in session.spis}


def _path_view(
    session: Session,
    path: PlannedPath,
    local: IPv4Address,
    spis: dict[str, int],
    binding_for: IPv4Address | None = None,
) -> PathProfile:
    """``path`` as seen from ``local`` (one of its endpoints); ``spis`` is the
    session's SPI table (:func:`_spi_table`). With ``binding_for`` (an HA's
    address) a path that ends at a gateway carries that HA's binding key."""
    peer = path.b if local == path.a else path.a
    local_ts, remote_ts = (path.a_ts, path.b_ts) if local == path.a else (path.b_ts, path.a_ts)
    srk, label = session.session_root_key, path.label.encode()
    epoch = path_epoch(path.role, session.epoch, session.stationary_epoch)
    transform = path.service.esp_transform
    key_in = keys.derive_sa_key(srk, label, peer, local, epoch, transform.keymat_length)
    key_out = keys.derive_sa_key(srk, label, local, peer, epoch, transform.keymat_length)
    ikev2 = path.service.key_mode is KeyMode.IKEV2
    return PathProfile(
        role=path.role,
        local=local,
        peer=peer,
        local_ts=local_ts,
        remote_ts=remote_ts,
        key_mode=path.service.key_mode,
        esp_transform=transform,
        spi_in=spis[path.spi_key(local)],
        spi_out=spis[path.spi_key(peer)],
        key_in=key_in,
        key_out=key_out,
        lifetime=path.service.sa_lifetime,
        ike_proposal=path.service.ike_proposal if ikev2 else None,
        ike_psk=keys.derive_ike_psk(srk, label, local, peer, epoch) if ikev2 else None,
        qos=QosSpec(path.qos.name, path.qos.dscp, path.qos.rate_kbps) if path.qos else None,
        gateway_mode=path.gateway_mode,
        binding_key=(
            keys.derive_binding_key(path.gateway_key, binding_for, path.b)
            if binding_for is not None and path.gateway_key is not None
            else None
        ),
    )


def _view_plan(
    session: Session,
    paths: Sequence[PlannedPath],
    role: ClientRole,
    request_type: RequestType,
    node: IPv4Address,
    user: User,
    lifetime: int,
) -> tuple[VpnProfile, list[tuple[PlannedPath, IPv4Address, IPv4Address | None]], PathProfile | None]:
    """What one requester is sent (rule 5): the view's session part (no
    paths), its paths as (planned path, the requester's end, the HA whose
    binding key it carries), and an FA's forwarding path after a move (rule 7)."""
    fa, ha = session.care_of_address, session.home_agent
    spis = _spi_table(session)
    fa_ha_spi = spis[_spi_key(FA_HA_MIP_LABEL, ha)]
    fa_ha_key = keys.derive_fa_ha_key(session.session_root_key, fa, ha, session.epoch)
    common = {
        "session_id": session.session_id,
        "home_address": session.home_address,
        "home_agent": ha,
        "care_of_address": fa,
        "lifetime": lifetime,
        "epoch": session.epoch,
    }
    if request_type is RequestType.HA_REGISTRATION:
        ends: list[tuple[PlannedPath, IPv4Address, IPv4Address | None]] = [
            (p, ha, ha) for p in paths if ha in (p.a, p.b)
        ]
        # The gateway's side of route-optimised paths: the HA hands it over in
        # the Binding Update (flow B), authenticated and wrapped with the key
        # it shares with that gateway.
        ends += [(p, p.b, ha) for p in paths if p.role is PathRole.FA_GW]
        session_part = VpnProfile(
            **common,  # type: ignore[arg-type]
            mn_ha_spi=user.mn_ha_spi,
            mn_ha_key=user.mn_ha_key,
            fa_ha_spi=fa_ha_spi,
            fa_ha_key=fa_ha_key,
            session_root_key=session.session_root_key,
        )
        return session_part, ends, None
    if request_type is RequestType.GW_BINDING:
        return VpnProfile(**common), [(p, node, None) for p in paths if node in (p.a, p.b)], None  # type: ignore[arg-type]
    srk, epoch = session.session_root_key, session.epoch
    ends = [(p, fa, None) for p in paths if fa in (p.a, p.b)]
    previous = _previous_fa(spis, fa)
    previous_key = forwarding = None
    fa_ha = next((p for p, _local, _b in ends if p.role is PathRole.FA_HA), None)
    if previous is not None and fa_ha is not None:
        label = forwarding_label(previous)
        forwarding = _forwarding_view(
            srk,
            _path_view(session, fa_ha, fa, spis),
            previous,
            session.home_address,
            epoch,
            spis[_spi_key(label, fa)],
            spis[_spi_key(label, previous)],
        )
        previous_key = keys.derive_handoff_key(srk, previous, epoch - 1)
    session_part = VpnProfile(
        **common,  # type: ignore[arg-type]
        fa_ha_spi=fa_ha_spi,
        fa_ha_key=fa_ha_key,
        session_root_key=srk if role is ClientRole.FOREIGN_AAA else None,
        handoff_key=keys.derive_handoff_key(srk, fa, epoch),
        previous_fa=previous if previous_key is not None else None,
        previous_fa_handoff_key=previous_key,
    )
    return session_part, ends, forwarding


def view_for(
    session: Session,
    paths: Sequence[PlannedPath],
    role: ClientRole,
    request_type: RequestType,
    node: IPv4Address,
    user: User,
    lifetime: int,
    digest: bool = True,
) -> VpnProfile:
    """The profile one requester is sent (rule 5), with its digest unless
    ``digest`` is false.

    ``node`` is the requester's own address on the path: the care-of address for
    an FA (also when asked through a proxy), the HA address for an HA, the
    gateway address for a gateway."""
    session_part, ends, forwarding = _view_plan(session, paths, role, request_type, node, user, lifetime)
    spis = _spi_table(session)
    views = [_path_view(session, p, local, spis, binding_for) for p, local, binding_for in ends]
    if forwarding is not None:
        views.append(forwarding)
    return _digested(digest, dataclasses.replace(session_part, paths=tuple(views)))


def view_template(
    session: Session,
    paths: Sequence[PlannedPath],
    role: ClientRole,
    request_type: RequestType,
    node: IPv4Address,
    user: User,
) -> tuple[ProfileTemplate, bytes, int]:
    """:func:`view_for` compiled in the aaa-vpn flavour, with its digest and
    number of paths, without building the view (the same bytes as compiling
    the view; tested so).

    Views of the same shape -- the same requester, FA, HA, epochs, SPI names
    and paths but for the home address -- differ only in the session id, the
    home address, the SPIs, the user's MN-HA SPI and key, the root key and
    the keys derived from it. The second time a shape is asked for, it is
    compiled once with stand-ins for those (:class:`~aaa_vpn.wire.radius_profile.OpenView`,
    checked against the long way), and from then on every view of that shape,
    whichever user's, is that compiled view filled in. Until then each path's
    attributes come from a skeleton compiled once per path and requester."""
    srk = session.session_root_key
    home = session.home_address
    shape = (
        request_type,
        role,
        int(node),
        int(session.care_of_address),
        int(session.home_agent),
        session.epoch,
        session.stationary_epoch,
        len(srk.value),
        len(user.mn_ha_key.value) if request_type is RequestType.HA_REGISTRATION else 0,
        tuple([a.path for a in session.spis]),
        _paths_form(paths, home),
    )
    known = _OPEN_VIEWS.get(shape)
    if isinstance(known, _Compiled):
        open_view, derivations, count = known
        template, digest = open_view.fill(
            session.session_id,
            home,
            srk.value,
            keys.derive_all(srk, derivations),
            _spi_table(session),
            user.mn_ha_spi,
            user.mn_ha_key.value,
        )
        return template, digest, count
    template, digest, count = _view_template(session, paths, role, request_type, node, user)
    if known is None:
        _remember_view(shape, _SEEN_ONCE)
    elif known is _SEEN_ONCE:
        _remember_view(shape, _open_view(session, paths, role, request_type, node, user, template, digest, count))
    return template, digest, count


class _Compiled(NamedTuple):
    """A shape's open view, the derivations it takes and its number of paths."""

    open_view: OpenView
    derivations: tuple[tuple[bytes, bytes, int], ...]
    paths: int


# Open views by shape (view_template): _SEEN_ONCE after the first time, then
# _Compiled, or _NO_OPEN_VIEW if the compiled view did not give the long
# way's bytes (never expected; a test checks it). Bounded: cleared when full.
_OPEN_VIEWS: dict[tuple[object, ...], object] = {}
_OPEN_VIEW_LIMIT = 4096
_SEEN_ONCE = object()
_NO_OPEN_VIEW = object()


def _remember_view(shape: tuple[object, ...], entry: object) -> None:
    if len(_OPEN_VIEWS) >= _OPEN_VIEW_LIMIT:
        _OPEN_VIEWS.clear()
    _OPEN_VIEWS[shape] = entry


# The form of a list of paths (_paths_form) by id(paths), with the list and
# the home address it is for; forms by value, each with a number never given
# to another (so that a shape can hold the number, cheap to hash).
_FORMS: dict[int, tuple[Sequence[PlannedPath], IPv4Address, int]] = {}
_FORM_NUMBERS: dict[tuple[object, ...], int] = {}
_NEXT_FORM = itertools.count()


def _paths_form(paths: Sequence[PlannedPath], home: IPv4Address) -> int:
    """The number of the form of ``paths``: the paths with the home address
    left out (every traffic selector that is the home address alone counts as
    "the home address", whichever it is). Cached per list (the home AAA keeps
    its users' lists while provisioning is unchanged)."""
    found = _FORMS.get(id(paths))
    if found is not None and found[0] is paths and found[1] == home:
        return found[2]
    home_net = _host_network(home)
    form = tuple(
        (
            p.label,
            p.role,
            int(p.a),
            int(p.b),
            tuple(None if n == home_net else n for n in p.a_ts),
            tuple(None if n == home_net else n for n in p.b_ts),
            p.service,
            p.qos,
            p.gateway_mode,
            p.gateway_key,
        )
        for p in paths
    )
    number = _FORM_NUMBERS.get(form)
    if number is None:
        if len(_FORM_NUMBERS) >= _OPEN_VIEW_LIMIT:
            _FORM_NUMBERS.clear()  # numbers are never reused: shapes that held the old ones just miss
        number = _FORM_NUMBERS[form] = next(_NEXT_FORM)
    if len(_FORMS) >= _OPEN_VIEW_LIMIT:
        _FORMS.clear()
    _FORMS[id(paths)] = (paths, home, number)
    return number


def _open_view(
    session: Session,
    paths: Sequence[PlannedPath],
    role: ClientRole,
    request_type: RequestType,
    node: IPv4Address,
    user: User,
    template: ProfileTemplate,
    digest: bytes,
    count: int,
) -> object:
    """The open view of ``session``'s shape (view_template), checked against
    ``template`` and ``digest``, the long way's; _NO_OPEN_VIEW if it differs."""
    home_net = _host_network(session.home_address)
    taken = {int(a) for p in paths for a in (p.a, p.b)} | {n for p in paths for n in (*p.a_ts, *p.b_ts)}
    stand_in_home = next(
        IPv4Address(n) for n in range(1, 256) if n not in taken and _host_network(IPv4Address(n)) not in taken
    )
    stand_in_net = _host_network(stand_in_home)
    shaped_paths = [
        dataclasses.replace(
            p,
            a_ts=tuple(stand_in_net if n == home_net else n for n in p.a_ts),
            b_ts=tuple(stand_in_net if n == home_net else n for n in p.b_ts),
        )
        for p in paths
    ]
    recorder = keys.KeyRecorder(len(session.session_root_key.value))
    spi_names = {SPI_MIN + i: a.path for i, a in enumerate(session.spis)}
    shaped = dataclasses.replace(
        session,
        session_id="-",
        session_root_key=recorder,
        home_address=stand_in_home,
        spis=tuple(a._replace(spi=SPI_MIN + i) for i, a in enumerate(session.spis)),
    )
    stand_in_key = keys.KeyRecorder(len(user.mn_ha_key.value)).value
    stand_in_user = dataclasses.replace(user, mn_ha_key=Secret(bytes(x ^ 0x5A for x in stand_in_key)))
    try:
        view = view_for(shaped, shaped_paths, role, request_type, node, stand_in_user, 0, digest=False)
        open_view = OpenView.open(
            view,
            StandIns(
                recorder.placeholders,
                recorder.value,
                spi_names,
                stand_in_home,
                stand_in_user.mn_ha_key.value,
            ),
        )
        derivations = keys.expansions([recorder.derivations[i] for i in open_view.keys])
    except ValueError:
        return _NO_OPEN_VIEW
    srk = session.session_root_key
    again, again_digest = open_view.fill(
        session.session_id,
        session.home_address,
        srk.value,
        keys.derive_all(srk, derivations),
        _spi_table(session),
        user.mn_ha_spi,
        user.mn_ha_key.value,
    )
    if again_digest != digest or again._flatten() != template._flatten():
        return _NO_OPEN_VIEW
    return _Compiled(open_view, derivations, count)


def _view_template(
    session: Session,
    paths: Sequence[PlannedPath],
    role: ClientRole,
    request_type: RequestType,
    node: IPv4Address,
    user: User,
) -> tuple[ProfileTemplate, bytes, int]:
    """view_template the long way: each path from its skeleton."""
    session_part, ends, forwarding = _view_plan(session, paths, role, request_type, node, user, 0)
    spis = _spi_table(session)
    filled = []
    for tag, (path, local, binding_for) in enumerate(ends, start=1):
        filled.append(
            _skeleton(path, local, tag, binding_for).fill(_path_values(session, path, local, spis, binding_for))
        )
    if forwarding is not None:
        tag = len(ends) + 1
        filled.append(PathSkeleton(forwarding, tag).fill(_values_of(forwarding)))
    template, digest = compile_view(session_part, filled)
    return template, digest, len(filled)


_SKELETONS: dict[tuple[int, int, int, int], tuple[PlannedPath, PathSkeleton]] = {}
_SKELETON_LIMIT = 65536


def _skeleton(path: PlannedPath, local: IPv4Address, tag: int, binding_for: IPv4Address | None) -> PathSkeleton:
    """The skeleton of ``path`` as ``local`` sees it with ``tag``, cached."""
    binds = binding_for is not None and path.gateway_key is not None
    key = (id(path), int(local), tag, int(binding_for) if binds and binding_for is not None else -1)
    found = _SKELETONS.get(key)
    if found is not None and found[0] is path:
        return found[1]
    peer = path.b if local == path.a else path.a
    local_ts, remote_ts = (path.a_ts, path.b_ts) if local == path.a else (path.b_ts, path.a_ts)
    length = path.service.esp_transform.keymat_length
    ikev2 = path.service.key_mode is KeyMode.IKEV2
    placeholder = PathProfile(
        role=path.role,
        local=local,
        peer=peer,
        local_ts=local_ts,
        remote_ts=remote_ts,
        key_mode=path.service.key_mode,
        esp_transform=path.service.esp_transform,
        spi_in=0,
        spi_out=0,
        key_in=Secret(bytes(length)),
        key_out=Secret(bytes(length)),
        lifetime=path.service.sa_lifetime,
        ike_proposal=path.service.ike_proposal if ikev2 else None,
        ike_psk=Secret(bytes(keys.IKE_PSK_LENGTH)) if ikev2 else None,
        qos=QosSpec(path.qos.name, path.qos.dscp, path.qos.rate_kbps) if path.qos else None,
        gateway_mode=path.gateway_mode,
        binding_key=Secret(bytes(keys.BINDING_KEY_LENGTH)) if binds else None,
    )
    skeleton = PathSkeleton(placeholder, tag)
    if len(_SKELETONS) >= _SKELETON_LIMIT:
        _SKELETONS.clear()
    _SKELETONS[key] = (path, skeleton)
    return skeleton


def _path_values(
    session: Session, path: PlannedPath, local: IPv4Address, spis: dict[str, int], binding_for: IPv4Address | None
) -> dict[int, int | Secret]:
    """The SPIs and keys of ``path`` as ``local`` sees it: what :func:`_path_view` derives."""
    peer = path.b if local == path.a else path.a
    srk, label = session.session_root_key, path.label.encode()
    epoch = path_epoch(path.role, session.epoch, session.stationary_epoch)
    length = path.service.esp_transform.keymat_length
    values: dict[int, int | Secret] = {
        AaaVpnAttr.PATH_SPI_IN: spis[path.spi_key(local)],
        AaaVpnAttr.PATH_SPI_OUT: spis[path.spi_key(peer)],
        AaaVpnAttr.PATH_KEY_IN: keys.derive_sa_key(srk, label, peer, local, epoch, length),
        AaaVpnAttr.PATH_KEY_OUT: keys.derive_sa_key(srk, label, local, peer, epoch, length),
    }
    if path.service.key_mode is KeyMode.IKEV2:
        values[AaaVpnAttr.PATH_IKE_PSK] = keys.derive_ike_psk(srk, label, local, peer, epoch)
    if binding_for is not None and path.gateway_key is not None:
        values[AaaVpnAttr.PATH_BINDING_KEY] = keys.derive_binding_key(path.gateway_key, binding_for, path.b)
    return values


def _values_of(path: PathProfile) -> dict[int, int | Secret]:
    values: dict[int, int | Secret] = {
        AaaVpnAttr.PATH_SPI_IN: path.spi_in,
        AaaVpnAttr.PATH_SPI_OUT: path.spi_out,
        AaaVpnAttr.PATH_KEY_IN: path.key_in,
        AaaVpnAttr.PATH_KEY_OUT: path.key_out,
    }
    if path.ike_psk is not None:
        values[AaaVpnAttr.PATH_IKE_PSK] = path.ike_psk
    if path.binding_key is not None:
        values[AaaVpnAttr.PATH_BINDING_KEY] = path.binding_key
    return values


def _digested(digest: bool, profile: VpnProfile) -> VpnProfile:
    return with_digest(profile) if digest else profile


def _previous_fa(spis: Mapping[str, int], fa: IPv4Address) -> IPv4Address | None:
    """The previous FA named by the forwarding path's SPI at ``fa`` (rule 7), if any."""
    suffix = "@" + text(fa)
    for name in spis:
        if name.startswith(FORWARDING_LABEL_PREFIX) and name.endswith(suffix):
            return IPv4Address(name[len(FORWARDING_LABEL_PREFIX) : -len(suffix)])
    return None


def _forwarding_view(
    srk: Secret,
    fa_ha: PathProfile,
    previous: IPv4Address,
    home_address: IPv4Address,
    epoch: int,
    spi_in: int,
    spi_out: int,
) -> PathProfile:
    """The new FA's view of the forwarding path from ``previous`` (rule 7).

    Built from the new FA's view of its FA <-> HA path alone (the same
    security service, transform, lifetime and QoS; the new FA is its local
    end), so that the home AAA (:func:`view_for`) and a foreign AAA
    (:func:`moved_view`) build the very same path. Selectors: the home address
    here, anything at the previous FA, which sends whatever still arrives for
    the node."""
    care_of = fa_ha.local
    name = forwarding_label(previous).encode()
    length = fa_ha.esp_transform.keymat_length
    return PathProfile(
        role=PathRole.FA_FA,
        local=care_of,
        peer=previous,
        local_ts=(_host_network(home_address),),
        remote_ts=(ANY,),
        key_mode=fa_ha.key_mode,
        esp_transform=fa_ha.esp_transform,
        spi_in=spi_in,
        spi_out=spi_out,
        key_in=keys.derive_sa_key(srk, name, previous, care_of, epoch, length),
        key_out=keys.derive_sa_key(srk, name, care_of, previous, epoch, length),
        lifetime=fa_ha.lifetime,
        ike_proposal=fa_ha.ike_proposal,
        ike_psk=keys.derive_ike_psk(srk, name, care_of, previous, epoch) if fa_ha.ike_psk is not None else None,
        qos=fa_ha.qos,
    )


def new_session(
    ctx: UserContext,
    session_id: str,
    srk: Secret,
    home_agent: IPv4Address,
    care_of: IPv4Address,
    now: float,
    lifetime: int,
    random_bytes: Callable[[int], bytes],
    foreign_domain: str = "",
    paths: list[PlannedPath] | None = None,
    fa_identification: bytes = b"",
) -> tuple[Session, list[PlannedPath]]:
    """Plan a fresh session for an FA registration. ``paths``, if given, is
    what :func:`plan_paths` returns for this user, home agent and care-of
    address (callers cache it while provisioning is unchanged).
    ``fa_identification``: the FA's identification attributes
    (:func:`aaa_vpn.wire.coa.identification`)."""
    user = ctx.user
    if user.home_address is None:
        raise Rejected(
            RejectReason.BAD_REQUEST,
            "user has no provisioned home address (dynamic assignment is not supported)",
        )
    if home_agent != user.home_agent:
        raise Rejected(
            RejectReason.BAD_REQUEST,
            f"requested home agent {home_agent} is not the user's home agent",
        )
    if paths is None:
        paths = plan_paths(ctx, user.home_address, home_agent, care_of)
    spis = allocate_spis(paths, (care_of, home_agent), (), random_bytes)
    # The epoch makes keys of a re-keyed path differ from the previous ones even
    # under the same SRK; a fresh session starts at 1.
    session = Session(
        session_id=session_id,
        nai=user.nai,
        session_root_key=srk,
        epoch=1,
        home_address=user.home_address,
        home_agent=home_agent,
        care_of_address=care_of,
        created=now,
        expires=now + lifetime,
        spis=spis,
        foreign_domain=foreign_domain,
        keyed_at=now,
        epoch_started=now,
        fa_identification=fa_identification,
    )
    return session, paths


def _moved_spi(srk: Secret, label: str, node: IPv4Address, epoch: int) -> int:
    if label == FA_HA_MIP_LABEL:
        return keys.derive_spi(srk, _spi_key(label, node), epoch, 256, 0xFFFFFFFF)
    return keys.derive_spi(srk, _spi_key(label, node), epoch, SPI_MIN, SPI_MAX)


def move_session(
    session: Session,
    paths: list[PlannedPath],
    care_of: IPv4Address,
    now: float,
    lifetime: int,
    random_bytes: Callable[[int], bytes],
    epoch: int | None = None,
    rekey: bool = False,
    fa_identification: bytes | None = None,
) -> Session:
    """``session`` moved to the FA at ``care_of`` in ``epoch`` (default: the
    next one), rule 6. ``paths`` are the plans for the new care-of address.
    With ``rekey`` (rule 8) the stationary HA <-> GW paths get new keys and
    SPIs in that epoch too, and the key lifetimes start again at ``now``.
    The epoch starts at ``now``. ``fa_identification``: the identification
    attributes of the FA at ``care_of``; None keeps the session's if that
    FA is the session's, else there are none (an HA reported the move).

    The SPIs of the moving paths are derived from the session root key
    (:func:`aaa_vpn.keys.derive_spi`), so a foreign AAA that answers the
    handoff itself (:func:`moved_view`) hands out exactly what the home AAA
    stores when the HA asks; other SPIs are kept, new ones drawn."""
    epoch = session.epoch + 1 if epoch is None else epoch
    srk, ha = session.session_root_key, session.home_agent
    moving = [p for p in paths if rekey or p.role is not PathRole.HA_GW]
    derived = [
        SpiAllocation(node, _moved_spi(srk, p.label, node, epoch), key)
        for p in moving
        for node, key in ((p.a, p.a_key), (p.b, p.b_key))
    ]
    mip_key = _spi_key(FA_HA_MIP_LABEL, ha)
    derived.append(SpiAllocation(ha, _moved_spi(srk, FA_HA_MIP_LABEL, ha, epoch), mip_key))
    previous = session.care_of_address
    if previous != care_of:
        # Rule 7: the forwarding path from the FA the node leaves.
        label = forwarding_label(previous)
        derived += [
            SpiAllocation(node, _moved_spi(srk, label, node, epoch), _spi_key(label, node))
            for node in (care_of, previous)
        ]
    names = {a.path for a in derived}
    moving_labels = {p.label for p in moving} | {FA_HA_MIP_LABEL}
    kept = tuple(
        a
        for a in session.spis
        if a.path.rpartition("@")[0] not in moving_labels and not a.path.startswith(FORWARDING_LABEL_PREFIX)
    ) + tuple(derived)
    spis = allocate_spis(paths, (care_of, ha), kept, random_bytes)
    assert names <= {a.path for a in spis}
    if fa_identification is None:
        fa_identification = session.fa_identification if previous == care_of else b""
    moved = dataclasses.replace(
        session,
        care_of_address=care_of,
        epoch=epoch,
        expires=now + lifetime,
        spis=spis,
        epoch_started=now,
        fa_identification=fa_identification,
    )
    if rekey:
        moved = dataclasses.replace(moved, stationary_epoch=epoch, keyed_at=now)
    return moved


def moved_view(view: VpnProfile, care_of: IPv4Address, epoch: int, lifetime: int) -> VpnProfile:
    """An FA's view moved to the FA at ``care_of`` in ``epoch``: what the home
    AAA's :func:`move_session` and :func:`view_for` give the new FA, computed
    from the old FA's view and its session root key alone (flow C: the
    foreign AAA answers a same-domain handoff without the home domain)."""
    srk = view.session_root_key
    if srk is None:
        raise ValueError("moving a view needs its session root key")
    moved = []
    for path in view.paths:
        if path.role is PathRole.FA_FA:
            continue  # the forwarding path of an earlier move does not move
        is_gateway = path.role is PathRole.FA_GW
        label = path_label(path.role, path.peer if is_gateway else None, path.remote_ts[0] if is_gateway else None)
        name = label.encode()
        length = path.esp_transform.keymat_length
        moved.append(
            dataclasses.replace(
                path,
                local=care_of,
                spi_in=_moved_spi(srk, label, care_of, epoch),
                spi_out=_moved_spi(srk, label, path.peer, epoch),
                key_in=keys.derive_sa_key(srk, name, path.peer, care_of, epoch, length),
                key_out=keys.derive_sa_key(srk, name, care_of, path.peer, epoch, length),
                ike_psk=keys.derive_ike_psk(srk, name, care_of, path.peer, epoch) if path.ike_psk else None,
            )
        )
    ha = view.home_agent
    previous = view.care_of_address
    previous_key = None
    fa_ha = next((p for p in moved if p.role is PathRole.FA_HA), None)
    if previous != care_of and fa_ha is not None:
        # Rule 7, as move_session and view_for do it.
        label = forwarding_label(previous)
        spi_in, spi_out = _moved_spi(srk, label, care_of, epoch), _moved_spi(srk, label, previous, epoch)
        moved.append(_forwarding_view(srk, fa_ha, previous, view.home_address, epoch, spi_in, spi_out))
        previous_key = keys.derive_handoff_key(srk, previous, epoch - 1)
    return with_digest(
        dataclasses.replace(
            view,
            care_of_address=care_of,
            epoch=epoch,
            lifetime=lifetime,
            paths=tuple(moved),
            fa_ha_spi=_moved_spi(srk, FA_HA_MIP_LABEL, ha, epoch),
            fa_ha_key=keys.derive_fa_ha_key(srk, care_of, ha, epoch),
            handoff_key=keys.derive_handoff_key(srk, care_of, epoch),
            previous_fa=previous if previous_key is not None else None,
            previous_fa_handoff_key=previous_key,
        )
    )


def session_id_from(random_bytes: Callable[[int], bytes]) -> str:
    return random_bytes(16).hex()
