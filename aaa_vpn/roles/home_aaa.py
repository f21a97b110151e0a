"""The home AAA (AAAH), sans-IO: it answers the Access-Requests of FAs, HAs,
gateways and visited domains' proxies with each one's part of a user's VPN,
and decides every change of the user's session.

Rules (everything that decides what is answered and what is stored lives
here; "plan rule N" refers to :mod:`aaa_vpn.roles.home_plan`):

1. RADIUS plumbing: :mod:`aaa_vpn.roles.radius_server` rules 1-6 (clients by
   address or CIDR, framing, duplicates, Message-Authenticator, Proxy-State,
   Status-Server). Status-Server is answered with the counters.
2. The request is decoded once into an
   :class:`~aaa_vpn.wire.radius_request.AccessRequest`; one that does not
   decode is answered with an Access-Reject (Bad-Request) naming the
   attribute. Every Access-Reject carries a Reply-Message and an
   Aaa-Vpn-Reject-Reason.
3. Who may ask what (:data:`ALLOWED_REQUESTS`): FAs, proxies and this
   project's foreign AAAs make FA-Registrations and Service-Updates, HAs
   HA-Registrations, gateways GW-Bindings; without Aaa-Vpn-Request-Type the
   client's role picks (:data:`DEFAULT_REQUEST`). Anything else: Bad-Request.
4. The user must exist (else Unknown-User) and be enabled (else
   User-Disabled); the mobile node is authenticated by its MN-AAA proof in
   CHAP attributes (plan rule 1; missing: Bad-Request; wrong:
   Authentication-Failed) in every request but a GW-Binding.
5. The requester's own address is its NAS-IP-Address if that lies in its
   client's network (any, for a proxy), else the datagram's source. An FA's
   care-of address (Aaa-Vpn-Care-Of-Address, else that address) must lie in
   its client's network; a proxy's is taken as given. The home agent is the
   one the request names (ours or 3GPP2's attribute), else the user's.
6. An FA registration is one of five cases, :data:`FA_CASES` and
   :func:`choose_case` (the live session is the user's newest unexpired
   session through that home agent):

   ========  ==================================================  ======================  =======
   case      when                                                the session             store
   ========  ==================================================  ======================  =======
   create    no live session, or the request names neither it    new (fresh root key)    CREATE
             (its id, at its care-of address) nor a previous FA
   renew     names the live session at its care-of address; the  expiry moves (never     RENEW
             VPN is unchanged, the keys are not due, not a        past the keys' life)
             Service-Update
   rekey     as renew, but the keys are due (plan rule 8) or it   next epoch, every path  REPLACE
             is a Service-Update (something refused the keys)     re-keyed
   update    names the live session at its care-of address, but   next epoch, every path  REPLACE
             the user's VPN changed (paths came or went)          re-keyed
   move      names a previous FA; the live session is at another  next epoch at the new   REPLACE
             care-of address (flows C and D)                      FA (plan rule 6)
   ========  ==================================================  ======================  =======

   A renewal's keys and SPIs stay; keys a node removed (after a
   deregistration or an expiry the session is gone) are never handed out
   again.
7. An HA registration answers for the session it names (else the user's
   newest live session through that HA; none: No-Session). The FA it names
   is Aaa-Vpn-Care-Of-Address or 3GPP2-Foreign-Agent-Address (26/5535/79),
   checked alike; both, disagreeing: Bad-Request. If it reports
   the node at another care-of address or key epoch -- a foreign AAA
   answered a same-domain handoff from its cache (flow C) -- the session is
   moved the same deterministic way (plan rule 6) to that epoch, which must
   be newer than the session's and at most :data:`MAX_EPOCH_STEP` ahead
   (never past the 32-bit field); anything else is No-Session. The move is
   checked by the MN-AAA proof the HA relays (rule 4) and stored like any
   other change (rule 10). A GW-Binding only reads: the gateway's view of
   the session that has a path to it.
8. Views (plan rule 5): the FA's (also what a proxy gets), the HA's, the
   gateway's; the session root key goes only to HAs and to clients of role
   ``foreign-aaa``. Each view carries its digest (Aaa-Vpn-Profile-Digest).
9. Replies: the view in the client's flavour (aaa-vpn, rfc2868, 3gpp2), its
   lifetime the session's remaining one; or, to an aaa-vpn client whose
   request named the digest of the very view it would get, a confirmation:
   session id, epoch, lifetime and digest, no key (docs/protocol.md section
   1, "Renewals that change no key"). A view that does not fit the packet is
   Profile-Too-Large.
10. Store: a decision that changes a session is a :class:`StoreSession`
    event; its reply waits for :meth:`HomeAaa.sessions_stored`. Writes are
    conditional on the session's epoch (model.SessionWrite): CONFLICT (another
    worker or node changed the session) decides the request again from the
    store, up to :data:`CONFLICT_RETRIES` times; SPI_TAKEN draws new SPIs,
    up to :data:`SPI_RETRIES` times, then No-Resources; UNAVAILABLE (the
    store did not answer in time) drops the request, counted, so that its
    retransmission is decided anew. One write per user is in flight at a
    time: the user's later requests wait for it, in order.
11. Operator actions (RFC 5176, docs/protocol.md section 6):
    :meth:`HomeAaa.push` re-keys a live session at the next epoch with the
    user's current VPN (every path, the stationary ones too) and, once that
    is stored, asks for a CoA-Request to its FA and HA carrying each one's
    new view in that agent's client's flavour; :meth:`HomeAaa.disconnect`
    asks for Disconnect-Requests, and :meth:`HomeAaa.delete` forgets the
    session. Each request names the session as RFC 5176 section 3 asks
    (aaa_vpn/wire/coa.py): User-Name, the identification attributes the
    agent sent (rule 13), and Aaa-Vpn-Session-Id to an ``aaa-vpn`` client.
12. The renewal memo (:mod:`aaa_vpn.wire.memo`): a renewal confirmed
    without a write is remembered -- the request's shape, the client's and
    the mobile node's secrets, the confirmation -- until the same request
    would need a write (the stored expiry less the lifetime, plus
    :data:`RENEWAL_GRANULARITY`), the keys are due, or the session or
    provisioning changes here (every write of the user's session and every
    new provisioning generation forget it). A request of that shape whose
    Message-Authenticator and MN-AAA proof check out is answered from the
    memo (counted, not logged one by one); anything else is decided as
    above. Changes other processes make are seen through the session marks
    (:mod:`aaa_vpn.store.marks`): a worker decides a renewal from its copy
    of a session, and the memo answers for it, only while the user's mark
    holds the stamp taken before that copy was read; without marks, every
    renewal reads the store and nothing is remembered.
13. Identification (RFC 5176 section 3): the identification attributes of
    an FA's or HA's request (:func:`aaa_vpn.wire.coa.identification`:
    NAS-IP-Address, NAS-Identifier, Acct-Session-Id, Calling-Station-Id ...,
    raw, in order) are stored with the session as that agent's
    (``fa_identification``, ``ha_identification``), written when they
    change: with the FA's create, move, re-key or renewal, and for an HA
    with its move or as an IDENTIFY write of their own. A move reported by
    the HA clears the FA's (the new FA never asked here).

Theory of operation (the aioquic shape): inputs are
:meth:`~HomeAaa.receive_datagram`, :meth:`~HomeAaa.sessions_stored`,
:meth:`~HomeAaa.push`, :meth:`~HomeAaa.disconnect`, :meth:`~HomeAaa.delete`,
:meth:`~HomeAaa.refresh` and :meth:`~HomeAaa.expire`, each with ``now``;
outputs are :meth:`~HomeAaa.datagrams_to_send` and :meth:`~HomeAaa.next_event`.
Provisioning and sessions are read through two small read-only interfaces,
:class:`Provisioning` and :class:`SessionReader` (a cache, SQLite and
PostgreSQL all fit behind them); every change leaves as an event. No sockets,
no database, no clock; randomness only through ``random_bytes``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import itertools
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol

from aaa_vpn.model import (
    Client,
    ClientRole,
    Flavour,
    PskEncoding,
    Session,
    SessionWrite,
    WriteKind,
    WriteOutcome,
    nai_realm,
)
from aaa_vpn.roles import home_plan as plan
from aaa_vpn.roles.home_plan import PlannedPath, Rejected, UserContext
from aaa_vpn.roles.radius_server import Address, Dropped, Incoming, RadiusServer
from aaa_vpn.roles.radsec import is_radsec
from aaa_vpn.secret import Secret
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.wire import coa
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.accounting import session_class
from aaa_vpn.wire.memo import Memo, PyRenewalMemo, renewal_memo
from aaa_vpn.wire.memo import shape as memo_shape
from aaa_vpn.wire.profile import VENDOR_ID, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import (
    ProfileError,
    ProfileTemplate,
    compile_confirmation,
    compile_profile,
)
from aaa_vpn.wire.radius_request import (
    MAX_KEY_EPOCH,
    AccessRequest,
    RequestDecodeError,
    decode_access_request,
)

#: Which request types each kind of client may make (rule 3; least privilege).
ALLOWED_REQUESTS: dict[ClientRole, frozenset[RequestType]] = {
    ClientRole.FA: frozenset({RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE}),
    ClientRole.PROXY: frozenset({RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE}),
    ClientRole.FOREIGN_AAA: frozenset({RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE}),
    ClientRole.HA: frozenset({RequestType.HA_REGISTRATION}),
    ClientRole.GW: frozenset({RequestType.GW_BINDING}),
}
#: The request type of a request without Aaa-Vpn-Request-Type (rule 3).
DEFAULT_REQUEST: dict[ClientRole, RequestType] = {
    ClientRole.FA: RequestType.FA_REGISTRATION,
    ClientRole.PROXY: RequestType.FA_REGISTRATION,
    ClientRole.FOREIGN_AAA: RequestType.FA_REGISTRATION,
    ClientRole.HA: RequestType.HA_REGISTRATION,
    ClientRole.GW: RequestType.GW_BINDING,
}
#: Rule 7: how far ahead of the stored session an HA may report the key epoch.
#: A foreign AAA moves a session one epoch per same-domain handoff; a few
#: handoffs may pass before their HA registrations reach us.
MAX_EPOCH_STEP = 8
#: Rule 10: decisions made again after a write found the session changed.
CONFLICT_RETRIES = 3
#: Rule 10: fresh SPI draws after a write found an SPI taken.
SPI_RETRIES = 5
#: Rule 11: epochs a push tries when a derived SPI is taken.
_PUSH_EPOCHS = 3
#: Rule 6: a renewal that would move the stored expiry by less than this
#: (seconds) writes nothing and is granted the stored expiry.
RENEWAL_GRANULARITY = 1.0
_CACHE_LIMIT = 100_000


# --- interfaces ----------------------------------------------------------------------------


class Provisioning(Protocol):
    """The provisioning the home AAA reads (read-only)."""

    def generation(self) -> int:
        """A number that changes whenever provisioning changes (cheap)."""

    def clients(self) -> Sequence[Client]:
        """Every RADIUS client."""

    def user_context(self, nai: str) -> UserContext | None:
        """The user and everything its VPN records name, or None."""


class SessionReader(Protocol):
    """The sessions the home AAA reads (read-only; changes leave as events)."""

    def live_session(self, nai: str, home_agent: IPv4Address, now: float) -> Session | None:
        """The user's newest session through ``home_agent`` that has not expired."""

    def sessions_of(self, nai: str) -> Sequence[Session]:
        """The user's sessions, newest first."""

    def session(self, session_id: str) -> Session | None:
        """One session, or None."""

    def marks(self) -> SessionMarks | None:
        """The session marks every writer sets (aaa_vpn/store/marks.py), or
        None: then no session is decided from a copy."""


