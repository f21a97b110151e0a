"""Session marks (aaa_vpn/store/marks.py): every writer of a database's
sessions marks the users whose sessions it created, replaced or deleted,
after the commit, in a file every process of that database maps."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.model import QosClass, Session, SessionWrite, User, WriteKind, WriteOutcome
from aaa_vpn.secret import Secret
from aaa_vpn.store import SqliteStore, StoreError, init_store, open_store
from aaa_vpn.store.marks import SIZE, MarksError, SessionMarks

NAI = "mn1@home.example"


def session(session_id: str = "s1", nai: str = NAI, epoch: int = 1) -> Session:
    return Session(
        session_id,
        nai,
        Secret(bytes(32)),
        epoch,
        IPv4Address("198.51.100.1"),
        IPv4Address("192.0.2.2"),
        IPv4Address("192.0.2.1"),
        0.0,
        100.0,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "vpn.db"
    init_store(path)[0].close()
    return path


def test_the_marks_live_beside_the_database_with_its_mode(db: Path) -> None:
    db.chmod(0o640)
    with open_store(db) as store:
        marks = store.session_marks()
        assert marks is not None and marks.writable
        path = Path(f"{db}-marks")
        assert marks.path == path and path.stat().st_size == SIZE
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert "marks" in repr(marks) and str(path) in repr(marks)


def test_every_change_of_a_users_sessions_is_marked_and_a_renewal_is_not(db: Path) -> None:
    with open_store(db) as writer, open_store(db) as reader:
        marks = reader.session_marks()  # another mapping of the same file: another process's view
        assert marks is not None
        other = "mn2@home.example"
        assert SessionMarks.slot(other) != SessionMarks.slot(NAI)

        def moved(action: Callable[[], object]) -> tuple[bool, bool]:
            before = marks.stamp(NAI), marks.stamp(other)
            action()
            return marks.stamp(NAI) != before[0], marks.stamp(other) != before[1]

        create = SessionWrite(WriteKind.CREATE, "s1", session())
        assert moved(lambda: writer.apply_session_writes([create])) == (True, False)
        renew = SessionWrite(WriteKind.RENEW, "s1", expected_epoch=1, expires=200.0)
        assert moved(lambda: writer.apply_session_writes([renew])) == (False, False)
        replace = SessionWrite(WriteKind.REPLACE, "s1", session(epoch=2), expected_epoch=1)
        assert moved(lambda: writer.apply_session_writes([replace])) == (True, False)
        stale = SessionWrite(WriteKind.REPLACE, "s1", session(epoch=3), expected_epoch=1)  # a conflict
        assert moved(lambda: writer.apply_session_writes([stale])) == (False, False)
        delete = SessionWrite(WriteKind.DELETE, "s1", expected_epoch=2)
        assert moved(lambda: writer.apply_session_writes([delete])) == (True, False)
        assert moved(lambda: writer.put_session(session("s2", other))) == (False, True)
        assert moved(lambda: writer.delete_session("s2")) == (False, True)
        writer.add_user(User(NAI, IPv4Address("192.0.2.2"), Secret(b"s" * 16), 256, Secret(b"K" * 16)))
        writer.put_session(session("s3"))
        assert moved(lambda: writer.delete_user(NAI)) == (True, False)
        assert moved(lambda: writer.add_qos(QosClass("voice"))) == (False, False)  # provisioning: the generation


def test_a_transaction_that_fails_marks_nothing(db: Path) -> None:
    with open_store(db) as store:
        marks = store.session_marks()
        assert marks is not None
        before = marks.stamp(NAI)
        with pytest.raises(RuntimeError), store.transaction():
            store.put_session(session())
            raise RuntimeError("the import fails")
        assert marks.stamp(NAI) == before and store.list_sessions() == []


def test_marks_that_cannot_be_opened_refuse_writes_and_trust_no_copy(db: Path) -> None:
    Path(f"{db}-marks").mkdir()  # not a file
    with open_store(db) as store:
        assert store.session_marks() is None
        with pytest.raises(StoreError, match=r"cannot change sessions: the session marks .* is not a regular file"):
            store.apply_session_writes([SessionWrite(WriteKind.CREATE, "s1", session())])
        with pytest.raises(StoreError, match="cannot change sessions"):
            store.put_session(session())
        assert store.list_sessions() == []
        # renewals only move the expiry: they need no marks
        assert store.apply_session_writes([SessionWrite(WriteKind.RENEW, "s1", expected_epoch=1, expires=5.0)]) == [
            WriteOutcome.CONFLICT
        ]


def test_a_marks_file_of_the_wrong_size_is_refused(db: Path) -> None:
    path = Path(f"{db}-marks")
    path.write_bytes(bytes(SIZE + 8))
    with pytest.raises(MarksError, match=f"has {SIZE + 8} octets"):
        SessionMarks.beside(db)
    path.write_bytes(bytes(16))  # cut short: a writer makes it whole again, a reader refuses it
    with pytest.raises(MarksError, match="has 16 octets"):
        SessionMarks.beside(db, writable=False)
    assert SessionMarks.beside(db).stamp(NAI) == 0 and path.stat().st_size == SIZE


def test_a_reader_that_may_not_write_gets_read_only_marks(tmp_path: Path) -> None:
    """As the user nobody, on a database root writes (root writes anything)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as the user nobody")
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="aaa_vpn-marks-"))
    db = directory / "vpn.db"
    init_store(db)[0].close()
    root_marks = SessionMarks.beside(db)
    db.chmod(0o644)
    Path(f"{db}-marks").chmod(0o644)
    for path in (directory, *directory.iterdir()):
        path.chmod(path.stat().st_mode | 0o005)
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        report = []
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            marks = SessionMarks.beside(db, writable=False)
            report.append(f"writable={marks.writable} stamp={marks.stamp(NAI)}")
            try:
                SessionMarks.beside(db, writable=True)
                report.append("opened for writing")
            except MarksError as exc:
                report.append(f"refused: {exc}")
        except BaseException as exc:
            report.append(f"child failed: {type(exc).__name__}: {exc}")
        os.write(write, "\n".join(report).encode())
        os._exit(0)
    os.close(write)
    root_marks.mark(NAI)
    with os.fdopen(read) as pipe:
        lines = pipe.read().splitlines()
    os.waitpid(pid, 0)
    import shutil

    shutil.rmtree(directory)
    assert lines[0].startswith("writable=False stamp="), lines
    assert lines[1].startswith("refused: cannot open the session marks") and "Permission denied" in lines[1], lines


def test_root_creates_the_marks_for_the_databases_owner(tmp_path: Path, db: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    nobody = pwd.getpwnam("nobody")
    os.chown(db, nobody.pw_uid, nobody.pw_gid)
    SessionMarks.beside(db).close()
    created = Path(f"{db}-marks").stat()
    assert (created.st_uid, created.st_gid) == (nobody.pw_uid, nobody.pw_gid)


def test_private_marks_for_one_process() -> None:
    marks = SessionMarks.private()
    before = marks.stamp(NAI)
    marks.mark(NAI)
    assert marks.stamp(NAI) != before and len(marks.buffer) == SIZE
    assert repr(marks) == "SessionMarks('private')"


def test_sqlite_store_is_a_store_with_marks(db: Path) -> None:
    with open_store(db) as store:
        assert isinstance(store, SqliteStore)
        assert store.session_marks() is store.session_marks()  # opened once
