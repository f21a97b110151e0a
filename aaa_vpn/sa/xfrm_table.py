"""The xfrm SA backend's side table (:mod:`aaa_vpn.sa.xfrm`): what the kernel
does not keep of a path, by reqid -- its owner, install order, priority and
non-secret fields (:func:`aaa_vpn.sa.base.public_fields`) -- and SHA-256
digests of every key installed.

Rules:

* The kernel has no place for an owner string (marks, if_ids and indexes
  change matching), so owners live here, keyed by the path's reqid.
* Never a key: after a restart the backend reads the keys back from the
  kernel's SAD (``GETSA`` dump; the kernel returns them to CAP_NET_ADMIN). A
  key's digest (:func:`key_digest`, never the key) stays until its path is
  forgotten, so that keys are never reinstalled, even after a restart.
* Write-ahead: a row is :data:`INSTALLING` before the backend's first kernel
  request and :data:`INSTALLED` after the last; a removal marks it
  :data:`DELETING` first. The backend undoes a row it finds ``installing``
  or ``deleting`` (a crash, a failed rollback) at its next call.
* A file (SQLite, WAL, ``synchronous=FULL``, mode 0600) with an exclusive
  ``flock`` on ``<file>.lock``, so that two backends cannot share it, and
  marked with the node it belongs to; ``None``: in memory, nothing survives
  the process. Every failure is an :class:`~aaa_vpn.sa.base.SaError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Final, TextIO

from aaa_vpn.sa.base import SaError

#: A row's state: written before the first kernel request of an install,
#: after the last, and before the first of a removal.
INSTALLING: Final = "installing"
INSTALLED: Final = "installed"
DELETING: Final = "deleting"
_TABLE_VERSION: Final = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS paths (
    reqid INTEGER PRIMARY KEY,
    ord INTEGER NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('installing', 'installed', 'deleting')),
    priority INTEGER NOT NULL,
    path TEXT NOT NULL  -- JSON: the path without any key material
);
CREATE TABLE IF NOT EXISTS used_keys (digest BLOB PRIMARY KEY);
"""


def key_digest(key: bytes) -> bytes:
    """What the side table keeps of a key: a domain-separated SHA-256 digest, never the key."""
    return hashlib.sha256(b"aaa_vpn xfrm backend key use\x00" + key).digest()


@dataclass
class Row:
    """One path as the side table keeps it: no key material."""

    reqid: int
    ord: int
    owner: str
    state: str
    priority: int
    record: dict[str, Any]


class SideTable:
    """Owners, order, priorities and non-secret path fields by reqid, plus digests of used keys.

    A file (SQLite, WAL, ``synchronous=FULL``) guarded by an exclusive ``flock``
    on ``<file>.lock`` so that two backends cannot share it; ``None``: in memory."""

    def __init__(self, location: str | os.PathLike[str] | None, node: IPv4Address) -> None:
        self._lock: TextIO | None = None
        self.location = None if location is None else os.fspath(location)
        if self.location is not None:
            lock = open(self.location + ".lock", "a")  # held until close()
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                raise SaError(f"the xfrm side table {self.location} is in use by another backend") from None
            self._lock = lock
        try:
            self._db = sqlite3.connect(self.location or ":memory:", isolation_level=None)
            if self.location is not None:
                os.chmod(self.location, 0o600)  # owners and SPIs: nobody else's business
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", [("version", _TABLE_VERSION), ("node", str(node))]
                )
            elif meta.get("version") != _TABLE_VERSION or meta.get("node") != str(node):
                raise SaError(
                    f"the xfrm side table {self.location} is for node {meta.get('node')} "
                    f"(version {meta.get('version')}), not {node}"
                )
        except sqlite3.Error as exc:
            self.close()
            raise SaError(f"cannot open the xfrm side table {self.location}: {exc}") from None
        except SaError:
            self.close()
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SaError(f"the xfrm side table {self.location or '(memory)'} failed: {exc}") from None

    def rows(self) -> list[Row]:
        with self._transaction() as db:
            rows = db.execute("SELECT reqid, ord, owner, state, priority, path FROM paths ORDER BY ord").fetchall()
        return [Row(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def max_ord(self) -> int:
        with self._transaction() as db:
            (value,) = db.execute("SELECT COALESCE(MAX(ord), 0) FROM paths").fetchone()
        return int(value)

    def used(self, digests: Iterable[bytes]) -> bool:
        with self._transaction() as db:
            for digest in digests:
                if db.execute("SELECT 1 FROM used_keys WHERE digest = ?", (digest,)).fetchone():
                    return True
        return False

    def begin_install(self, row: Row, digests: Iterable[bytes]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO paths (reqid, ord, owner, state, priority, path) VALUES (?, ?, ?, ?, ?, ?)",
                (row.reqid, row.ord, row.owner, row.state, row.priority, json.dumps(row.record, sort_keys=True)),
            )
            db.executemany("INSERT OR IGNORE INTO used_keys (digest) VALUES (?)", [(d,) for d in digests])

    def set_state(self, reqids: Iterable[int], state: str) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE paths SET state = ? WHERE reqid = ?", [(state, r) for r in reqids])

    def forget(self, reqid: int, digests: Iterable[bytes] = ()) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM paths WHERE reqid = ?", (reqid,))
            db.executemany("DELETE FROM used_keys WHERE digest = ?", [(d,) for d in digests])

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


__all__ = ["DELETING", "INSTALLED", "INSTALLING", "Row", "SideTable", "key_digest"]
