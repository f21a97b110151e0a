"""The home AAA server when its database is held by another writer, and when
a worker dies: live, one server process per test."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aaa_vpn.wire import radius as rc

from .radius_client import access_request, exchange, served_port, status_server, wait_until_serving
from .test_home_server import MN_SECRET, NAI, SECRET, Server, provision, sessions, start_server, stop


@pytest.fixture
def one_worker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    db = tmp_path / "vpn.db"
    provision(db)
    log = tmp_path / "server.log"
    extra = getattr(request, "param", ())
    process = start_server(db, 0, 1, log, *extra)
    try:
        port = served_port(process, log)
        wait_until_serving(("127.0.0.1", port), SECRET)
        yield Server(db, ("127.0.0.1", port), process, log)
    finally:
        code = stop(process)
        assert code == 0, f"server exited with {code}:\n{log.read_text()}"


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _wait_for(predicate: Callable[[], bool], what: str, server: Server, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen in {seconds} s:\n{server.log_text()[-3000:]}")


@pytest.mark.parametrize("one_worker", [("--db-busy-timeout", "0.2")], indirect=True)
def test_a_writer_holding_the_database_stalls_nothing_but_the_writes(one_worker: Server) -> None:
    server = one_worker
    registration = access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2")
    raw = registration.RequestPacket()
    holder = sqlite3.connect(server.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # an operator's long transaction, say
    try:
        # The registration needs a write: it waits at most 0.2 s, then is dropped
        # (its retransmission is decided anew) ...
        assert exchange(server.address, raw, timeout=1.0).reply is None
        # ... while Status-Server, which writes nothing, is answered all along
        for _ in range(5):
            assert status_server(server.address, SECRET, timeout=1.0).reply is not None
        assert exchange(server.address, raw, timeout=1.0).reply is None  # still held: dropped again
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Released: the same request (a retransmission) is accepted, and stored.
    answer = exchange(server.address, raw)
    assert answer.code == rc.ACCESS_ACCEPT, server.log_text()[-2000:]
    assert len(sessions(server.db)) == 1
    log = server.log_text()
    assert "store_unavailable" in log and "locked by another writer" in log


def test_a_worker_that_dies_is_logged_and_started_again_also_alone(one_worker: Server) -> None:
    server = one_worker
    (worker,) = _children(server.process.pid)
    os.kill(worker, signal.SIGBUS)
    _wait_for(lambda: "worker exited (killed by SIGBUS): restarting it" in server.log_text(), "the restart", server)
    _wait_for(
        lambda: len(_children(server.process.pid)) == 1 and _children(server.process.pid) != [worker],
        "a new worker",
        server,
    )
    wait_until_serving(server.address, SECRET)
    # the new worker serves registrations
    request = access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2")
    assert exchange(server.address, request).code == rc.ACCESS_ACCEPT
    assert server.process.poll() is None