@dataclass(frozen=True)
class HomeAaaOptions:
    """Tunables of the home AAA."""

    session_lifetime: int = 3600
    """Seconds a registration's session is granted (before key-life capping)."""
    dup_cache_seconds: float = 10.0
    """How long an answer is kept for retransmissions (RFC 5080 section 2.2.2)."""
    rekey_fraction: float = 0.5
    """Plan rule 8: a renewal re-keys once this fraction of the shortest SA
    lifetime has passed since the keys were last all renewed."""
    renewal_memo: bool = True
    """Rule 12: answer repeated renewals from the renewal memo."""


# --- events --------------------------------------------------------------------------------


class Event:
    """Base class of what :meth:`HomeAaa.next_event` reports."""


@dataclass(frozen=True)
class StoreSession(Event):
    """Carry out ``write`` (in one transaction with the other writes of the
    batch, if any), then call :meth:`HomeAaa.sessions_stored` with ``write_id``
    and its outcome."""

    write_id: int
    """Names the write in the acknowledgement."""
    write: SessionWrite
    """What to change."""


@dataclass(frozen=True)
class Decided(Event):
    """An Access-Request was answered (for logs and counters)."""

    nai: str
    """The User-Name, as far as it is printable."""
    client: str
    """The client's name."""
    request: str
    """The request type (``fa_registration``...), or ``""`` if it did not decode."""
    outcome: str
    """``created``, ``renewed``, ``rekeyed``, ``updated``, ``moved``,
    ``confirmed`` (a renewal answered with a confirmation) or ``answered``
    (nothing changed), or ``rejected``."""
    reason: str = ""
    """The reject reason (``unknown_user``...), when rejected."""
    detail: str = ""
    """The Reply-Message of a reject (never a secret)."""
    session_id: str = ""
    """The session concerned, if any."""
    care_of: str = ""
    """Its care-of address."""
    paths: int = 0
    """Paths of the view sent."""


@dataclass(frozen=True)
class CoaTarget:
    """An agent a CoA-/Disconnect-Request goes to."""

    role: str
    """``fa`` or ``ha``."""
    address: IPv4Address
    """The agent (the session's care-of address or home agent)."""
    client: str = ""
    """Its RADIUS client's name ('' when no client holds this address)."""
    port: int = coa.COA_PORT
    """Its CoA port (the client's ``coa_port``)."""
    secret: Secret | None = field(default=None, repr=False)
    """The client's shared secret."""
    flavour: Flavour = Flavour.AAA_VPN
    """The client's flavour: what a push carries, and whether requests name
    the session with Aaa-Vpn-Session-Id (aaa_vpn/wire/coa.py)."""
    psk_encoding: PskEncoding = PskEncoding.SALT
    """The client's 3GPP2-Pre-Shared-Secret encoding (3gpp2 flavour)."""
    require_message_authenticator: bool = False
    """Believe its answers only with a Message-Authenticator (the client's
    ``require_coa_message_authenticator``)."""
    identification: bytes = b""
    """The identification attributes the agent sent for the session (RFC 5176
    section 3), raw: what the request repeats."""


