"""The foreign AAA's and the agents' metrics endpoints, scraped over HTTP
while a mobile node registers and moves (flows A, B and C with every
component a process, tests/test_agents_live.py's topology on loopback).

Each endpoint listens on its node's own loopback address, port 0 (the port
is read from the node's log).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .metrics_scrape import Scrape, metrics_address, wait_for
from .mobility import AAAF, FA1, FA2, GW_DYNAMIC, HA
from .test_agents_live import Topology, start

NODES = {"fa1": FA1, "fa2": FA2, "ha": HA, "gw-dynamic": GW_DYNAMIC, "foreign-aaa": AAAF}


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    extra = {name: ("--metrics-listen", f"{address}:0") for name, address in NODES.items()}
    running = start(tmp_path, foreign=True, extra=extra)
    try:
        yield running
    finally:
        codes = running.stop()
        assert codes == dict.fromkeys(codes, 0), codes


def endpoints(topology: Topology) -> dict[str, tuple[str, int]]:
    return {name: metrics_address(topology.logs[name]) for name in NODES}


def test_agents_and_foreign_aaa_count_a_registration_and_a_handoff(topology: Topology) -> None:
    where = endpoints(topology)
    code, result = topology.mn("register", "--fa", FA1)
    assert code == 0 and result["accepted"], result

    fa1 = wait_for(where["fa1"], lambda s: s.value("aaa_vpn_visitors", role="fa") == 1)
    assert fa1.value("aaa_vpn_sa_paths", role="fa", backend="memory") == 2  # FA-HA, FA-GW (dynamic)
    # two Registration Requests answered: the first gets the FA's challenge (RFC 4721), the second the accept
    assert fa1.value("aaa_vpn_request_duration_seconds_count", role="fa", kind="registration") == 2
    assert fa1.value("aaa_vpn_request_duration_seconds_count", role="fa", kind="aaa") == 1
    assert fa1.value("aaa_vpn_upstream_server_up", role="fa", server=f"{AAAF}:{_port(topology)}") == 1
    assert fa1.value("aaa_vpn_role_events_total", role="fa", event="radius_client.accepts") == 1
    assert fa1.value("aaa_vpn_workers", role="fa") == 1

    ha = wait_for(where["ha"], lambda s: s.value("aaa_vpn_bindings", role="ha") == 1)
    assert ha.value("aaa_vpn_request_duration_seconds_count", role="ha", kind="registration") == 1
    assert ha.value("aaa_vpn_request_duration_seconds_count", role="ha", kind="aaa") == 1
    gw = wait_for(where["gw-dynamic"], lambda s: s.value("aaa_vpn_bindings", role="gw") == 1)
    assert gw.value("aaa_vpn_sa_paths", role="gw", backend="memory") == 1

    # flow C: the move to FA2 is answered by the foreign AAA from its cache
    code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
    assert code == 0 and result["accepted"], result
    foreign = wait_for(where["foreign-aaa"], lambda s: s.value("aaa_vpn_handoffs_total", role="foreign") == 1)
    fa1_client, fa2_client = f"fa-{FA1}", f"fa-{FA2}"
    assert requests(foreign, fa1_client) == 1 and requests(foreign, fa2_client) == 1
    assert (
        foreign.value("aaa_vpn_radius_decisions_total", role="foreign", client=fa1_client, outcome="accept", reason="")
        == 1
    )
    assert (
        foreign.value("aaa_vpn_radius_decisions_total", role="foreign", client=fa2_client, outcome="handoff", reason="")
        == 1
    )
    assert foreign.total("aaa_vpn_radius_replies_total", code="Access-Accept") == 2
    assert foreign.value("aaa_vpn_request_duration_seconds_count", role="foreign", kind="Access-Request") == 2
    assert foreign.value("aaa_vpn_sessions", role="foreign") == 1
    assert foreign.total("aaa_vpn_upstream_server_up", role="foreign") == 1
    ha = wait_for(where["ha"], lambda s: s.value("aaa_vpn_handoffs_total", role="ha") == 1)
    assert ha.value("aaa_vpn_bindings", role="ha") == 1
    fa2 = wait_for(where["fa2"], lambda s: s.value("aaa_vpn_visitors", role="fa") == 1)
    assert fa2.value("aaa_vpn_request_duration_seconds_count", role="fa", kind="registration") == 2


def requests(scrape: Scrape, client: str) -> float:
    return scrape.value(
        "aaa_vpn_radius_requests_total", role="foreign", port="auth", code="Access-Request", client=client
    )


def _port(topology: Topology) -> int:
    from aaa_vpn.lab.processes import listening_port

    port = listening_port(topology.logs["foreign-aaa"])
    assert port is not None
    return port


# -- the foreign AAA with two workers ----------------------------------------------------------------

FOREIGN = "127.0.0.3"
FA_SECRET = b"fa-to-aaaf-metrics-secret"
AAAF_SECRET = b"aaaf-to-home-metrics-secret"


def test_foreign_aaa_with_two_workers_sums_them_and_shows_its_pool(
    tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    from .radius_client import access_request, exchange, served_port, silent_server, wait_until_serving
    from .test_foreign_live import start_foreign
    from .test_home_server import MN_SECRET, NAI, SECRET, cli, provision, start_server, stop

    db = tmp_path / "vpn.db"
    provision(db)
    cli(db, "client", "add", "aaaf", "--address", FOREIGN, "--role", "foreign-aaa", "--secret", AAAF_SECRET.decode())
    home_log, aaaf_log = tmp_path / "home.log", tmp_path / "foreign.log"
    home = start_server(db, 0, 1, home_log)
    dead = silent_server()
    aaaf = None
    try:
        home_port = served_port(home, home_log)
        found = re.search(r"accounting=[\d.]+:(\d+)", home_log.read_text())
        assert found is not None, home_log.read_text()
        home_accounting = int(found.group(1))
        config = tmp_path / "foreign.toml"
        config.write_text(
            f'listen = "{FOREIGN}"\nport = 0\nworkers = 2\nmetrics_listen = "{FOREIGN}:0"\n'
            "[upstream]\ntimeout = 0.3\nretries = 1\ndead_time = 30\nstatus_interval = 1\n"
            f'[[clients]]\nname = "fa-lo"\naddress = "127.0.0.1"\nsecret = "{FA_SECRET.decode()}"\n'
            '[[realms]]\nname = "home.example"\n'
            f'[[realms.servers]]\nname = "dead"\naddress = "127.0.0.1"\nport = {dead.port}\n'
            f'secret = "{AAAF_SECRET.decode()}"\n'
            f'[[realms.servers]]\nname = "home"\naddress = "127.0.0.1"\nport = {home_port}\n'
            f"accounting_port = {home_accounting}\n"
            f'secret = "{AAAF_SECRET.decode()}"\n'
        )
        config.chmod(0o600)
        aaaf = start_foreign(config, aaaf_log)
        server = (FOREIGN, served_port(aaaf, aaaf_log))
        endpoint = metrics_address(aaaf_log)
        wait_until_serving(("127.0.0.1", home_port), SECRET)
        wait_for(endpoint, lambda s: s.value("aaa_vpn_workers", role="foreign") == 2)
        sent = 16
        for _ in range(sent):  # each from a socket of its own: spread over both workers
            request = access_request(FA_SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2")
            assert exchange(server, request, timeout=5.0).code == 2  # Access-Accept
        after = wait_for(endpoint, lambda s: s.total("aaa_vpn_radius_requests_total", client="fa-lo") == sent)
        assert after.total("aaa_vpn_radius_replies_total", client="fa-lo", code="Access-Accept") == sent
        assert after.total("aaa_vpn_request_duration_seconds_count", kind="Access-Request") == sent
        accepted = after.value(
            "aaa_vpn_radius_decisions_total", role="foreign", client="fa-lo", outcome="accept", reason=""
        )
        assert accepted == sent
        # the pool's members, per worker that uses them: the silent one is marked dead by both
        wait_for(
            endpoint,
            lambda s: (
                s.value("aaa_vpn_upstream_server_up", role="foreign", server="dead") == 0
                and s.value("aaa_vpn_upstream_server_up", role="foreign", server="home") == 2
            ),
        )
        pids = set(re.findall(r"aaa_vpn\.foreign\[(\d+)\]: access accepted", aaaf_log.read_text()))
        assert len(pids) == 2, f"accepts came from workers {pids}"
        # accounting, proxied home, on the foreign AAA's accounting port (radclient as the FA)
        found = re.search(r"worker listening .*accounting=[\d.]+:(\d+)", aaaf_log.read_text())
        assert found is not None, aaaf_log.read_text()
        radclient = require_tool("radclient")
        for number in range(3):
            done = subprocess.run(
                [radclient, "-r", "1", "-t", "5", f"{FOREIGN}:{found.group(1)}", "acct", FA_SECRET.decode()],
                input=f'User-Name = "{NAI}"\nNAS-IP-Address = 127.0.0.1\nAcct-Session-Id = "m-{number}"\n'
                "Acct-Status-Type = Start\n",
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        acct = wait_for(
            endpoint, lambda s: s.total("aaa_vpn_radius_replies_total", port="acct", code="Accounting-Response") == 3
        )
        assert acct.total("aaa_vpn_radius_requests_total", port="acct", code="Accounting-Request", client="fa-lo") == 3
        assert acct.total("aaa_vpn_request_duration_seconds_count", kind="Accounting-Request") == 3
    finally:
        dead.close()
        codes = (stop(aaaf) if aaaf is not None else 0, stop(home))
        assert codes == (0, 0), aaaf_log.read_text()
