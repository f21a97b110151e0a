"""The VPN database on PostgreSQL (psycopg 3): for several AAA nodes sharing one
database; every query is :class:`~aaa_vpn.store.sql.SqlStore`'s.

Rules:

- One connection per store object, in autocommit mode; every write is an
  explicit ``BEGIN`` ... ``COMMIT`` (READ COMMITTED). Concurrent changes of
  one session are safe because every session write is conditional on the
  epoch the writer read (``... WHERE session_id = ? AND epoch = ?``): the
  second of two writers updates or deletes no row and is told CONFLICT; it
  never overwrites (model.SessionWrite). Provisioning is last-writer-wins per
  row, as on SQLite.
- ``lock_timeout`` bounds how long a write waits for a row or table lock
  (``busy_timeout_ms``, as SQLite's busy timeout): a write that cannot get it
  is a :class:`~aaa_vpn.store.base.StoreBusy` error.
- The driver keeps the constant statements prepared (psycopg prepares a
  statement after its fifth execution); ``executemany`` of more than a
  session's few rows is pipelined.
- The schema (aaa_vpn/store/schema.py) lives in the database the URL names;
  its version and the mark that it is aaa_vpn's are rows of ``meta``.
  Migrations take a transaction-level advisory lock, so that two nodes
  starting together apply each step once.
- Every committed change of a user's sessions (created, replaced, deleted) is
  announced with ``NOTIFY aaa_vpn_sessions, '<nai>'`` inside its transaction
  (delivered on commit). A node's :class:`SessionListener` marks each in the
  node's session marks (aaa_vpn/store/marks.py): that is how the workers of
  every node learn of changes made elsewhere. A store without a listener
  has no marks, and its home AAA trusts no copy of a session.
- A connection that breaks is opened again by the next call; the call that
  found it broken fails (StoreError), since a commit in flight may or may
  not have happened and only the caller can decide again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
from psycopg import conninfo, pq

from aaa_vpn.store.base import StoreBusy, StoreError
from aaa_vpn.store.crypto import SecretBox
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.store.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, TABLES, Dialect, render
from aaa_vpn.store.sql import SqlStore

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_MS = 5000
CONNECT_TIMEOUT = 10
#: The channel session changes are announced on.
SESSIONS_CHANNEL = "aaa_vpn_sessions"
_APPLICATION = b"aaa_vpn"
_TABLES = TABLES


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, port = str(parts.get("host") or ""), str(parts.get("port") or "")
    user = f"{parts['user']}@" if parts.get("user") else ""
    database = str(parts.get("dbname") or "")
    if host.startswith("/"):  # a Unix socket directory
        return f"postgresql://{user}/{database}?host={host}" + (f"&port={port}" if port else "")
    return f"postgresql://{user}{host}{':' + port if port else ''}/{database}"


class _Statements:
    """Runs statements written with ``?`` placeholders on a psycopg connection."""

    __slots__ = ("_conn", "_translated")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._translated: dict[str, str] = {}

    def _q(self, sql: str) -> str:
        query = self._translated.get(sql)
        if query is None:
            query = self._translated[sql] = sql.replace("%", "%%").replace("?", "%s")
        return query

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(self._q(sql), params)

    def executemany(self, sql: str, rows: Any) -> None:
        rows = list(rows)
        with self._conn.cursor() as cursor:
            if len(rows) <= _ONE_BY_ONE:
                # A session's few SPIs: one by one, so an expected refusal (an
                # SPI collision, retried with others) ends no pipeline, which
                # psycopg would log as an error at every collision.
                for row in rows:
                    cursor.execute(self._q(sql), row)
            else:
                cursor.executemany(self._q(sql), rows)


#: ``executemany`` runs up to this many rows as single statements, more in a pipeline.
_ONE_BY_ONE = 16


class PostgresStore(SqlStore):
    """:class:`~aaa_vpn.store.base.Store` on the PostgreSQL database at ``url``.

    ``create``: lay out the schema in an empty database (``aaa-vpn db
    init``); otherwise a database without it is an error. ``migrate``: apply
    missing schema steps at open (the default). ``marks``: this node's session
    marks, kept by a :class:`SessionListener` (the server's); None for a store
    that trusts no cached session (the CLI)."""

    dialect = Dialect.POSTGRES
    _Error = psycopg.Error
    _Integrity = psycopg.errors.IntegrityError

    def __init__(
        self,
        url: str,
        box: SecretBox,
        *,
        create: bool = False,
        migrate: bool = True,
        busy_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
        marks: SessionMarks | None = None,
    ) -> None:
        super().__init__(box)
        self.url = url
        self._name = redacted(url)
        self._lock_timeout_ms = busy_timeout_ms
        self._marks = marks
        #: The schema version found at open (0 for a new database).
        self.opened_version = 0
        self._conn = self._connect()
        try:
            self._setup(create, migrate)
        except psycopg.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open database {self._name}: {exc}") from None
        except BaseException:
            self._conn.close()
            raise

    # -- opening ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="aaa-vpn",
                options=f"-c lock_timeout={int(self._lock_timeout_ms)}",
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open database {self._name}: {_first_line(exc)}") from None
        self._db = _Statements(conn)
        return conn

    def _ensure_connected(self) -> None:
        if self._conn.broken or self._conn.closed:
            self._conn = self._connect()

    def _version(self) -> int:
        return _schema_version(self._db, self._name)

    def _setup(self, create: bool, migrate: bool) -> None:
        version = self._version()
        self.opened_version = version
        if version == 0 and not create:
            raise StoreError(f"database {self._name} has no aaa_vpn schema (create it with 'aaa-vpn db init')")
        self._refuse_newer(version)
        if version < SCHEMA_VERSION:
            if not migrate and version:
                raise StoreError(
                    f"database {self._name} has schema version {version}, this aaa_vpn needs"
                    f" {SCHEMA_VERSION}: run 'aaa-vpn db migrate'"
                )
            self._migrate()
        row = self._db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        if row is None:
            raise StoreError(f"database {self._name} has no key check value; it is damaged")
        if not self._box.matches(bytes(row[0])):
            raise StoreError(f"key file does not match this database ({self._name})")

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self._name} has schema version {version}, newer than this aaa_vpn"
                f" knows ({SCHEMA_VERSION}); upgrade aaa_vpn"
            )

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            # One node at a time; read again under the lock: another may have migrated.
            db.execute("SELECT pg_advisory_xact_lock(?)", (APPLICATION_ID,))
            current = self._version()
            self._refuse_newer(current)
            for step in MIGRATIONS[current:]:
                for statement in render(step, Dialect.POSTGRES):
                    db.execute(statement)
            if current == 0:
                db.execute("INSERT INTO meta (name, value) VALUES ('application', ?)", (_APPLICATION,))
                db.execute("INSERT INTO meta (name, value) VALUES ('key_check', ?)", (self._box.key_check,))
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION).encode(),),
            )
            db.execute("COMMIT")
        except BaseException:
            if self._in_transaction():
                db.execute("ROLLBACK")
            raise
        if current < SCHEMA_VERSION:
            log.info("database %s: schema migrated from version %d to %d", self._name, current, SCHEMA_VERSION)

    @property
    def schema_version(self) -> int:
        return self._version()

    # -- transactions ---------------------------------------------------------------

    def _in_transaction(self) -> bool:
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    @contextmanager
    def _writing(self, durable: bool = False) -> Iterator[Any]:
        db = self._db
        if self._in_transaction():
            # Inside transaction(): the outermost block commits or rolls back.
            yield db
            return
        self._changed_nais.clear()
        try:
            self._ensure_connected()
            db = self._db
            db.execute("BEGIN")
            if durable:
                db.execute("SET LOCAL synchronous_commit = on")  # whatever the server's default
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        try:
            yield db
            for nai in sorted(self._changed_nais):  # rule: announced on commit
                db.execute("SELECT pg_notify(?, ?)", (SESSIONS_CHANNEL, nai))
        except psycopg.Error as exc:
            self._rollback()
            raise self._failed(exc) from None
        except BaseException:
            self._rollback()
            raise
        try:
            db.execute("COMMIT")
        except psycopg.Error as exc:
            self._rollback()
            raise self._failed(exc) from None
        finally:
            self._changed_nais.clear()

    def _rollback(self) -> None:
        self._changed_nais.clear()
        try:
            if not self._conn.broken and self._in_transaction():
                self._db.execute("ROLLBACK")
        except psycopg.Error:
            pass  # broken meanwhile: the next call opens a new connection

    def _error(self, exc: Exception) -> StoreError:
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return StoreBusy(
                f"database {self._name}: a lock was held by another writer for more than"
                f" {self._lock_timeout_ms} ms: {_first_line(exc)}"
            )
        if self._conn.broken:
            return StoreError(f"database {self._name}: the connection broke ({_first_line(exc)}); it is opened again")
        return StoreError(f"database {self._name}: {_first_line(exc)}")

    def _one(self, sql: str, params: Any) -> Any:
        self._ensure_connected()
        return super()._one(sql, params)

    def _all(self, sql: str, params: Any = ()) -> Any:
        self._ensure_connected()
        return super()._all(sql, params)

    # -- the engine's ways ----------------------------------------------------------

    def _is_unique(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _is_fk(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.errors.ForeignKeyViolation)

    def _violates(self, exc: Exception, table: str, column: str = "") -> bool:
        if isinstance(exc, StoreError) and exc.cause is not None:
            return self._violates(exc.cause, table, column)  # type: ignore[arg-type]
        diag = getattr(exc, "diag", None)
        if diag is None or diag.table_name != table:
            return False
        return not column or column in (diag.constraint_name or "") or column in (diag.message_detail or "")

    def _engine_checks(self) -> list[str]:
        return []  # PostgreSQL checks every constraint as it writes

    def _vpn_id_given(self, conn: Any) -> None:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('vpn_records', 'id'), GREATEST((SELECT max(id) FROM vpn_records), 1))"
        )

    def session_marks(self) -> SessionMarks | None:
        return self._marks

    def close(self) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self._name!r})"


def _schema_version(db: _Statements, name: str) -> int:
    """The schema version of the database (0: none); StoreError if it holds
    tables named as aaa_vpn's that are not aaa_vpn's."""
    if db.execute("SELECT to_regclass('meta') IS NULL").fetchone() == (True,):
        (others,) = db.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
            " AND table_name = ANY(?)",
            (list(_TABLES),),
        ).fetchone() or (0,)
        if others:
            raise StoreError(f"{name} holds tables named like aaa_vpn's but is not an aaa_vpn database")
        return 0
    rows = dict(db.execute("SELECT name, value FROM meta WHERE name IN ('application', 'schema_version')"))
    if bytes(rows.get("application", b"")) != _APPLICATION:
        raise StoreError(f"{name} is not an aaa_vpn database")
    return int(bytes(rows.get("schema_version", b"0")))


def _plain(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="aaa-vpn")
    except psycopg.Error as exc:
        raise StoreError(f"cannot open database {redacted(url)}: {_first_line(exc)}") from None


def existing_schema(url: str) -> int:
    """The aaa_vpn schema version in the database at ``url`` (0: none), no key needed."""
    with _plain(url) as conn:
        return _schema_version(_Statements(conn), redacted(url))


def drop_schema(url: str) -> None:
    """Remove every aaa_vpn table and function (``aaa-vpn db init --force``)."""
    with _plain(url) as conn:
        _schema_version(_Statements(conn), redacted(url))  # refuses a database that is not ours
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(reversed(_TABLES))} CASCADE")
            conn.execute("DROP FUNCTION IF EXISTS aaa_vpn_bump_generation()")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class SessionListener:
    """Keeps a node's session marks (aaa_vpn/store/marks.py) from the
    announcements of every node's writers (module rules), on a connection of
    its own; :meth:`run` is the whole life of the process that does it (the
    server forks one beside its workers; no threads).

    While it is not listening -- before the first connection, and from the
    moment one breaks until the next is up -- the marks say they cannot be
    trusted (:meth:`SessionMarks.set_available`), so no worker decides from
    a copy; each time it (re)connects it marks every user, since it may have
    missed announcements."""

    def __init__(self, url: str, marks: SessionMarks, retry: float = 1.0) -> None:
        self.url = url
        self.marks = marks
        self.retry = retry
        self.notifications = 0
        marks.set_available(False)

    def run(self, stopping: Callable[[], bool]) -> None:
        """Listen until ``stopping()`` says so (checked twice a second)."""
        name = redacted(self.url)
        while not stopping():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                    conn.execute(f"LISTEN {SESSIONS_CHANNEL}")
                    self.marks.mark_all()
                    self.marks.set_available(True)
                    log.info("listening for session changes", extra={"database": name})
                    while not stopping():
                        for notify in conn.notifies(timeout=0.5, stop_after=256):
                            self.marks.mark(notify.payload)
                            self.notifications += 1
            except psycopg.Error as exc:
                self.marks.set_available(False)
                self.marks.mark_all()
                log.warning("session listener lost the database; retrying", extra={"database": name, "error": str(exc)})
                deadline = time.monotonic() + self.retry
                while time.monotonic() < deadline and not stopping():
                    time.sleep(0.05)
        self.marks.set_available(False)


__all__ = [
    "DEFAULT_LOCK_TIMEOUT_MS",
    "SESSIONS_CHANNEL",
    "PostgresStore",
    "SessionListener",
    "is_postgres_url",
    "redacted",
]


if TYPE_CHECKING:
    from aaa_vpn.store.base import Store

    def _conforms(store: PostgresStore) -> Store:
        return store
