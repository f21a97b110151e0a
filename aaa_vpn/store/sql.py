"""The VPN database in SQL: what the SQLite and PostgreSQL stores share.

Rules:

- :class:`SqlStore` is every read and write of the :class:`~aaa_vpn.store.base.Store`
  interface, written once in SQL both engines speak (``?`` placeholders; a
  PostgreSQL store turns them into its own). A subclass opens the
  connection, runs transactions (:meth:`SqlStore._writing`), maps the
  engine's errors (:meth:`SqlStore._error`, the constraint checks) and the
  session marks, and applies the schema (aaa_vpn/store/schema.py).
- Every write is an explicit transaction; calls inside :meth:`SqlStore.transaction`
  join it. A statement that may violate a constraint the caller reports on
  runs in a savepoint, so that the transaction can still look up why (a
  failed statement aborts a PostgreSQL transaction).
- Session writes decided by the home AAA (:meth:`SqlStore.apply_session_writes`)
  are conditional on the session's epoch, each in its own savepoint of one
  transaction: one that finds the session changed or an SPI taken is undone
  alone and reported, the others commit.
- Every change of a user's sessions (created, replaced, deleted, new
  identification attributes; not a renewal that only moves the expiry) is
  collected while its transaction runs and marked for the other
  processes (aaa_vpn/store/marks.py) once it commits.
- Secret columns hold :class:`~aaa_vpn.store.crypto.SecretBox` blobs bound to
  their table, column and row key; plaintext secrets never reach the database.
- Hot-path reads are single constant SQL statements (kept prepared by the
  driver) with positional row unpacking; no ORM.
- Sessions deliberately have no foreign key to users: a foreign AAA may keep
  sessions of visitors it has no user record for. ``delete_user`` deletes the
  user's sessions explicitly instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar, Self, cast

from aaa_vpn.model import (
    AccountingRecord,
    Client,
    ClientRole,
    EspTransform,
    Flavour,
    Gateway,
    GatewayMode,
    KeyMode,
    PskEncoding,
    QosClass,
    Service,
    Session,
    SessionWrite,
    SpiAllocation,
    User,
    VpnRecord,
    WriteKind,
    WriteOutcome,
)
from aaa_vpn.secret import Secret
from aaa_vpn.store.base import (
    AccountingEntry,
    AlreadyExists,
    NotFound,
    ReferenceError_,
    SessionHead,
    SpiConflict,
    StoreError,
)
from aaa_vpn.store.crypto import SecretBox, secret_context
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.store.schema import TABLES, Dialect
from aaa_vpn.wire.accounting import AcctStatus
from aaa_vpn.wire.text import text


def class_text(value: bytes) -> str:
    """A Class as text: itself when printable ASCII, else 0x and hex."""
    if value.isascii() and value.decode("ascii").isprintable():
        return value.decode("ascii")
    return "0x" + value.hex()


def _marks(write: SessionWrite) -> bool:
    """Whether ``write`` marks the user's sessions (store/marks.py rule 2):
    all but a renewal that only moves the expiry."""
    return not (write.kind is WriteKind.RENEW and write.fa_identification is None)


# -- constant SQL, with ? placeholders (sqlite3 and psycopg keep them prepared) ----------

_GENERATION = "SELECT value FROM generation WHERE id = 1"

_USER_COLUMNS = "nai, home_agent, home_address, mn_aaa_spi, mn_aaa_secret, mn_ha_spi, mn_ha_key, enabled"
_GET_USER = f"SELECT {_USER_COLUMNS} FROM users WHERE nai = ?"
_LIST_USERS = f"SELECT {_USER_COLUMNS} FROM users ORDER BY nai"
_INSERT_USER = f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_USER = (
    "UPDATE users SET nai = ?, home_agent = ?, home_address = ?, mn_aaa_spi = ?, mn_aaa_secret = ?,"
    " mn_ha_spi = ?, mn_ha_key = ?, enabled = ? WHERE nai = ?"
)

_CLIENT_COLUMNS = (
    "name, network, secret, role, domain, coa_port, flavour, require_message_authenticator, psk_encoding,"
    " require_coa_message_authenticator"
)
_GET_CLIENT = f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE name = ?"
_LIST_CLIENTS = f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY name"
_INSERT_CLIENT = f"INSERT INTO clients ({_CLIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_CLIENT = (
    "UPDATE clients SET name = ?, network = ?, secret = ?, role = ?, domain = ?, coa_port = ?,"
    " flavour = ?, require_message_authenticator = ?, psk_encoding = ?, require_coa_message_authenticator = ?"
    " WHERE name = ?"
)

_GATEWAY_COLUMNS = "name, address, mode, protected_prefixes, gateway_key"
_GET_GATEWAY = f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE name = ?"
_LIST_GATEWAYS = f"SELECT {_GATEWAY_COLUMNS} FROM gateways ORDER BY name"
_INSERT_GATEWAY = f"INSERT INTO gateways ({_GATEWAY_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
_UPDATE_GATEWAY = (
    "UPDATE gateways SET name = ?, address = ?, mode = ?, protected_prefixes = ?, gateway_key = ? WHERE name = ?"
)

_SERVICE_COLUMNS = "name, key_mode, esp_transform, ike_proposal, sa_lifetime, ike_lifetime"
_GET_SERVICE = f"SELECT {_SERVICE_COLUMNS} FROM services WHERE name = ?"
_LIST_SERVICES = f"SELECT {_SERVICE_COLUMNS} FROM services ORDER BY name"
_INSERT_SERVICE = f"INSERT INTO services ({_SERVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_UPDATE_SERVICE = (
    "UPDATE services SET name = ?, key_mode = ?, esp_transform = ?, ike_proposal = ?, sa_lifetime = ?,"
    " ike_lifetime = ? WHERE name = ?"
)

_GET_QOS = "SELECT name, dscp, rate_kbps FROM qos_classes WHERE name = ?"
_LIST_QOS = "SELECT name, dscp, rate_kbps FROM qos_classes ORDER BY name"
_INSERT_QOS = "INSERT INTO qos_classes (name, dscp, rate_kbps) VALUES (?, ?, ?)"
_UPDATE_QOS = "UPDATE qos_classes SET name = ?, dscp = ?, rate_kbps = ? WHERE name = ?"

_VPN_COLUMNS = "id, nai, correspondent, gateway, service, qos"
_GET_VPN = f"SELECT {_VPN_COLUMNS} FROM vpn_records WHERE id = ?"
_LIST_VPN = f"SELECT {_VPN_COLUMNS} FROM vpn_records ORDER BY id"
_LIST_VPN_OF_USER = f"SELECT {_VPN_COLUMNS} FROM vpn_records WHERE nai = ? ORDER BY id"
_INSERT_VPN = "INSERT INTO vpn_records (nai, correspondent, gateway, service, qos) VALUES (?, ?, ?, ?, ?) RETURNING id"
_INSERT_VPN_WITH_ID = f"INSERT INTO vpn_records ({_VPN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) RETURNING id"
_UPDATE_VPN = "UPDATE vpn_records SET nai = ?, correspondent = ?, gateway = ?, service = ?, qos = ? WHERE id = ?"

# Sessions are read with their SPIs in one statement, so that a concurrent
# writer can never be seen half-way (one statement = one snapshot).
_SESSION_SELECT = (
    "SELECT s.session_id, s.nai, s.session_root_key, s.epoch, s.home_address, s.home_agent,"
    " s.care_of_address, s.created, s.expires, s.foreign_domain, s.stationary_epoch, s.keyed_at,"
    " s.epoch_started, s.fa_identification, s.ha_identification, p.node, p.spi, p.path"
    " FROM sessions AS s LEFT JOIN session_spis AS p ON p.session_id = s.session_id"
)
#: Where the SPI columns start in a _SESSION_SELECT row.
_SPI_AT = 15
_GET_SESSION = f"{_SESSION_SELECT} WHERE s.session_id = ? ORDER BY p.position"
_FIND_SESSIONS = f"{_SESSION_SELECT} WHERE s.nai = ? ORDER BY s.created, s.session_id, p.position"
_SESSION_HEADS = (
    "SELECT session_id, home_agent, care_of_address, epoch, created, expires FROM sessions WHERE nai = ?"
    " ORDER BY created, session_id"
)
_RENEW_SESSION = "UPDATE sessions SET expires = ? WHERE session_id = ?"
_RENEW_AT_EPOCH = "UPDATE sessions SET expires = ? WHERE session_id = ? AND epoch = ?"
_RENEW_IDENTIFIED_AT_EPOCH = (
    "UPDATE sessions SET expires = ?, fa_identification = ? WHERE session_id = ? AND epoch = ? RETURNING nai"
)
_IDENTIFY_AT_EPOCH = {
    (True, False): "UPDATE sessions SET fa_identification = ? WHERE session_id = ? AND epoch = ? RETURNING nai",
    (False, True): "UPDATE sessions SET ha_identification = ? WHERE session_id = ? AND epoch = ? RETURNING nai",
    (True, True): (
        "UPDATE sessions SET fa_identification = ?, ha_identification = ? WHERE session_id = ? AND epoch = ?"
        " RETURNING nai"
    ),
}
_DELETE_AT_EPOCH = "DELETE FROM sessions WHERE session_id = ? AND epoch = ? RETURNING nai"
_LIST_SESSIONS = f"{_SESSION_SELECT} ORDER BY s.created, s.session_id, p.position"
_INSERT_SESSION = (
    "INSERT INTO sessions (session_id, nai, session_root_key, epoch, home_address, home_agent,"
    " care_of_address, created, expires, foreign_domain, stationary_epoch, keyed_at, epoch_started,"
    " fa_identification, ha_identification)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SPI = "INSERT INTO session_spis (session_id, position, node, spi, path) VALUES (?, ?, ?, ?, ?)"
_DELETE_SESSION = "DELETE FROM sessions WHERE session_id = ? RETURNING nai"
_DELETE_USER_SESSIONS = "DELETE FROM sessions WHERE nai = ?"
_SPI_HOLDER = (
    "SELECT p.session_id, s.nai FROM session_spis AS p JOIN sessions AS s ON s.session_id = p.session_id"
    " WHERE p.node = ? AND p.spi = ?"
)
_SPIS_IN_USE = "SELECT spi FROM session_spis WHERE node = ? ORDER BY spi"

# Accounting (RFC 2866): one upsert for every kind of request. A later request
# never takes back what an earlier one said: counters and times only grow (a
# late Interim-Update cannot lower them or reopen a stopped record), the start
# is the earliest seen, the other attributes accumulate (the latest value of each).
_GREATER = (
    "CASE WHEN excluded.{c} IS NULL THEN accounting.{c}"
    " WHEN accounting.{c} IS NULL OR excluded.{c} > accounting.{c} THEN excluded.{c} ELSE accounting.{c} END"
)
_LESSER = (
    "CASE WHEN excluded.{c} IS NULL THEN accounting.{c}"
    " WHEN accounting.{c} IS NULL OR excluded.{c} < accounting.{c} THEN excluded.{c} ELSE accounting.{c} END"
)
_ACCOUNTING_COLUMNS = (
    "unique_id, acct_session_id, nai, client, nas, session_id, class, started, updated, stopped, session_time,"
    " input_octets, output_octets, input_packets, output_packets, terminate_cause, attributes, updates"
)
_RECORD_ACCOUNTING = (
    f"INSERT INTO accounting ({_ACCOUNTING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
    " ON CONFLICT (unique_id) DO UPDATE SET "
    + ", ".join(
        [
            "nai = CASE WHEN excluded.nai <> '' THEN excluded.nai ELSE accounting.nai END",
            "session_id = CASE WHEN excluded.session_id <> '' THEN excluded.session_id ELSE accounting.session_id END",
            "class = CASE WHEN excluded.class <> '' THEN excluded.class ELSE accounting.class END",
            "started = " + _LESSER.format(c="started"),
            "updated = " + _GREATER.format(c="updated"),
            "stopped = CASE WHEN accounting.stopped IS NULL THEN excluded.stopped ELSE accounting.stopped END",
            *(
                f"{column} = " + _GREATER.format(c=column)
                for column in ("session_time", "input_octets", "output_octets", "input_packets", "output_packets")
            ),
            "terminate_cause = CASE WHEN accounting.terminate_cause = '' THEN excluded.terminate_cause"
            " ELSE accounting.terminate_cause END",
            "attributes = excluded.attributes",  # merged by the writer (record_accounting)
            "updates = accounting.updates + 1",
        ]
    )
)
_CLOSE_NAS_ACCOUNTING = (
    "UPDATE accounting SET stopped = ?, updated = ?, terminate_cause = ?, updates = updates + 1"
    " WHERE nas = ? AND stopped IS NULL AND (started IS NULL OR started <= ?)"
)
_GET_ACCOUNTING = f"SELECT {_ACCOUNTING_COLUMNS} FROM accounting WHERE unique_id = ?"

_Row = tuple[Any, ...]


class Reopened(StoreError):
    """A write found the connection unusable and opened it again: retry."""


class SqlStore:
    """The :class:`~aaa_vpn.store.base.Store` interface in SQL (module rules);
    a subclass supplies the connection and the engine's ways."""

    dialect: ClassVar[Dialect]
    #: The driver's exception classes.
    _Error: ClassVar[type[Exception]]
    _Integrity: ClassVar[type[Exception]]

    def __init__(self, box: SecretBox) -> None:
        self._box = box
        #: The connection, or an object that runs statements as a connection does
        #: (``execute``, ``executemany`` with ``?`` placeholders).
        self._db: Any = None
        self._changed_nais: set[str] = set()  # users whose sessions this transaction changes (marks)
        #: The schema version found at open (0 for a new database).
        self.opened_version = 0

    # -- what a subclass supplies ---------------------------------------------------

    @property
    def name(self) -> str:
        """The database as error messages name it (never with a password)."""
        raise NotImplementedError

    @contextmanager
    def _writing(self, durable: bool = False) -> Iterator[Any]:
        """One write transaction (joined if one is open); yields the connection.
        ``durable``: committed to disk before it returns, whatever the
        connection's everyday setting (accounting)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _error(self, exc: Exception) -> StoreError:
        """The operator's message for a failed statement."""
        raise NotImplementedError

    def _failed(self, exc: Exception) -> StoreError:
        """:meth:`_error`, remembering ``exc`` as its cause."""
        error = self._error(exc)
        error.cause = exc
        return error

    def _is_unique(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _is_fk(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _violates(self, exc: Exception, table: str, column: str = "") -> bool:
        """Whether ``exc`` is a constraint failure on ``table`` (and ``column``)."""
        raise NotImplementedError

    def _engine_checks(self) -> list[str]:
        """The engine's own consistency checks, as problems."""
        raise NotImplementedError

    def _writable_marks(self) -> None:
        """Before a transaction that changes sessions: StoreError if their
        change could not be marked (store/marks.py rule 4)."""

    def _vpn_id_given(self, conn: Any) -> None:
        """A VPN record was inserted with its id given: keep later ids above it."""

    def session_marks(self) -> SessionMarks | None:
        raise NotImplementedError

    @property
    def schema_version(self) -> int:
        """The schema version the database has now."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- transactions ---------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several store calls into one all-or-nothing write transaction.

        Calls inside join it; an exception rolls everything back. Used by import.
        """
        with self._writing():
            yield

    def _one(self, sql: str, params: Sequence[object]) -> _Row | None:
        try:
            row: _Row | None = self._db.execute(sql, params).fetchone()
        except self._Error as exc:
            raise StoreError(f"database {self.name}: {exc}") from None
        return row

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[_Row]:
        try:
            rows: list[_Row] = self._db.execute(sql, params).fetchall()
        except self._Error as exc:
            raise StoreError(f"database {self.name}: {exc}") from None
        return rows

    # -- secrets --------------------------------------------------------------------

    def _seal(self, secret: Secret, table: str, column: str, row_key: str) -> bytes:
        return self._box.seal(secret.value, secret_context(table, column, row_key))

    def _open(self, blob: bytes, table: str, column: str, row_key: str) -> Secret:
        return Secret(self._box.open(bytes(blob), secret_context(table, column, row_key)))

    def _corrupt(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"database {self.name}: stored {what} is invalid: {exc}")

    # -- change detection -------------------------------------------------------------

    def generation(self) -> int:
        row = self._one(_GENERATION, ())
        if row is None:
            raise StoreError(f"database {self.name}: generation counter is missing")
        return int(row[0])

    # -- users ------------------------------------------------------------------------

    def _user_params(self, user: User) -> tuple[object, ...]:
        return (
            user.nai,
            str(user.home_agent),
            None if user.home_address is None else str(user.home_address),
            user.mn_aaa_spi,
            self._seal(user.mn_aaa_secret, "users", "mn_aaa_secret", user.nai),
            user.mn_ha_spi,
            self._seal(user.mn_ha_key, "users", "mn_ha_key", user.nai),
            int(user.enabled),
        )

    def _user(self, row: _Row) -> User:
        nai, home_agent, home_address, mn_aaa_spi, mn_aaa_secret, mn_ha_spi, mn_ha_key, enabled = row
        try:
            return User(
                nai=nai,
                home_agent=IPv4Address(home_agent),
                mn_aaa_secret=self._open(mn_aaa_secret, "users", "mn_aaa_secret", nai),
                mn_ha_spi=mn_ha_spi,
                mn_ha_key=self._open(mn_ha_key, "users", "mn_ha_key", nai),
                home_address=None if home_address is None else IPv4Address(home_address),
                mn_aaa_spi=mn_aaa_spi,
                enabled=bool(enabled),
            )
        except ValueError as exc:  # ValidationError is a ValueError
            raise self._corrupt(f"user {nai!r}", exc) from None

    def add_user(self, user: User) -> None:
        params = self._user_params(user)
        with self._writing() as conn:
            try:
                conn.execute(_INSERT_USER, params)
            except self._Integrity as exc:
                raise self._integrity(exc, f"user {user.nai!r}") from None

    def get_user(self, nai: str) -> User:
        row = self._one(_GET_USER, (nai,))
        if row is None:
            raise NotFound(f"no user {nai!r}")
        return self._user(row)

    def list_users(self) -> list[User]:
        return [self._user(row) for row in self._all(_LIST_USERS)]

    def update_user(self, user: User) -> None:
        params = self._user_params(user)
        with self._writing() as conn:
            if conn.execute(_UPDATE_USER, (*params, user.nai)).rowcount == 0:
                raise NotFound(f"no user {user.nai!r}")

    def delete_user(self, nai: str) -> None:
        self._writable_marks()
        with self._writing() as conn:
            if conn.execute(_DELETE_USER_SESSIONS, (nai,)).rowcount:
                self._changed_nais.add(nai)
            # vpn_records follow by ON DELETE CASCADE.
            if conn.execute("DELETE FROM users WHERE nai = ?", (nai,)).rowcount == 0:
                raise NotFound(f"no user {nai!r}")

    # -- RADIUS clients -----------------------------------------------------------------

    def _client_params(self, client: Client) -> tuple[object, ...]:
        return (
            client.name,
            str(client.network),
            self._seal(client.secret, "clients", "secret", client.name),
            client.role.value,
            client.domain,
            client.coa_port,
            client.flavour.value,
            int(client.require_message_authenticator),
            client.psk_encoding.value,
            int(client.require_coa_message_authenticator),
        )

    def _client(self, row: _Row) -> Client:
        name, network, secret, role, domain, coa_port, flavour, require_ma, psk_encoding, require_coa_ma = row
        try:
            return Client(
                name=name,
                network=IPv4Network(network),
                secret=self._open(secret, "clients", "secret", name),
                role=ClientRole(role),
                domain=domain,
                coa_port=coa_port,
                flavour=Flavour(flavour),
                require_message_authenticator=bool(require_ma),
                psk_encoding=PskEncoding(psk_encoding),
                require_coa_message_authenticator=bool(require_coa_ma),
            )
        except ValueError as exc:
            raise self._corrupt(f"client {name!r}", exc) from None

    def _client_conflict(self, exc: Exception, client: Client) -> StoreError:
        if self._violates(exc, "clients", "network"):
            return AlreadyExists(f"a client with network {client.network} exists already")
        return self._integrity(exc, f"client {client.name!r}")

    def add_client(self, client: Client) -> None:
        params = self._client_params(client)
        with self._writing() as conn:
            try:
                conn.execute(_INSERT_CLIENT, params)
            except self._Integrity as exc:
                raise self._client_conflict(exc, client) from None

    def get_client(self, name: str) -> Client:
        row = self._one(_GET_CLIENT, (name,))
        if row is None:
            raise NotFound(f"no client {name!r}")
        return self._client(row)

    def list_clients(self) -> list[Client]:
        return [self._client(row) for row in self._all(_LIST_CLIENTS)]

    def update_client(self, client: Client) -> None:
        params = self._client_params(client)
        with self._writing() as conn:
            try:
                updated = conn.execute(_UPDATE_CLIENT, (*params, client.name)).rowcount
            except self._Integrity as exc:
                raise self._client_conflict(exc, client) from None
            if updated == 0:
                raise NotFound(f"no client {client.name!r}")

    def delete_client(self, name: str) -> None:
        with self._writing() as conn:
            if conn.execute("DELETE FROM clients WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no client {name!r}")

    # -- gateways ---------------------------------------------------------------------

    def _gateway_params(self, gateway: Gateway) -> tuple[object, ...]:
        return (
            gateway.name,
            str(gateway.address),
            gateway.mode.value,
            json.dumps([str(prefix) for prefix in gateway.protected_prefixes]),
            self._seal(gateway.gateway_key, "gateways", "gateway_key", gateway.name),
        )

    def _gateway(self, row: _Row) -> Gateway:
        name, address, mode, prefixes, gateway_key = row
        try:
            return Gateway(
                name=name,
                address=IPv4Address(address),
                mode=GatewayMode(mode),
                protected_prefixes=tuple(IPv4Network(prefix) for prefix in json.loads(prefixes)),
                gateway_key=self._open(gateway_key, "gateways", "gateway_key", name),
            )
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise self._corrupt(f"gateway {name!r}", exc) from None

    def add_gateway(self, gateway: Gateway) -> None:
        params = self._gateway_params(gateway)
        with self._writing() as conn:
            try:
                conn.execute(_INSERT_GATEWAY, params)
            except self._Integrity as exc:
                raise self._integrity(exc, f"gateway {gateway.name!r}") from None

    def get_gateway(self, name: str) -> Gateway:
        row = self._one(_GET_GATEWAY, (name,))
        if row is None:
            raise NotFound(f"no gateway {name!r}")
        return self._gateway(row)

    def list_gateways(self) -> list[Gateway]:
        return [self._gateway(row) for row in self._all(_LIST_GATEWAYS)]

    def update_gateway(self, gateway: Gateway) -> None:
        params = self._gateway_params(gateway)
        with self._writing() as conn:
            if conn.execute(_UPDATE_GATEWAY, (*params, gateway.name)).rowcount == 0:
                raise NotFound(f"no gateway {gateway.name!r}")

    def delete_gateway(self, name: str) -> None:
        self._delete_referenced("gateways", "gateway", name)

    # -- security services ------------------------------------------------------------

    @staticmethod
    def _service_params(service: Service) -> tuple[object, ...]:
        return (
            service.name,
            service.key_mode.value,
            service.esp_transform.value,
            service.ike_proposal,
            service.sa_lifetime,
            service.ike_lifetime,
        )

    def _service(self, row: _Row) -> Service:
        name, key_mode, esp_transform, ike_proposal, sa_lifetime, ike_lifetime = row
        try:
            return Service(
                name=name,
                key_mode=KeyMode(key_mode),
                esp_transform=EspTransform(esp_transform),
                ike_proposal=ike_proposal,
                sa_lifetime=sa_lifetime,
                ike_lifetime=ike_lifetime,
            )
        except ValueError as exc:
            raise self._corrupt(f"service {name!r}", exc) from None

    def add_service(self, service: Service) -> None:
        with self._writing() as conn:
            try:
                conn.execute(_INSERT_SERVICE, self._service_params(service))
            except self._Integrity as exc:
                raise self._integrity(exc, f"service {service.name!r}") from None

    def get_service(self, name: str) -> Service:
        row = self._one(_GET_SERVICE, (name,))
        if row is None:
            raise NotFound(f"no service {name!r}")
        return self._service(row)

    def list_services(self) -> list[Service]:
        return [self._service(row) for row in self._all(_LIST_SERVICES)]

    def update_service(self, service: Service) -> None:
        with self._writing() as conn:
            if conn.execute(_UPDATE_SERVICE, (*self._service_params(service), service.name)).rowcount == 0:
                raise NotFound(f"no service {service.name!r}")

    def delete_service(self, name: str) -> None:
        self._delete_referenced("services", "service", name)

    # -- QoS classes ----------------------------------------------------------------------

    def _qos(self, row: _Row) -> QosClass:
        name, dscp, rate_kbps = row
        try:
            return QosClass(name=name, dscp=dscp, rate_kbps=rate_kbps)
        except ValueError as exc:
            raise self._corrupt(f"QoS class {name!r}", exc) from None

    def add_qos(self, qos: QosClass) -> None:
        with self._writing() as conn:
            try:
                conn.execute(_INSERT_QOS, (qos.name, qos.dscp, qos.rate_kbps))
            except self._Integrity as exc:
                raise self._integrity(exc, f"QoS class {qos.name!r}") from None

    def get_qos(self, name: str) -> QosClass:
        row = self._one(_GET_QOS, (name,))
        if row is None:
            raise NotFound(f"no QoS class {name!r}")
        return self._qos(row)

    def list_qos(self) -> list[QosClass]:
        return [self._qos(row) for row in self._all(_LIST_QOS)]

    def update_qos(self, qos: QosClass) -> None:
        with self._writing() as conn:
            if conn.execute(_UPDATE_QOS, (qos.name, qos.dscp, qos.rate_kbps, qos.name)).rowcount == 0:
                raise NotFound(f"no QoS class {qos.name!r}")

    def delete_qos(self, name: str) -> None:
        self._delete_referenced("qos_classes", "qos", name)

    _KIND_NAMES: ClassVar[dict[str, str]] = {"gateway": "gateway", "service": "service", "qos": "QoS class"}

    def _delete_referenced(self, table: str, column: str, name: str) -> None:
        """Delete a record that VPN records may name (ON DELETE RESTRICT)."""
        kind = self._KIND_NAMES[column]
        with self._writing() as conn:
            conn.execute("SAVEPOINT referenced")
            try:
                deleted = conn.execute(f"DELETE FROM {table} WHERE name = ?", (name,)).rowcount
            except self._Integrity as exc:
                conn.execute("ROLLBACK TO referenced")
                if not self._is_fk(exc):
                    raise self._integrity(exc, f"{kind} {name!r}") from None
                users = conn.execute(
                    f"SELECT id, nai FROM vpn_records WHERE {column} = ? ORDER BY id", (name,)
                ).fetchall()
                named = ", ".join(f"{record_id} ({nai})" for record_id, nai in users[:10])
                more = f" and {len(users) - 10} more" if len(users) > 10 else ""
                raise ReferenceError_(
                    f"{kind} {name!r} is used by VPN record(s) {named}{more}; change or delete those first"
                ) from None
            conn.execute("RELEASE referenced")
            if deleted == 0:
                raise NotFound(f"no {kind} {name!r}")

    # -- VPN records -------------------------------------------------------------------

    def _vpn_record(self, row: _Row) -> VpnRecord:
        record_id, nai, correspondent, gateway, service, qos = row
        try:
            return VpnRecord(
                nai=nai,
                correspondent=IPv4Network(correspondent),
                gateway=gateway,
                service=service,
                qos=qos,
                id=record_id,
            )
        except ValueError as exc:
            raise self._corrupt(f"VPN record {record_id}", exc) from None

    def _vpn_problem(self, conn: Any, exc: Exception, record: VpnRecord) -> StoreError:
        if self._is_unique(exc):
            existing = conn.execute(
                "SELECT id FROM vpn_records WHERE nai = ? AND correspondent = ?",
                (record.nai, str(record.correspondent)),
            ).fetchone()
            if existing is not None and existing[0] != record.id:
                return AlreadyExists(
                    f"user {record.nai!r} has a VPN record for {record.correspondent} already (id {existing[0]})"
                )
            return AlreadyExists(f"VPN record {record.id} exists already")
        if self._is_fk(exc):
            # SQLite does not say which reference failed; find it (error path only).
            for kind, table, key, value in (
                ("user", "users", "nai", record.nai),
                ("gateway", "gateways", "name", record.gateway),
                ("service", "services", "name", record.service),
                ("QoS class", "qos_classes", "name", record.qos),
            ):
                if (
                    value is not None
                    and conn.execute(f"SELECT 1 FROM {table} WHERE {key} = ?", (value,)).fetchone() is None
                ):
                    return ReferenceError_(f"the VPN record names {kind} {value!r}, which does not exist")
            return ReferenceError_(f"the VPN record names a record that does not exist: {exc}")
        return StoreError(f"database {self.name}: {exc}")

    def add_vpn_record(self, record: VpnRecord) -> VpnRecord:
        values = (record.nai, str(record.correspondent), record.gateway, record.service, record.qos)
        with self._writing() as conn:
            conn.execute("SAVEPOINT vpn_record")
            try:
                if record.id is None:
                    (record_id,) = conn.execute(_INSERT_VPN, values).fetchone()
                else:
                    (record_id,) = conn.execute(_INSERT_VPN_WITH_ID, (record.id, *values)).fetchone()
                    self._vpn_id_given(conn)
            except self._Integrity as exc:
                conn.execute("ROLLBACK TO vpn_record")
                raise self._vpn_problem(conn, exc, record) from None
            conn.execute("RELEASE vpn_record")
        return dataclasses.replace(record, id=int(record_id))

    def get_vpn_record(self, record_id: int) -> VpnRecord:
        row = self._one(_GET_VPN, (record_id,))
        if row is None:
            raise NotFound(f"no VPN record {record_id}")
        return self._vpn_record(row)

    def list_vpn_records(self, nai: str | None = None) -> list[VpnRecord]:
        rows = self._all(_LIST_VPN) if nai is None else self._all(_LIST_VPN_OF_USER, (nai,))
        return [self._vpn_record(row) for row in rows]

    def update_vpn_record(self, record: VpnRecord) -> None:
        if record.id is None:
            raise NotFound("a VPN record without an id cannot be updated")
        params = (record.nai, str(record.correspondent), record.gateway, record.service, record.qos, record.id)
        with self._writing() as conn:
            conn.execute("SAVEPOINT vpn_record")
            try:
                updated = conn.execute(_UPDATE_VPN, params).rowcount
            except self._Integrity as exc:
                conn.execute("ROLLBACK TO vpn_record")
                raise self._vpn_problem(conn, exc, record) from None
            conn.execute("RELEASE vpn_record")
            if updated == 0:
                raise NotFound(f"no VPN record {record.id}")

    def delete_vpn_record(self, record_id: int) -> None:
        with self._writing() as conn:
            if conn.execute("DELETE FROM vpn_records WHERE id = ?", (record_id,)).rowcount == 0:
                raise NotFound(f"no VPN record {record_id}")

    # -- sessions ------------------------------------------------------------------------

    def _sessions(self, rows: list[_Row]) -> list[Session]:
        """Fold joined (session, SPI) rows into sessions, keeping row order."""
        sessions: list[Session] = []
        current: _Row | None = None
        spis: list[SpiAllocation] = []
        for row in rows:
            if current is not None and row[0] != current[0]:
                sessions.append(self._session(current, spis))
                spis = []
            current = row
            if row[_SPI_AT] is not None:
                node, spi, path = row[_SPI_AT : _SPI_AT + 3]
                spis.append(SpiAllocation(node=IPv4Address(node), spi=spi, path=path))
        if current is not None:
            sessions.append(self._session(current, spis))
        return sessions

    def _session(self, row: _Row, spis: list[SpiAllocation]) -> Session:
        session_id, nai, root_key, epoch, home_address, home_agent, care_of_address, created, expires, domain = row[:10]
        stationary_epoch, keyed_at, epoch_started, fa_identification, ha_identification = row[10:15]
        try:
            return Session(
                session_id=session_id,
                nai=nai,
                session_root_key=self._open(root_key, "sessions", "session_root_key", session_id),
                epoch=epoch,
                home_address=IPv4Address(home_address),
                home_agent=IPv4Address(home_agent),
                care_of_address=IPv4Address(care_of_address),
                created=created,
                expires=expires,
                spis=tuple(spis),
                foreign_domain=domain,
                stationary_epoch=stationary_epoch,
                keyed_at=keyed_at,
                epoch_started=epoch_started,
                fa_identification=bytes(fa_identification or b""),
                ha_identification=bytes(ha_identification or b""),
            )
        except ValueError as exc:
            raise self._corrupt(f"session {session_id!r}", exc) from None

    def _session_params(self, session: Session) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
        params: tuple[object, ...] = (
            session.session_id,
            session.nai,
            self._seal(session.session_root_key, "sessions", "session_root_key", session.session_id),
            session.epoch,
            text(session.home_address),
            text(session.home_agent),
            text(session.care_of_address),
            session.created,
            session.expires,
            session.foreign_domain,
            session.stationary_epoch,
            session.keyed_at,
            session.epoch_started,
            session.fa_identification or None,
            session.ha_identification or None,
        )
        spis: list[tuple[object, ...]] = [
            (session.session_id, position, text(allocation.node), allocation.spi, allocation.path)
            for position, allocation in enumerate(session.spis)
        ]
        return params, spis

    def _spi_conflict(
        self, spis: Iterable[tuple[object, ...]], freed_sessions: set[str], freed_nais: set[str]
    ) -> SpiConflict:
        """Name the SPI that collided (looked up after the rollback), ignoring
        SPIs of sessions the failed transaction was replacing."""
        for _sid, _pos, node, spi, _path in spis:
            holder = self._one(_SPI_HOLDER, (node, spi))
            if holder is not None and holder[0] not in freed_sessions and holder[1] not in freed_nais:
                assert isinstance(spi, int)
                return SpiConflict(f"SPI {spi} (0x{spi:08x}) is already allocated on node {node}")
        return SpiConflict("two sessions of one batch drew the same SPI on one node")

    def put_session(self, session: Session, replaces: Iterable[str] = ()) -> None:
        """Store ``session`` (replacing one with the same id) and its SPIs, after
        deleting the sessions in ``replaces``; all in one transaction."""
        replaces = list(replaces)
        # Seal before taking the write lock: keep the lock as short as possible.
        params, spis = self._session_params(session)
        self._writable_marks()
        try:
            with self._writing() as conn:
                for old in replaces:
                    self._changed_nais.update(row[0] for row in conn.execute(_DELETE_SESSION, (old,)))
                # "put" replaces a session of the same id (e.g. after a handoff),
                # whose own SPIs must not count as conflicts.
                conn.execute(_DELETE_SESSION, (session.session_id,)).fetchall()
                self._changed_nais.add(session.nai)
                conn.execute(_INSERT_SESSION, params)
                conn.executemany(_INSERT_SPI, spis)
        except StoreError as exc:
            if self._violates(exc, "session_spis"):
                raise self._spi_conflict(spis, {*replaces, session.session_id}, set()) from None
            raise

    def put_sessions(
        self,
        sessions: Sequence[Session],
        replace_user_sessions: bool = False,
        renewals: Sequence[tuple[str, float]] = (),
    ) -> list[int]:
        """Store several new sessions in one transaction (group commit), and
        extend the lifetime of ``renewals`` (session id, new expiry).

        With ``replace_user_sessions`` each session first deletes the other
        sessions of its NAI (a new registration replaces the old one), in
        order, so the last session of a NAI in the batch wins. Returns, per
        session, how many sessions it replaced. On an SPI collision nothing is
        stored and SpiConflict is raised."""
        prepared = [self._session_params(session) for session in sessions]
        replaced: list[int] = []
        if sessions:
            self._writable_marks()
        try:
            with self._writing() as conn:
                if renewals:
                    conn.executemany(_RENEW_SESSION, [(expires, sid) for sid, expires in renewals])
                for session, (params, spis) in zip(sessions, prepared, strict=True):
                    if replace_user_sessions:
                        replaced.append(conn.execute(_DELETE_USER_SESSIONS, (session.nai,)).rowcount)
                    else:
                        replaced.append(0)
                    # New sessions: a same-id row cannot exist (128-bit random
                    # ids), and the primary key would refuse one anyway.
                    conn.execute(_INSERT_SESSION, params)
                    self._changed_nais.add(session.nai)
                    conn.executemany(_INSERT_SPI, spis)
        except StoreError as exc:
            if self._violates(exc, "session_spis"):
                raise self._spi_conflict(
                    (spi for _params, spis in prepared for spi in spis),
                    {session.session_id for session in sessions},
                    {session.nai for session in sessions} if replace_user_sessions else set(),
                ) from None
            raise
        return replaced

    def apply_session_writes(self, writes: Sequence[SessionWrite]) -> list[WriteOutcome]:
        """Carry out the home AAA's session writes in one transaction, each in
        its own savepoint (module rules); one outcome per write, in order.
        Raises StoreError (:class:`StoreBusy` for a held lock) if the
        transaction itself fails: then nothing was written."""
        # Seal before taking the write lock: keep the lock as short as possible.
        prepared = [self._session_params(w.session) if w.session is not None else None for w in writes]
        if any(_marks(w) for w in writes):
            self._writable_marks()
        for attempt in (1, 2):
            outcomes: list[WriteOutcome] = []
            try:
                with self._writing() as conn:
                    for write, params in zip(writes, prepared, strict=True):
                        outcomes.append(self._apply_write(conn, write, params))
            except Reopened:
                if attempt == 2:
                    raise
                continue  # the connection was read-only and is not any more: once more
            return outcomes
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply_write(
        self,
        conn: Any,
        write: SessionWrite,
        params: tuple[tuple[object, ...], list[tuple[object, ...]]] | None,
    ) -> WriteOutcome:
        kind = write.kind
        if kind is WriteKind.RENEW and write.fa_identification is None:  # marks nothing (store/marks.py rule 2)
            done = conn.execute(_RENEW_AT_EPOCH, (write.expires, write.session_id, write.expected_epoch)).rowcount
            return WriteOutcome.STORED if done else WriteOutcome.CONFLICT
        if kind in (WriteKind.RENEW, WriteKind.IDENTIFY):
            # New identification attributes: marked, so that no worker's copy
            # keeps the old ones (they name the session in Disconnect-Requests).
            given = [v or None for v in (write.fa_identification, write.ha_identification) if v is not None]
            if kind is WriteKind.RENEW:
                sql, values = _RENEW_IDENTIFIED_AT_EPOCH, [write.expires, *given]
            else:
                sql = _IDENTIFY_AT_EPOCH[(write.fa_identification is not None, write.ha_identification is not None)]
                values = [*given]
            changed = conn.execute(sql, (*values, write.session_id, write.expected_epoch)).fetchall()
            self._changed_nais.update(row[0] for row in changed)
            return WriteOutcome.STORED if changed else WriteOutcome.CONFLICT
        if kind is WriteKind.DELETE:
            if write.expected_epoch is None:
                gone = conn.execute(_DELETE_SESSION, (write.session_id,)).fetchall()
            else:
                gone = conn.execute(_DELETE_AT_EPOCH, (write.session_id, write.expected_epoch)).fetchall()
            self._changed_nais.update(row[0] for row in gone)
            return WriteOutcome.STORED if gone else WriteOutcome.CONFLICT
        assert params is not None and write.session is not None
        row, spis = params
        conn.execute("SAVEPOINT session_write")
        try:
            if kind is WriteKind.CREATE:
                conn.execute(_DELETE_USER_SESSIONS, (write.session.nai,))
            elif not conn.execute(_DELETE_AT_EPOCH, (write.session_id, write.expected_epoch)).fetchall():
                conn.execute("RELEASE session_write")
                return WriteOutcome.CONFLICT
            conn.execute(_INSERT_SESSION, row)
            conn.executemany(_INSERT_SPI, spis)
        except self._Integrity as exc:
            conn.execute("ROLLBACK TO session_write")
            conn.execute("RELEASE session_write")
            if self._violates(exc, "session_spis"):
                return WriteOutcome.SPI_TAKEN
            return WriteOutcome.CONFLICT  # the same session id twice: it changed meanwhile
        conn.execute("RELEASE session_write")
        self._changed_nais.add(write.session.nai)
        return WriteOutcome.STORED

    def get_session(self, session_id: str) -> Session:
        sessions = self._sessions(self._all(_GET_SESSION, (session_id,)))
        if not sessions:
            raise NotFound(f"no session {session_id!r}")
        return sessions[0]

    def find_sessions(self, nai: str) -> list[Session]:
        return self._sessions(self._all(_FIND_SESSIONS, (nai,)))

    def session_heads(self, nai: str) -> list[SessionHead]:
        """The user's sessions without their keys and SPIs: one light query."""
        return [
            SessionHead(sid, IPv4Address(ha), IPv4Address(coa), epoch, created, expires)
            for sid, ha, coa, epoch, created, expires in self._all(_SESSION_HEADS, (nai,))
        ]

    def list_sessions(self) -> list[Session]:
        return self._sessions(self._all(_LIST_SESSIONS))

    def delete_session(self, session_id: str) -> None:
        self._writable_marks()
        with self._writing() as conn:
            gone = conn.execute(_DELETE_SESSION, (session_id,)).fetchall()
            if not gone:
                raise NotFound(f"no session {session_id!r}")
            self._changed_nais.update(row[0] for row in gone)

    def expire_sessions(self, now: float) -> int:
        with self._writing() as conn:
            return int(conn.execute("DELETE FROM sessions WHERE expires < ?", (now,)).rowcount)

    def count_live_sessions(self, now: float) -> int:
        return int(self._all("SELECT count(*) FROM sessions WHERE expires >= ?", (now,))[0][0])

    def spis_in_use(self, node: IPv4Address) -> Sequence[int]:
        return [int(row[0]) for row in self._all(_SPIS_IN_USE, (str(node),))]

    # -- accounting ---------------------------------------------------------------------

    def record_accounting(self, entries: Sequence[AccountingEntry]) -> None:
        """Merge the requests into their records in one durable transaction
        (the Store protocol). Accounting-On and -Off close every open record
        of their NAS that started before them."""
        rows: list[tuple[object, ...]] = []
        closes: list[tuple[object, ...]] = []
        kept: dict[str, dict[str, Any]] = {}  # unique id -> the attributes so far (merged below)
        for entry in entries:
            request = entry.request
            at = request.event_time(entry.arrived)
            if request.status in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
                closes.append((at, at, "NAS-Reboot", request.nas, at))
                continue
            stop = request.status is AcctStatus.STOP
            rows.append(
                (
                    request.unique_id,
                    request.acct_session_id,
                    request.user_name,
                    entry.client,
                    request.nas,
                    request.session_id,
                    class_text(request.class_value),
                    at if request.status is AcctStatus.START else None,
                    at,
                    at if stop else None,
                    request.session_time,
                    request.input_octets,
                    request.output_octets,
                    request.input_packets,
                    request.output_packets,
                    request.terminate_cause if stop else "",
                    request.attributes,
                )
            )
        with self._writing(durable=True) as conn:
            if rows:
                # Attributes accumulate over the record's requests (a Stop need
                # not repeat what an Interim-Update said): merged here, in the
                # transaction, since the two engines' JSON functions differ.
                ids = sorted({str(row[0]) for row in rows})
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ", ".join("?" * len(chunk))
                    for unique_id, text in conn.execute(
                        f"SELECT unique_id, attributes FROM accounting WHERE unique_id IN ({marks})", chunk
                    ).fetchall():
                        try:
                            old = json.loads(text)
                        except ValueError:
                            old = {}
                        kept[unique_id] = old if isinstance(old, dict) else {}
                merged: list[tuple[object, ...]] = []
                for row in rows:
                    attributes = kept.setdefault(str(row[0]), {})
                    attributes.update(cast(dict[str, Any], row[-1]))
                    merged.append((*row[:-1], json.dumps(attributes, sort_keys=True, separators=(",", ":"))))
                conn.executemany(_RECORD_ACCOUNTING, merged)
            for close in closes:
                conn.execute(_CLOSE_NAS_ACCOUNTING, close)

    def list_accounting(
        self,
        nai: str | None = None,
        session_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[AccountingRecord]:
        conditions: list[str] = []
        params: list[object] = []
        for column, value, test in (
            ("nai", nai, "="),
            ("session_id", session_id, "="),
            ("updated", since, ">="),
            ("updated", until, "<"),
        ):
            if value is not None:
                conditions.append(f"{column} {test} ?")
                params.append(value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        bounded = " LIMIT ?" if limit is not None else ""
        if limit is not None:
            params.append(limit)
        sql = f"SELECT {_ACCOUNTING_COLUMNS} FROM accounting{where} ORDER BY updated, unique_id{bounded}"
        return [self._accounting(row) for row in self._all(sql, params)]

    def get_accounting(self, unique_id: str) -> AccountingRecord:
        row = self._one(_GET_ACCOUNTING, (unique_id,))
        if row is None:
            raise NotFound(f"no accounting record {unique_id!r}")
        return self._accounting(row)

    def _accounting(self, row: _Row) -> AccountingRecord:
        (unique_id, acct_session_id, nai, client, nas, session_id, class_value, started, updated, stopped) = row[:10]
        session_time, input_octets, output_octets, input_packets, output_packets, cause, attributes, updates = row[10:]
        try:
            kept = json.loads(attributes)
        except ValueError as exc:
            raise self._corrupt(f"accounting record {unique_id!r}", exc) from None
        return AccountingRecord(
            unique_id=unique_id,
            acct_session_id=acct_session_id,
            nai=nai,
            client=client,
            nas=nas,
            session_id=session_id,
            class_value=class_value,
            updated=updated,
            started=started,
            stopped=stopped,
            session_time=session_time,
            input_octets=input_octets,
            output_octets=output_octets,
            input_packets=input_packets,
            output_packets=output_packets,
            terminate_cause=cause,
            attributes=kept if isinstance(kept, dict) else {},
            updates=updates,
        )

    # -- self-service and audit (docs/api.md) ------------------------------------------------

    def set_web_credential(self, nai: str, verifier: str, changed: float) -> None:
        """Store the user's web-credential verifier (aaa_vpn/service/webauth.py);
        NotFound without such a user."""
        with self._writing() as conn:
            try:
                conn.execute(
                    "INSERT INTO web_credentials (nai, verifier, changed) VALUES (?, ?, ?)"
                    " ON CONFLICT (nai) DO UPDATE SET verifier = excluded.verifier, changed = excluded.changed",
                    (nai, verifier, changed),
                )
            except self._Integrity:
                raise NotFound(f"no user {nai!r}") from None

    def get_web_credential(self, nai: str) -> str | None:
        row = self._one("SELECT verifier FROM web_credentials WHERE nai = ?", (nai,))
        return None if row is None else str(row[0])

    def delete_web_credential(self, nai: str) -> bool:
        with self._writing() as conn:
            return bool(conn.execute("DELETE FROM web_credentials WHERE nai = ?", (nai,)).rowcount)

    def set_self_service(self, nai: str, allowed: Mapping[str, Sequence[str]]) -> None:
        """What the user may choose on their own page: names per kind
        (``gateway``, ``service``, ``qos``); replaces what was allowed."""
        with self._writing() as conn:
            if conn.execute("SELECT 1 FROM users WHERE nai = ?", (nai,)).fetchone() is None:
                raise NotFound(f"no user {nai!r}")
            conn.execute("DELETE FROM self_service WHERE nai = ?", (nai,))
            rows = [(nai, kind, name) for kind, names in allowed.items() for name in sorted(set(names))]
            if rows:
                conn.executemany("INSERT INTO self_service (nai, kind, name) VALUES (?, ?, ?)", rows)

    def get_self_service(self, nai: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"gateway": [], "service": [], "qos": []}
        for kind, name in self._all("SELECT kind, name FROM self_service WHERE nai = ? ORDER BY kind, name", (nai,)):
            out[str(kind)].append(str(name))
        return out

    def append_audit(self, at: float, actor: str, action: str, target: str, detail: str) -> None:
        """Append one entry to the audit log (never a secret in it: the caller's rule)."""
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                (at, actor, action, target, detail),
            )

    def list_audit(self, since: float | None = None, limit: int = 1000) -> list[tuple[int, float, str, str, str, str]]:
        """Audit entries (id, at, actor, action, target, detail), oldest first."""
        sql = "SELECT id, at, actor, action, target, detail FROM audit_log"
        params: list[object] = []
        if since is not None:
            sql += " WHERE at >= ?"
            params.append(since)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [(int(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5])) for r in self._all(sql, params)]

    # -- maintenance ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows per table, for ``aaa-vpn db check``."""
        tables = [table for table in TABLES if table not in ("meta", "generation")]
        return {table: int(self._all(f"SELECT count(*) FROM {table}")[0][0]) for table in tables}

    def check(self) -> list[str]:
        """Look for damage: the engine's own checks, and every secret opened
        under the key file. Returns the problems found."""
        problems = self._engine_checks()
        for what, lister in (
            ("users", self.list_users),
            ("clients", self.list_clients),
            ("gateways", self.list_gateways),
            ("services", self.list_services),
            ("QoS classes", self.list_qos),
            ("VPN records", self.list_vpn_records),
            ("sessions", self.list_sessions),
        ):
            try:
                lister()
            except StoreError as exc:
                problems.append(f"{what}: {exc}")
        return problems

    def _integrity(self, exc: Exception, what: str) -> StoreError:
        if self._is_unique(exc):
            return AlreadyExists(f"{what} exists already")
        if self._is_fk(exc):
            return ReferenceError_(f"{what} names a record that does not exist")
        return StoreError(f"{what}: {exc}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["Reopened", "SqlStore", "class_text"]
