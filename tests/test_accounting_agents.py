"""The agents' RADIUS accounting (roles/accounting_client.py) against the home
AAA's own accounting server: Accounting-On, Start, Interim-Update with the
SA counters, Stop with its cause, a record that another continues, failover
to the next accounting server, and a bounded backlog when none answers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.roles.accounting_client import AccountedSession, AccountingReporter, TerminateCause, Usage
from aaa_vpn.roles.radius_client import RadiusClient, ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService
from aaa_vpn.store import init_store
from aaa_vpn.store.base import Store
from aaa_vpn.wire import radius as rc

from .test_home_service import FA1, NAI, NOW, SECRETS
from .test_home_service import provision as provision_store

HOME_A = ("192.0.2.50", 1813)
HOME_B = ("192.0.2.51", 1813)
SOURCE = (FA1, 40100)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = init_store(tmp_path / "vpn.db")[0]
    provision_store(opened)  # type: ignore[arg-type]
    try:
        yield opened
    finally:
        opened.close()


class Link:
    """Accounting datagrams from a reporter to in-memory home services and back."""

    def __init__(self, reporter: AccountingReporter, homes: dict[tuple[str, int], HomeService]) -> None:
        self.reporter, self.homes = reporter, homes
        self.down: set[tuple[str, int]] = set()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def pump(self, now: float) -> None:
        for _ in range(100):
            out = self.reporter.datagrams_to_send(now)
            if not out:
                return
            for data, destination in out:
                self.sent.append((data, destination))
                if destination in self.down:
                    continue
                for reply, _ in self.homes[destination].handle_accounting_batch([(data, SOURCE)], now):
                    self.reporter.receive_datagram(reply, destination, now)

    def run(self, now: float, until: float, usage: object) -> None:
        self.pump(now)
        while (when := self.reporter.get_timer()) is not None and when <= until:
            now = max(now, when)
            self.reporter.handle_timer(now, usage)  # type: ignore[arg-type]
            self.pump(now)


def reporter(*servers: tuple[str, int], interim: float = 60.0, **options: object) -> AccountingReporter:
    configs = [ServerConfig(a, p, Secret(SECRETS[FA1]), f"home{i}") for i, (a, p) in enumerate(servers)]
    client = RadiusClient(configs, timeout=0.5, retries=2, max_timeout=1.0, zombie_period=0, **options)  # type: ignore[arg-type]
    return AccountingReporter(client, nas_ip_address=IPv4Address(FA1), nas_identifier="fa1", interim_interval=interim)


def session(epoch: int = 1, expires: float = NOW + 600) -> AccountedSession:
    owner = f"s-1#{epoch}"
    return AccountedSession(owner, NAI, "s-1", IPv4Address("198.51.100.10"), expires, (owner,))


class Counters:
    """The SA backend's counters as the agent reads them, per owner."""

    def __init__(self) -> None:
        self.by_owner: dict[str, Usage] = {}

    def __call__(self, owners: tuple[str, ...]) -> Usage | None:
        found = [self.by_owner[o] for o in owners if o in self.by_owner]
        return sum(found, Usage()) if found else None


def test_on_start_interim_and_stop_make_one_closed_record_with_the_sa_counters(store: Store) -> None:
    home = HomeService(store, now=NOW)
    acct = reporter(HOME_A)
    link, usage = Link(acct, {HOME_A: home}), Counters()
    acct.starting(NOW, recovered=False)
    acct.observe([session()], NOW, usage)
    link.pump(NOW)
    (record,) = store.list_accounting(nai=NAI)
    assert record.acct_session_id == "s-1#1" and record.nas == FA1 and record.stopped is None
    assert record.attributes["Acct-Multi-Session-Id"] == "s-1" and record.client == "fa1"
    assert record.session_id == "s-1"  # the Class ties it to the AAA session
    usage.by_owner["s-1#1"] = Usage(
        input_octets=5 * 2**32 + 100, output_octets=2000, input_packets=70, output_packets=40
    )
    link.run(NOW, NOW + 61, usage)
    record = store.get_accounting(record.unique_id)
    assert (record.input_octets, record.output_octets, record.input_packets, record.output_packets) == (
        5 * 2**32 + 100,
        2000,
        70,
        40,
    )
    assert record.session_time == 60 and record.updates == 2
    usage.by_owner["s-1#1"] = Usage(
        input_octets=5 * 2**32 + 900, output_octets=3000, input_packets=80, output_packets=50
    )
    acct.observe([], NOW + 90, usage, {NAI: TerminateCause.USER_REQUEST})
    link.pump(NOW + 90)
    record = store.get_accounting(record.unique_id)
    assert record.stopped == NOW + 90 and record.terminate_cause == "User-Request"
    assert (record.input_octets, record.output_packets, record.session_time) == (5 * 2**32 + 900, 50, 90)
    assert dict(acct.counters) == {"on": 1, "start": 1, "interim": 1, "stop": 1, "stop.user_request": 1, "answered": 4}
    assert acct.get_timer() is None  # no Interim-Update for a stopped session


