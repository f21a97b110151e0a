"""Storage of the VPN database: the interface and its SQLite and PostgreSQL
implementations.

Callers open a store with :func:`open_store` (an existing database) or
:func:`init_store` (a new database and, if needed, a new key file) and program
against :class:`~aaa_vpn.store.base.Store`. A database is named by a path (an
SQLite file, the default) or a ``postgresql://`` URL
(:func:`database_location`); a PostgreSQL database needs its key file named,
since there is no file beside which to look for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from aaa_vpn.store.base import (
    AlreadyExists,
    NotFound,
    ReferenceError_,
    SpiConflict,
    Store,
    StoreBusy,
    StoreError,
)
from aaa_vpn.store.crypto import KeyFileError, SecretBox, create_key_file
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.store.schema import SCHEMA_VERSION
from aaa_vpn.store.sql import SqlStore
from aaa_vpn.store.sqlite import DEFAULT_BUSY_TIMEOUT_MS, SqliteStore

#: Where a database is: an SQLite file's path, or a ``postgresql://`` URL.
DatabaseLocation = Path | str


def is_url(location: object) -> bool:
    """Whether ``location`` is a PostgreSQL URL rather than a file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def database_location(text: str | Path) -> DatabaseLocation:
    """What ``--db`` (or AAA_VPN_DB) names: a URL as it is, anything else as a path."""
    return str(text) if is_url(str(text)) else Path(text)


def default_key_file(db_path: DatabaseLocation) -> Path:
    """The key file used when none is named: ``<db>.key`` next to an SQLite
    database. A PostgreSQL database has none (KeyFileError)."""
    if is_url(db_path):
        raise KeyFileError(
            "a PostgreSQL database needs its key file named (--key-file or AAA_VPN_KEY_FILE):"
            " every node of the database uses the same one"
        )
    return Path(f"{db_path}.key")


def open_store(
    path: DatabaseLocation,
    key_file: str | Path | None = None,
    *,
    migrate: bool = True,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    marks: SessionMarks | None = None,
    any_thread: bool = False,
) -> SqlStore:
    """Open an existing database with the secrets key in ``key_file``;
    ``marks`` are a PostgreSQL node's session marks (its listener's);
    ``any_thread``: a SQLite connection may be used from any thread, one at a
    time (the caller serializes).

    Raises :class:`StoreError` (or its :class:`KeyFileError`) with an operator
    message if the database or key file is missing, the key file is readable by
    others or does not match, or the schema is newer than this code.
    """
    key_path = Path(key_file) if key_file is not None else default_key_file(path)
    box = SecretBox.from_key_file(key_path)
    if is_url(path):
        from aaa_vpn.store.postgres import PostgresStore

        return PostgresStore(str(path), box, migrate=migrate, busy_timeout_ms=busy_timeout_ms, marks=marks)
    return SqliteStore(path, box, migrate=migrate, busy_timeout_ms=busy_timeout_ms, any_thread=any_thread)


def init_store(
    path: DatabaseLocation,
    key_file: str | Path | None = None,
    *,
    force: bool = False,
    existing_key: bool = False,
) -> tuple[SqlStore, bool]:
    """Create a new database, and a new key file unless one should be reused.

    ``force`` deletes an existing database first (never a key file). An
    existing key file is used only if ``existing_key`` or ``force`` is given;
    otherwise it is an error, so that a forgotten old key is not adopted by
    accident. Returns the open store and whether a key file was created.

    A PostgreSQL database must exist (its administrator creates it and the
    role); this lays out the schema in it, refusing one that holds aaa_vpn's
    schema already unless ``force`` (which drops aaa_vpn's tables first).
    """
    key_path = Path(key_file) if key_file is not None else default_key_file(path)
    if is_url(path):
        return _init_postgres(str(path), key_path, force, existing_key)
    db_path = Path(path)
    if db_path.exists() and not force:
        raise StoreError(f"database {db_path} exists already (use --force to replace it)")
    key_exists = key_path.exists()
    if key_exists and not (existing_key or force):
        raise KeyFileError(f"key file {key_path} exists already; pass --existing-key to create the database under it")
    if not key_exists:
        create_key_file(key_path)
    box = SecretBox.from_key_file(key_path)  # also refuses a too-readable reused key file
    if force:
        # The WAL and shared-memory files belong to the old database.
        for suffix in ("", "-wal", "-shm", "-journal", "-marks"):
            try:
                os.unlink(f"{db_path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot remove {db_path}{suffix}: {exc.strerror}") from None
    return SqliteStore(db_path, box, create=True), not key_exists


def _init_postgres(url: str, key_path: Path, force: bool, existing_key: bool) -> tuple[SqlStore, bool]:
    from aaa_vpn.store.postgres import PostgresStore, drop_schema, existing_schema, redacted

    schema = existing_schema(url)
    if schema and not force:
        raise StoreError(f"database {redacted(url)} holds an aaa_vpn schema already (use --force to replace it)")
    key_exists = key_path.exists()
    if key_exists and not (existing_key or force):
        raise KeyFileError(f"key file {key_path} exists already; pass --existing-key to create the database under it")
    if schema:
        drop_schema(url)
    if not key_exists:
        create_key_file(key_path)
    box = SecretBox.from_key_file(key_path)  # also refuses a too-readable reused key file
    return PostgresStore(url, box, create=True), not key_exists


__all__ = [
    "SCHEMA_VERSION",
    "AlreadyExists",
    "DatabaseLocation",
    "KeyFileError",
    "NotFound",
    "ReferenceError_",
    "SpiConflict",
    "SqlStore",
    "SqliteStore",
    "Store",
    "StoreBusy",
    "StoreError",
    "database_location",
    "default_key_file",
    "init_store",
    "is_url",
    "open_store",
]
