"""Several home AAA nodes on one PostgreSQL database: the session marks every
node keeps from the others' announcements (store/postgres.py), and the
cross-node sequence of one mobile node's life, live."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import psycopg
import pytest

from aaa_vpn.model import SessionWrite, WriteKind
from aaa_vpn.store import init_store, open_store
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.store.postgres import PostgresStore, SessionListener
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import VENDOR_ID, RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import decode_profile
from aaa_vpn.wire.radius_request import Accepted, decode_access_reply

from .radius_client import access_request, exchange, served_port, wait_until_serving
from .test_home_server import (
    HA_SECRET,
    KEY_FILES,
    MN_SECRET,
    SECRET,
    Server,
    cli,
    provision,
    register,
    sessions,
    start_server,
    stop,
)
from .test_session_marks import NAI, session


def _eventually(predicate: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.01)


@pytest.fixture
def database(pg_url: str, tmp_path: Path) -> tuple[str, Path]:
    key = tmp_path / "vpn.key"
    init_store(pg_url, key)[0].close()
    return pg_url, key


@pytest.fixture
def listening(database: tuple[str, Path]) -> Iterator[tuple[SessionMarks, SessionListener]]:
    marks = SessionMarks.private()
    listener = SessionListener(database[0], marks, retry=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop.is_set,), daemon=True)
    assert not marks.available()  # nothing is trusted before it listens
    thread.start()
    try:
        _eventually(marks.available, "the listener connects")
        yield marks, listener
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not marks.available()


def test_a_change_committed_on_another_node_moves_the_users_mark(
    database: tuple[str, Path], listening: tuple[SessionMarks, SessionListener]
) -> None:
    marks, listener = listening
    other_user = "mn2@home.example"
    with open_store(*database) as elsewhere:  # another node's store: no marks of its own
        assert isinstance(elsewhere, PostgresStore) and elsewhere.session_marks() is None
        stamp, other = marks.stamp(NAI), marks.stamp(other_user)
        elsewhere.apply_session_writes([SessionWrite(WriteKind.CREATE, "s1", session())])
        _eventually(lambda: marks.stamp(NAI) != stamp, "the create is marked")
        assert marks.stamp(other_user) == other
        # a renewal announces nothing; a replacement and a deletion do
        stamp = marks.stamp(NAI)
        elsewhere.apply_session_writes([SessionWrite(WriteKind.RENEW, "s1", expected_epoch=1, expires=500.0)])
        elsewhere.apply_session_writes([SessionWrite(WriteKind.REPLACE, "s1", session(epoch=2), expected_epoch=1)])
        _eventually(lambda: marks.stamp(NAI) != stamp, "the replacement is marked")
        seen = listener.notifications
        elsewhere.delete_session("s1")
        _eventually(lambda: listener.notifications == seen + 1, "the deletion is announced")
        # a transaction that fails announces nothing
        seen = listener.notifications
        with pytest.raises(RuntimeError), elsewhere.transaction():
            elsewhere.put_session(session("s9"))
            raise RuntimeError("rolled back")
        elsewhere.put_session(session("s10", other_user))  # a later one, to know the first never came
        _eventually(lambda: listener.notifications == seen + 1, "the later change is announced")


def test_a_listener_that_loses_the_database_trusts_nothing_until_it_is_back(
    database: tuple[str, Path], listening: tuple[SessionMarks, SessionListener]
) -> None:
    marks, _listener = listening
    before = marks.stamp(NAI)
    with psycopg.connect(database[0], autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    # every word moved (it may have missed announcements), and it is back
    _eventually(lambda: marks.stamp(NAI) != before, "the marks are renewed after the loss")
    _eventually(marks.available, "the listener reconnects")
    with open_store(*database) as elsewhere:
        stamp = marks.stamp(NAI)
        elsewhere.put_session(session())
        _eventually(lambda: marks.stamp(NAI) != stamp, "announcements arrive again")


def test_a_listener_that_cannot_reach_the_database_says_so(tmp_path: Path) -> None:
    marks = SessionMarks.private()
    listener = SessionListener(f"postgresql://postgres@/nothing?host={tmp_path}&port=1", marks, retry=0.05)
    rounds = iter(range(3))
    listener.run(lambda: next(rounds, None) is None)
    assert not marks.available()


# -- two home AAA nodes, live ---------------------------------------------------------------------------


class CoaResponder:
    """A NAS's Dynamic Authorization port that acknowledges every authentic
    CoA-Request (RFC 5176): what the session's FA and HA would answer."""

    def __init__(self, host: str, secret: bytes) -> None:
        self.secret = secret
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[rc.Packet] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            packet = rc.decode_packet(data)
            if packet.code != rc.Code.COA_REQUEST or not rc.check_hashed_request(packet, self.secret):
                continue
            self.requests.append(packet)
            ack = rc.encode_reply(rc.Code.COA_ACK, packet.identifier, packet.authenticator, self.secret, b"")
            self.sock.sendto(ack, source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def two_nodes(pg_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    KEY_FILES[pg_url] = tmp_path / "vpn.key"
    provision(pg_url)
    nodes: list[Server] = []
    try:
        for number in (1, 2):
            log = tmp_path / f"node{number}.log"
            process = start_server(pg_url, 0, 1, log)
            nodes.append(Server(pg_url, ("127.0.0.1", served_port(process, log)), process, log))  # type: ignore[arg-type]
            wait_until_serving(nodes[-1].address, SECRET)
            _eventually(lambda log=log: "listening for session changes" in log.read_text(), "the node's listener")
        yield nodes
    finally:
        for node in nodes:
            code = stop(node.process)
            assert code == 0, f"node exited with {code}:\n{node.log_text()}"
        KEY_FILES.pop(pg_url, None)


def _ha_view(node: Server, session_id: str, care_of: str) -> VpnProfile:
    request = access_request(
        HA_SECRET,
        NAI,
        MN_SECRET,
        nas_ip="127.0.0.2",
        care_of=care_of,
        session_id=session_id,
        request_type=RequestType.HA_REGISTRATION,
    )
    ex = exchange(node.address, request, source=("127.0.0.2", 0))
    assert ex.code == rc.ACCESS_ACCEPT, (ex.attributes, node.log_text()[-2000:])
    return decode_profile(ex.reply[20:], HA_SECRET, ex.authenticator)


def test_one_mobile_node_across_two_nodes_on_one_database(two_nodes: list[Server]) -> None:
    node1, node2 = two_nodes
    # registers on node 1
    _, first = register(node1)
    assert first.code == rc.ACCESS_ACCEPT, node1.log_text()[-2000:]
    view = decode_profile(first.reply[20:], SECRET, first.authenticator)
    # renews on node 2, naming the view it holds: confirmed, no key
    renewal = access_request(
        SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2", session_id=view.session_id
    )
    renewal[(VENDOR_ID, 17)] = [view.digest]
    ex = exchange(node2.address, renewal)
    answer = decode_access_reply(ex.reply, ex.request, SECRET)
    assert isinstance(answer, Accepted) and answer.confirmation is not None, node2.log_text()[-2000:]
    assert (answer.confirmation.session_id, answer.confirmation.epoch) == (view.session_id, view.epoch)
    # moves through node 1 (another FA, naming the previous one): the same session, next epoch
    moved = access_request(
        b"rfc-secret-1", NAI, MN_SECRET, nas_ip="127.0.1.9", care_of="127.0.1.9", previous_fa="127.0.0.1"
    )
    assert exchange(node1.address, moved, source=("127.0.1.9", 0)).code == rc.ACCESS_ACCEPT
    (stored,) = sessions(node1.db)
    assert (stored["session_id"], stored["epoch"], stored["care_of_address"]) == (view.session_id, 2, "127.0.1.9")
    # the HA asks node 2: it gets the moved session
    ha = _ha_view(node2, view.session_id, "127.0.1.9")
    assert (ha.session_id, ha.epoch, ha.care_of_address) == (view.session_id, 2, IPv4Address("127.0.1.9"))
    # the operator pushes from a third process (the CLI) on the same database
    fa_nas, ha_nas = CoaResponder("127.0.1.9", b"rfc-secret-1"), CoaResponder("127.0.0.2", HA_SECRET)
    try:
        cli(node1.db, "client", "change", "fa-rfc", "--coa-port", str(fa_nas.port))
        cli(node1.db, "client", "change", "ha1", "--coa-port", str(ha_nas.port))
        pushed = cli(node1.db, "--json", "session", "push", view.session_id, "--source", "127.0.0.1")
        assert len(fa_nas.requests) >= 1 and len(ha_nas.requests) >= 1, pushed.stdout
    finally:
        fa_nas.close()
        ha_nas.close()
    (stored,) = sessions(node1.db)
    assert stored["epoch"] == 3
    # both nodes answer for the pushed session now
    for node in (node1, node2):
        ha = _ha_view(node, view.session_id, "127.0.1.9")
        assert (ha.session_id, ha.epoch) == (view.session_id, 3)