@dataclass(frozen=True)
class Authorize(Event):
    """Dynamic Authorization requests to send (RFC 5176): the exchange
    (send, retransmit byte-identically, match the answers) is the service
    layer's (net/coa_client.py)."""

    tag: object
    """The caller's tag given to :meth:`HomeAaa.push` or :meth:`HomeAaa.disconnect`."""
    action: str
    """``push`` or ``disconnect``."""
    previous: Session | None
    """The session before the action."""
    session: Session | None
    """The session after it (a push's new epoch); None if the action failed."""
    requests: tuple[tuple[CoaTarget, bytes | None], ...] = ()
    """Per target, the request to send (None: no client holds its address)."""
    views: dict[str, VpnProfile] = field(default_factory=dict, repr=False)
    """A push's new views, by role (``fa``, ``ha``)."""
    error: str = ""
    """Why there is nothing to send (no such session, it expired...)."""


# --- the five cases of rule 6 --------------------------------------------------------------


class Case(enum.Enum):
    """An FA registration's case (rule 6)."""

    CREATE = "created"
    RENEW = "renewed"
    REKEY = "rekeyed"
    UPDATE = "updated"
    MOVE = "moved"


def choose_case(
    current: Session | None,
    request: AccessRequest,
    care_of: IPv4Address,
    vpn_changed: bool,
    keys_due: bool,
) -> Case:
    """Rule 6: which case an FA registration is. ``vpn_changed``: the user's
    current plan has paths the live session has no SPIs for (or lost some);
    ``keys_due``: plan rule 8 says the keys are getting old."""
    if current is None:
        return Case.CREATE
    if request.session_id == current.session_id and current.care_of_address == care_of:
        if vpn_changed:
            return Case.UPDATE
        if keys_due or request.request_type is RequestType.SERVICE_UPDATE:
            return Case.REKEY
        return Case.RENEW
    if request.previous_fa is not None and current.care_of_address != care_of:
        return Case.MOVE
    return Case.CREATE


#: Rule 6's table as data: what each case does to the session and the store.
FA_CASES: dict[Case, tuple[str, WriteKind]] = {
    Case.CREATE: ("new session, fresh session root key", WriteKind.CREATE),
    Case.RENEW: ("expiry moves, keys and SPIs stay (no write within a second)", WriteKind.RENEW),
    Case.REKEY: ("next epoch at the same FA, every path re-keyed", WriteKind.REPLACE),
    Case.UPDATE: ("next epoch at the same FA, every path re-keyed", WriteKind.REPLACE),
    Case.MOVE: ("next epoch at the new FA", WriteKind.REPLACE),
}


# --- internals -----------------------------------------------------------------------------


@dataclass
class _Job:
    """An Access-Request being decided."""

    incoming: Incoming[Client]
    request: AccessRequest
    conflicts: int = 0
    spi_draws: int = 0
    #: The user's session mark taken before its live session was read (rule 12).
    stamp: int | None = None
    #: The requester's identification attributes (RFC 5176 section 3, rule 13).
    identification: bytes = b""


@dataclass
class _Answer:
    """A decided Access-Request: its reply, once its write (if any) is stored."""

    code: int
    attributes: list[bytes]
    decided: Decided
    write: SessionWrite | None = None
    session: Session | None = None
    #: A confirmation's template, which the renewal memo may remember (rule 12).
    confirmation: ProfileTemplate | None = None


@dataclass
class _Action:
    """A push waiting for its write."""

    tag: object
    action: str
    previous: Session
    paths: list[PlannedPath]
    ctx: UserContext
    attempt: int = 0
    moved: Session | None = None


class _View:
    """One requester's view of a session: compiled in the aaa-vpn flavour at
    once (plan.view_template), as a profile and in other flavours on demand."""

    __slots__ = (
        "_profile",
        "confirmation",
        "digest",
        "epoch",
        "key_time",
        "make_profile",
        "paths",
        "receiver",
        "session_id",
        "templates",
    )

    def __init__(
        self,
        template: ProfileTemplate,
        digest: bytes,
        paths: int,
        session: Session,
        make_profile: Callable[[], VpnProfile],
        receiver: IPv4Address,
    ) -> None:
        self.digest = digest
        self.paths = paths
        self.session_id = session.session_id
        self.epoch = session.epoch
        self.key_time = int(session.epoch_started)
        self.receiver = receiver
        self.make_profile = make_profile
        self._profile: VpnProfile | None = None
        self.templates: dict[tuple[Flavour, PskEncoding], ProfileTemplate] = {
            (Flavour.AAA_VPN, PskEncoding.SALT): template
        }
        self.confirmation: ProfileTemplate | None = None

    @property
    def profile(self) -> VpnProfile:
        if self._profile is None:
            self._profile = dataclasses.replace(self.make_profile(), digest=self.digest)
        return self._profile

    def template(self, flavour: Flavour, psk_encoding: PskEncoding = PskEncoding.SALT) -> ProfileTemplate:
        key = (flavour, psk_encoding if flavour is Flavour.THREEGPP2 else PskEncoding.SALT)
        template = self.templates.get(key)
        if template is None:
            template = self.templates[key] = compile_profile(
                self.profile,
                flavour,
                receiver=self.receiver,
                psk_encoding=psk_encoding,
                key_time=self.key_time,
            )
        return template

    def confirmation_template(self) -> ProfileTemplate:
        if self.confirmation is None:
            self.confirmation = compile_confirmation(self.session_id, self.epoch, self.digest)
        return self.confirmation


def _class_attribute(session_id: str) -> bytes:
    """The Class every Access-Accept carries: the session it answers for, which
    the NAS echoes in its accounting (RFC 2865 section 5.25)."""
    return rc.attribute(rc.CLASS, session_class(session_id))


def _printable(raw: bytes | str) -> str:
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")
    return text[:128]


_REJECT_REASON = struct.Struct("!BBIBBI")


def reject_attributes(reason: RejectReason, message: str) -> list[bytes]:
    """An Access-Reject's attributes: Reply-Message and Aaa-Vpn-Reject-Reason."""
    return [
        rc.attribute(rc.REPLY_MESSAGE, message.encode("utf-8")[:253]),
        _REJECT_REASON.pack(rc.VENDOR_SPECIFIC, 12, VENDOR_ID, rc.AaaVpnAttr.REJECT_REASON, 6, reason),
    ]


