"""The home AAA server's request handling: one datagram in, at most one reply out.

Theory of operation (RFC 2865, 3579, 5080, 5997; DESIGN.md sections 3-4):

1. The source address picks the RADIUS client (exact address or CIDR, the
   longest prefix wins). Unknown sources are dropped and counted.
2. The packet is decoded with pyrad (``AuthPacket`` on our dictionary); a
   malformed one is dropped and counted.
3. A retransmission -- same source address and port, Identifier and Request
   Authenticator -- gets the byte-identical earlier reply from the duplicate
   cache and changes nothing (RFC 5080 section 2.2.2).
4. Message-Authenticator is required in every Access-Request from a client
   that requires it (the default) and in every Status-Server (RFC 5997); a
   missing or wrong one means a silent drop (RFC 5080 section 2.2.2), counted.
   A wrong shared secret shows up here.
5. Status-Server is answered with an Access-Accept (RFC 5997 section 3).
6. Access-Request: the MN is authenticated (roles/home_aaa.py rule 1), the
   user's VPN is planned, the session created, renewed or moved (rule 6 there;
   an HA's request may move it too, after a handoff the foreign AAA answered;
   a renewal whose keys are due re-keys it, rule 8, and no session is granted
   past its keys' lifetime)
   and stored -- the sessions of one receive batch in one transaction, before
   any reply leaves -- and the requester's view of the profile encoded in its
   client's flavour. Unknown/disabled users and failed
   authentication get an Access-Reject with a Reply-Message and an
   Aaa-Vpn-Reject-Reason.
7. Every reply starts with a Message-Authenticator and echoes the request's
   Proxy-State attributes, in order, at its end (RFC 2865 section 5.33).

The class is synchronous and single-threaded; the network layer
(net/home_server.py) feeds it datagrams. Provisioning is cached per process and
dropped whenever the store's generation number changes, so CLI changes are
seen by the next request.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import pyrad.packet
from pyrad.dictionary import Dictionary

from aaa_vpn import keys
from aaa_vpn.model import PROXY_ROLES, Client, ClientRole, Session, nai_realm
from aaa_vpn.roles import home_aaa
from aaa_vpn.roles.client_table import ClientTable
from aaa_vpn.roles.home_aaa import Rejected, UserContext
from aaa_vpn.service.logging import fields
from aaa_vpn.store.base import NotFound, SpiConflict, Store, StoreError
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import VENDOR_ID, RejectReason, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import ProfileError, encode_profile

log = logging.getLogger("aaa_vpn.home")

VSA_SESSION_ID = (VENDOR_ID, 1)
VSA_REQUEST_TYPE = (VENDOR_ID, 2)
VSA_HOME_AGENT = (VENDOR_ID, 4)
VSA_CARE_OF = (VENDOR_ID, 5)
VSA_PREVIOUS_FA = (VENDOR_ID, 6)
VSA_KEY_EPOCH = (VENDOR_ID, 8)
VSA_REJECT_REASON = 14
TGPP2_HOME_AGENT = (5535, 7)

#: Which request types each kind of client may make (least privilege).
ALLOWED_REQUESTS: dict[ClientRole, frozenset[RequestType]] = {
    ClientRole.FA: frozenset({RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE}),
    ClientRole.PROXY: frozenset({RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE}),
    ClientRole.FOREIGN_AAA: frozenset({RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE}),
    ClientRole.HA: frozenset({RequestType.HA_REGISTRATION}),
    ClientRole.GW: frozenset({RequestType.GW_BINDING}),
}
DEFAULT_REQUEST = {
    ClientRole.FA: RequestType.FA_REGISTRATION,
    ClientRole.PROXY: RequestType.FA_REGISTRATION,
    ClientRole.FOREIGN_AAA: RequestType.FA_REGISTRATION,
    ClientRole.HA: RequestType.HA_REGISTRATION,
    ClientRole.GW: RequestType.GW_BINDING,
}
_SPI_RETRIES = 5
_LOG_BURST = 20  # per drop reason and minute, so a flood cannot flood the log


class DuplicateCache:
    """Replies by (source address, source port, Identifier, Request Authenticator),
    kept for ``ttl`` seconds (RFC 5080 section 2.2.2), at most ``limit`` entries."""

    def __init__(self, ttl: float, limit: int = 200_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: collections.OrderedDict[tuple[str, int, int, bytes], tuple[float, bytes | None]] = (
            collections.OrderedDict()
        )

    def get(self, key: tuple[str, int, int, bytes], now: float) -> tuple[float, bytes | None] | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] < now:
            return None
        return entry

    def put(self, key: tuple[str, int, int, bytes], reply: bytes | None, now: float) -> None:
        entries = self._entries
        # Entries are added in time order, so the expired ones are at the front.
        while entries:
            first = next(iter(entries.values()))
            if first[0] >= now and len(entries) < self.limit:
                break
            entries.popitem(last=False)
        entries[key] = (now + self.ttl, reply)
        entries.move_to_end(key)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class _Pending:
    """A session planned while handling a batch, stored when the batch ends."""

    index: int  # the request's position in the batch
    session: Session
    client: str
    paths: int
    kind: str = "created"  # created, renewed, moved, updated or rekeyed


@dataclass(frozen=True)
class HomeAaaOptions:
    session_lifetime: int = 3600
    dup_cache_seconds: float = 10.0
    #: home_aaa rule 8: a renewal re-keys the session once this fraction of the
    #: shortest SA lifetime has passed since its keys were last all renewed.
    rekey_fraction: float = 0.5


class HomeAaa:
    """The home AAA of one worker process."""

    def __init__(
        self,
        store: Store,
        dictionary: Dictionary,
        options: HomeAaaOptions,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.dictionary = dictionary
        self.options = options
        self.random_bytes = random_bytes
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = time.time()
        self.duplicates = DuplicateCache(options.dup_cache_seconds)
        self._generation = -1
        self._clients: ClientTable[Client] = ClientTable([])
        self._users: dict[str, UserContext | None] = {}
        self._log_budget: dict[str, tuple[float, int]] = {}
        self._packet = pyrad.packet.AuthPacket(dict=dictionary)
        self._pending: list[_Pending] = []
        self._plans: dict[tuple[str, int, int, int], list[home_aaa.PlannedPath]] = {}
        self._live: dict[str, Session] = {}  # per NAI: the session last stored or read here
        self._views: dict[tuple[object, ...], VpnProfile] = {}
        self._batching = True
        self._index = 0
        self.refresh()

    # -- provisioning cache -------------------------------------------------------
    def refresh(self) -> None:
        """Drop the caches if provisioning changed since they were filled."""
        generation = self.store.generation()
        if generation != self._generation:
            self._clients = ClientTable(self.store.list_clients())
            self._users = {}
            self._plans = {}
            self._views = {}
            self._generation = generation

    def _plan(
        self, ctx: UserContext, home_address: IPv4Address, home_agent: IPv4Address, care_of: IPv4Address
    ) -> list[home_aaa.PlannedPath]:
        """plan_paths, cached while provisioning is unchanged."""
        key = (ctx.user.nai, int(home_address), int(home_agent), int(care_of))
        paths = self._plans.get(key)
        if paths is None:
            if len(self._plans) > 100_000:
                self._plans.clear()
            paths = self._plans[key] = home_aaa.plan_paths(ctx, home_address, home_agent, care_of)
        return paths

    def _view(
        self,
        session: Session,
        paths: list[home_aaa.PlannedPath],
        role: ClientRole,
        request_type: RequestType,
        node: IPv4Address,
        ctx: UserContext,
        lifetime: int,
    ) -> VpnProfile:
        """home_aaa.view_for, cached: a session's views change only with its
        epoch and care-of address (rule 6) or with provisioning (which empties
        the cache), so a renewal derives no key again."""
        key = (session.session_id, session.epoch, int(session.care_of_address), role, request_type, int(node))
        view = self._views.get(key)
        if view is None:
            view = home_aaa.view_for(session, paths, role, request_type, node, ctx.user, lifetime)
            if len(self._views) > 50_000:
                self._views.clear()
            self._views[key] = view
        elif view.lifetime != lifetime:
            view = dataclasses.replace(view, lifetime=lifetime)
        return view

    def _user_context(self, nai: str) -> UserContext | None:
        try:
            return self._users[nai]
        except KeyError:
            pass
        try:
            user = self.store.get_user(nai)
        except NotFound:
            ctx = None
        else:
            records = tuple(self.store.list_vpn_records(nai))
            ctx = UserContext(
                user=user,
                records=records,
                gateways={r.gateway: self.store.get_gateway(r.gateway) for r in records},
                services={r.service: self.store.get_service(r.service) for r in records},
                qos={r.qos: self.store.get_qos(r.qos) for r in records if r.qos},
            )
        if len(self._users) > 100_000:
            self._users.clear()
        self._users[nai] = ctx
        return ctx

    # -- counting and logging ----------------------------------------------------
    def _drop(self, reason: str, source: tuple[str, int], now: float, detail: str = "") -> None:
        self.counters["dropped"] += 1
        self.counters[f"dropped.{reason}"] += 1
        window, count = self._log_budget.get(reason, (now, 0))
        if now - window >= 60:
            window, count = now, 0
        if count < _LOG_BURST:
            log.warning(
                "request dropped", extra=fields(reason=reason, source=f"{source[0]}:{source[1]}", detail=detail)
            )
        self._log_budget[reason] = (window, count + 1)

    # -- the entry point ---------------------------------------------------------
    def handle(self, data: bytes, source: tuple[str, int], now: float) -> bytes | None:
        """Process one datagram from ``source``; return the reply to send, if any."""
        return self.handle_batch([(data, source)], now)[0]

    def handle_batch(self, batch: list[tuple[bytes, tuple[str, int]]], now: float) -> list[bytes | None]:
        """Process datagrams received together; return their replies, in order.

        The sessions the batch creates are stored in one transaction (group
        commit) before any reply is returned, so a reply never announces a
        session the database does not have. A retransmission inside the batch
        gets the same reply as its original."""
        self._pending = []
        self.counters["batches"] += 1
        # Provisioning changes made before this batch arrived are seen by it.
        self.refresh()
        replies: list[bytes | None] = []
        cache_keys: list[tuple[str, int, int, bytes] | None] = []
        first_of: dict[tuple[str, int, int, bytes], int] = {}
        for data, source in batch:
            self.counters["received"] += 1
            key = _duplicate_key(data, source)
            if key is not None and key in first_of:
                self.counters["duplicates"] += 1
                replies.append(None)  # filled in below from its original
                cache_keys.append(None)
                continue
            self._index = len(replies)
            reply, is_request = self._one(data, source, now)
            replies.append(reply)
            cache_keys.append(key if is_request else None)
            if is_request and key is not None:
                first_of[key] = len(replies) - 1
        if self._pending:
            self._commit(batch, replies, now)
        for key, index in first_of.items():
            for position, (data, source) in enumerate(batch):
                if position != index and replies[position] is None and _duplicate_key(data, source) == key:
                    replies[position] = replies[index]
        for key, reply in zip(cache_keys, replies, strict=True):
            if key is not None:
                self.duplicates.put(key, reply, now)
                if reply is not None and reply[0] == rc.ACCESS_ACCEPT:
                    self.counters["accepts"] += 1
                elif reply is not None and reply[0] == rc.ACCESS_REJECT:
                    self.counters["rejects"] += 1
        return replies

    def _commit(self, batch: list[tuple[bytes, tuple[str, int]]], replies: list[bytes | None], now: float) -> None:
        pending, self._pending = self._pending, []
        renewals = [p for p in pending if p.kind == "renewed"]
        written = [p for p in pending if p.kind != "renewed"]
        try:
            replaced = self.store.put_sessions(
                [p.session for p in written],
                replace_user_sessions=True,
                renewals=[(p.session.session_id, p.session.expires) for p in renewals],
            )
        except StoreError as exc:
            # An SPI collision (rare) or a busy database: redo these requests
            # one by one, each with its own retries and transaction.
            self.counters["spi_collisions" if isinstance(exc, SpiConflict) else "batch_retries"] += 1
            self._batching = False
            self.counters["access_requests"] -= len(pending)  # counted again by _one
            try:
                for entry in pending:
                    self._index = entry.index
                    data, source = batch[entry.index]
                    replies[entry.index] = self._one(data, source, now)[0]
            finally:
                self._batching = True
            return
        for entry, count in zip(written, replaced, strict=True):
            self._session_created(entry, count)
        for entry in renewals:
            self._session_created(entry, 0)

    def _session_created(self, entry: _Pending, replaced: int) -> None:
        self._live[entry.session.nai] = entry.session
        self.counters[f"sessions_{entry.kind}"] += 1
        if not log.isEnabledFor(logging.INFO):
            return
        session = entry.session
        log.info(
            f"session {entry.kind}",
            extra=fields(
                nai=session.nai,
                session=session.session_id,
                client=entry.client,
                care_of=str(session.care_of_address),
                home_agent=str(session.home_agent),
                paths=entry.paths,
                replaced=replaced,
            ),
        )

    def _one(self, data: bytes, source: tuple[str, int], now: float) -> tuple[bytes | None, bool]:
        """One datagram; returns (reply, whether it was an Access-Request that
        the duplicate cache should remember)."""
        client = self._clients.lookup(source[0])
        if client is None:
            self.refresh()  # a client added a moment ago
            client = self._clients.lookup(source[0])
            if client is None:
                self._drop("unknown_client", source, now)
                return None, False
        if len(data) < rc.HEADER_LENGTH:
            self._drop("malformed", source, now, "shorter than a RADIUS header")
            return None, False
        code, identifier, length = struct.unpack_from("!BBH", data)
        if length < rc.HEADER_LENGTH or length > len(data) or length > rc.MAX_PACKET_LENGTH:
            self._drop("malformed", source, now, f"bad Length {length} for {len(data)} octets")
            return None, False
        data = data[:length]  # RFC 2865 section 3: octets beyond Length are padding
        if code not in (rc.ACCESS_REQUEST, rc.STATUS_SERVER):
            self._drop("unsupported_code", source, now, f"code {code}")
            return None, False
        authenticator = data[4:20]
        cached = self.duplicates.get((source[0], source[1], identifier, authenticator), now)
        if cached is not None:
            self.counters["duplicates"] += 1
            return cached[1], False
        packet = self._packet  # one pyrad packet object, decoded anew for each request
        packet.secret = client.secret.value
        packet.message_authenticator = None
        try:
            packet.DecodePacket(data)
        except Exception as exc:  # noqa: BLE001 - pyrad raises PacketError, struct.error, UnicodeDecodeError...
            self._drop("malformed", source, now, str(exc)[:120])
            return None, False
        secret = client.secret.value
        ma = rc.check_request_message_authenticator(data, secret)
        if ma is False:
            self._drop("bad_message_authenticator", source, now, f"client {client.name}")
            return None, False
        if ma is None and (code == rc.STATUS_SERVER or client.require_message_authenticator):
            self._drop("missing_message_authenticator", source, now, f"client {client.name}")
            return None, False
        if code == rc.STATUS_SERVER:
            # RFC 5997 section 3: not subject to duplicate detection.
            self.counters["status_server"] += 1
            return self._status_reply(identifier, authenticator, secret, packet), False
        self.counters["access_requests"] += 1
        return self._access_request(client, packet, identifier, authenticator, source, now), True

    # -- Status-Server --------------------------------------------------------------
    def _status_reply(self, identifier: int, authenticator: bytes, secret: bytes, packet: pyrad.packet.Packet) -> bytes:
        c = self.counters
        message = (
            f"aaa-vpn home AAA up {int(time.time() - self.started)}s pid {os.getpid()}:"
            f" requests {c['access_requests']} accepts {c['accepts']} rejects {c['rejects']}"
            f" duplicates {c['duplicates']} dropped {c['dropped']}"
        ).encode()
        attributes = rc.attribute(rc.REPLY_MESSAGE, message) + _proxy_states(packet)
        return rc.encode_reply(rc.ACCESS_ACCEPT, identifier, authenticator, secret, attributes)

    # -- Access-Request --------------------------------------------------------------
    def _access_request(
        self,
        client: Client,
        packet: pyrad.packet.Packet,
        identifier: int,
        authenticator: bytes,
        source: tuple[str, int],
        now: float,
    ) -> bytes | None:
        secret = client.secret.value
        proxy_states = _proxy_states(packet)
        try:
            nai, request_type, reply_attributes = self._decide(client, packet, source, now, len(proxy_states))
        except Rejected as rejected:
            self.counters[f"rejects.{rejected.reason.name.lower()}"] += 1
            log.info(
                "access rejected",
                extra=fields(
                    nai=_loggable_name(packet),
                    client=client.name,
                    reason=rejected.reason.name.lower(),
                    detail=rejected.message,
                ),
            )
            attributes = (
                rc.attribute(rc.REPLY_MESSAGE, rejected.message.encode()[:253])
                + rc.vendor_attribute(VENDOR_ID, VSA_REJECT_REASON, struct.pack("!I", rejected.reason))
                + proxy_states
            )
            return rc.encode_reply(rc.ACCESS_REJECT, identifier, authenticator, secret, attributes)
        try:
            reply = rc.encode_reply(
                rc.ACCESS_ACCEPT, identifier, authenticator, secret, reply_attributes + proxy_states
            )
        except rc.ReplyTooLarge as exc:
            self.counters["rejects.profile_too_large"] += 1
            log.error("profile does not fit in a reply", extra=fields(nai=nai, client=client.name, detail=str(exc)))
            attributes = (
                rc.attribute(rc.REPLY_MESSAGE, b"VPN profile too large for one RADIUS packet")
                + rc.vendor_attribute(VENDOR_ID, VSA_REJECT_REASON, struct.pack("!I", RejectReason.PROFILE_TOO_LARGE))
                + proxy_states
            )
            return rc.encode_reply(rc.ACCESS_REJECT, identifier, authenticator, secret, attributes)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "access accepted",
                extra=fields(nai=nai, client=client.name, request=request_type.name.lower(), octets=len(reply)),
            )
        return reply

    def _decide(
        self, client: Client, packet: pyrad.packet.Packet, source: tuple[str, int], now: float, reserved: int
    ) -> tuple[str, RequestType, bytes]:
        """Decide an Access-Request; ``reserved`` octets of the reply are taken
        by the Proxy-State echo."""
        nai = _first_text(packet, rc.USER_NAME)
        if not nai:
            raise Rejected(RejectReason.BAD_REQUEST, "User-Name (the mobile node's NAI) is missing")
        request_type = self._request_type(client, packet)
        ctx = self._user_context(nai)
        if ctx is None:
            raise Rejected(RejectReason.UNKNOWN_USER, "unknown user")
        if not ctx.user.enabled:
            raise Rejected(RejectReason.USER_DISABLED, "user is disabled")
        if request_type is not RequestType.GW_BINDING:
            chap_password = _first(packet, rc.CHAP_PASSWORD)
            chap_challenge = _first(packet, rc.CHAP_CHALLENGE)
            if chap_password is None or chap_challenge is None:
                raise Rejected(
                    RejectReason.BAD_REQUEST, "the MN-AAA authenticator (CHAP-Password, CHAP-Challenge) is missing"
                )
            if not home_aaa.verify_mn_aaa_chap(chap_password, chap_challenge, ctx.user.mn_aaa_secret):
                raise Rejected(RejectReason.AUTHENTICATION_FAILED, "mobile node failed authentication")
        node = self._requester_address(client, packet, source)
        if request_type in (RequestType.FA_REGISTRATION, RequestType.SERVICE_UPDATE):
            rekey = request_type is RequestType.SERVICE_UPDATE
            session, paths = self._register(client, packet, ctx, node, now, rekey)
            view_node = session.care_of_address
            request_type = RequestType.FA_REGISTRATION  # the FA's view either way
        else:
            session, paths = self._find_session(ctx, packet, request_type, node, now, client)
            view_node = node
        lifetime = max(0, int(session.expires - now))
        profile = self._view(session, paths, client.role, request_type, view_node, ctx, lifetime)
        try:
            encoded = encode_profile(
                profile,
                client.flavour,
                client.secret.value,
                packet.authenticator,
                budget=rc.MAX_PACKET_LENGTH - rc.HEADER_LENGTH - rc.MESSAGE_AUTHENTICATOR_LENGTH - reserved,
            )
        except ProfileError as exc:
            raise Rejected(RejectReason.PROFILE_TOO_LARGE, f"VPN profile does not fit: {exc}") from None
        return nai, request_type, b"".join(encoded)

    def _request_type(self, client: Client, packet: pyrad.packet.Packet) -> RequestType:
        raw = _first(packet, VSA_REQUEST_TYPE)
        if raw is None:
            return DEFAULT_REQUEST[client.role]
        if len(raw) != 4:
            raise Rejected(RejectReason.BAD_REQUEST, "Aaa-Vpn-Request-Type is not a 4-octet integer")
        try:
            request_type = RequestType(int.from_bytes(raw, "big"))
        except ValueError:
            raise Rejected(
                RejectReason.BAD_REQUEST, f"unknown Aaa-Vpn-Request-Type {int.from_bytes(raw, 'big')}"
            ) from None
        if request_type not in ALLOWED_REQUESTS[client.role]:
            raise Rejected(
                RejectReason.BAD_REQUEST,
                f"a {client.role.value} client may not make a {request_type.name.lower()} request",
            )
        return request_type

    @staticmethod
    def _requester_address(client: Client, packet: pyrad.packet.Packet, source: tuple[str, int]) -> IPv4Address:
        """The requester's own address: NAS-IP-Address if it lies in the client's
        network, else the source address."""
        nas = _first_ipv4(packet, rc.NAS_IP_ADDRESS)
        if nas is not None and (client.role in PROXY_ROLES or nas in client.network):
            return nas
        return IPv4Address(source[0])

    def _register(
        self,
        client: Client,
        packet: pyrad.packet.Packet,
        ctx: UserContext,
        node: IPv4Address,
        now: float,
        rekey: bool = False,
    ) -> tuple[Session, list[home_aaa.PlannedPath]]:
        """An FA's registration: create, renew, move or re-key the session
        (home_aaa rules 6 and 8). ``rekey``: a service update, which the FA
        sends after the HA refused its last renewal (a gateway lost its
        binding, say): the session it names is re-keyed rather than renewed."""
        care_of = _first_ipv4(packet, VSA_CARE_OF) or node
        if client.role is ClientRole.FA and care_of not in client.network:
            raise Rejected(
                RejectReason.BAD_REQUEST, f"care-of address {care_of} does not belong to client {client.name}"
            )
        home_agent = _first_ipv4(packet, VSA_HOME_AGENT) or _first_ipv4(packet, TGPP2_HOME_AGENT)
        if home_agent is None or home_agent == IPv4Address(0):
            home_agent = ctx.user.home_agent  # RFC 4433-style: the AAA assigns the HA
        domain = client.domain if client.role in PROXY_ROLES else nai_realm(ctx.user.nai)
        planned = (
            self._plan(ctx, ctx.user.home_address, home_agent, care_of)
            if ctx.user.home_address is not None and home_agent == ctx.user.home_agent
            else None
        )
        # Rule 6 of home_aaa: the live session is renewed only for the FA that
        # names it (its current visitor), moved only for an FA that names the
        # previous one; any other registration starts a new session, so keys
        # that nodes removed (deregistration, expiry) are never handed out again.
        claimed = _first_text(packet, VSA_SESSION_ID)
        previous = _first_ipv4(packet, VSA_PREVIOUS_FA)
        current = self._live_session(ctx.user.nai, home_agent, now) if (claimed or previous) else None
        if current is not None and not (
            (claimed == current.session_id and current.care_of_address == care_of)
            or (previous is not None and current.care_of_address != care_of)
        ):
            current = None
        for _attempt in range(_SPI_RETRIES):
            lifetime = self.options.session_lifetime
            if current is not None and planned is not None:
                paths = planned
                spis = home_aaa.allocate_spis(planned, (care_of, home_agent), current.spis, self.random_bytes)
                if current.care_of_address == care_of and spis == current.spis:
                    key_life = home_aaa.key_lifetime(planned)
                    if rekey or home_aaa.rekey_due(current, key_life, now, self.options.rekey_fraction):
                        # Rule 8: the keys are getting old; a renewal re-keys every path.
                        session = home_aaa.move_session(
                            current, planned, care_of, now, lifetime, self.random_bytes, rekey=True
                        )
                        kind = "rekeyed"
                    else:
                        # A renewal: the same session, keys and SPIs; only the expiry
                        # moves, never past the keys' lifetime (the hot path: one copy).
                        expires = home_aaa.key_capped_expiry(now, lifetime, current.keyed_at, key_life)
                        session, kind = dataclasses.replace(current, expires=expires), "renewed"
                else:
                    # A handoff, or the user's VPN changed: next epoch, fresh
                    # FA-side SPIs and keys (home_aaa rule 6).
                    # A changed VPN re-keys the stationary paths too (rule 8), so a
                    # changed stationary path never reuses an SPI with other keys.
                    updated = current.care_of_address == care_of
                    session = home_aaa.move_session(
                        current, planned, care_of, now, lifetime, self.random_bytes, rekey=updated
                    )
                    kind = "updated" if updated else "moved"
            else:
                session, paths = home_aaa.new_session(
                    ctx,
                    session_id=home_aaa.session_id_from(self.random_bytes),
                    srk=keys.new_session_root_key(),
                    home_agent=home_agent,
                    care_of=care_of,
                    now=now,
                    lifetime=lifetime,
                    random_bytes=self.random_bytes,
                    foreign_domain=domain,
                    paths=planned,
                )
                kind = "created"
            if kind != "renewed":
                session = _within_key_life(session, paths, now)
            entry = _Pending(self._index, session, client.name, len(paths), kind)
            if self._batching:
                self._pending.append(entry)  # stored by _commit, before the reply leaves
                return session, paths
            try:
                if kind == "renewed":
                    self.store.put_sessions([], renewals=[(session.session_id, session.expires)])
                    replaced = 0
                else:
                    replaced = self.store.put_sessions([session], replace_user_sessions=True)[0]
            except SpiConflict:
                self.counters["spi_collisions"] += 1
                current = self._live_session(ctx.user.nai, home_agent, now)
                continue
            except StoreError as exc:
                log.error("cannot store session", extra=fields(nai=ctx.user.nai, detail=str(exc)))
                raise Rejected(RejectReason.NO_RESOURCES, "home AAA cannot store the session") from None
            self._session_created(entry, replaced)
            return session, paths
        raise Rejected(RejectReason.NO_RESOURCES, "no free SPI after several attempts")

    def _live_session(self, nai: str, home_agent: IPv4Address, now: float) -> Session | None:
        """The user's current session through ``home_agent``, if it has not expired.

        One light query for the sessions' heads; the full session (keys, SPIs)
        comes from this worker's cache when its (id, epoch, care-of address) is
        unchanged -- whoever changes SPIs also changes the epoch (rule 6) --
        and from the database otherwise."""
        heads = [h for h in self.store.session_heads(nai) if h.home_agent == home_agent and h.expires > now]
        if not heads:
            return None
        head = max(heads, key=lambda h: h.created)
        cached = self._live.get(nai)
        if cached is not None and (cached.session_id, cached.epoch, cached.care_of_address) == (
            head.session_id,
            head.epoch,
            head.care_of_address,
        ):
            return dataclasses.replace(cached, expires=head.expires)
        try:
            session = self.store.get_session(head.session_id)
        except NotFound:
            return None  # expired or deleted in between
        if len(self._live) > 100_000:
            self._live.clear()
        self._live[nai] = session
        return session

    def _find_session(
        self,
        ctx: UserContext,
        packet: pyrad.packet.Packet,
        request_type: RequestType,
        node: IPv4Address,
        now: float,
        client: Client,
    ) -> tuple[Session, list[home_aaa.PlannedPath]]:
        wanted_id = _first_text(packet, VSA_SESSION_ID)
        care_of = _first_ipv4(packet, VSA_CARE_OF)
        epoch = _first_u32(packet, VSA_KEY_EPOCH)
        sessions = sorted(self.store.find_sessions(ctx.user.nai), key=lambda s: s.created, reverse=True)
        for session in sessions:
            if wanted_id and session.session_id != wanted_id:
                continue
            if request_type is RequestType.HA_REGISTRATION:
                if session.home_agent != node or session.expires <= now:
                    continue
                if care_of is not None and (
                    session.care_of_address != care_of or (epoch is not None and epoch != session.epoch)
                ):
                    session = self._moved_by_foreign_aaa(ctx, session, care_of, epoch, now, client)
            elif care_of is not None and session.care_of_address != care_of:
                continue
            paths = self._plan(ctx, session.home_address, session.home_agent, session.care_of_address)
            if request_type is RequestType.GW_BINDING and not any(node in (p.a, p.b) for p in paths):
                continue
            # Paths added to the user's VPN since the FA's registration have no
            # SPIs yet: they join at the next registration (a new epoch), so
            # that HA, FA and gateways always see the same set.
            allocated = {a.path for a in session.spis}
            paths = [p for p in paths if p.a_key in allocated and p.b_key in allocated]
            return session, paths
        raise Rejected(RejectReason.NO_SESSION, "no matching session for this mobile node")

    def _moved_by_foreign_aaa(
        self,
        ctx: UserContext,
        session: Session,
        care_of: IPv4Address,
        epoch: int | None,
        now: float,
        client: Client,
    ) -> Session:
        """The HA reports the node at another FA than this session's: a foreign
        AAA answered a same-domain handoff from its cache (flow C). Move the
        session the same deterministic way (home_aaa.move_session) to the epoch
        the new FA was given, and store it."""
        target = session.epoch + 1 if epoch is None else epoch
        if target <= session.epoch:
            raise Rejected(RejectReason.NO_SESSION, f"epoch {target} is not newer than the session's {session.epoch}")
        paths = self._plan(ctx, session.home_address, session.home_agent, care_of)
        moved = home_aaa.move_session(
            session, paths, care_of, now, self.options.session_lifetime, self.random_bytes, epoch=target
        )
        moved = _within_key_life(moved, paths, now)
        try:
            self.store.put_session(moved, replaces=[session.session_id])
        except SpiConflict:
            self.counters["spi_collisions"] += 1
            raise Rejected(RejectReason.NO_RESOURCES, "a derived SPI is taken: register again") from None
        except StoreError as exc:
            log.error("cannot store session", extra=fields(nai=ctx.user.nai, detail=str(exc)))
            raise Rejected(RejectReason.NO_RESOURCES, "home AAA cannot store the session") from None
        self._session_created(_Pending(self._index, moved, client.name, len(paths), "moved"), 0)
        return moved

    def expire(self, now: float) -> int:
        count = self.store.expire_sessions(now)
        if count:
            self.counters["sessions_expired"] += count
            log.info("sessions expired", extra=fields(count=count))
        return count


def _within_key_life(session: Session, paths: list[home_aaa.PlannedPath], now: float) -> Session:
    """``session`` with its expiry no later than its keys' (home_aaa rule 8)."""
    lifetime = session.expires - now
    expires = home_aaa.key_capped_expiry(now, lifetime, session.keyed_at, home_aaa.key_lifetime(paths))
    return session if expires >= session.expires else dataclasses.replace(session, expires=expires)


