"""Storage of the VPN database: the interface and its SQLite implementation.

Callers open a store with :func:`open_store` (an existing database) or
:func:`init_store` (a new database and, if needed, a new key file) and program
against :class:`~aaa_vpn.store.base.Store`.
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
from aaa_vpn.store.sqlite import DEFAULT_BUSY_TIMEOUT_MS, SCHEMA_VERSION, SqliteStore


def default_key_file(db_path: str | Path) -> Path:
    """The key file used when none is named: ``<db>.key`` next to the database."""
    return Path(f"{db_path}.key")


def open_store(
    path: str | Path,
    key_file: str | Path | None = None,
    *,
    migrate: bool = True,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> SqliteStore:
    """Open an existing database with the secrets key in ``key_file``.

    Raises :class:`StoreError` (or its :class:`KeyFileError`) with an operator
    message if the database or key file is missing, the key file is readable by
    others or does not match, or the schema is newer than this code.
    """
    key_path = Path(key_file) if key_file is not None else default_key_file(path)
    return SqliteStore(path, SecretBox.from_key_file(key_path), migrate=migrate, busy_timeout_ms=busy_timeout_ms)


def init_store(
    path: str | Path,
    key_file: str | Path | None = None,
    *,
    force: bool = False,
    existing_key: bool = False,
) -> tuple[SqliteStore, bool]:
    """Create a new database, and a new key file unless one should be reused.

    ``force`` deletes an existing database first (never a key file). An
    existing key file is used only if ``existing_key`` or ``force`` is given;
    otherwise it is an error, so that a forgotten old key is not adopted by
    accident. Returns the open store and whether a key file was created.
    """
    db_path = Path(path)
    key_path = Path(key_file) if key_file is not None else default_key_file(db_path)
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
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(f"{db_path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot remove {db_path}{suffix}: {exc.strerror}") from None
    return SqliteStore(db_path, box, create=True), not key_exists


__all__ = [
    "SCHEMA_VERSION",
    "AlreadyExists",
    "KeyFileError",
    "NotFound",
    "ReferenceError_",
    "SpiConflict",
    "SqliteStore",
    "Store",
    "StoreBusy",
    "StoreError",
    "default_key_file",
    "init_store",
    "open_store",
]
