"""The VPN database in memory: a :class:`~aaa_vpn.store.base.Store` for tests
that run the whole system in one process without a database file (the flow
suite), and for anything else that needs a throw-away store.

It keeps the SQLite store's rules where they are visible to callers: the same
errors (:class:`NotFound`, :class:`AlreadyExists`, :class:`ReferenceError_`,
:class:`SpiConflict`), the same generation counter (bumped by every
provisioning change, not by sessions), VPN record ids that are never reused,
RESTRICT deletes of gateways, services and QoS classes that VPN records name,
one SPI per (node, SPI) across sessions, conditional session writes each on
its own, and all-or-nothing :meth:`MemoryStore.transaction`. Records are
frozen values, so they are kept as they are; secrets stay
:class:`~aaa_vpn.secret.Secret` (there is nothing at rest to encrypt).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Self

from aaa_vpn.model import (
    AccountingRecord,
    Client,
    Gateway,
    QosClass,
    Service,
    Session,
    SessionWrite,
    User,
    VpnRecord,
    WriteKind,
    WriteOutcome,
)
from aaa_vpn.store.base import (
    AccountingEntry,
    AlreadyExists,
    NotFound,
    ReferenceError_,
    SessionHead,
    SpiConflict,
    StoreError,
)
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.store.sql import class_text
from aaa_vpn.wire.accounting import AcctStatus


class MemoryStore:
    """:class:`~aaa_vpn.store.base.Store` in dictionaries (module rules)."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.clients: dict[str, Client] = {}
        self.gateways: dict[str, Gateway] = {}
        self.services: dict[str, Service] = {}
        self.qos: dict[str, QosClass] = {}
        self.records: dict[int, VpnRecord] = {}
        self.sessions: dict[str, Session] = {}
        self.accounting: dict[str, AccountingRecord] = {}
        self._generation = 1
        self._ids = itertools.count(1)
        self._spis: dict[tuple[int, int], str] = {}  # (node, SPI) -> session id
        self._depth = 0
        self.closed = False
        #: While set, every write raises StoreError: a store that is down.
        self.unavailable = False
        self.marks = SessionMarks.private()

    # -- plumbing ---------------------------------------------------------------
    def _changed(self) -> None:
        self._generation += 1

    def _check_writable(self) -> None:
        if self.unavailable:
            raise StoreError("the store is unavailable")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: an exception inside restores everything."""
        self._check_writable()
        saved = copy.copy(self.__dict__)
        saved = {k: copy.copy(v) if isinstance(v, dict) else v for k, v in saved.items()}
        self._depth += 1
        try:
            yield
        except BaseException:
            self.__dict__.update(saved)
            raise
        finally:
            self._depth -= 1

    def generation(self) -> int:
        return self._generation

    def session_marks(self) -> SessionMarks:
        return self.marks

    # -- users ------------------------------------------------------------------
    def add_user(self, user: User) -> None:
        self._check_writable()
        if user.nai in self.users:
            raise AlreadyExists(f"user {user.nai!r} exists already")
        self.users[user.nai] = user
        self._changed()

    def get_user(self, nai: str) -> User:
        try:
            return self.users[nai]
        except KeyError:
            raise NotFound(f"no user {nai!r}") from None

    def list_users(self) -> list[User]:
        return [self.users[nai] for nai in sorted(self.users)]

    def update_user(self, user: User) -> None:
        self._check_writable()
        if user.nai not in self.users:
            raise NotFound(f"no user {user.nai!r}")
        self.users[user.nai] = user
        self._changed()

    def delete_user(self, nai: str) -> None:
        self._check_writable()
        if nai not in self.users:
            raise NotFound(f"no user {nai!r}")
        del self.users[nai]
        for record_id in [i for i, r in self.records.items() if r.nai == nai]:
            del self.records[record_id]
        for session_id in [s.session_id for s in self.sessions.values() if s.nai == nai]:
            self._drop_session(session_id)
        self._changed()

    # -- the named kinds (clients, gateways, services, QoS classes) -------------
    def _add(self, table: dict[str, Any], name: str, value: object, kind: str) -> None:
        self._check_writable()
        if name in table:
            raise AlreadyExists(f"{kind} {name!r} exists already")
        table[name] = value
        self._changed()

    def _get(self, table: dict[str, Any], name: str, kind: str) -> Any:
        try:
            return table[name]
        except KeyError:
            raise NotFound(f"no {kind} {name!r}") from None

    def _update(self, table: dict[str, Any], name: str, value: object, kind: str) -> None:
        self._check_writable()
        if name not in table:
            raise NotFound(f"no {kind} {name!r}")
        table[name] = value
        self._changed()

    def _delete(self, table: dict[str, Any], name: str, kind: str, field: str | None = None) -> None:
        self._check_writable()
        if name not in table:
            raise NotFound(f"no {kind} {name!r}")
        if field is not None:
            users = [r for r in self.records.values() if getattr(r, field) == name]
            if users:
                named = ", ".join(f"{r.id} ({r.nai})" for r in users[:10])
                raise ReferenceError_(f"{kind} {name!r} is used by VPN record(s) {named}; change or delete those first")
        del table[name]
        self._changed()

    def add_client(self, client: Client) -> None:
        if any(c.network == client.network for c in self.clients.values() if c.name != client.name):
            raise AlreadyExists(f"client {client.name!r} exists already")
        self._add(self.clients, client.name, client, "client")

    def get_client(self, name: str) -> Client:
        client: Client = self._get(self.clients, name, "client")
        return client

    def list_clients(self) -> list[Client]:
        return [self.clients[name] for name in sorted(self.clients)]

    def update_client(self, client: Client) -> None:
        self._update(self.clients, client.name, client, "client")

    def delete_client(self, name: str) -> None:
        self._delete(self.clients, name, "client")

    def add_gateway(self, gateway: Gateway) -> None:
        self._add(self.gateways, gateway.name, gateway, "gateway")

    def get_gateway(self, name: str) -> Gateway:
        gateway: Gateway = self._get(self.gateways, name, "gateway")
        return gateway

    def list_gateways(self) -> list[Gateway]:
        return [self.gateways[name] for name in sorted(self.gateways)]

    def update_gateway(self, gateway: Gateway) -> None:
        self._update(self.gateways, gateway.name, gateway, "gateway")

    def delete_gateway(self, name: str) -> None:
        self._delete(self.gateways, name, "gateway", "gateway")

    def add_service(self, service: Service) -> None:
        self._add(self.services, service.name, service, "service")

    def get_service(self, name: str) -> Service:
        service: Service = self._get(self.services, name, "service")
        return service

    def list_services(self) -> list[Service]:
        return [self.services[name] for name in sorted(self.services)]

    def update_service(self, service: Service) -> None:
        self._update(self.services, service.name, service, "service")

    def delete_service(self, name: str) -> None:
        self._delete(self.services, name, "service", "service")

    def add_qos(self, qos: QosClass) -> None:
        self._add(self.qos, qos.name, qos, "QoS class")

    def get_qos(self, name: str) -> QosClass:
        qos: QosClass = self._get(self.qos, name, "QoS class")
        return qos

    def list_qos(self) -> list[QosClass]:
        return [self.qos[name] for name in sorted(self.qos)]

    def update_qos(self, qos: QosClass) -> None:
        self._update(self.qos, qos.name, qos, "QoS class")

    def delete_qos(self, name: str) -> None:
        self._delete(self.qos, name, "QoS class", "qos")

    # -- VPN records ------------------------------------------------------------
    def _check_record(self, record: VpnRecord) -> None:
        for kind, table, value in (
            ("user", self.users, record.nai),
            ("gateway", self.gateways, record.gateway),
            ("service", self.services, record.service),
            ("QoS class", self.qos, record.qos),
        ):
            if value is not None and value not in table:
                raise ReferenceError_(f"the VPN record names {kind} {value!r}, which does not exist")
        for other in self.records.values():
            if other.id != record.id and (other.nai, other.correspondent) == (record.nai, record.correspondent):
                raise AlreadyExists(
                    f"user {record.nai!r} has a VPN record for {record.correspondent} already (id {other.id})"
                )

    def add_vpn_record(self, record: VpnRecord) -> VpnRecord:
        self._check_writable()
        if record.id is not None and record.id in self.records:
            raise AlreadyExists(f"VPN record {record.id} exists already")
        self._check_record(record)
        record_id = record.id if record.id is not None else next(self._ids)
        while record.id is None and record_id in self.records:
            record_id = next(self._ids)
        stored = dataclasses.replace(record, id=record_id)
        self.records[record_id] = stored
        self._changed()
        return stored

    def get_vpn_record(self, record_id: int) -> VpnRecord:
        try:
            return self.records[record_id]
        except KeyError:
            raise NotFound(f"no VPN record {record_id}") from None

    def list_vpn_records(self, nai: str | None = None) -> list[VpnRecord]:
        return [self.records[i] for i in sorted(self.records) if nai is None or self.records[i].nai == nai]

    def update_vpn_record(self, record: VpnRecord) -> None:
        self._check_writable()
        if record.id is None or record.id not in self.records:
            raise NotFound(f"no VPN record {record.id}")
        self._check_record(record)
        self.records[record.id] = record
        self._changed()

    def delete_vpn_record(self, record_id: int) -> None:
        self._check_writable()
        if record_id not in self.records:
            raise NotFound(f"no VPN record {record_id}")
        del self.records[record_id]
        self._changed()

    # -- sessions ---------------------------------------------------------------
    def _drop_session(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self.marks.mark(session.nai)
        for allocation in session.spis:
            self._spis.pop((int(allocation.node), allocation.spi), None)
        return True

    def _spi_holder(self, session: Session) -> str | None:
        """An SPI of ``session`` already held by another session, if any."""
        seen: set[tuple[int, int]] = set()
        for allocation in session.spis:
            key = (int(allocation.node), allocation.spi)
            holder = self._spis.get(key)
            if (holder is not None and holder != session.session_id) or key in seen:
                return f"SPI {allocation.spi} (0x{allocation.spi:08x}) is already allocated on node {allocation.node}"
            seen.add(key)
        return None

    def _insert(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self.marks.mark(session.nai)
        for allocation in session.spis:
            self._spis[(int(allocation.node), allocation.spi)] = session.session_id

    def put_session(self, session: Session, replaces: Iterable[str] = ()) -> None:
        self._check_writable()
        with self.transaction():
            for old in replaces:
                self._drop_session(old)
            self._drop_session(session.session_id)
            problem = self._spi_holder(session)
            if problem is not None:
                raise SpiConflict(problem)
            self._insert(session)

    def put_sessions(
        self,
        sessions: Sequence[Session],
        replace_user_sessions: bool = False,
        renewals: Sequence[tuple[str, float]] = (),
    ) -> list[int]:
        self._check_writable()
        replaced: list[int] = []
        with self.transaction():
            for session_id, expires in renewals:
                if session_id in self.sessions:
                    self.sessions[session_id] = dataclasses.replace(self.sessions[session_id], expires=expires)
            for session in sessions:
                count = 0
                if replace_user_sessions:
                    for old in [s.session_id for s in self.sessions.values() if s.nai == session.nai]:
                        count += self._drop_session(old)
                problem = self._spi_holder(session)
                if problem is not None:
                    raise SpiConflict(problem)
                self._insert(session)
                replaced.append(count)
        return replaced

    def apply_session_writes(self, writes: Sequence[SessionWrite]) -> list[WriteOutcome]:
        """Each write on its own (model.SessionWrite); a store that is
        :attr:`unavailable` raises StoreError and writes nothing."""
        self._check_writable()
        return [self._apply(write) for write in writes]

    def _apply(self, write: SessionWrite) -> WriteOutcome:
        current = self.sessions.get(write.session_id)
        at_epoch = current is not None and (write.expected_epoch is None or current.epoch == write.expected_epoch)
        if write.kind is WriteKind.RENEW:
            if current is None or not at_epoch:
                return WriteOutcome.CONFLICT
            renewed = dataclasses.replace(current, expires=write.expires)
            if write.fa_identification is None:  # marks nothing (store/marks.py rule 2)
                self.sessions[write.session_id] = renewed
                return WriteOutcome.STORED
            self._identify(renewed, write)
            return WriteOutcome.STORED
        if write.kind is WriteKind.IDENTIFY:
            if current is None or not at_epoch:
                return WriteOutcome.CONFLICT
            self._identify(current, write)
            return WriteOutcome.STORED
        if write.kind is WriteKind.DELETE:
            if not at_epoch:
                return WriteOutcome.CONFLICT
            self._drop_session(write.session_id)
            return WriteOutcome.STORED
        session = write.session
        assert session is not None
        if write.kind is WriteKind.REPLACE and not at_epoch:
            return WriteOutcome.CONFLICT
        if write.kind is WriteKind.CREATE and current is not None:
            return WriteOutcome.CONFLICT
        saved_sessions, saved_spis = dict(self.sessions), dict(self._spis)
        if write.kind is WriteKind.CREATE:
            for old in [s.session_id for s in self.sessions.values() if s.nai == session.nai]:
                self._drop_session(old)
        else:
            self._drop_session(write.session_id)
        if self._spi_holder(session) is not None:
            self.sessions, self._spis = saved_sessions, saved_spis
            return WriteOutcome.SPI_TAKEN
        self._insert(session)
        return WriteOutcome.STORED

    def _identify(self, session: Session, write: SessionWrite) -> None:
        """Store ``session`` with the write's identification attributes, marked
        (as the SQL stores do: no copy keeps the old ones)."""
        fa, ha = write.fa_identification, write.ha_identification
        self.sessions[session.session_id] = dataclasses.replace(
            session,
            fa_identification=session.fa_identification if fa is None else fa,
            ha_identification=session.ha_identification if ha is None else ha,
        )
        self.marks.mark(session.nai)

    def session_heads(self, nai: str) -> list[SessionHead]:
        return [
            SessionHead(s.session_id, s.home_agent, s.care_of_address, s.epoch, s.created, s.expires)
            for s in self.find_sessions(nai)
        ]

    def get_session(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise NotFound(f"no session {session_id!r}") from None

    def find_sessions(self, nai: str) -> list[Session]:
        return sorted((s for s in self.sessions.values() if s.nai == nai), key=lambda s: (s.created, s.session_id))

    def list_sessions(self) -> list[Session]:
        return sorted(self.sessions.values(), key=lambda s: (s.created, s.session_id))

    def delete_session(self, session_id: str) -> None:
        self._check_writable()
        if not self._drop_session(session_id):
            raise NotFound(f"no session {session_id!r}")

    def count_live_sessions(self, now: float) -> int:
        return sum(1 for s in self.sessions.values() if s.expires >= now)

    def expire_sessions(self, now: float) -> int:
        self._check_writable()
        dead = [s.session_id for s in self.sessions.values() if s.expires < now]
        for session_id in dead:
            self._drop_session(session_id)
        return len(dead)

    def spis_in_use(self, node: IPv4Address) -> Sequence[int]:
        return sorted(spi for (n, spi) in self._spis if n == int(node))

    # -- accounting ---------------------------------------------------------------
    def record_accounting(self, entries: Sequence[AccountingEntry]) -> None:
        """As the SQL stores merge them (aaa_vpn/store/sql.py)."""
        self._check_writable()
        for entry in entries:
            request = entry.request
            at = request.event_time(entry.arrived)
            if request.status in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
                for key, record in list(self.accounting.items()):
                    if record.nas == request.nas and record.stopped is None and (record.started or 0) <= at:
                        self.accounting[key] = dataclasses.replace(
                            record,
                            stopped=at,
                            updated=at,
                            terminate_cause="NAS-Reboot",
                            updates=record.updates + 1,
                        )
                continue
            self.accounting[request.unique_id] = _merged(self.accounting.get(request.unique_id), entry, at)

    def list_accounting(
        self,
        nai: str | None = None,
        session_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[AccountingRecord]:
        found = sorted(
            (
                r
                for r in self.accounting.values()
                if (nai is None or r.nai == nai)
                and (session_id is None or r.session_id == session_id)
                and (since is None or r.updated >= since)
                and (until is None or r.updated < until)
            ),
            key=lambda r: (r.updated, r.unique_id),
        )
        return found if limit is None else found[:limit]

    def get_accounting(self, unique_id: str) -> AccountingRecord:
        try:
            return self.accounting[unique_id]
        except KeyError:
            raise NotFound(f"no accounting record {unique_id!r}") from None

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self.users)} users, {len(self.sessions)} sessions)"


__all__ = ["MemoryStore"]


if TYPE_CHECKING:
    from aaa_vpn.store.base import Store

    def _conforms(store: MemoryStore) -> Store:
        # mypy checks here that MemoryStore implements the Store protocol.
        return store


def _greater(old: int | float | None, new: int | float | None) -> Any:
    return old if new is None else new if old is None or new > old else old


def _merged(old: AccountingRecord | None, entry: AccountingEntry, at: float) -> AccountingRecord:
    """``old`` with ``entry`` merged in, as the SQL upsert does."""
    request = entry.request
    stop = request.status is AcctStatus.STOP
    started = at if request.status is AcctStatus.START else None
    if old is None:
        return AccountingRecord(
            unique_id=request.unique_id,
            acct_session_id=request.acct_session_id,
            nai=request.user_name,
            client=entry.client,
            nas=request.nas,
            session_id=request.session_id,
            class_value=class_text(request.class_value),
            updated=at,
            started=started,
            stopped=at if stop else None,
            session_time=request.session_time,
            input_octets=request.input_octets,
            output_octets=request.output_octets,
            input_packets=request.input_packets,
            output_packets=request.output_packets,
            terminate_cause=request.terminate_cause if stop else "",
            attributes=dict(request.attributes),
        )
    return dataclasses.replace(
        old,
        nai=request.user_name or old.nai,
        session_id=request.session_id or old.session_id,
        class_value=class_text(request.class_value) or old.class_value,
        started=old.started if started is None or (old.started is not None and old.started <= started) else started,
        updated=_greater(old.updated, at),
        stopped=old.stopped if old.stopped is not None else (at if stop else None),
        session_time=_greater(old.session_time, request.session_time),
        input_octets=_greater(old.input_octets, request.input_octets),
        output_octets=_greater(old.output_octets, request.output_octets),
        input_packets=_greater(old.input_packets, request.input_packets),
        output_packets=_greater(old.output_packets, request.output_packets),
        terminate_cause=old.terminate_cause or (request.terminate_cause if stop else ""),
        attributes={**old.attributes, **request.attributes},
        updates=old.updates + 1,
    )