def _first(packet: pyrad.packet.Packet, key: int | tuple[int, int]) -> bytes | None:
    values = dict.get(packet, key)
    return values[0] if values else None


def _first_text(packet: pyrad.packet.Packet, key: int | tuple[int, int]) -> str:
    raw = _first(packet, key)
    if raw is None:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(RejectReason.BAD_REQUEST, f"attribute {key} is not valid UTF-8") from None


def _first_u32(packet: pyrad.packet.Packet, key: int | tuple[int, int]) -> int | None:
    raw = _first(packet, key)
    if raw is None:
        return None
    if len(raw) != 4:
        raise Rejected(RejectReason.BAD_REQUEST, f"attribute {key} is not a 4-octet integer")
    return int.from_bytes(raw, "big")


def _first_ipv4(packet: pyrad.packet.Packet, key: int | tuple[int, int]) -> IPv4Address | None:
    raw = _first(packet, key)
    if raw is None:
        return None
    if len(raw) != 4:
        raise Rejected(RejectReason.BAD_REQUEST, f"attribute {key} is not a 4-octet IPv4 address")
    return IPv4Address(raw)


def _duplicate_key(data: bytes, source: tuple[str, int]) -> tuple[str, int, int, bytes] | None:
    """(source address, source port, Identifier, Request Authenticator), RFC 5080 section 2.2.2."""
    if len(data) < rc.HEADER_LENGTH:
        return None
    return (source[0], source[1], data[1], data[4:20])


def _loggable_name(packet: pyrad.packet.Packet) -> str:
    raw = _first(packet, rc.USER_NAME) or b""
    return raw[:128].decode("utf-8", "backslashreplace")


def _proxy_states(packet: pyrad.packet.Packet) -> bytes:
    return b"".join(rc.attribute(rc.PROXY_STATE, value) for value in dict.get(packet, rc.PROXY_STATE, ()))


__all__ = ["DuplicateCache", "HomeAaa", "HomeAaaOptions"]