class HomeAaa:
    """The home AAA of one worker; see the module rules."""

    def __init__(
        self,
        provisioning: Provisioning,
        sessions: SessionReader,
        options: HomeAaaOptions | None = None,
        *,
        now: float = 0.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``now`` starts the uptime shown in Status-Server replies."""
        self.provisioning = provisioning
        self.sessions = sessions
        self.options = options or HomeAaaOptions()
        self.random_bytes = random_bytes
        self.started = now
        self.process_id = 0
        """Shown in Status-Server answers; the service layer sets it (a role reads no process state)."""
        self.counters: collections.Counter[str] = collections.Counter()
        self.server: RadiusServer[Client] = RadiusServer(
            provisioning.clients(), dup_ttl=self.options.dup_cache_seconds, counters=self.counters
        )
        self._generation = provisioning.generation()
        self._plans: dict[tuple[str, int, int, int], list[PlannedPath]] = {}
        self._views: dict[tuple[object, ...], _View] = {}
        self._names: dict[int, tuple[list[PlannedPath], frozenset[str]]] = {}
        self._marks = sessions.marks()
        if self.options.renewal_memo and self._marks is not None:
            self._memo: Memo = renewal_memo(_CACHE_LIMIT, self._marks.buffer)
        else:
            self._memo = PyRenewalMemo(0)
        self._memo_keys: dict[str, set[bytes]] = {}  # by NAI: the memos that answer for its session
        # By NAI: the session this worker last stored or read, and the mark it
        # holds while no other process changed it (None: read it again).
        self._live: dict[str, tuple[Session, int | None]] = {}
        self._write_ids = itertools.count(1)
        self._writes: dict[int, tuple[_Job, _Answer] | _Action] = {}
        self._busy: dict[str, collections.deque[_Job]] = {}  # NAIs with a write in flight: who waits
        self._in_flight: collections.Counter[str] = collections.Counter()  # writes in flight per NAI
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: collections.deque[Event] = collections.deque()

    # -- inputs ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Provisioning may have changed: if its generation moved, serve the
        current clients and forget every plan and view made from the old."""
        generation = self.provisioning.generation()
        if generation != self._generation:
            self._generation = generation
            self.server.set_clients(self.provisioning.clients())
            self._plans.clear()
            self._views.clear()
            self._names.clear()
            self._memo.clear()
            self._memo_keys.clear()

    def receive_datagram(self, data: bytes, source: Address, now: float, client: Client | None = None) -> None:
        """Handle one datagram from ``source`` (rules 1-12). ``client``: a
        RadSec peer's client record as roles/radsec.py rule 2 makes it (the
        renewal memo, keyed by source address, is not used for it)."""
        if client is None:
            reply = self._memo.answer(data, source[0], now)
            if reply is not None:
                self._outbox.append((reply, source))
                return
        result = self.server.receive(data, source, now, client)
        if (
            result is None
            and client is None
            and self.server.dropped
            and self.server.dropped[-1].reason == "unknown_client"
        ):
            # A client added a moment ago: look again with current provisioning.
            self.refresh()
            if self.server.clients.lookup(source[0]) is not None:
                self.server.counters["dropped"] -= 1
                self.server.counters["dropped.unknown_client"] -= 1
                self.server.dropped.pop()
                result = self.server.receive(data, source, now)
                self.counters["received"] -= 1
        self._take_dropped()
        if result is None:
            return
        if isinstance(result, bytes):
            self._outbox.append((result, source))
            return
        if result.code == rc.STATUS_SERVER:
            reply = self.server.status_reply(result, self.status_message(now), now)
            self._take_dropped()
            if reply is not None:
                self._outbox.append((reply, source))
            return
        self.counters["access_requests"] += 1
        try:
            request = decode_access_request(result.packet)
        except RequestDecodeError as exc:
            nai = result.packet.first(rc.USER_NAME) or b""
            self._reject_incoming(result, RejectReason.BAD_REQUEST, str(exc), now, _printable(nai), "")
            return
        self._run(_Job(result, request), now)

    def sessions_stored(self, write_id: int, outcome: WriteOutcome, now: float) -> None:
        """The service layer's answer to :class:`StoreSession` (rule 10)."""
        entry = self._writes.pop(write_id, None)
        if entry is None:
            return
        if isinstance(entry, _Action):
            self._action_stored(entry, outcome, now)
            return
        job, answer = entry
        nai = job.request.nai
        self._in_flight[nai] -= 1
        if self._in_flight[nai] > 0:
            waiting: collections.deque[_Job] = collections.deque()  # the user's later writes are still in flight
        else:
            del self._in_flight[nai]
            waiting = self._busy.pop(nai, collections.deque())
        if outcome is WriteOutcome.STORED:
            if answer.session is not None:
                # A RENEW marks nothing, so the stamp read before still
                # vouches for the copy; after any other write (new
                # identification attributes too), read again.
                write = answer.write
                renewed = write is not None and write.kind is WriteKind.RENEW and write.fa_identification is None
                self._remember(answer.session, job.stamp if renewed else None)
            self._send(job, answer, now)
        elif outcome is WriteOutcome.CONFLICT:
            self._live.pop(nai, None)
            self._forget_memos(nai)
            self.counters["store_conflicts"] += 1
            job.conflicts += 1
            if job.conflicts > CONFLICT_RETRIES:
                self.server.abandon(job.incoming, "store_conflict", f"session of {_printable(nai)} keeps changing")
                self._take_dropped()
            else:
                waiting.appendleft(job)
        elif outcome is WriteOutcome.SPI_TAKEN:
            self.counters["spi_collisions"] += 1
            job.spi_draws += 1
            if job.spi_draws >= SPI_RETRIES:
                self._reject_job(job, RejectReason.NO_RESOURCES, "no free SPI after several attempts", now)
            else:
                waiting.appendleft(job)
        else:
            self.server.abandon(job.incoming, "store_unavailable", "the session store did not answer in time")
            self._take_dropped()
        for queued in waiting:
            self._run(queued, now)

    def push(self, session_id: str, now: float, tag: object = None) -> None:
        """Rule 11: roll the user's current VPN out to a live session's FA and
        HA. Ends in an :class:`Authorize` event (after a :class:`StoreSession`)."""
        session = self.sessions.session(session_id)
        if session is None or session.expires <= now:
            what = "has expired" if session is not None else "does not exist"
            self._events.append(Authorize(tag, "push", session, None, error=f"session {session_id} {what}"))
            return
        ctx = self.provisioning.user_context(session.nai)
        if ctx is None or not ctx.user.enabled:
            why = f"user {session.nai} is disabled: disconnect the session instead" if ctx else f"no user {session.nai}"
            self._events.append(Authorize(tag, "push", session, None, error=why))
            return
        paths = plan.plan_paths(ctx, session.home_address, session.home_agent, session.care_of_address)
        self._push_write(_Action(tag, "push", session, paths, ctx), now)

    def disconnect(self, session_id: str, now: float, tag: object = None) -> None:
        """Rule 11: the Disconnect-Requests that end a session on its FA and
        HA (an :class:`Authorize` event). The session stays until :meth:`delete`."""
        session = self.sessions.session(session_id)
        if session is None:
            self._events.append(Authorize(tag, "disconnect", None, None, error=f"no session {session_id}"))
            return
        requests = tuple(
            (
                target,
                self._coa_request(
                    coa.DISCONNECT_REQUEST,
                    target,
                    coa.session_attributes(session.nai, session.session_id, target.identification, target.flavour),
                )
                if target.secret
                else None,
            )
            for target in self.coa_targets(session)
        )
        self._events.append(Authorize(tag, "disconnect", session, session, requests))

    def delete(self, session_id: str, now: float) -> None:
        """Forget a session (a :class:`StoreSession` DELETE)."""
        for nai, (cached, _stamp) in list(self._live.items()):
            if cached.session_id == session_id:
                del self._live[nai]
                self._forget_memos(nai)
        write = SessionWrite(WriteKind.DELETE, session_id)
        self._events.append(StoreSession(next(self._write_ids), write))

    def expire(self, now: float) -> None:
        """Housekeeping: forget old answers and expired cached sessions."""
        self.server.expire(now)
        for nai in [nai for nai, (session, _stamp) in self._live.items() if session.expires <= now]:
            del self._live[nai]

    # -- outputs --------------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """The replies to send now, with their destinations."""
        answered = self._memo.take_answered()
        if answered:
            c = self.counters
            for name in ("received", "access_requests", "accepts", "sessions_renewed", "renewals_confirmed"):
                c[name] += answered
            c["memo_answers"] += answered
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | Dropped | None:
        """The next event (a :class:`Dropped` from the plumbing included), or None."""
        return self._events.popleft() if self._events else None

    @property
    def pending_writes(self) -> int:
        """Writes announced and not yet acknowledged."""
        return len(self._writes)

    # -- deciding ---------------------------------------------------------------------------------
    def _run(self, job: _Job, now: float) -> None:
        nai = job.request.nai
        waiting = self._busy.get(nai)
        if waiting is not None and not _reads_nothing(job, waiting):
            waiting.append(job)  # rule 10: one write per user in flight
            return
        try:
            answer = self._decide(job, now)
        except Rejected as rejected:
            self._reject_job(job, rejected.reason, rejected.message, now)
            return
        if answer.write is None:
            self._send(job, answer, now)
            return
        write_id = next(self._write_ids)
        self._writes[write_id] = (job, answer)
        self._busy.setdefault(nai, collections.deque())
        self._in_flight[nai] += 1
        if answer.write.kind is not WriteKind.IDENTIFY:  # an HA's identification changes no FA's answer
            self._forget_memos(nai)
        self._events.append(StoreSession(write_id, answer.write))

    def _decide(self, job: _Job, now: float) -> _Answer:
        request, client = job.request, job.incoming.client
        request_type = request.request_type or DEFAULT_REQUEST[client.role]
        if request_type not in ALLOWED_REQUESTS[client.role]:
            raise Rejected(
                RejectReason.BAD_REQUEST,
                f"a {client.role.value} client may not make a {request_type.name.lower()} request",
            )
        ctx = self.provisioning.user_context(request.nai)
        if ctx is None:
            raise Rejected(RejectReason.UNKNOWN_USER, "unknown user")
        if not ctx.user.enabled:
            raise Rejected(RejectReason.USER_DISABLED, "user is disabled")
        if request_type is not RequestType.GW_BINDING:
            if request.chap_password is None or request.chap_challenge is None:
                raise Rejected(
                    RejectReason.BAD_REQUEST, "the MN-AAA authenticator (CHAP-Password, CHAP-Challenge) is missing"
                )
            if not plan.verify_mn_aaa_chap(request.chap_password, request.chap_challenge, ctx.user.mn_aaa_secret):
                raise Rejected(RejectReason.AUTHENTICATION_FAILED, "mobile node failed authentication")
        node = self._requester_address(client, request, job.incoming.source)
        job.identification = coa.identification(job.incoming.packet.attributes)
        if request_type in (RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE):
            return self._fa_registration(job, ctx, node, now)
        if request_type is RequestType.HA_REGISTRATION:
            return self._ha_registration(job, ctx, node, now)
        return self._gw_binding(job, ctx, node, now)

    @staticmethod
    def _requester_address(client: Client, request: AccessRequest, source: Address) -> IPv4Address:
        """Rule 5."""
        nas = request.nas_ip_address
        if nas is not None and (client.role.relays or nas in client.network):
            return nas
        return IPv4Address(source[0])

    def _fa_registration(self, job: _Job, ctx: UserContext, node: IPv4Address, now: float) -> _Answer:
        request, client = job.request, job.incoming.client
        care_of = request.care_of_address or node
        if client.role is ClientRole.FA and care_of not in client.network:
            raise Rejected(
                RejectReason.BAD_REQUEST, f"care-of address {care_of} does not belong to client {client.name}"
            )
        user = ctx.user
        home_agent = request.requested_home_agent
        if home_agent is None or home_agent == IPv4Address(0):
            home_agent = user.home_agent  # RFC 4433-style: the AAA assigns the HA
        if user.home_address is None:
            raise Rejected(
                RejectReason.BAD_REQUEST,
                "user has no provisioned home address (dynamic assignment is not supported)",
            )
        if home_agent != user.home_agent:
            raise Rejected(RejectReason.BAD_REQUEST, f"requested home agent {home_agent} is not the user's home agent")
        paths = self._plan(ctx, user.home_address, home_agent, care_of)
        current = self._current(job, home_agent, care_of, now)
        key_life = plan.key_lifetime(paths)
        vpn_changed = False
        if current is not None and request.session_id == current.session_id and current.care_of_address == care_of:
            vpn_changed = self._planned_names(paths, home_agent) != _allocated_names(current)
        keys_due = current is not None and plan.rekey_due(current, key_life, now, self.options.rekey_fraction)
        case = choose_case(current, request, care_of, vpn_changed, keys_due)
        write: SessionWrite | None
        if case is Case.CREATE:
            session, write = self._create(ctx, client, paths, home_agent, care_of, job.identification, now)
        else:
            assert current is not None
            session, write = _FA_CASES[case](self, current, paths, care_of, key_life, job.identification, now)
        answer = self._answer(job, session, paths, RequestType.FA_REGISTRATION, session.care_of_address, ctx, now, case)
        answer.write, answer.session = write, session
        if case is Case.RENEW and write is None and answer.confirmation is not None:
            self._memorize(job, session, ctx, answer.confirmation, key_life, now)
        return answer

    # -- one small function per case of rule 6 ---------------------------------------------------------
    def _create(
        self,
        ctx: UserContext,
        client: Client,
        paths: list[PlannedPath],
        home_agent: IPv4Address,
        care_of: IPv4Address,
        identification: bytes,
        now: float,
    ) -> tuple[Session, SessionWrite]:
        """A new session with a fresh session root key."""
        session, _ = plan.new_session(
            ctx,
            session_id=plan.session_id_from(self.random_bytes),
            srk=Secret(self.random_bytes(32)),
            home_agent=home_agent,
            care_of=care_of,
            now=now,
            lifetime=self.options.session_lifetime,
            random_bytes=self.random_bytes,
            foreign_domain=client.domain if client.role.relays else nai_realm(ctx.user.nai),
            paths=paths,
            fa_identification=identification,
        )
        session = _within_key_life(session, paths, now)
        return session, SessionWrite(WriteKind.CREATE, session.session_id, session)

    def _renew(
        self,
        current: Session,
        paths: list[PlannedPath],
        care_of: IPv4Address,
        key_life: int | None,
        identification: bytes,
        now: float,
    ) -> tuple[Session, SessionWrite | None]:
        """The same session, keys and SPIs; the expiry moves, never past the
        keys' lifetime. A renewal that would move it by less than
        :data:`RENEWAL_GRANULARITY` writes nothing and is granted the stored
        expiry (a burst of renewals is one write) -- unless the FA's
        identification attributes changed (rule 13), which are written then."""
        expires = plan.key_capped_expiry(now, self.options.session_lifetime, current.keyed_at, key_life)
        identified = identification == current.fa_identification
        if expires - current.expires < RENEWAL_GRANULARITY:
            if identified:
                return current, None
            expires = current.expires
        session = _with_expiry(current, expires)
        if identified:
            return session, SessionWrite(
                WriteKind.RENEW, current.session_id, expected_epoch=current.epoch, expires=expires
            )
        session = dataclasses.replace(session, fa_identification=identification)
        write = SessionWrite(
            WriteKind.RENEW,
            current.session_id,
            expected_epoch=current.epoch,
            expires=expires,
            fa_identification=identification,
        )
        return session, write

    def _rekey(
        self,
        current: Session,
        paths: list[PlannedPath],
        care_of: IPv4Address,
        key_life: int | None,
        identification: bytes,
        now: float,
    ) -> tuple[Session, SessionWrite]:
        """Next epoch at the same FA, every path re-keyed, the stationary ones
        too (plan rule 8), so a changed stationary path never reuses an SPI
        with other keys (re-key and VPN update alike)."""
        lifetime = self.options.session_lifetime
        moved = plan.move_session(
            current, paths, care_of, now, lifetime, self.random_bytes, rekey=True, fa_identification=identification
        )
        session = _within_key_life(moved, paths, now)
        return session, SessionWrite(WriteKind.REPLACE, session.session_id, session, expected_epoch=current.epoch)

    def _move(
        self,
        current: Session,
        paths: list[PlannedPath],
        care_of: IPv4Address,
        key_life: int | None,
        identification: bytes,
        now: float,
    ) -> tuple[Session, SessionWrite]:
        """Next epoch at the new FA: what moves gets new SPIs and keys (plan rule 6)."""
        moved = plan.move_session(
            current,
            paths,
            care_of,
            now,
            self.options.session_lifetime,
            self.random_bytes,
            fa_identification=identification,
        )
        session = _within_key_life(moved, paths, now)
        return session, SessionWrite(WriteKind.REPLACE, session.session_id, session, expected_epoch=current.epoch)

    def _memorize(
        self,
        job: _Job,
        session: Session,
        ctx: UserContext,
        template: ProfileTemplate,
        key_life: int | None,
        now: float,
    ) -> None:
        """Rule 12: remember a renewal confirmed without a write, for as long
        as the same request would be decided the same way: while no write is
        needed (:meth:`_renew`: until the stored expiry less the lifetime,
        plus :data:`RENEWAL_GRANULARITY`; for good once grants are capped by
        the keys' lifetime within a granule of the stored expiry), the keys
        are not due and the session lives."""
        lifetime, stored = self.options.session_lifetime, session.expires
        # Uncapped, a renewal at ``now`` asks for ``now + lifetime``: no write
        # while that is less than a granule past the stored expiry.
        valid_until = stored - lifetime + RENEWAL_GRANULARITY
        if key_life is not None:
            capped = session.keyed_at + key_life  # plan rule 8: no grant past the keys' lifetime
            if stored + RENEWAL_GRANULARITY > capped:
                valid_until = stored  # no grant can move the expiry a granule any more
            valid_until = min(valid_until, session.keyed_at + self.options.rekey_fraction * key_life)
        valid_until = min(valid_until, stored)
        if valid_until <= now or job.stamp is None or self._marks is None or not self.options.renewal_memo:
            return
        if is_radsec(job.incoming.client):
            return  # the memo knows clients by source address only
        incoming = job.incoming
        key = memo_shape(incoming.packet.data, incoming.source[0])
        if key is None:  # pragma: no cover - the packet decoded
            return
        layout, slots = template.layout()
        class_attribute = _class_attribute(session.session_id)  # as _answer puts it first
        client = incoming.client
        self._memo.remember(
            key,
            client.secret.value,
            ctx.user.mn_aaa_secret.value,
            class_attribute + layout,
            [slot + len(class_attribute) for slot in slots],
            client.require_message_authenticator,
            valid_until,
            session.expires,
            self._marks.slot(session.nai),
            job.stamp,
        )
        keys = self._memo_keys.setdefault(session.nai, set())
        keys.add(key)

    def _forget_memos(self, nai: str) -> None:
        """The user's session is about to change: no memo answers for it."""
        for key in self._memo_keys.pop(nai, ()):
            self._memo.discard(key)

    def _planned_names(self, paths: list[PlannedPath], home_agent: IPv4Address) -> frozenset[str]:
        """The SPI names a session of ``paths`` has (the Mobile IP FA-HA one included)."""
        key = id(paths)
        names = self._names.get(key)
        if names is None or names[0] is not paths:
            names = self._names[key] = (paths, plan.planned_spi_names(paths, home_agent))
        return names[1]

    def _ha_registration(self, job: _Job, ctx: UserContext, node: IPv4Address, now: float) -> _Answer:
        request = job.request
        care_of, epoch = request.care_of_address, request.key_epoch
        threegpp2_fa = request.threegpp2_foreign_agent
        if care_of is None:
            care_of = threegpp2_fa  # rule 7: a 3GPP2 HA names the FA in its own attribute
        elif threegpp2_fa is not None and threegpp2_fa != care_of:
            raise Rejected(
                RejectReason.BAD_REQUEST,
                f"Aaa-Vpn-Care-Of-Address {care_of} and 3GPP2-Foreign-Agent-Address {threegpp2_fa} disagree",
            )
        session = self._named_session(ctx, request, lambda s: s.home_agent == node and s.expires > now)
        write = None
        elsewhere = care_of is not None and care_of != session.care_of_address
        if care_of is not None and (elsewhere or (epoch is not None and epoch != session.epoch)):
            # Rule 7: a foreign AAA answered a same-domain handoff (flow C).
            target = session.epoch + 1 if epoch is None else epoch
            if not session.epoch < target <= min(session.epoch + MAX_EPOCH_STEP, MAX_KEY_EPOCH):
                raise Rejected(
                    RejectReason.NO_SESSION,
                    f"key epoch {target}: expected {session.epoch + 1}..{session.epoch + MAX_EPOCH_STEP}"
                    f" after the session's {session.epoch}",
                )
            paths = self._plan(ctx, session.home_address, session.home_agent, care_of)
            moved = plan.move_session(
                session, paths, care_of, now, self.options.session_lifetime, self.random_bytes, epoch=target
            )
            moved = dataclasses.replace(_within_key_life(moved, paths, now), ha_identification=job.identification)
            write = SessionWrite(WriteKind.REPLACE, session.session_id, moved, expected_epoch=session.epoch)
            session = moved
        paths = self._allocated_paths(ctx, session)
        answer = self._answer(job, session, paths, RequestType.HA_REGISTRATION, node, ctx, now)
        if write is not None:
            answer.write, answer.session = write, session
            answer.decided = dataclasses.replace(answer.decided, outcome="moved")
        elif job.identification != session.ha_identification:
            # Rule 13: written when it changes, not on every HA request.
            answer.write = SessionWrite(
                WriteKind.IDENTIFY,
                session.session_id,
                expected_epoch=session.epoch,
                ha_identification=job.identification,
            )
        return answer

    def _gw_binding(self, job: _Job, ctx: UserContext, node: IPv4Address, now: float) -> _Answer:
        request = job.request

        def has_path(session: Session) -> bool:
            if request.care_of_address is not None and session.care_of_address != request.care_of_address:
                return False
            paths = self._plan(ctx, session.home_address, session.home_agent, session.care_of_address)
            return any(node in (p.a, p.b) for p in paths)

        session = self._named_session(ctx, request, has_path)
        paths = self._allocated_paths(ctx, session)
        return self._answer(job, session, paths, RequestType.GW_BINDING, node, ctx, now)

    def _named_session(self, ctx: UserContext, request: AccessRequest, wanted: Callable[[Session], bool]) -> Session:
        """The newest session of the user that the request names (by id, if
        it gives one) and that ``wanted`` accepts; No-Session otherwise."""
        for session in self.sessions.sessions_of(ctx.user.nai):
            if request.session_id and session.session_id != request.session_id:
                continue
            if wanted(session):
                return session
        raise Rejected(RejectReason.NO_SESSION, "no matching session for this mobile node")

    def _allocated_paths(self, ctx: UserContext, session: Session) -> list[PlannedPath]:
        """The session's planned paths that have SPIs: paths added to the
        user's VPN since the FA registered join at its next registration (a
        new epoch), so that HA, FA and gateways always see the same set."""
        paths = self._plan(ctx, session.home_address, session.home_agent, session.care_of_address)
        allocated = {a.path for a in session.spis}
        return [p for p in paths if p.a_key in allocated and p.b_key in allocated]

    def _current(self, job: _Job, home_agent: IPv4Address, care_of: IPv4Address, now: float) -> Session | None:
        """The live session an FA registration may renew or move (rule 6),
        with the user's session mark in ``job.stamp``. A renewal of the
        session this worker knows is decided from its copy while the mark
        says no other process changed the session since it was read
        (aaa_vpn/store/marks.py); anything else reads the store, the mark
        taken first."""
        request = job.request
        if not request.session_id and request.previous_fa is None:
            return None  # rule 6: a registration that names nothing creates
        nai = request.nai
        marks = self._marks
        stamp = marks.stamp(nai) if marks is not None and marks.available() else None
        job.stamp = stamp
        cached = self._live.get(nai)
        if cached is not None:
            session, held = cached
            if (
                held is not None
                and held == stamp
                and session.session_id == request.session_id
                and session.care_of_address == care_of
                and session.home_agent == home_agent
                and session.expires > now
                and (request.key_epoch is None or request.key_epoch == session.epoch)
            ):
                return session
        live = self.sessions.live_session(nai, home_agent, now)
        if live is not None:
            self._remember(live, stamp)
        return live

    def _remember(self, session: Session, stamp: int | None) -> None:
        if len(self._live) >= _CACHE_LIMIT and session.nai not in self._live:
            self._live.clear()
        self._live[session.nai] = (session, stamp)

    def _plan(
        self, ctx: UserContext, home_address: IPv4Address, home_agent: IPv4Address, care_of: IPv4Address
    ) -> list[PlannedPath]:
        """plan_paths, cached while provisioning is unchanged."""
        key = (ctx.user.nai, int(home_address), int(home_agent), int(care_of))
        paths = self._plans.get(key)
        if paths is None:
            if len(self._plans) >= _CACHE_LIMIT:
                self._plans.clear()
            paths = self._plans[key] = plan.plan_paths(ctx, home_address, home_agent, care_of)
        return paths

    def _view(
        self,
        session: Session,
        paths: list[PlannedPath],
        role: ClientRole,
        request_type: RequestType,
        node: IPv4Address,
        ctx: UserContext,
    ) -> _View:
        """plan.view_for, cached: a session's views change only with its epoch
        and care-of address (plan rules 6 and 8) or with provisioning (which
        empties the cache), so a renewal derives no key again."""
        key = (
            session.session_id,
            session.epoch,
            session.stationary_epoch,
            int(session.care_of_address),
            session.epoch_started,
            role is ClientRole.FOREIGN_AAA,
            request_type,
            int(node),
        )
        view = self._views.get(key)
        if view is None:
            user = ctx.user
            template, digest, count = plan.view_template(session, paths, role, request_type, node, user)
            view = _View(
                template,
                digest,
                count,
                session,
                functools.partial(plan.view_for, session, paths, role, request_type, node, user, 0, False),
                node,
            )
            if len(self._views) >= _CACHE_LIMIT:
                self._views.clear()
            self._views[key] = view
        return view

    def _answer(
        self,
        job: _Job,
        session: Session,
        paths: list[PlannedPath],
        request_type: RequestType,
        node: IPv4Address,
        ctx: UserContext,
        now: float,
        case: Case | None = None,
    ) -> _Answer:
        """Rule 9: the Access-Accept for ``session``; ``case``: what an FA
        registration did (the outcome reported)."""
        client, incoming, request = job.incoming.client, job.incoming, job.request
        view = self._view(session, paths, client.role, request_type, node, ctx)
        lifetime = max(0, int(session.expires - now))
        class_attribute = _class_attribute(session.session_id)
        reserved = len(incoming.packet.proxy_states()) + len(class_attribute)
        budget = rc.DEFAULT_ATTRIBUTE_BUDGET - reserved
        confirm = (
            client.flavour is Flavour.AAA_VPN
            and request.profile_digest is not None
            and request.profile_digest == view.digest
        )
        try:
            template = view.confirmation_template() if confirm else view.template(client.flavour, client.psk_encoding)
            salt = int.from_bytes(self.random_bytes(2), "big") if template.secrets else 0
            attributes = [
                class_attribute,
                template.render_bytes(lifetime, client.secret, incoming.authenticator, budget, salt),
            ]
        except ProfileError as exc:
            raise Rejected(RejectReason.PROFILE_TOO_LARGE, f"VPN profile does not fit: {exc}") from None
        decided = Decided(
            _printable(request.nai),
            client.name,
            request_type.name.lower(),
            "confirmed" if confirm else case.value if case is not None else "answered",
            session_id=session.session_id,
            care_of=str(session.care_of_address),
            paths=view.paths,
        )
        return _Answer(rc.ACCESS_ACCEPT, attributes, decided, confirmation=template if confirm else None)

    # -- answering -----------------------------------------------------------------------------------
    def _send(self, job: _Job, answer: _Answer, now: float) -> None:
        reply = self.server.answer(job.incoming, answer.code, answer.attributes, now)
        if reply is None:
            # Rule 5 of the plumbing: it cannot fit; try a reject, which is smaller.
            self._take_dropped()
            return
        self._outbox.append((reply, job.incoming.source))
        outcome = answer.decided.outcome
        self.counters["accepts"] += 1
        if outcome in ("created", "renewed", "rekeyed", "updated", "moved"):
            self.counters[f"sessions_{outcome}"] += 1
        elif outcome == "confirmed":
            self.counters["sessions_renewed"] += 1
            self.counters["renewals_confirmed"] += 1
        self._events.append(answer.decided)

    def _reject_job(self, job: _Job, reason: RejectReason, message: str, now: float) -> None:
        request_type = job.request.request_type
        self._reject_incoming(
            job.incoming,
            reason,
            message,
            now,
            _printable(job.request.nai),
            request_type.name.lower() if request_type else "",
        )

    def _reject_incoming(
        self, incoming: Incoming[Client], reason: RejectReason, message: str, now: float, nai: str, request: str
    ) -> None:
        reply = self.server.answer(incoming, rc.ACCESS_REJECT, reject_attributes(reason, message), now)
        self._take_dropped()
        if reply is None:
            return
        self._outbox.append((reply, incoming.source))
        self.counters["rejects"] += 1
        self.counters[f"rejects.{reason.name.lower()}"] += 1
        self._events.append(Decided(nai, incoming.client.name, request, "rejected", reason.name.lower(), message))

    def _take_dropped(self) -> None:
        dropped = self.server.dropped
        while dropped:
            self._events.append(dropped.popleft())  # type: ignore[arg-type]

    def status_message(self, now: float) -> str:
        """The Reply-Message of a Status-Server answer: uptime and counters."""
        c = self.counters
        return (
            f"aaa-vpn home AAA up {int(now - self.started)}s pid {self.process_id}:"
            f" requests {c['access_requests']} accepts {c['accepts']} rejects {c['rejects']}"
            f" duplicates {c['duplicates']} dropped {c['dropped']}"
        )

    # -- operator actions (rule 11) ---------------------------------------------------------------
    def coa_targets(self, session: Session) -> list[CoaTarget]:
        """The session's FA and HA: the client of role ``fa`` whose network
        holds the care-of address and the client of role ``ha`` whose network
        holds the home agent, the longest prefix winning; each with its
        client's flavour and CoA settings and the identification attributes
        it sent (rule 13)."""
        clients = self.provisioning.clients()
        targets = []
        for role, address, identification in (
            ("fa", session.care_of_address, session.fa_identification),
            ("ha", session.home_agent, session.ha_identification),
        ):
            matching = [c for c in clients if c.role is ClientRole(role) and address in c.network]
            client = max(matching, key=lambda c: c.network.prefixlen) if matching else None
            if client is None:
                targets.append(CoaTarget(role, address))
            else:
                targets.append(
                    CoaTarget(
                        role,
                        address,
                        client.name,
                        client.coa_port,
                        client.secret,
                        client.flavour,
                        client.psk_encoding,
                        client.require_coa_message_authenticator,
                        identification,
                    )
                )
        return targets

    def _coa_request(self, code: int, target: CoaTarget, attributes: Sequence[bytes]) -> bytes:
        assert target.secret is not None
        return coa.encode_request(code, self.random_bytes(1)[0], target.secret.value, attributes)

    def _push_write(self, action: _Action, now: float) -> None:
        session = action.previous
        lifetime = max(1, int(session.expires - now))
        # Plan rule 8: every path gets new keys and SPIs, the stationary ones too,
        # so a push is also how an operator re-keys a session. A derived SPI
        # that is taken is avoided by trying the epoch after.
        action.moved = plan.move_session(
            session,
            action.paths,
            session.care_of_address,
            now,
            lifetime,
            self.random_bytes,
            epoch=session.epoch + 1 + action.attempt,
            rekey=True,
        )
        write = SessionWrite(WriteKind.REPLACE, session.session_id, action.moved, expected_epoch=session.epoch)
        write_id = next(self._write_ids)
        self._writes[write_id] = action
        self._forget_memos(session.nai)
        self._events.append(StoreSession(write_id, write))

    def _action_stored(self, action: _Action, outcome: WriteOutcome, now: float) -> None:
        previous, moved = action.previous, action.moved
        if outcome is WriteOutcome.SPI_TAKEN and action.attempt + 1 < _PUSH_EPOCHS:
            action.attempt += 1
            self._push_write(action, now)
            return
        if outcome is not WriteOutcome.STORED or moved is None:
            error = {
                WriteOutcome.SPI_TAKEN: "a derived SPI is taken in every epoch tried: push again",
                WriteOutcome.CONFLICT: "the session changed meanwhile (another node moved or renewed it): push again",
            }.get(outcome, "the session store did not answer in time")
            self._events.append(Authorize(action.tag, action.action, previous, None, error=error))
            return
        self._remember(moved, None)
        lifetime = max(1, int(moved.expires - now))
        care_of, ha, user = moved.care_of_address, moved.home_agent, action.ctx.user
        paths = action.paths
        views = {
            "fa": plan.view_for(moved, paths, ClientRole.FA, RequestType.FA_REGISTRATION, care_of, user, lifetime),
            "ha": plan.view_for(moved, paths, ClientRole.HA, RequestType.HA_REGISTRATION, ha, user, lifetime),
        }
        requests: list[tuple[CoaTarget, bytes | None]] = []
        for target in self.coa_targets(moved):
            if target.secret is None:
                requests.append((target, None))
                continue
            try:
                attributes = coa.push_attributes(
                    moved.nai,
                    views[target.role],
                    target.secret,
                    target.identification,
                    target.flavour,
                    receiver=target.address,
                    psk_encoding=target.psk_encoding,
                    key_time=int(moved.epoch_started),
                )
            except ProfileError as exc:
                error = f"the {target.role.upper()}'s view does not fit in a CoA-Request: {exc}"
                self._events.append(Authorize(action.tag, action.action, previous, moved, error=error))
                return
            requests.append((target, self._coa_request(coa.COA_REQUEST, target, attributes)))
        self.counters["sessions_pushed"] += 1
        self._events.append(Authorize(action.tag, action.action, previous, moved, tuple(requests), views))


def _reads_nothing(job: _Job, waiting: collections.deque[_Job]) -> bool:
    """Rule 10: an FA registration that names neither a session nor a
    previous FA creates a session whatever the store holds, so it need not
    wait for the user's write in flight -- unless requests are already
    waiting, which it must not overtake."""
    request = job.request
    return (
        not waiting
        and not request.session_id
        and request.previous_fa is None
        and request.request_type in (None, RequestType.FA_REGISTRATION)
        and job.incoming.client.role is not ClientRole.HA
        and job.incoming.client.role is not ClientRole.GW
    )


#: Rule 6: the function of each case that continues a live session.
_FA_CASES: dict[Case, Callable[..., tuple[Session, SessionWrite | None]]] = {
    Case.RENEW: HomeAaa._renew,
    Case.REKEY: HomeAaa._rekey,
    Case.UPDATE: HomeAaa._rekey,
    Case.MOVE: HomeAaa._move,
}


def _allocated_names(session: Session) -> frozenset[str]:
    """The SPI names of a session but its forwarding path's (plan rule 7)."""
    return frozenset(a.path for a in session.spis if not a.path.startswith(plan.FORWARDING_LABEL_PREFIX))


def _with_expiry(session: Session, expires: float) -> Session:
    """``session`` with another expiry (a cheap copy: renewals are the hot path)."""
    copy = object.__new__(Session)
    copy.__dict__.update(session.__dict__)
    object.__setattr__(copy, "expires", expires)
    return copy


def _within_key_life(session: Session, paths: list[PlannedPath], now: float) -> Session:
    """``session`` with its expiry no later than its keys' (plan rule 8)."""
    lifetime = session.expires - now
    expires = plan.key_capped_expiry(now, lifetime, session.keyed_at, plan.key_lifetime(paths))
    return session if expires >= session.expires else dataclasses.replace(session, expires=expires)


__all__ = [
    "ALLOWED_REQUESTS",
    "CONFLICT_RETRIES",
    "DEFAULT_REQUEST",
    "FA_CASES",
    "MAX_EPOCH_STEP",
    "SPI_RETRIES",
    "Authorize",
    "Case",
    "CoaTarget",
    "Decided",
    "Event",
    "HomeAaa",
    "HomeAaaOptions",
    "Provisioning",
    "SessionReader",
    "StoreSession",
    "choose_case",
    "reject_attributes",
]
