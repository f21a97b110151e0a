"""The VPN database on SQLite (stdlib :mod:`sqlite3`): the default
:class:`~aaa_vpn.store.base.Store`; every query is :class:`~aaa_vpn.store.sql.SqlStore`'s.

Rules:

- One store object per thread; each server worker process opens its own. The
  connection runs in autocommit mode (``isolation_level=None``) and every write
  is an explicit ``BEGIN IMMEDIATE`` transaction: taking the write lock up front
  means two processes never deadlock upgrading read locks, and the busy timeout
  queues writers instead of failing them -- 5 s by default for the CLI, a short
  bound (``--db-busy-timeout``) in a server, whose event loop must not wait on
  a writer that holds the lock for long.
- A connection that SQLite opened read-only (``mode=rw`` falls back to
  read-only, silently, when the file is write-protected) is opened again the
  first time a write finds it so: a database that becomes writable is written
  from then on, without a restart.
- WAL journal, ``synchronous=NORMAL`` (durable at checkpoints, never corrupt),
  ``foreign_keys=ON`` on every connection (SQLite's default is off).
- Schema changes are an ordered list of steps (:data:`MIGRATIONS`); the schema
  version is ``PRAGMA user_version``. Missing steps are applied in one
  transaction at open; a database newer than the code is refused.
- Secret columns hold :class:`~aaa_vpn.store.crypto.SecretBox` blobs bound to
  their table, column and row key; plaintext secrets never reach the file.
- ``generation()`` reads a one-row counter that SQL triggers bump on every
  change to provisioning tables (not sessions), so the server can poll it
  cheaply and drop its caches when it moves.
- Hot-path reads are single constant SQL statements (sqlite3 caches the
  prepared statements) with positional row unpacking; no ORM.
- Sessions deliberately have no foreign key to users: a foreign AAA may keep
  sessions of visitors it has no user record for. ``delete_user`` deletes the
  user's sessions explicitly instead.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from aaa_vpn.store.base import StoreBusy, StoreError
from aaa_vpn.store.crypto import SecretBox
from aaa_vpn.store.marks import MarksError, SessionMarks
from aaa_vpn.store.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Dialect, render
from aaa_vpn.store.sql import Reopened, SqlStore

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000


#: Page cache per connection, in KiB when negative (SQLite's default is 2 MiB):
#: a million users' indexes stay in memory, so a lookup at 1,000,000 users
#: costs little more than at 10,000 (bench/store_scale.py: 137 / 186 us for a
#: user's provisioning, 3 / 3 us for its session heads). Each worker holds one.
CACHE_SIZE = -65536


class SqliteStore(SqlStore):
    """:class:`~aaa_vpn.store.base.Store` on one SQLite file.

    ``create``: allow creating a new database file (``aaa-vpn db init``); otherwise
    a missing file is an error rather than a silently empty database.
    ``migrate``: apply missing schema steps at open (the default); if false, an
    old schema is an error.
    """

    dialect = Dialect.SQLITE
    _Error = sqlite3.Error
    _Integrity = sqlite3.IntegrityError

    def __init__(
        self,
        path: str | Path,
        box: SecretBox,
        *,
        create: bool = False,
        migrate: bool = True,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        any_thread: bool = False,
    ) -> None:
        """``any_thread``: the connection may be used from any thread, one at
        a time (the caller serializes; FreeRADIUS's rlm_python3 calls in from
        its worker threads)."""
        super().__init__(box)
        self.path = Path(path)
        self._any_thread = any_thread
        #: The schema version found at open (0 for a new database).
        self.opened_version = 0
        #: How often the connection was opened again after it was found read-only.
        self.reopened = 0
        if not create and not self.path.exists():
            raise StoreError(f"database {self.path} does not exist (create it with 'aaa-vpn db init')")
        self._busy_timeout_ms = busy_timeout_ms
        self._marks: SessionMarks | None = None
        self._marks_error = ""
        self._conn = self._db = self._connect("rwc" if create else "rw")
        try:
            self._setup(busy_timeout_ms, migrate)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        except BaseException:
            self._conn.close()
            raise

    # -- opening ------------------------------------------------------------------

    def _connect(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode={mode}"
        try:
            return sqlite3.connect(
                uri,
                uri=True,
                isolation_level=None,
                timeout=self._busy_timeout_ms / 1000,
                cached_statements=256,
                check_same_thread=not self._any_thread,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None

    def _reopen(self) -> None:
        """Open the connection again (it was opened read-only). The old one is
        closed first: SQLite would hand the new connection its read-only file
        descriptor otherwise."""
        self._conn.close()
        self._align_wal_modes()
        fresh = self._connect("rw")
        try:
            fresh.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            fresh.execute("PRAGMA foreign_keys = ON")
            fresh.execute("PRAGMA synchronous = NORMAL")
            fresh.execute(f"PRAGMA cache_size = {CACHE_SIZE}")
        except sqlite3.Error as exc:
            fresh.close()
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._conn = self._db = fresh
        self.reopened += 1

    def _align_wal_modes(self) -> None:
        """A read-only connection leaves ``-wal`` and ``-shm`` files with the
        database's read-only mode, and SQLite stays read-only while they are
        so. Once the database itself is writable again, give our own such files
        its mode."""
        if not os.access(self.path, os.W_OK):
            return
        mode = stat.S_IMODE(self.path.stat().st_mode)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            try:
                if not os.access(side, os.W_OK) and side.stat().st_uid == os.geteuid():
                    side.chmod(mode)
                    log.warning("database %s: %s was left read-only; now %04o like the database", self.path, side, mode)
            except OSError:
                continue  # gone meanwhile, or not ours

    def _setup(self, busy_timeout_ms: int, migrate: bool) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = ON")
        version = self._user_version()
        self.opened_version = version
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if application_id not in (0, APPLICATION_ID) or (
            version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        ):
            raise StoreError(f"{self.path} is not an aaa_vpn database")
        self._refuse_newer(version)
        journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal).lower() != "wal":
            # E.g. on a file system without shared memory; still correct, only slower.
            log.warning("database %s: WAL journal unavailable, using %s", self.path, journal)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = {CACHE_SIZE}")
        if version < SCHEMA_VERSION:
            if not migrate:
                raise StoreError(
                    f"database {self.path} has schema version {version}, this aaa_vpn needs"
                    f" {SCHEMA_VERSION}: run 'aaa-vpn db migrate'"
                )
            self._migrate()
        row = conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        if row is None:
            raise StoreError(f"database {self.path} has no key check value; it is damaged")
        if not self._box.matches(bytes(row[0])):
            raise StoreError(f"key file does not match this database ({self.path})")

    def _user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this aaa_vpn"
                f" knows ({SCHEMA_VERSION}); upgrade aaa_vpn"
            )

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another worker may have migrated
            # between our first look and now.
            current = self._user_version()
            self._refuse_newer(current)
            for step in MIGRATIONS[current:]:
                for statement in render(step, Dialect.SQLITE):
                    conn.execute(statement)
            if current == 0:
                conn.execute("INSERT INTO meta (name, value) VALUES ('key_check', ?)", (self._box.key_check,))
            if current < SCHEMA_VERSION:
                log.info("database %s: schema migrated from version %d to %d", self.path, current, SCHEMA_VERSION)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return self._user_version()

    @contextmanager
    def _writing(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        if conn.in_transaction:
            # Inside transaction(): the outermost block commits or rolls back.
            yield conn
            return
        self._changed_nais.clear()
        try:
            if durable:
                # synchronous=NORMAL in WAL mode survives a crash of the process,
                # not of the machine; FULL syncs the WAL at this commit.
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._normal(durable)
            raise self._failed(exc) from None
        try:
            yield conn
        except sqlite3.Error as exc:
            self._rollback()
            self._normal(durable)
            raise self._failed(exc) from None
        except BaseException:
            self._rollback()
            self._normal(durable)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"database {self.path}: {exc}") from None
        finally:
            self._normal(durable)
        if self._changed_nais:
            # store/marks.py rule 2: after the commit. _writable_marks() opened them before.
            assert self._marks is not None
            for nai in self._changed_nais:
                self._marks.mark(nai)
            self._changed_nais.clear()

    def _normal(self, durable: bool) -> None:
        if durable:
            try:
                self._conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error:
                pass  # the connection is gone; a new one starts NORMAL

    def _rollback(self) -> None:
        self._changed_nais.clear()
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _error(self, exc: Exception) -> StoreError:
        """A write failed: the operator's message; a connection found
        read-only is opened again, so the next write may succeed."""
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY or isinstance(
            exc,
            sqlite3.ProgrammingError,  # closed: an earlier reopen failed
        ):
            try:
                self._reopen()
            except StoreError as reopen:
                return StoreError(f"database {self.path} is read-only: {exc}; {reopen}")
            return Reopened(f"database {self.path} was opened read-only: {exc} (opened again; retry)")
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
            return StoreBusy(
                f"database {self.path} is locked by another writer for more than {self._busy_timeout_ms} ms: {exc}"
            )
        return StoreError(f"database {self.path}: {exc}")

    # -- the engine's ways ----------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.path)

    def _is_unique(self, exc: Exception) -> bool:
        message = str(exc)
        return "UNIQUE constraint failed" in message or "PRIMARY KEY" in message

    def _is_fk(self, exc: Exception) -> bool:
        return "FOREIGN KEY constraint failed" in str(exc)

    def _violates(self, exc: Exception, table: str, column: str = "") -> bool:
        # "UNIQUE constraint failed: clients.network", "...: session_spis.node, session_spis.spi"
        message = str(exc)
        return f"{table}.{column}" in message if column else f"{table}." in message

    def _engine_checks(self) -> list[str]:
        problems = [f"integrity: {row[0]}" for row in self._all("PRAGMA integrity_check") if row[0] != "ok"]
        problems += [
            f"foreign key: {row[0]} row {row[1]} names a missing {row[2]} record"
            for row in self._all("PRAGMA foreign_key_check")
        ]
        return problems

    # -- change detection -------------------------------------------------------------

    def session_marks(self) -> SessionMarks | None:
        """The marks beside the database (store/marks.py): writable if they
        can be, else read-only, else None (logged once)."""
        if self._marks is None and not self._marks_error:
            try:
                self._marks = SessionMarks.beside(self.path, writable=True)
            except MarksError:
                try:
                    self._marks = SessionMarks.beside(self.path, writable=False)
                except MarksError as exc:
                    self._marks_error = str(exc)
                    log.warning("database %s: %s; cached sessions are not trusted", self.path, exc)
        return self._marks

    def _writable_marks(self) -> None:
        """Before a transaction that changes sessions: the marks must be
        writable (store/marks.py rule 4), or nothing is written."""
        marks = self.session_marks()
        if marks is None or not marks.writable:
            self._marks, self._marks_error = None, ""  # it may have become writable: once more
            marks = self.session_marks()
        if marks is None or not marks.writable:
            why = self._marks_error or f"{marks.path if marks else 'the session marks'} is read-only"
            raise StoreError(f"database {self.path}: cannot change sessions: {why}")

    def close(self) -> None:
        self._conn.close()
        if self._marks is not None:
            self._marks.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"


__all__ = ["APPLICATION_ID", "DEFAULT_BUSY_TIMEOUT_MS", "MIGRATIONS", "SCHEMA_VERSION", "SqliteStore"]

if TYPE_CHECKING:
    from aaa_vpn.store.base import Store

    def _conforms(store: SqliteStore) -> Store:
        # mypy checks here that SqliteStore implements the Store protocol.
        return store
