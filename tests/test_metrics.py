"""Prometheus metrics: the families and their text format, the workers'
shared slots, and the real home AAA scraped over HTTP while real RADIUS
traffic (the project's client and radclient) reaches its two workers.

Addresses: the home AAA on 127.0.0.1 (port 0: it picks its own), its
metrics endpoint on 127.0.0.1 (port 0); clients as in tests/test_home_server.py;
127.0.0.99 is nobody.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyrad.packet
import pytest

from aaa_vpn.net.metrics_server import Publisher, WorkerSlots, parse_listen
from aaa_vpn.service.metrics import FAMILIES, Histogram, Recorder, Snapshot, merge, render
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.radius import load_dictionary

from .metrics_scrape import Scrape, get, metrics_address, parse, scrape, wait_for
from .radius_client import access_request, exchange, served_port, wait_until_serving
from .test_home_server import MN_SECRET, NAI, SECRET, Server, provision, start_server, stop

REPO = Path(__file__).resolve().parents[1]

# -- the families and the format -------------------------------------------------------------------


def test_every_family_follows_the_conventions_and_is_documented() -> None:
    documented = set(re.findall(r"`(aaa_vpn_[a-z_]+)`", (REPO / "docs" / "metrics.md").read_text()))
    assert documented == set(FAMILIES), "docs/metrics.md and service/metrics.py FAMILIES differ"
    for name, family in FAMILIES.items():
        assert re.fullmatch(r"aaa_vpn_[a-z][a-z0-9_]*", name)
        assert name.endswith("_total") == (family.type == "counter"), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name


def test_role_counters_feed_the_derived_families_without_counting_twice() -> None:
    recorder = Recorder("home")
    recorder.inc("aaa_vpn_radius_requests_total", port="auth", code="Access-Request", client='fa "1"\\')
    counters = {"dropped": 3, "dropped.unknown_client": 2, "dropped.bad_authenticator": 1, "sessions_moved": 4}
    scrape = parse(render(recorder.snapshot(counters)))
    assert scrape.value("aaa_vpn_radius_dropped_total", role="home", reason="unknown_client") == 2
    assert scrape.value("aaa_vpn_radius_dropped_total", role="home", reason="bad_authenticator") == 1
    assert scrape.value("aaa_vpn_handoffs_total", role="home") == 4
    assert scrape.value("aaa_vpn_role_events_total", role="home", event="dropped") == 3
    # a label value with a quote and a backslash survives the round trip
    assert scrape.series("aaa_vpn_radius_requests_total")[0]["client"] == 'fa "1"\\'


def test_histograms_are_cumulative_and_add_up() -> None:
    one, two = Recorder("fa"), Recorder("fa")
    for value in (0.0001, 0.003, 0.003, 7.0, 60.0):
        one.observe("aaa_vpn_request_duration_seconds", value, kind="registration")
    two.observe("aaa_vpn_request_duration_seconds", 0.003, kind="registration")
    total = merge([one.snapshot({}), two.snapshot({})])
    scrape = parse(render(total))
    bucket = "aaa_vpn_request_duration_seconds_bucket"
    labels = {"role": "fa", "kind": "registration"}
    assert scrape.value(bucket, le="0.0005", **labels) == 1
    assert scrape.value(bucket, le="0.005", **labels) == 4
    assert scrape.value(bucket, le="10", **labels) == 5
    assert scrape.value(bucket, le="+Inf", **labels) == 6
    assert scrape.value("aaa_vpn_request_duration_seconds_count", **labels) == 6
    assert scrape.value("aaa_vpn_request_duration_seconds_sum", **labels) == pytest.approx(67.0091)
    with pytest.raises(ValueError):
        Histogram((1.0,)).add(Histogram((2.0,)))


def test_an_undeclared_family_is_a_bug_not_a_series() -> None:
    with pytest.raises(ValueError, match="undeclared"):
        render(Snapshot(counters={("aaa_vpn_nothing_total", ()): 1}))


def test_slots_sum_workers_and_a_restarted_worker_carries_on() -> None:
    slots = WorkerSlots(2, slot_size=64 * 1024)
    assert slots.total().counters == {} and not slots.all_written()
    first, second = Recorder("home"), Recorder("home")
    first.inc("aaa_vpn_radius_requests_total", 5, port="auth", code="Access-Request", client="fa1")
    second.inc("aaa_vpn_radius_requests_total", 7, port="auth", code="Access-Request", client="fa1")
    second.set("aaa_vpn_sessions", 3)
    Publisher(slots, 0, lambda: first.snapshot({"received": 5})).publish()
    Publisher(slots, 1, lambda: second.snapshot({"received": 7})).publish()
    assert slots.all_written() and slots.all_fresh(5.0, time.monotonic())
    key = (
        "aaa_vpn_radius_requests_total",
        (("client", "fa1"), ("code", "Access-Request"), ("port", "auth"), ("role", "home")),
    )
    assert slots.total().counters[key] == 12
    # worker 1 dies and is restarted: its counters go on from 7, its gauges start afresh
    restarted = Recorder("home")
    restarted.inc("aaa_vpn_radius_requests_total", 1, port="auth", code="Access-Request", client="fa1")
    Publisher(slots, 1, lambda: restarted.snapshot({"received": 1})).publish()
    total = slots.total()
    assert total.counters[key] == 13
    assert total.counters[("aaa_vpn_role_events_total", (("event", "received"), ("role", "home")))] == 13
    assert ("aaa_vpn_sessions", (("role", "home"),)) not in total.gauges
    # a snapshot too large for its slot leaves the last one in place
    assert not slots.write(0, b"x" * (64 * 1024), time.monotonic(), 1)
    assert slots.total().counters[key] == 13


def test_metrics_listen_is_host_and_port() -> None:
    assert parse_listen("127.0.0.1:9812") == ("127.0.0.1", 9812)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9812", "127.0.0.1:x", "127.0.0.1:70000", ":80"):
        with pytest.raises(Exception, match="metrics-listen"):
            parse_listen(bad)


# -- the home AAA, two workers, over HTTP ----------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, tuple[str, int]]]:
    tmp = tmp_path_factory.mktemp("metrics")
    db = tmp / "vpn.db"
    provision(db)
    log = tmp / "server.log"
    process = start_server(db, 0, 2, log, "--metrics-listen", "127.0.0.1:0")
    try:
        port = served_port(process, log)
        endpoint = metrics_address(log)
        # Status-Server until every worker answers is not possible to steer;
        # wait for one answer, then for both workers' first snapshots.
        wait_until_serving(("127.0.0.1", port), SECRET)
        wait_for(endpoint, lambda s: s.value("aaa_vpn_workers", role="home") == 2)
        yield Server(db, ("127.0.0.1", port), process, log), endpoint
    finally:
        code = stop(process)
        assert code == 0, f"server exited with {code}:\n{log.read_text()}"


def test_two_workers_totals_equal_the_requests_sent(
    home: tuple[Server, tuple[str, int]], require_tool: Callable[[str], str], tmp_path: Path
) -> None:
    server, endpoint = home
    radclient = require_tool("radclient")
    before = settled(endpoint)
    registrations, statuses, strangers, accounting = 24, 4, 3, 3
    for _ in range(registrations):  # each from its own socket: the kernel spreads them over the workers
        request = access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2")
        reply = exchange(server.address, request)
        assert reply.code == rc.ACCESS_ACCEPT
    class_value = next(v for c, v in reply.attributes if c == rc.CLASS)
    for number in range(accounting):  # Accounting-Requests on the accounting port, by radclient
        done = subprocess.run(
            [radclient, "-r", "1", "-t", "5", f"127.0.0.1:{_accounting_port(server)}", "acct", SECRET.decode()],
            input=f'User-Name = "{NAI}"\nNAS-IP-Address = 127.0.0.1\nAcct-Session-Id = "acct-{number}"\n'
            f"Class = 0x{class_value.hex()}\nAcct-Status-Type = Start\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    secret = SECRET.decode()
    request_file = tmp_path / "status.txt"
    request_file.write_text("Message-Authenticator = 0x00\nNAS-IP-Address = 127.0.0.1\n")
    for _ in range(statuses):
        subprocess.run(
            [
                radclient,
                "-r",
                "1",
                "-t",
                "5",
                "-f",
                str(request_file),
                f"127.0.0.1:{server.address[1]}",
                "status",
                secret,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    for _ in range(strangers):
        assert exchange(server.address, status_server_bytes(), source=("127.0.0.99", 0), timeout=0.3).reply is None

    def grew(now: Scrape, name: str, **labels: str) -> float:
        return now.total(name, **labels) - before.total(name, **labels)

    sent = registrations + statuses + strangers + accounting
    after = wait_for(endpoint, lambda s: grew(s, "aaa_vpn_radius_requests_total", role="home") == sent)
    assert grew(after, "aaa_vpn_radius_requests_total", code="Access-Request", client="fa1") == registrations
    assert grew(after, "aaa_vpn_radius_requests_total", code="Status-Server", client="fa1") == statuses
    assert grew(after, "aaa_vpn_radius_requests_total", client="unknown") == strangers
    assert grew(after, "aaa_vpn_radius_replies_total", code="Access-Accept", client="fa1") == registrations + statuses
    assert grew(after, "aaa_vpn_radius_decisions_total", client="fa1") == registrations
    assert grew(after, "aaa_vpn_radius_dropped_total", reason="unknown_client") == strangers
    assert grew(after, "aaa_vpn_request_duration_seconds_count", kind="Access-Request") == registrations
    assert grew(after, "aaa_vpn_request_duration_seconds_count", kind="Status-Server") == statuses
    assert grew(after, "aaa_vpn_role_events_total", event="access_requests") == registrations
    assert grew(after, "aaa_vpn_radius_requests_total", port="acct", code="Accounting-Request") == accounting
    assert grew(after, "aaa_vpn_radius_replies_total", port="acct", code="Accounting-Response") == accounting
    assert grew(after, "aaa_vpn_request_duration_seconds_count", kind="Accounting-Request") == accounting
    assert grew(after, "aaa_vpn_db_duration_seconds_count", operation="record_accounting") >= 1
    assert after.total("aaa_vpn_db_duration_seconds_count", operation="session_writes") >= 1
    assert after.value("aaa_vpn_workers", role="home") == 2
    assert after.types["aaa_vpn_request_duration_seconds"] == "histogram"
    # both workers decided some of them (each logs with its own pid): the sum is of both
    pids = set(re.findall(r"aaa_vpn\.home\[(\d+)\]: session ", server.log_text()))
    assert len(pids) == 2, f"the decisions came from workers {pids}"
    # the live session, counted by worker 0 from the database
    wait_for(endpoint, lambda s: s.value("aaa_vpn_sessions", role="home") == 1)


def _accounting_port(server: Server) -> int:
    line = next(line for line in server.log_text().splitlines() if "worker listening" in line)
    return int(line.split("accounting=")[1].split()[0].rsplit(":", 1)[1])


def settled(endpoint: tuple[str, int]) -> Scrape:
    """A scrape that no longer changes: every worker has published what it did
    (they publish about once a second)."""
    last = scrape(endpoint)
    while True:
        time.sleep(1.5)
        now = scrape(endpoint)
        if now.total("aaa_vpn_radius_requests_total") == last.total("aaa_vpn_radius_requests_total"):
            return now
        last = now


def status_server_bytes() -> bytes:
    """A Status-Server under a secret nobody here knows."""
    request = pyrad.packet.AuthPacket(code=rc.STATUS_SERVER, id=7, secret=b"whatever-secret", dict=load_dictionary())
    request.authenticator = os.urandom(16)
    request.add_message_authenticator()
    return bytes(request.RequestPacket())


def test_the_endpoint_answers_only_metrics_and_survives_bad_requests(home: tuple[Server, tuple[str, int]]) -> None:
    _, endpoint = home
    assert get(endpoint, "/nothing")[0] == 404
    assert get(endpoint, "/metrics", "POST")[0] == 405
    status, _, body = get(endpoint, "/metrics", "HEAD")
    assert status == 200 and body == ""
    with socket.create_connection(endpoint, timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection(endpoint, timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    body = get(endpoint)[2]
    for secret in (SECRET, MN_SECRET, b"ha1-shared-secret", b"gw-dyn-secret"):
        assert secret.decode() not in body
    assert NAI not in body  # no user names either: labels are provisioned client names, codes and reasons


def test_the_grafana_dashboard_queries_only_declared_families() -> None:
    import json

    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"(aaa_vpn_[a-z_]+?)(?:_bucket)?[{\[ )]", target["expr"] + " "))
    assert used and used <= set(FAMILIES), used - set(FAMILIES)


def test_agent_durations_pair_requests_with_their_answers() -> None:
    from aaa_vpn.service.agent_metrics import AgentMetrics

    figures = AgentMetrics("fa", "memory", 0.0)
    mn, aaa = ("192.0.2.100", 434), ("192.0.2.5", 1812)
    identification = bytes.fromhex("0102030405060708")
    # RFC 5944 3.3: type 1, flags, lifetime, home address, home agent, care-of address, identification
    rrq = bytes([1, 0]) + b"\x00\x3c" + bytes(12) + identification
    # RFC 5944 3.4: type 3, code, lifetime, home address, home agent, identification (its high half may differ)
    rrp = bytes([3, 0]) + b"\x00\x3c" + bytes(8) + b"\xff\xff\xff\xff" + identification[4:]
    figures.received("mip", rrq, mn, 10.0)
    figures.received("mip", rrq, mn, 10.5)  # a retransmission: the first one's time counts
    figures.sent("radius", bytes([1, 7]) + bytes(18), aaa, 10.1)
    figures.sent("radius", bytes([1, 7]) + bytes(18), aaa, 10.6)  # retransmitted
    figures.received("radius", bytes([2, 7]) + bytes(18), aaa, 10.7)
    figures.sent("accounting", bytes([4, 9]) + bytes(18), ("192.0.2.5", 1813), 11.0)
    figures.received("accounting", bytes([5, 9]) + bytes(18), ("192.0.2.5", 1813), 11.25)
    figures.received("radius", bytes([2, 8]) + bytes(18), aaa, 10.8)  # answers nothing asked: not timed
    figures.sent("mip", rrp, mn, 11.0)
    figures.sent("mip", rrp, ("192.0.2.101", 434), 11.0)  # another node: not timed
    scrape = parse(render(figures.snapshot({"requests": 1}, 1, None, {}, 11.0)))
    count, total = "aaa_vpn_request_duration_seconds_count", "aaa_vpn_request_duration_seconds_sum"
    assert scrape.value(count, role="fa", kind="registration") == 1
    assert scrape.value(total, role="fa", kind="registration") == pytest.approx(1.0)
    assert scrape.value(total, role="fa", kind="aaa") == pytest.approx(0.6)
    assert scrape.value(total, role="fa", kind="accounting") == pytest.approx(0.25)
    assert scrape.value("aaa_vpn_visitors", role="fa") == 1
