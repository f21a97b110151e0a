"""The home AAA's batch handling (group commit) on a real SQLite database."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from aaa_vpn.model import Client, ClientRole, User
from aaa_vpn.roles.home_aaa import HomeAaaOptions
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService
from aaa_vpn.store import init_store
from aaa_vpn.store.sqlite import SqliteStore
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.radius_profile import decode_profile

from .radius_client import access_request

SECRET = b"batch-test-secret"
MN = b"mn-secret"
SOURCE = ("127.0.0.1", 40000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db, key = tmp_path / "vpn.db", tmp_path / "vpn.key"
    store, _created = init_store(db, key)
    store.add_client(Client("fa1", IPv4Network("127.0.0.1/32"), Secret(SECRET), ClientRole.FA))
    for n in range(1, 4):
        store.add_user(
            User(
                f"mn{n}@home.example",
                IPv4Address("127.0.0.2"),
                Secret(MN),
                256,
                Secret(bytes(16)),
                home_address=IPv4Address(f"198.51.100.{n}"),
            )
        )
    yield store  # type: ignore[misc]
    store.close()


def _aaa(store: SqliteStore, random_bytes: Callable[[int], bytes] = os.urandom) -> HomeService:
    return HomeService(store, HomeAaaOptions(), random_bytes=random_bytes)


def _request(nai: str) -> bytes:
    return access_request(SECRET, nai, MN, care_of="127.0.0.1").RequestPacket()  # type: ignore[no-any-return]


def _by_source(replies: list[tuple[bytes, tuple[str, int]]]) -> dict[tuple[str, int], bytes]:
    out: dict[tuple[str, int], bytes] = {}
    for reply, destination in replies:
        assert destination not in out, f"two replies to {destination}"
        out[destination] = reply
    return out


def test_a_batch_is_stored_in_one_go_and_every_reply_matches_its_session(store: SqliteStore) -> None:
    aaa = _aaa(store)
    batch = [(_request(f"mn{n}@home.example"), (SOURCE[0], SOURCE[1] + n)) for n in (1, 2, 3)]
    replies = _by_source(aaa.handle_batch(batch, now=1000.0))
    assert aaa.counters["store_transactions"] == 1  # one transaction for the three sessions
    stored = {s.nai: s.session_id for s in store.list_sessions()}
    for data, source in batch:
        reply = replies[source]
        assert reply[0] == rc.ACCESS_ACCEPT
        profile = decode_profile(reply[20:], SECRET, data[4:20])
        assert stored[f"mn{profile.home_address.packed[-1]}@home.example"] == profile.session_id
    assert aaa.counters["accepts"] == 3 and aaa.counters["sessions_created"] == 3


def test_a_retransmission_inside_a_batch_is_absorbed_and_one_session_made(store: SqliteStore) -> None:
    aaa = _aaa(store)
    raw = _request("mn1@home.example")
    replies = aaa.handle_batch([(raw, SOURCE), (raw, SOURCE)], now=1000.0)
    assert len(replies) == 1 and replies[0][0][0] == rc.ACCESS_ACCEPT
    assert len(store.find_sessions("mn1@home.example")) == 1
    # and in a later batch, the byte-identical reply from the duplicate cache
    assert aaa.handle_batch([(raw, SOURCE)], now=1001.0) == replies
    assert aaa.counters["duplicates"] == 1 and aaa.counters["absorbed"] == 1
    assert aaa.counters["sessions_created"] == 1


def test_two_registrations_of_one_user_in_a_batch_leave_the_last(store: SqliteStore) -> None:
    aaa = _aaa(store)
    first, second = _request("mn1@home.example"), _request("mn1@home.example")
    later = (SOURCE[0], SOURCE[1] + 1)
    replies = _by_source(aaa.handle_batch([(first, SOURCE), (second, later)], now=1000.0))
    assert set(replies) == {SOURCE, later}
    # both name nothing, so neither depends on the other's write: one transaction, the last wins
    assert aaa.counters["store_transactions"] == 1
    last = decode_profile(replies[later][20:], SECRET, second[4:20])
    assert [s.session_id for s in store.find_sessions("mn1@home.example")] == [last.session_id]


def test_a_renewal_waits_for_the_write_of_the_session_it_names(store: SqliteStore) -> None:
    aaa = _aaa(store)
    first = _request("mn1@home.example")
    ((reply, _),) = aaa.handle_batch([(first, SOURCE)], now=1000.0)
    profile = decode_profile(reply[20:], SECRET, first[4:20])
    # a new registration and a Service-Update naming the session, in one batch:
    # the second reads the session the first replaces, so it waits for that write
    renewal = access_request(
        SECRET, "mn1@home.example", MN, care_of="127.0.0.1", session_id=profile.session_id, request_type=5
    ).RequestPacket()
    later = (SOURCE[0], SOURCE[1] + 1)
    before = aaa.counters["store_transactions"]
    replies = _by_source(aaa.handle_batch([(_request("mn1@home.example"), SOURCE), (renewal, later)], now=1001.0))
    assert aaa.counters["store_transactions"] - before == 2
    (session,) = store.find_sessions("mn1@home.example")
    # the Service-Update named a session that the new registration replaced: it creates another
    updated = decode_profile(replies[later][20:], SECRET, renewal[4:20])
    assert session.session_id == updated.session_id != profile.session_id


def test_spi_collision_in_a_batch_draws_again_and_still_answers_every_request(store: SqliteStore) -> None:
    # mn1's SPIs come from recorded randomness; the batch for mn2 and mn3 is then
    # handed the very same bytes first, so its writes collide, and the requests
    # decided again (with fresh randomness) must find free SPIs. Session ids and
    # root keys (16- and 32-byte draws) stay random.
    recorded: list[bytes] = []

    def recording(n: int) -> bytes:
        value = os.urandom(n)
        if n not in (16, 32):
            recorded.append(value)
        return value

    aaa = _aaa(store, recording)
    ((first, _),) = aaa.handle_batch([(_request("mn1@home.example"), SOURCE)], now=1000.0)
    assert first[0] == rc.ACCESS_ACCEPT
    taken = {(str(a.node), a.spi) for s in store.list_sessions() for a in s.spis}
    colliding = iter(recorded * 2)

    def collide_then_random(n: int) -> bytes:
        if n not in (16, 32):
            value = next(colliding, None)
            if value is not None and len(value) == n:
                return value
        return os.urandom(n)

    aaa.role.random_bytes = collide_then_random
    batch = [(_request("mn2@home.example"), SOURCE), (_request("mn3@home.example"), (SOURCE[0], SOURCE[1] + 1))]
    replies = _by_source(aaa.handle_batch(batch, now=1001.0))
    assert [replies[source][0] for _data, source in batch] == [rc.ACCESS_ACCEPT, rc.ACCESS_ACCEPT]
    assert aaa.counters["spi_collisions"] >= 1
    sessions = store.list_sessions()
    assert sorted(s.nai for s in sessions) == ["mn1@home.example", "mn2@home.example", "mn3@home.example"]
    per_node: dict[str, list[int]] = {}
    for s in sessions:
        for a in s.spis:
            per_node.setdefault(str(a.node), []).append(a.spi)
    assert all(len(v) == len(set(v)) for v in per_node.values())
    assert taken <= {(str(a.node), a.spi) for s in sessions for a in s.spis}  # mn1 kept its SPIs
    for data, source in batch:
        profile = decode_profile(replies[source][20:], SECRET, data[4:20])
        assert profile.session_id in {s.session_id for s in sessions}
