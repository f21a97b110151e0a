"""The home AAA's service layer: it feeds the sans-IO role
(:mod:`aaa_vpn.roles.home_aaa`) with datagrams, reads provisioning and
sessions for it from the store, carries out the session writes it decides,
and logs what it reports.

Theory of operation:

1. :class:`StoreProvisioning` is the role's provisioning: the store's
   clients and user contexts, cached while the store's generation number
   stays the same. :meth:`HomeService.handle_batch` looks at the generation
   once per batch, so CLI changes are seen by the next batch.
2. :class:`StoreSessions` is the role's session reader: one light query for
   a user's session heads, the full session (keys, SPIs) from a small cache
   while its (id, epoch, care-of address) is unchanged.
3. A batch of datagrams is handed to the role, then every
   :class:`~aaa_vpn.roles.home_aaa.StoreSession` it asked for is carried out
   in one transaction (group commit, :meth:`Store.apply_session_writes`),
   each write with its own outcome, before any reply of the batch leaves: a
   reply never announces a session the database does not have. Writes the
   acknowledgements cause (a request decided again after a conflict) go in
   the next transaction, until there are none.
4. The store waits for a lock at most ``busy_timeout`` (the server opens it
   with ``--db-busy-timeout``, default 0.25 s): a batch whose transaction
   cannot get the lock in time is answered with no reply for its writing
   requests (counted ``dropped.store_unavailable``, logged); their
   retransmissions are decided anew. Requests that need no write, and
   Status-Server, are answered all the same.
5. Logging: decisions at INFO (accepts at DEBUG), drops at WARNING with at
   most :data:`LOG_BURST` lines per reason and minute, counters on request.

Synchronous and single-threaded; ``net/home_server.py`` runs one per worker
process.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from aaa_vpn.model import Client, Session, WriteOutcome
from aaa_vpn.roles.accounting import AccountingServer
from aaa_vpn.roles.home_aaa import (
    Authorize,
    Decided,
    HomeAaa,
    HomeAaaOptions,
    StoreSession,
)
from aaa_vpn.roles.home_plan import UserContext
from aaa_vpn.roles.radius_server import Address, Dropped
from aaa_vpn.service.logging import fields
from aaa_vpn.service.metrics import Recorder
from aaa_vpn.store.base import NotFound, Store, StoreError
from aaa_vpn.store.marks import SessionMarks

log = logging.getLogger("aaa_vpn.home")

#: At most this many log lines per drop reason and minute (a flood cannot flood the log).
LOG_BURST = 20
_CACHE_LIMIT = 100_000


def user_context(store: Store, nai: str) -> UserContext | None:
    """The user and everything its VPN records name, read from ``store``."""
    try:
        user = store.get_user(nai)
    except NotFound:
        return None
    records = tuple(store.list_vpn_records(nai))
    return UserContext(
        user=user,
        records=records,
        gateways={r.gateway: store.get_gateway(r.gateway) for r in records},
        services={r.service: store.get_service(r.service) for r in records},
        qos={r.qos: store.get_qos(r.qos) for r in records if r.qos},
    )


class StoreProvisioning:
    """The role's :class:`~aaa_vpn.roles.home_aaa.Provisioning` over a store,
    cached per generation (rule 1)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._generation = -1
        self._clients: list[Client] = []
        self._users: dict[str, UserContext | None] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Read the generation; drop the caches if it moved. True if it did."""
        generation = self.store.generation()
        if generation == self._generation:
            return False
        self._generation = generation
        self._clients = self.store.list_clients()
        self._users = {}
        return True

    def generation(self) -> int:
        return self._generation

    def clients(self) -> Sequence[Client]:
        return self._clients

    def user_context(self, nai: str) -> UserContext | None:
        try:
            return self._users[nai]
        except KeyError:
            pass
        ctx = user_context(self.store, nai)
        if len(self._users) >= _CACHE_LIMIT:
            self._users.clear()
        self._users[nai] = ctx
        return ctx


class StoreSessions:
    """The role's :class:`~aaa_vpn.roles.home_aaa.SessionReader` over a store (rule 2)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._full: dict[str, Session] = {}  # by NAI: the last full session read

    def live_session(self, nai: str, home_agent: IPv4Address, now: float) -> Session | None:
        heads = [h for h in self.store.session_heads(nai) if h.home_agent == home_agent and h.expires > now]
        if not heads:
            return None
        head = max(heads, key=lambda h: h.created)
        cached = self._full.get(nai)
        if cached is not None and (cached.session_id, cached.epoch, cached.care_of_address) == (
            head.session_id,
            head.epoch,
            head.care_of_address,
        ):
            if cached.expires == head.expires:
                return cached
            return _with_expiry(cached, head.expires)
        try:
            session = self.store.get_session(head.session_id)
        except NotFound:
            return None  # expired or deleted in between
        if len(self._full) >= _CACHE_LIMIT:
            self._full.clear()
        self._full[nai] = session
        return session

    def sessions_of(self, nai: str) -> Sequence[Session]:
        return sorted(self.store.find_sessions(nai), key=lambda s: s.created, reverse=True)

    def session(self, session_id: str) -> Session | None:
        try:
            return self.store.get_session(session_id)
        except NotFound:
            return None

    def marks(self) -> SessionMarks | None:
        return self.store.session_marks()