def test_a_new_epoch_here_stops_the_record_as_continued_and_starts_the_next(store: Store) -> None:
    home = HomeService(store, now=NOW)
    acct = reporter(HOME_A, interim=0)
    link, usage = Link(acct, {HOME_A: home}), Counters()
    acct.observe([session(1)], NOW, usage)
    acct.observe([session(2)], NOW + 5, usage)
    acct.observe([], NOW + 700, usage)  # its lifetime ran out
    link.pump(NOW + 700)
    first, second = sorted(store.list_accounting(nai=NAI), key=lambda r: r.acct_session_id)
    assert first.terminate_cause == "NAS-Request" and first.attributes["3GPP2-Session-Continue"] == 1
    assert second.terminate_cause == "Session-Timeout" and "3GPP2-Session-Continue" not in second.attributes
    assert "Acct-Input-Octets" not in second.attributes  # no counters from the backend: none claimed


def test_a_dead_accounting_server_fails_over_and_a_dead_pool_never_grows_memory(store: Store) -> None:
    home = HomeService(store, now=NOW)
    acct = reporter(HOME_A, HOME_B)
    link = Link(acct, {HOME_A: home, HOME_B: home})
    link.down.add(HOME_A)
    acct.observe([session()], NOW, Counters())
    link.run(NOW, NOW + 10, Counters())
    assert store.list_accounting(nai=NAI), "carried by the second server"
    first_to_a = next(data for data, where in link.sent if where == HOME_A)
    first_to_b = next(data for data, where in link.sent if where == HOME_B)
    assert first_to_a[0] == first_to_b[0] == rc.ACCOUNTING_REQUEST
    # Each transmission is sealed for its server (RFC 2866 Request Authenticator over
    # its own Identifier); both servers share the FA's secret here, and each server's
    # first Identifier is random, so the two may be equal bytes (1 in 256).
    for data in (first_to_a, first_to_b):
        assert data[4:20] == hashlib.md5(data[:4] + bytes(16) + data[20:] + SECRETS[FA1]).digest()
    # Nobody answers: requests fail and are counted; at most the backlog waits.
    lonely = AccountingReporter(
        RadiusClient([ServerConfig(*HOME_A, Secret(SECRETS[FA1]))], timeout=0.5, retries=1),
        nas_ip_address=IPv4Address(FA1),
        interim_interval=0,
        backlog=300,
    )
    sessions = [
        AccountedSession(f"s-{n}#1", f"u{n}@home.example", f"s-{n}", IPv4Address("198.51.100.10"), NOW + 600, ())
        for n in range(1000)
    ]
    lonely.observe(sessions, NOW, Counters())
    assert lonely.client.waiting <= 300 and lonely.counters["dropped_backlog"] >= 1000 - 256 - 300
    dead = Link(lonely, {})
    dead.down.add(HOME_A)
    dead.run(NOW, NOW + 60, Counters())
    assert lonely.counters["failed"] == lonely.counters["start"] - lonely.counters["dropped_backlog"]
    assert lonely.client.outstanding == 0 and lonely.client.waiting == 0


def test_a_forged_or_repeated_accounting_response_is_dropped_and_the_request_keeps_waiting(store: Store) -> None:
    home = HomeService(store, now=NOW)
    acct = reporter(HOME_A)
    acct.observe([session()], NOW, Counters())
    ((request, destination),) = acct.datagrams_to_send(NOW)
    ((genuine, _),) = home.handle_accounting_batch([(request, SOURCE)], NOW)
    forged = genuine[:4] + bytes(16) + genuine[20:]  # a Response Authenticator nobody with the secret made
    acct.receive_datagram(forged, destination, NOW)
    assert acct.counters["answered"] == 0 and acct.client.counters["dropped.bad_reply"] == 1
    acct.receive_datagram(genuine, destination, NOW)
    assert acct.counters["answered"] == 1
    acct.receive_datagram(genuine, destination, NOW)  # the same answer again: nothing outstanding
    assert acct.counters["answered"] == 1 and acct.client.counters["dropped.unmatched"] == 1
    assert acct.client.outstanding == 0 and acct.get_timer() == NOW + 60.0  # the next Interim-Update only
