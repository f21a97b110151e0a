"""Session marks: how a process that caches sessions learns that another
process changed them.

A home AAA worker answers some renewals without reading the database (the
renewal memo, and renewals that move the expiry too little to write:
roles/home_aaa.py rules 6 and 12). It may do so only while no other process
has replaced or deleted the user's session since the worker read it. The
marks say so, cheaply enough to ask on every request:

1. The marks are :data:`SLOTS` 64-bit words, in a file beside the database
   (``<database>-marks``, like SQLite's ``-wal`` and ``-shm``; created with
   the database's mode and owner, writable by that owner), mapped into
   memory by every process that reads or writes that database's sessions:
   the server's workers, and the CLI when it pushes or deletes a session.
   A user's word is chosen by a CRC-32 of the NAI (:meth:`SessionMarks.slot`);
   users that share a word only cost each other a database read.
2. A process that has committed a change of a user's sessions -- a session
   created, replaced (a move or re-key), deleted -- then writes a fresh random
   value into the user's word (:meth:`SessionMarks.mark`). Renewals that only
   move the expiry mark nothing: a copy that is behind on the expiry grants
   less, never more.
3. A reader takes the word (:meth:`SessionMarks.stamp`) *before* it reads
   the session, keeps it with its copy, and trusts the copy only while the
   word still holds that stamp. A change committed after the read is marked
   after its commit, so the word has moved by then; one committed before the
   read is in what was read. Random values never come back (2^-64), so a
   moved word never looks unmoved.
4. Where no marks file can be opened (a read-only directory), a reader gets
   no stamp (None) and trusts no copy: every such request reads the
   database. A writer that cannot mark refuses to write (StoreError), before
   it writes anything.
5. After the words, one more: zero while the marks can be trusted. Marks
   kept from another source -- a PostgreSQL node's listener, which marks
   what every node announces (aaa_vpn/store/postgres.py) -- say so while
   that source is lost (:meth:`SessionMarks.set_available`), and every word
   moves when it is found again (:meth:`SessionMarks.mark_all`): no copy read
   meanwhile is trusted. The marks of an SQLite file are always available.

Expired sessions are not marked: every copy carries its expiry and is not
trusted past it.
"""

from __future__ import annotations

import mmap
import os
import stat
import zlib
from pathlib import Path

#: Words in a marks table (a power of two): 512 KiB, and the availability word.
SLOTS = 1 << 16
WORD = 8
SIZE = (SLOTS + 1) * WORD


class MarksError(OSError):
    """The marks file cannot be opened or is not one."""


class SessionMarks:
    """One table of marks (module rules). ``buffer`` is its memory:
    :data:`SIZE` octets, shared between processes for a file's marks."""

    def __init__(self, buffer: mmap.mmap | bytearray, path: Path | None = None, writable: bool = True) -> None:
        if len(buffer) != SIZE:
            raise MarksError(f"a marks table is {SIZE} octets, not {len(buffer)}")
        self.buffer = buffer
        self.path = path
        self.writable = writable
        self._words = memoryview(buffer).cast("Q")

    @classmethod
    def private(cls) -> SessionMarks:
        """Marks for one process (an in-memory store)."""
        return cls(bytearray(SIZE))

    @classmethod
    def shared(cls) -> SessionMarks:
        """Marks in anonymous shared memory: for the processes a server forks
        after making them (a PostgreSQL node's workers and its listener)."""
        return cls(mmap.mmap(-1, SIZE, mmap.MAP_SHARED))

    @classmethod
    def beside(cls, database: Path, writable: bool = True) -> SessionMarks:
        """The marks of the database at ``database`` (``<database>-marks``),
        created like the database (its mode and owner) if missing; read-only
        unless ``writable``. MarksError if it cannot be opened."""
        path = Path(f"{database}-marks")
        flags = os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY)
        try:
            db_stat = database.stat()
            # The database's mode, but always writable by its owner (a database
            # made read-only for a while must not leave read-only marks behind).
            fd = os.open(path, flags, (stat.S_IMODE(db_stat.st_mode) | 0o600) & 0o666)
        except OSError as exc:
            raise MarksError(f"cannot open the session marks {path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MarksError(f"the session marks {path} is not a regular file")
            if st.st_size != SIZE:
                if not writable or st.st_size > SIZE:
                    raise MarksError(f"the session marks {path} has {st.st_size} octets, not {SIZE}")
                os.ftruncate(fd, SIZE)  # new (or cut short): the missing words read as zero
            if writable and st.st_uid != db_stat.st_uid and os.geteuid() == 0 and st.st_uid == 0:
                os.fchown(fd, db_stat.st_uid, db_stat.st_gid)  # root created it for the database's owner
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            buffer = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, access=access)
        except OSError as exc:
            if isinstance(exc, MarksError):
                raise
            raise MarksError(f"cannot map the session marks {path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        return cls(buffer, path, writable)

    @staticmethod
    def slot(nai: str) -> int:
        """The word of user ``nai``."""
        return zlib.crc32(nai.encode("utf-8", "surrogatepass")) & (SLOTS - 1)

    def stamp(self, nai: str) -> int:
        """What the user's word holds now (take it before reading)."""
        return int(self._words[self.slot(nai)])

    def mark(self, nai: str) -> None:
        """The user's sessions changed (call after the commit)."""
        self._words[self.slot(nai)] = int.from_bytes(os.urandom(WORD), "little")

    def mark_all(self) -> None:
        """Every user's sessions may have changed (module rule 5)."""
        fresh = memoryview(os.urandom(SLOTS * WORD)).cast("Q")
        self._words[:SLOTS] = fresh

    def available(self) -> bool:
        """Whether copies may be trusted at all (module rule 5)."""
        return self._words[SLOTS] == 0

    def set_available(self, available: bool) -> None:
        self._words[SLOTS] = 0 if available else 1

    def close(self) -> None:
        """Unmap the table, unless a memo still holds it (then it goes with the process)."""
        try:
            self._words.release()
            if isinstance(self.buffer, mmap.mmap):
                self.buffer.close()
        except BufferError:
            pass

    def __repr__(self) -> str:
        return f"SessionMarks({str(self.path) if self.path else 'private'!r})"


__all__ = ["SIZE", "SLOTS", "MarksError", "SessionMarks"]
