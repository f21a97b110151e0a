"""The storage interface: everything callers may ask of the VPN database.

Small on purpose, so that a PostgreSQL implementation can follow the SQLite
one without touching callers. Records are the frozen dataclasses of
:mod:`aaa_vpn.model`; secrets come back decrypted as :class:`~aaa_vpn.secret.Secret`
and are stored encrypted under the server key file.

Errors: :class:`NotFound` for a missing record, :class:`AlreadyExists` for a
duplicate key, :class:`ReferenceError_` when a record names one that does not
exist (or deletion would orphan one), :class:`StoreError` for everything else
(corrupt database, wrong key file). All derive from :class:`StoreError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

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
    WriteOutcome,
)
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.wire.accounting import AccountingRequest


@dataclass(frozen=True)
class SessionHead:
    """What identifies a session's state without its secrets: a session whose
    (session id, epoch, care-of address) did not change did not change."""

    session_id: str
    home_agent: IPv4Address
    care_of_address: IPv4Address
    epoch: int
    created: float
    expires: float


class StoreError(Exception):
    """The database cannot do what was asked. ``cause``: the driver's error, if
    one was (kept for the store's own checks; messages never need it)."""

    cause: BaseException | None = None


class NotFound(StoreError):
    """No record with that key."""


class AlreadyExists(StoreError):
    """A record with that key exists already."""


class ReferenceError_(StoreError):
    """A record names another that does not exist, or is still named by others."""


class SpiConflict(StoreError):
    """An SPI is already allocated on that receiving node."""


@dataclass(frozen=True)
class AccountingEntry:
    """One accounting request to record: what it says, when it arrived, and
    the RADIUS client (its provisioned name) that sent it."""

    request: AccountingRequest
    arrived: float
    client: str


class StoreBusy(StoreError):
    """Another writer held the database longer than the busy timeout."""


class Store(Protocol):
    """What the home AAA, the CLI and the tests need from the VPN database."""

    # -- change detection -------------------------------------------------
    def generation(self) -> int:
        """A number that changes whenever provisioning data (not sessions) changes.

        Cheap to call; the server polls it to know when to drop its caches."""

    def session_marks(self) -> SessionMarks | None:
        """The marks every writer of this store's sessions sets after it
        commits a created, replaced or deleted session (store/marks.py), or
        None where they cannot be read (then no cached session is trusted)."""

    # -- users ---------------------------------------------------------------
    def add_user(self, user: User) -> None: ...
    def get_user(self, nai: str) -> User: ...
    def list_users(self) -> list[User]: ...
    def update_user(self, user: User) -> None: ...
    def delete_user(self, nai: str) -> None:
        """Deletes the user's VPN records and sessions too."""

    # -- RADIUS clients -------------------------------------------------------
    def add_client(self, client: Client) -> None: ...
    def get_client(self, name: str) -> Client: ...
    def list_clients(self) -> list[Client]: ...
    def update_client(self, client: Client) -> None: ...
    def delete_client(self, name: str) -> None: ...

    # -- gateways ----------------------------------------------------------
    def add_gateway(self, gateway: Gateway) -> None: ...
    def get_gateway(self, name: str) -> Gateway: ...
    def list_gateways(self) -> list[Gateway]: ...
    def update_gateway(self, gateway: Gateway) -> None: ...
    def delete_gateway(self, name: str) -> None:
        """Raises ReferenceError_ while a VPN record uses the gateway."""

    # -- security services ----------------------------------------------
    def add_service(self, service: Service) -> None: ...
    def get_service(self, name: str) -> Service: ...
    def list_services(self) -> list[Service]: ...
    def update_service(self, service: Service) -> None: ...
    def delete_service(self, name: str) -> None: ...

    # -- QoS classes --------------------------------------------------------
    def add_qos(self, qos: QosClass) -> None: ...
    def get_qos(self, name: str) -> QosClass: ...
    def list_qos(self) -> list[QosClass]: ...
    def update_qos(self, qos: QosClass) -> None: ...
    def delete_qos(self, name: str) -> None: ...

    # -- VPN records -------------------------------------------------------
    def add_vpn_record(self, record: VpnRecord) -> VpnRecord:
        """Returns the record with its assigned ``id``. Raises ReferenceError_
        if the user, gateway, service or QoS class does not exist."""

    def get_vpn_record(self, record_id: int) -> VpnRecord: ...
    def list_vpn_records(self, nai: str | None = None) -> list[VpnRecord]: ...
    def update_vpn_record(self, record: VpnRecord) -> None: ...
    def delete_vpn_record(self, record_id: int) -> None: ...

    # -- sessions -----------------------------------------------------------
    def put_session(self, session: Session, replaces: Iterable[str] = ()) -> None:
        """Store ``session`` and its SPI allocations in one transaction, after
        deleting the sessions named in ``replaces`` (and their SPIs).

        Raises SpiConflict (and stores nothing) if one of the SPIs is already
        allocated on its node."""

    def put_sessions(
        self,
        sessions: Sequence[Session],
        replace_user_sessions: bool = False,
        renewals: Sequence[tuple[str, float]] = (),
    ) -> list[int]:
        """Store several new sessions in one transaction (the home AAA's group
        commit), and set the expiry of the ``renewals`` (session id, expires).
        With ``replace_user_sessions`` each session first deletes the other
        sessions of its NAI. Returns per session how many it replaced. Raises
        SpiConflict (and stores nothing) on an SPI collision."""

    def apply_session_writes(self, writes: Sequence[SessionWrite]) -> list[WriteOutcome]:
        """Carry out the home AAA's conditional session writes in one
        transaction, each on its own (model.SessionWrite); one outcome per
        write. Raises StoreError if the transaction fails: nothing written."""

    def session_heads(self, nai: str) -> list[SessionHead]:
        """The user's sessions without keys and SPIs (cheap), oldest first."""

    def get_session(self, session_id: str) -> Session: ...
    def find_sessions(self, nai: str) -> list[Session]: ...
    def list_sessions(self) -> list[Session]: ...
    def delete_session(self, session_id: str) -> None: ...
    def expire_sessions(self, now: float) -> int:
        """Delete sessions whose ``expires`` is before ``now``; return how many."""

    def count_live_sessions(self, now: float) -> int:
        """How many sessions expire at or after ``now`` (for metrics)."""

    def spis_in_use(self, node: IPv4Address) -> Sequence[int]: ...

    # -- accounting (RFC 2866) ------------------------------------------------
    def record_accounting(self, entries: Sequence[AccountingEntry]) -> None:
        """Merge accounting requests into their records, all in one durable
        transaction (committed to disk before this returns: RFC 2866 section
        4.1 lets the server answer only then). Raises StoreError if nothing
        could be stored."""

    def list_accounting(
        self,
        nai: str | None = None,
        session_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[AccountingRecord]:
        """Records, oldest update first, whose user, session and last update
        (since <= updated < until) match what is given."""

    def get_accounting(self, unique_id: str) -> AccountingRecord: ...

    def close(self) -> None: ...