def _with_expiry(session: Session, expires: float) -> Session:
    return dataclasses.replace(session, expires=expires)


@dataclass
class _Budget:
    window: float
    count: int


class HomeService:
    """One worker's home AAA: the role, its store and its logs (module rules)."""

    def __init__(
        self,
        store: Store,
        options: HomeAaaOptions | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        now: float | None = None,
    ) -> None:
        self.store = store
        self.provisioning = StoreProvisioning(store)
        self.sessions = StoreSessions(store)
        self.role = HomeAaa(
            self.provisioning,
            self.sessions,
            options,
            now=time.time() if now is None else now,
            random_bytes=random_bytes,
        )
        self.role.process_id = os.getpid()
        self.accounting = AccountingServer(
            self.provisioning.clients(), self.role.counters, dup_ttl=self.role.options.dup_cache_seconds
        )
        self._budget: dict[str, _Budget] = {}
        self.authorizations: list[Authorize] = []
        self.metrics = Recorder("home")
        """Figures the role does not count (docs/metrics.md): decisions by
        client, database durations; the network layer adds requests,
        replies and their durations."""

    def client_name(self, address: str) -> str:
        """The provisioned client ``address`` belongs to (for metrics), or ``unknown``."""
        client = self.role.server.clients.lookup(address)
        return client.name if client is not None else "unknown"

    def _db_time(self, operation: str, started: float) -> None:
        self.metrics.observe("aaa_vpn_db_duration_seconds", time.perf_counter() - started, operation=operation)

    @property
    def counters(self) -> collections.Counter[str]:
        return self.role.counters

    # -- requests ------------------------------------------------------------------------------------
    def handle_batch(
        self, batch: Sequence[tuple[bytes, Address]], now: float, client: Client | None = None
    ) -> list[tuple[bytes, Address]]:
        """Rules 1-4: the datagrams received together; returns the replies to
        send, with their destinations. ``client``: the sender of every
        datagram of the batch when a RadSec certificate named it
        (roles/radsec.py), instead of the source address."""
        self.counters["batches"] += 1
        self._refresh()
        for data, source in batch:
            self.role.receive_datagram(data, source, now, client)
        self.run(now)
        return self.role.datagrams_to_send()

    def handle_accounting_batch(
        self, batch: Sequence[tuple[bytes, Address]], now: float, client: Client | None = None
    ) -> list[tuple[bytes, Address]]:
        """The datagrams received together on the accounting port
        (roles/accounting.py): recorded in one durable transaction before any
        of them is answered; returns the responses, with their destinations."""
        self.counters["accounting.batches"] += 1
        self._refresh()
        status = self.role.status_message(now)
        for data, source in batch:
            self.accounting.receive_datagram(data, source, now, status, client)
        self.accounting.end_batch()
        while self.accounting.events:
            event = self.accounting.events.popleft()
            if isinstance(event, Dropped):
                self._log_drop(event, now)
                continue
            started = time.perf_counter()
            try:
                self.store.record_accounting(event.entries)
                ok = True
                self._db_time("record_accounting", started)
            except StoreError as exc:
                self._store_failed("cannot store accounting", exc)
                ok = False
            self.accounting.stored(event.write_id, ok, now)
        return self.accounting.datagrams_to_send()

    def current_clients(self) -> Sequence[Client]:
        """The provisioned clients as of now (rule 1), e.g. to match a RadSec
        peer's certificate against."""
        self._refresh()
        return self.provisioning.clients()

    def handle(self, data: bytes, source: Address, now: float) -> bytes | None:
        """One datagram; the reply to send to ``source``, if any."""
        for reply, destination in self.handle_batch([(data, source)], now):
            if destination == source:
                return reply
        return None

    def run(self, now: float) -> None:
        """Carry out the role's events until none are left (rule 3)."""
        while True:
            writes: list[StoreSession] = []
            while (event := self.role.next_event()) is not None:
                if isinstance(event, StoreSession):
                    writes.append(event)
                elif isinstance(event, Decided):
                    self._log_decision(event)
                elif isinstance(event, Dropped):
                    self._log_drop(event, now)
                elif isinstance(event, Authorize):
                    self.authorizations.append(event)
            if not writes:
                return
            started = time.perf_counter()
            try:
                outcomes = self.store.apply_session_writes([w.write for w in writes])
                self._db_time("session_writes", started)
            except StoreError as exc:
                self._store_failed("cannot store sessions", exc)
                outcomes = [WriteOutcome.UNAVAILABLE] * len(writes)
            self.counters["store_transactions"] += 1
            for write, outcome in zip(writes, outcomes, strict=True):
                self.role.sessions_stored(write.write_id, outcome, now)

    def expire(self, now: float) -> int:
        """Housekeeping: delete expired sessions from the store (one worker
        does it) and forget old answers."""
        self.role.expire(now)
        self.accounting.expire(now)
        started = time.perf_counter()
        count = self.store.expire_sessions(now)
        self._db_time("expire_sessions", started)
        if count:
            self.counters["sessions_expired"] += count
            log.info("sessions expired", extra=fields(count=count))
        return count

    # -- operator actions ----------------------------------------------------------------------------
    def push(self, session_id: str, now: float) -> Authorize:
        """Re-key a live session with the user's current VPN and return the
        CoA-Requests that push it (roles/home_aaa.py rule 11)."""
        return self._authorize(lambda tag: self.role.push(session_id, now, tag), now)

    def disconnect(self, session_id: str, now: float) -> Authorize:
        """The Disconnect-Requests that end a session on its agents."""
        return self._authorize(lambda tag: self.role.disconnect(session_id, now, tag), now)

    def delete(self, session_id: str, now: float) -> bool:
        """Forget a session; False if there was none."""
        self.role.delete(session_id, now)
        stored = False
        while (event := self.role.next_event()) is not None:
            if isinstance(event, StoreSession):
                outcome = self.store.apply_session_writes([event.write])[0]
                stored = stored or outcome is WriteOutcome.STORED
        return stored

    def _refresh(self) -> None:
        """Rule 1: provisioning changes made before now are seen from now on."""
        started = time.perf_counter()
        try:
            changed = self.provisioning.refresh()
            self._db_time("provisioning_refresh", started)
            if changed:
                self.role.refresh()
                self.accounting.set_clients(self.provisioning.clients())
        except StoreError as exc:
            self._store_failed("cannot read provisioning", exc)

    def _authorize(self, start: Callable[[object], None], now: float) -> Authorize:
        self._refresh()
        tag = object()
        start(tag)
        self.run(now)
        for index, event in enumerate(self.authorizations):
            if event.tag is tag:
                return self.authorizations.pop(index)
        raise RuntimeError("the home AAA answered no operator action")  # pragma: no cover - the role always does

    # -- logging -------------------------------------------------------------------------------------
    def _store_failed(self, what: str, exc: StoreError) -> None:
        self.counters["store_errors"] += 1
        if self._allowed("store_error", time.monotonic()):
            log.error(what, extra=fields(detail=str(exc)))

    def _log_decision(self, event: Decided) -> None:
        self.metrics.inc(
            "aaa_vpn_radius_decisions_total", client=event.client, outcome=event.outcome, reason=event.reason
        )
        level = logging.DEBUG if event.outcome in ("answered", "confirmed", "renewed") else logging.INFO
        if not log.isEnabledFor(level):
            return
        message = "access rejected" if event.outcome == "rejected" else f"session {event.outcome}"
        log.log(
            level,
            message,
            extra=fields(
                nai=event.nai,
                client=event.client,
                request=event.request,
                reason=event.reason,
                detail=event.detail,
                session=event.session_id,
                care_of=event.care_of,
                paths=event.paths,
            ),
        )

    def _log_drop(self, event: Dropped, now: float) -> None:
        if self._allowed(event.reason, time.monotonic()):
            log.warning(
                "request dropped",
                extra=fields(reason=event.reason, source=f"{event.source[0]}:{event.source[1]}", detail=event.detail),
            )

    def _allowed(self, reason: str, now: float) -> bool:
        budget = self._budget.get(reason)
        if budget is None or now - budget.window >= 60:
            budget = self._budget[reason] = _Budget(now, 0)
        budget.count += 1
        return budget.count <= LOG_BURST

    def close(self) -> None:
        self.store.close()


__all__ = ["LOG_BURST", "HomeService", "StoreProvisioning", "StoreSessions", "user_context"]
