"""Flows A, B, C, D, E and F (docs/design.md section 2, docs/flows.md) with every
component a separate ``aaa-vpn`` process on loopback -- the same flows as
tests/test_flows.py, tests/test_smooth_handoff.py and tests/test_coa.py,
which run them in one process with a fake clock.

* ``aaa-vpn serve home`` on 127.0.0.1 (port 0: the port it got is read from
  its log), its database provisioned through the library with
  tests/mobility.py's ``provision``;
* for flow C, ``aaa-vpn serve foreign`` on 127.0.0.3 (port 0 too) with FA1
  and FA2 as its clients and realm home.example routed to the home AAA;
* ``aaa-vpn agent ha`` (127.0.0.2), ``agent fa`` FA1 (127.0.0.11) and FA2
  (127.0.0.12), ``agent gw`` static (127.0.0.21) and dynamic (127.0.0.22),
  all on one high Mobile IP port the test binds on every agent address and
  hands over (``--mip-socket-fd``), each with a ``--state-file``;
* the mobile node: ``aaa-vpn mn ... register`` / ``deregister``;
* the operator (flow F): ``aaa-vpn vpn add``, ``session push`` and
  ``session disconnect --source <home AAA>`` on the test's database; the FA
  and HA take CoA/Disconnect-Requests on a port bound and handed over the
  same way (``--coa-socket-fd``), which the database's client records name.

After every step each node's SA table is read from its state file: the right
peers, both ends of a path with mirrored SPIs, old SAs gone after the
handoff, the stationary path unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aaa_vpn.lab.processes import listening_port
from aaa_vpn.lab.topology import BoundPort, bind_udp
from aaa_vpn.store import init_store, open_store

from .mobility import AAA, AAAF, FA1, FA2, GATEWAY_KEYS, GW_DYNAMIC, GW_STATIC, HA, HOME_ADDRESS, MN_HA, NAI, SECRETS
from .mobility import provision as provision_store

REPO = Path(__file__).resolve().parents[1]
MN_SOURCE = "127.0.0.100"
AGENTS = {
    "ha": ("ha", HA),
    "fa1": ("fa", FA1),
    "fa2": ("fa", FA2),
    "gw-static": ("gw", GW_STATIC),
    "gw-dynamic": ("gw", GW_DYNAMIC),
}
Table = list[tuple[str, str]]


def private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def aaa_vpn(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Topology:
    tmp: Path
    mip: BoundPort
    coa: BoundPort
    radius_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    commands: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def mip_port(self) -> int:
        return self.mip.port

    def state_file(self, name: str) -> Path:
        return self.tmp / f"{name}.json"

    def state(self, name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.state_file(name).read_text())
        return document

    def table(self, name: str) -> Table:
        return sorted((sa["role"], sa["peer"]) for sa in self.state(name)["sas"])

    def tables(self) -> dict[str, Table]:
        return {name: self.table(name) for name in AGENTS}

    def settled(self, timeout: float = 10.0) -> dict[str, int]:
        """Poll the state files until no agent has an exchange under way
        (``in_flight`` 0 everywhere); return what they show."""
        deadline = time.monotonic() + timeout
        while True:
            in_flight = {name: self.state(name)["in_flight"] for name in AGENTS}
            if not any(in_flight.values()) or time.monotonic() > deadline:
                return in_flight
            time.sleep(0.03)

    def spawn(self, name: str, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.commands[name] = (args, pass_fds)
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "aaa_vpn.cli", *args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
            )
        self.logs[name] = log

    def respawn(self, name: str) -> None:
        """Start ``name`` again with its command and its sockets."""
        args, pass_fds = self.commands[name]
        self.spawn(name, *args, pass_fds=pass_fds)

    def listening(self, name: str, timeout: float = 20.0) -> int:
        """The port AAA server ``name`` (started on port 0) says it got."""
        deadline = time.monotonic() + timeout
        while (port := listening_port(self.logs[name])) is None:
            assert self.processes[name].poll() is None, f"{name} exited:\n{self.logs[name].read_text()}"
            assert time.monotonic() < deadline, f"{name} is not listening"
            time.sleep(0.03)
        return port

    def mn(
        self, action: str, *args: str, mn_aaa_secret: bytes | None = None, options: tuple[str, ...] = ()
    ) -> tuple[int, dict[str, Any]]:
        """Run ``aaa-vpn mn [options] action [args]``; ``options`` go to the
        ``mn`` group (e.g. ``("--lifetime", "3")``)."""
        secret = private(self.tmp / "mn.secret", mn_aaa_secret if mn_aaa_secret is not None else SECRETS_MN)
        result = aaa_vpn(
            "mn",
            "--nai",
            NAI,
            "--home-address",
            HOME_ADDRESS,
            "--home-agent",
            HA,
            "--mn-ha-spi",
            "256",
            "--mn-ha-key-file",
            str(self.tmp / "mn.mnha"),
            "--mn-aaa-secret-file",
            str(secret),
            "--mip-port",
            str(self.mip_port),
            "--source",
            MN_SOURCE,
            "--retransmit",
            "1",
            *options,
            action,
            *args,
            "--json",
        )
        assert result.stdout, result.stderr
        return result.returncode, json.loads(result.stdout)

    def wait_for(self, expected: dict[str, Table], timeout: float = 3.0) -> dict[str, Table]:
        """Poll the state files until they show ``expected`` (a deregistration
        reaches the gateways after the node's reply); return what they show."""
        deadline = time.monotonic() + timeout
        while True:
            tables = self.tables()
            if all(tables[name] == sorted(table) for name, table in expected.items()):
                return tables
            if time.monotonic() > deadline:
                return tables
            time.sleep(0.03)

    def stop(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[name] = -9
        self.mip.close()
        self.coa.close()
        return codes


SECRETS_MN = b"mn1-aaa-secret"  # tests/mobility.py's MN_AAA


def start(
    tmp: Path,
    foreign: bool = False,
    gateways: tuple[str, ...] = ("static", "dynamic"),
    gw_args: tuple[str, ...] = (),
    home_args: tuple[str, ...] = (),
    aaa_args: tuple[str, ...] = (),
    extra: dict[str, tuple[str, ...]] | None = None,
    agent_args: dict[str, tuple[str, ...]] | None = None,
    foreign_toml: str = "",
    foreign_realms: str | None = None,
) -> Topology:
    """The topology; with ``foreign`` FA1 and FA2 ask a foreign AAA process;
    ``gateways``: the user's VPN records (tests/mobility.py's ``provision``);
    ``gw_args``: more options for both gateways, ``home_args`` for the home
    AAA (flow G's lifetimes), ``aaa_args`` for the FAs and the HA; ``extra``: more
    options by process name; ``agent_args`` for the agents named,
    ``foreign_toml`` more of the foreign AAA's file, ``foreign_realms`` its
    ``[[realms]]`` instead of home.example over RADIUS."""
    extra = extra or {}
    # The agents' ports are bound here and handed over; the servers bind port 0 and log theirs.
    mip = bind_udp([a for _r, a in AGENTS.values()])
    coa = bind_udp([a for role, a in AGENTS.values() if role != "gw"])
    store, _ = init_store(tmp / "vpn.db", tmp / "vpn.key")
    provision_store(store, gateways)  # AAAF is a foreign-aaa client of the home AAA
    for client in store.list_clients():  # where `session push|disconnect` send their requests
        store.update_client(dataclasses.replace(client, coa_port=coa.port))
    store.close()
    topology = Topology(tmp, mip, coa)
    private(tmp / "mn.mnha", MN_HA.value)
    topology.spawn(
        "home-aaa",
        *("--db", str(tmp / "vpn.db"), "--key-file", str(tmp / "vpn.key"), "serve", "home"),
        *("--listen", AAA, "--port", "0", "--workers", "1", "--log-level", "debug"),
        *home_args,
    )
    topology.radius_port = topology.listening("home-aaa")
    if "{accounting_port}" in aaa_args:
        found = re.search(r"accounting=[\d.]+:(\d+)", topology.logs["home-aaa"].read_text())
        assert found is not None, topology.logs["home-aaa"].read_text()
        aaa_args = tuple(found.group(1) if a == "{accounting_port}" else a for a in aaa_args)
    foreign_port = 0
    if foreign:
        private(tmp / "aaaf-home.secret", SECRETS[AAAF].value)
        for address in (FA1, FA2):
            private(tmp / f"aaaf-{address}.secret", SECRETS[address].value)
        config = tmp / "foreign.toml"
        config.write_text(
            f'listen = "{AAAF}"\nport = 0\n'
            + "".join(
                f'[[clients]]\nname = "fa-{a}"\naddress = "{a}"\nsecret_file = "aaaf-{a}.secret"\n' for a in (FA1, FA2)
            )
            + (
                f'[[realms]]\nname = "home.example"\n[[realms.servers]]\naddress = "{AAA}"\n'
                f'port = {topology.radius_port}\nsecret_file = "aaaf-home.secret"\n'
                if foreign_realms is None
                else foreign_realms
            )
            + foreign_toml
        )
        topology.spawn(
            "foreign-aaa",
            "serve",
            "foreign",
            "--config",
            str(config),
            "--log-level",
            "debug",
            *extra.get("foreign-aaa", ()),
        )
        foreign_port = topology.listening("foreign-aaa")
    for name, (role, address) in AGENTS.items():
        args = ["agent", role, "--name", name, "--address", address, "--mip-port", str(topology.mip_port)]
        args += ["--state-file", str(topology.state_file(name)), "--log-level", "debug"]
        args += ["--journal", str(tmp / f"{name}.journal"), "--mip-socket-fd", str(mip.fd(address))]
        fds = [mip.fd(address)]
        if role == "gw":
            key = private(tmp / f"{name}.key", GATEWAY_KEYS[address].value)
            args += ["--gateway-key-file", str(key), "--home-agent", HA, *gw_args]
        else:
            secret = private(tmp / f"{name}.secret", SECRETS[address].value + b"\n")  # the newline is dropped
            server = f"{AAAF}:{foreign_port}" if foreign and address in (FA1, FA2) else f"{AAA}:{topology.radius_port}"
            args += ["--aaa", server, "--secret-file", str(secret), "--coa-port", str(coa.port)]
            args += ["--coa-socket-fd", str(coa.fd(address)), *aaa_args]
            fds.append(coa.fd(address))
        args += (agent_args or {}).get(name, ())
        topology.spawn(name, *args, *extra.get(name, ()), pass_fds=tuple(fds))
    deadline = time.monotonic() + 20
    waiting = set(AGENTS)
    while waiting:
        for name in list(waiting):
            process = topology.processes[name]
            assert process.poll() is None, f"{name} exited:\n{topology.logs[name].read_text()}"
            if topology.state_file(name).exists() and topology.state(name)["running"]:
                waiting.discard(name)
        assert time.monotonic() < deadline, f"not ready: {waiting}"
        time.sleep(0.03)
    return topology


@pytest.fixture
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """``request.param``: True for the foreign AAA, or "static-only" for a user
    with only the static gateway's VPN record."""
    param = getattr(request, "param", False)
    gateways = ("static",) if param == "static-only" else ("static", "dynamic")
    running = start(tmp_path, foreign=param is True, gateways=gateways)
    try:
        yield running
    finally:
        codes = running.stop()
        logs = "\n".join(f"--- {n}\n{p.read_text()[-3000:]}" for n, p in running.logs.items())
        assert codes == dict.fromkeys(codes, 0), f"exit codes {codes}\n{logs}"
        for name in AGENTS:
            final = running.state(name)
            assert final["running"] is False and final["sas"] == [], name


def spis(topology: Topology, name: str, role: str | None = None) -> list[tuple[int, int]]:
    return sorted(
        (sa["spi_in"], sa["spi_out"]) for sa in topology.state(name)["sas"] if role is None or sa["role"] == role
    )


def assert_mirrored(topology: Topology, a: str, b: str, role: str) -> None:
    """Both ends of a path: a's inbound SPI is b's outbound one and vice versa."""
    (a_in, a_out), (b_in, b_out) = spis(topology, a, role)[0], spis(topology, b, role)[0]
    assert (a_in, a_out) == (b_out, b_in), f"{a} {role} SPIs {a_in:#x}/{a_out:#x}, {b}: {b_in:#x}/{b_out:#x}"


AFTER_REGISTRATION = {
    "fa1": [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)],
    "fa2": [],
    "ha": [("FA_HA", FA1), ("HA_GW", GW_STATIC)],
    "gw-static": [("HA_GW", HA)],
    "gw-dynamic": [("FA_GW", FA1)],
}
# Back at FA1 after FA2 (smooth handoff, flow E): FA1 holds the receiving end of
# the forwarding path from FA2, and FA2 only that path, until it expires.
BACK_AT_FA1 = {
    "fa1": [("FA_FA", FA2), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)],
    "fa2": [("FA_FA", FA1)],
}


def test_flows_a_b_handoff_and_back_and_deregistration(topology: Topology) -> None:
    # Flows A + B: initial registration through FA1
    code, result = topology.mn("register", "--fa", FA1)
    assert (code, result["code"], result["lifetime"], result["accepted"]) == (0, 0, 600, True), result
    assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
    assert_mirrored(topology, "fa1", "ha", "FA_HA")
    assert_mirrored(topology, "ha", "gw-static", "HA_GW")
    assert_mirrored(topology, "fa1", "gw-dynamic", "FA_GW")
    assert [v["nai"] for v in topology.state("fa1")["visitors"]] == [NAI]
    assert [(b["nai"], b["care_of_address"]) for b in topology.state("ha")["bindings"]] == [(NAI, FA1)]
    assert [b["care_of_address"] for b in topology.state("gw-dynamic")["bindings"]] == [FA1]
    assert topology.settled() == dict.fromkeys(AGENTS, 0)
    (binding,) = topology.state("gw-dynamic")["bindings"]
    (ha_binding,) = topology.state("ha")["bindings"]
    assert (binding["session_id"], binding["epoch"]) == (ha_binding["session_id"], ha_binding["epoch"])
    assert binding["replaced_owner"] is None, binding
    # the dynamic gateway acknowledged before the HA replied (flow B): event order at the HA
    kinds = [(e["kind"], e.get("message")) for e in topology.state("ha")["events"]]
    ack = kinds.index(("received", "Binding Acknowledge"))
    reply = kinds.index(("sent", "Registration Reply"))
    assert ack < reply, kinds
    static_first = spis(topology, "gw-static")
    ha_gw_first = spis(topology, "ha", "HA_GW")
    fa1_first = spis(topology, "fa1")

    # SIGUSR1: counters and the SA table in the log, never a key
    topology.processes["ha"].send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while '"SA table"' not in (log := topology.logs["ha"].read_text()) and "SA table" not in log:
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    time.sleep(0.1)
    log = topology.logs["ha"].read_text()
    assert f"spi_in={ha_gw_first[0][0]}" in log and "role=HA_GW" in log, log

    # Flow D: handoff to FA2 through the home AAA
    code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    expected = {
        # FA2 also holds the receiving end of the forwarding path from FA1
        "fa2": [("FA_FA", FA1), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)],
        "ha": [("FA_HA", FA2), ("HA_GW", GW_STATIC)],  # the SA toward FA1 is gone
        "gw-static": [("HA_GW", HA)],
        "gw-dynamic": [("FA_GW", FA2)],  # make before break: FA1's is gone
        # smooth handoff (flow E): FA2's Previous-FA Notification replaced the
        # old FA's SAs with the forwarding path toward FA2 (for 10 s)
        "fa1": [("FA_FA", FA2)],
    }
    assert topology.wait_for(expected) == expected
    assert_mirrored(topology, "fa2", "ha", "FA_HA")
    assert_mirrored(topology, "fa2", "gw-dynamic", "FA_GW")
    assert spis(topology, "gw-static") == static_first  # the static path did not move
    assert spis(topology, "ha", "HA_GW") == ha_gw_first
    assert [b["care_of_address"] for b in topology.state("ha")["bindings"]] == [FA2]
    assert topology.state("ha")["bindings"][0]["epoch"] == 2

    # back to FA1: a new epoch, fresh SPIs at FA1
    code, result = topology.mn("register", "--fa", FA1, "--previous-fa", FA2)
    assert (code, result["code"]) == (0, 0), result
    expected = {**AFTER_REGISTRATION, **BACK_AT_FA1}
    assert topology.wait_for(expected) == expected
    assert_mirrored(topology, "fa1", "ha", "FA_HA")
    assert_mirrored(topology, "fa1", "gw-dynamic", "FA_GW")
    assert_mirrored(topology, "fa1", "fa2", "FA_FA")
    assert not set(spis(topology, "fa1")) & set(fa1_first)
    assert spis(topology, "gw-static") == static_first
    assert topology.state("ha")["bindings"][0]["epoch"] == 3

    # deregistration through FA1: FA1, HA and both gateways remove everything
    code, result = topology.mn("deregister", "--fa", FA1)
    assert (code, result["code"], result["lifetime"]) == (0, 0, 0), result
    expected = {"fa1": [], "ha": [], "gw-static": [], "gw-dynamic": []}
    assert {k: v for k, v in topology.wait_for(expected).items() if k in expected} == expected
    assert topology.state("ha")["bindings"] == [] and topology.state("fa1")["visitors"] == []

    # nothing secret in a state file or a log
    secrets = [s.value for s in SECRETS.values()] + [k.value for k in GATEWAY_KEYS.values()] + [SECRETS_MN]
    for name in AGENTS:
        text = topology.state_file(name).read_bytes() + topology.logs[name].read_bytes()
        for secret in secrets:
            assert secret not in text and secret.hex().encode() not in text, name
        assert b"key" not in topology.state_file(name).read_bytes().replace(b"key_mode", b""), name


def foreign_counters(topology: Topology) -> dict[str, int]:
    """The foreign AAA's counters, asked for with SIGUSR1 and read from its log."""
    log = topology.logs["foreign-aaa"]
    before = log.read_text().count(" counters ")
    topology.processes["foreign-aaa"].send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while (text := log.read_text()).count(" counters ") == before:
        assert time.monotonic() < deadline, text
        time.sleep(0.02)
    line = [line for line in text.splitlines() if " counters " in line][-1]
    return {k: int(v) for k, v in (item.split("=", 1) for item in line.split() if "=" in item) if v.isdigit()}


@pytest.mark.parametrize("topology", [True], indirect=True)
def test_flow_c_same_domain_handoff_answered_by_the_foreign_aaa(topology: Topology) -> None:
    code, result = topology.mn("register", "--fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
    assert foreign_counters(topology)["proxied"] == 1
    static_first = spis(topology, "gw-static")

    # flow C: FA2 is a client of the same foreign AAA, which answers from its cache
    code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    expected = {
        "fa2": [("FA_FA", FA1), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)],
        "ha": [("FA_HA", FA2), ("HA_GW", GW_STATIC)],
        "gw-static": [("HA_GW", HA)],
        "gw-dynamic": [("FA_GW", FA2)],
        "fa1": [("FA_FA", FA2)],  # smooth handoff (flow E)
    }
    tables = topology.wait_for(expected)
    assert {k: v for k, v in tables.items() if k in expected} == expected
    counters = foreign_counters(topology)
    assert (counters["proxied"], counters["handoffs_answered"]) == (1, 1), counters
    # the keys the foreign AAA derived are the ones the home AAA gave the HA
    assert_mirrored(topology, "fa2", "ha", "FA_HA")
    assert_mirrored(topology, "fa2", "gw-dynamic", "FA_GW")
    assert spis(topology, "gw-static") == static_first
    assert topology.state("ha")["bindings"][0]["epoch"] == 2
    fa2_sent = [e["peer"] for e in topology.state("fa2")["events"] if e["kind"] == "sent" and e["channel"] == "radius"]
    assert fa2_sent and all(peer.startswith(f"{AAAF}:") for peer in fa2_sent)

    # and back: answered by the foreign AAA again, epoch 3
    code, result = topology.mn("register", "--fa", FA1, "--previous-fa", FA2)
    assert (code, result["code"]) == (0, 0), result
    expected = {**AFTER_REGISTRATION, **BACK_AT_FA1}
    assert topology.wait_for(expected) == expected
    counters = foreign_counters(topology)
    assert (counters["proxied"], counters["handoffs_answered"]) == (1, 2), counters
    assert topology.state("ha")["bindings"][0]["epoch"] == 3
    assert_mirrored(topology, "fa1", "ha", "FA_HA")


def operator(topology: Topology, *args: str) -> tuple[int, Any]:
    """``aaa-vpn --json ARGS`` on the test's database (the operator on the home AAA host)."""
    db = ("--db", str(topology.tmp / "vpn.db"), "--key-file", str(topology.tmp / "vpn.key"))
    result = aaa_vpn(*db, "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    try:
        document = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        document = result.stdout
    return result.returncode, document if document is not None else result.stderr


def owners(topology: Topology, name: str) -> set[str]:
    return {sa["owner"] for sa in topology.state(name)["sas"]}


@pytest.mark.parametrize("topology", ["static-only"], indirect=True)
def test_flows_e_and_f_old_fa_forwarding_then_push_and_disconnect(topology: Topology) -> None:
    """Flow E (smooth handoff) and flow F (CoA push, Disconnect) as processes:
    tests/test_smooth_handoff.py and tests/test_coa.py with a fake clock."""
    code, result = topology.mn("register", "--fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    expected = {"fa1": [("FA_HA", HA)], "ha": [("FA_HA", FA1), ("HA_GW", GW_STATIC)], "gw-static": [("HA_GW", HA)]}
    assert {k: v for k, v in topology.wait_for(expected).items() if k in expected} == expected
    handoff = time.monotonic()
    code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
    assert (code, result["code"]) == (0, 0), result

    # (a) flow E: the old FA keeps only the forwarding path toward FA2 ...
    expected = {
        "fa1": [("FA_FA", FA2)],
        "fa2": [("FA_FA", FA1), ("FA_HA", HA)],
        "ha": [("FA_HA", FA2), ("HA_GW", GW_STATIC)],
        "gw-static": [("HA_GW", HA)],
        "gw-dynamic": [],
    }
    assert topology.wait_for(expected) == expected
    assert_mirrored(topology, "fa1", "fa2", "FA_FA")
    assert topology.state("fa1")["visitors"] == []
    forwarding = [(f["nai"], f["home_address"], f["new_fa"]) for f in topology.state("fa1")["forwarding"]]
    assert forwarding == [(NAI, HOME_ADDRESS, FA2)]
    # ... for its forwarding lifetime (10 s; the FA agent has no option for
    # it), after which both ends of that path are gone
    expected = {**expected, "fa1": [], "fa2": [("FA_HA", HA)]}
    tables = topology.wait_for(expected, timeout=15.0)
    assert tables == expected, f"after {time.monotonic() - handoff:.1f} s"
    assert time.monotonic() - handoff >= 9.0  # not before its lifetime ended

    # (b) flow F: the operator adds a VPN record behind the dynamic gateway and pushes it
    code, out = operator(topology, "session", "list")
    assert code == 0, out
    (session,) = out["sessions"]
    session_id = session["session_id"]
    code, out = operator(
        topology,
        *("vpn", "add", "--user", NAI, "--correspondent", "203.0.113.128/25", "--gateway", "gw-dynamic"),
        *("--service", "silver"),
    )
    assert code == 0, out
    old_owners = owners(topology, "fa2")
    static_first = spis(topology, "gw-static")
    code, out = operator(topology, "session", "push", session_id, "--source", AAA, "--timeout", "1")
    assert code == 0, out
    assert out["acknowledged"] and (out["previous_epoch"], out["epoch"]) == (2, 3), out
    assert [(a["role"], a["answer"]) for a in out["agents"]] == [("fa", "CoA-ACK"), ("ha", "CoA-ACK")]
    expected = {
        "fa1": [],
        "fa2": [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)],
        "ha": [("FA_HA", FA2), ("HA_GW", GW_STATIC)],
        "gw-static": [("HA_GW", HA)],
        "gw-dynamic": [("FA_GW", FA2)],
    }
    assert topology.wait_for(expected) == expected
    assert_mirrored(topology, "fa2", "ha", "FA_HA")
    assert_mirrored(topology, "fa2", "gw-dynamic", "FA_GW")
    assert not owners(topology, "fa2") & old_owners, "the old epoch's paths are gone"
    assert owners(topology, "fa2") == {f"{session_id}#3"}
    assert [(b["care_of_address"], b["epoch"]) for b in topology.state("ha")["bindings"]] == [(FA2, 3)]
    # a push re-keys every path: the stationary one has new SPIs at both ends, the old ones are gone
    assert not set(spis(topology, "gw-static")) & set(static_first), "the stationary path was re-keyed"
    assert_mirrored(topology, "ha", "gw-static", "HA_GW")

    # (c) flow F: the operator ends the session
    code, out = operator(topology, "session", "disconnect", session_id, "--source", AAA, "--timeout", "1")
    assert code == 0, out
    assert out["acknowledged"] and out["deleted"], out
    assert [(a["role"], a["answer"]) for a in out["agents"]] == [
        ("fa", "Disconnect-ACK"),
        ("ha", "Disconnect-ACK"),
    ]
    expected = {name: [] for name in AGENTS}
    assert topology.wait_for(expected) == expected
    assert topology.state("fa2")["visitors"] == [] and topology.state("ha")["bindings"] == []
    assert topology.state("gw-dynamic")["bindings"] == []
    code, out = operator(topology, "session", "list")
    assert (code, out) == (0, {"sessions": []}), out


def test_operator_commands_report_an_agent_that_does_not_answer(topology: Topology) -> None:
    """``session show`` names the agents and no key; ``session disconnect``
    toward an FA that is gone retries, says so, exits 1, and still deletes."""
    code, result = topology.mn("register", "--fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    code, out = operator(topology, "session", "list")
    (session,) = out["sessions"]
    session_id = session["session_id"]
    db = ("--db", str(topology.tmp / "vpn.db"), "--key-file", str(topology.tmp / "vpn.key"))
    shown = aaa_vpn(*db, "--json", "session", "show", session_id)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert "session_root_key" not in document and [(a["role"], a["address"]) for a in document["agents"]] == [
        ("fa", FA1),
        ("ha", HA),
    ]
    with open_store(topology.tmp / "vpn.db", topology.tmp / "vpn.key") as store:
        root_key = store.get_session(session_id).session_root_key.value.hex()
        coa_port = store.get_client(f"c-{FA1.replace('.', '-')}").coa_port
    assert root_key not in shown.stdout
    fa1 = topology.processes["fa1"]
    fa1.send_signal(signal.SIGTERM)
    fa1.wait(timeout=10)
    result_text = aaa_vpn(
        *db, "session", "disconnect", session_id, "--source", AAA, "--timeout", "0.2", "--retries", "1"
    )
    out_text = result_text.stdout + result_text.stderr
    assert result_text.returncode == 1, out_text
    assert f"FA {FA1}:{coa_port}: no answer after 2 attempts" in out_text
    assert f"HA {HA}:{coa_port}: Disconnect-ACK" in out_text
    assert f"session {session_id} deleted" in out_text
    again = aaa_vpn(*db, "session", "disconnect", session_id, "--source", AAA)
    assert again.returncode == 1 and "no session" in again.stdout + again.stderr
    code, out = operator(topology, "session", "push", "no-such-session", "--source", AAA)
    assert code == 1 and "does not exist" in str(out), out


def test_wrong_mn_aaa_secret_is_67_and_no_sas_anywhere(topology: Topology) -> None:
    code, result = topology.mn("register", "--fa", FA1, mn_aaa_secret=b"not-the-secret")
    assert code == 1 and result["code"] == 67 and result["accepted"] is False, result
    time.sleep(0.2)  # nothing may appear later either
    assert topology.tables() == {name: [] for name in AGENTS}
    decisions = [e for e in topology.state("fa1")["events"] if e["kind"] == "registration"]
    assert decisions[-1]["code"] == 67, decisions
    # the HA never heard of it (its only event: starting from an empty journal)
    assert [e["kind"] for e in topology.state("ha")["events"]] == ["recovered"]


def test_unreachable_fa_is_78_and_exit_status_1(tmp_path: Path) -> None:
    silent = bind_udp(["127.0.0.13"])  # bound and never read: no FA answers there, and no one else can
    private(tmp_path / "k", MN_HA.value)
    try:
        result = aaa_vpn(
            *("mn", "--nai", NAI, "--home-address", HOME_ADDRESS, "--home-agent", HA, "--mn-ha-spi", "256"),
            *("--mn-ha-key-file", str(tmp_path / "k"), "--mn-aaa-secret", "x", "--retransmit", "0.1"),
            *("--attempts", "2", "register", "--fa", f"127.0.0.13:{silent.port}"),
        )
    finally:
        silent.close()
    assert result.returncode == 1, result
    assert "code 78" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent", "fa", "--address", "127.0.0.11", "--aaa", "127.0.0.1"], "--secret-file"),
        (["agent", "fa", "--address", "nope", "--aaa", "127.0.0.1"], "not an IP address"),
        (["agent", "ha", "--aaa", "127.0.0.1:70000", "--address", "127.0.0.2"], "1..65535"),
        (["agent", "gw", "--address", "127.0.0.21"], "--gateway-key-file"),
        (["agent", "ha", "--config", "/nonexistent.toml"], "does not exist"),
        (["mn", "register", "--fa", "127.0.0.11"], "--nai"),
        (
            [
                "mn",
                "--nai",
                "bad nai",
                "--home-address",
                "1.2.3.4",
                "--home-agent",
                "1.2.3.5",
                "--mn-ha-spi",
                "256",
                "--mn-ha-key-hex",
                "00" * 16,
                "--mn-aaa-secret",
                "x",
                "register",
                "--fa",
                "127.0.0.11",
            ],
            "NAI",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args: list[str], message: str) -> None:
    result = aaa_vpn(*args)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_config_file_and_check(tmp_path: Path) -> None:
    private(tmp_path / "fa.secret", b"fa1-secret-xyz\n")
    config = tmp_path / "fa.toml"
    config.write_text(
        'address = "127.0.0.11"\nmip_port = 4340\nstate_file = "fa.json"\nha_timeout = 2.5\n'
        '[[aaa]]\naddress = "127.0.0.1"\nsecret_file = "fa.secret"\n'
        '[[aaa]]\naddress = "127.0.0.3"\nport = 18120\nsecret_file = "fa.secret"\n'
    )
    result = aaa_vpn("--json", "agent", "fa", "--config", str(config), "--check", "--name", "fa-one")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "role": "fa",
        "name": "fa-one",
        "address": "127.0.0.11",
        "mip_port": 4340,
        "coa_port": 3799,
        "aaa": ["127.0.0.1:1812", "127.0.0.3:18120"],
        "home_agents": [],
        "state_file": str(tmp_path / "fa.json"),
        "journal": None,
        "backend": "memory",
    }
    (tmp_path / "fa.secret").chmod(0o644)
    result = aaa_vpn("agent", "fa", "--config", str(config), "--check")
    assert result.returncode == 2 and "chmod 600" in result.stderr, result.stderr
    config.write_text('address = "127.0.0.21"\ngateway_key_file = "k"\n')  # a GW key in an FA file
    result = aaa_vpn("agent", "fa", "--config", str(config), "--check")
    assert result.returncode == 2 and "gateway_key_file is not a known setting" in result.stderr, result.stderr
    key = private(tmp_path / "gw.key", os.urandom(32))
    config.write_text('address = "127.0.0.11"\nbackend = "strongswan"\n')  # no VICI socket
    result = aaa_vpn("agent", "gw", "--config", str(config), "--gateway-key-file", str(key), "--check")
    assert result.returncode == 2 and "needs charon's VICI socket" in result.stderr, result.stderr
    config.write_text('address = "127.0.0.11"\nbackend = "racoon"\n')
    result = aaa_vpn("agent", "gw", "--config", str(config), "--gateway-key-file", str(key), "--check")
    assert result.returncode == 2 and "unknown SA backend 'racoon'" in result.stderr, result.stderr


def test_an_agent_whose_charon_is_unreachable_does_not_start(tmp_path: Path) -> None:
    key = private(tmp_path / "gw.key", os.urandom(32))
    socket_path = tmp_path / "nobody.vici"
    result = aaa_vpn(
        *("agent", "gw", "--address", "127.0.0.21", "--mip-port", "4340", "--gateway-key-file", str(key)),
        *("--backend", "strongswan", "--vici-socket", str(socket_path)),
    )
    assert result.returncode == 1, result
    assert f"SA backend strongswan: cannot reach charon at {socket_path}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.21", 0))
        port = holder.getsockname()[1]
        key = private(tmp_path / "gw.key", os.urandom(32))
        result = aaa_vpn(
            *("agent", "gw", "--address", "127.0.0.21", "--mip-port", str(port), "--gateway-key-file", str(key))
        )
    assert result.returncode == 1, result
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr


def test_an_inherited_socket_must_be_the_one_the_options_name(tmp_path: Path) -> None:
    """``--mip-socket-fd``: the agent serves on the socket its starter bound,
    which must be bound to ``--address``:``--mip-port``; anything else is one
    clear error (exit status 1), never a silently different port."""
    key = private(tmp_path / "gw.key", os.urandom(32))
    bound = bind_udp(["127.0.0.21"])
    not_a_socket = (tmp_path / "file").open("wb")
    gw = ("agent", "gw", "--address", "127.0.0.21", "--gateway-key-file", str(key))
    try:
        fd = bound.fd("127.0.0.21")
        wrong = subprocess.run(
            [sys.executable, "-m", "aaa_vpn.cli", *gw, "--mip-port", str(bound.port + 1), "--mip-socket-fd", str(fd)],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(fd,),
            check=False,
        )
        file_fd = not_a_socket.fileno()
        no_socket = subprocess.run(
            [sys.executable, "-m", "aaa_vpn.cli", *gw, "--mip-port", "4340", "--mip-socket-fd", str(file_fd)],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(file_fd,),
            check=False,
        )
    finally:
        bound.close()
        not_a_socket.close()
    assert wrong.returncode == 1, wrong
    expected = f"is bound to 127.0.0.21:{bound.port}, not 127.0.0.21:{bound.port + 1}"
    assert f"the inherited Mobile IP socket (file descriptor {fd}) {expected}" in wrong.stderr, wrong.stderr
    assert no_socket.returncode == 1 and "the inherited Mobile IP socket" in no_socket.stderr, no_socket.stderr
    assert "Traceback" not in wrong.stderr + no_socket.stderr


AGENT_GW = (sys.executable, "-m", "aaa_vpn.cli", "agent", "gw", "--address", "127.0.0.21")


def test_a_stop_right_after_the_agent_says_it_runs_is_graceful(tmp_path: Path) -> None:
    """The state file says "running" before the agent's loop handles signals:
    a SIGTERM sent the moment it appears (as a test or the demo may send it)
    is still a graceful stop, not death by the default action."""
    key = private(tmp_path / "gw.key", os.urandom(32))
    state = tmp_path / "gw.json"
    files = ("--gateway-key-file", str(key), "--state-file", str(state))
    bound = bind_udp(["127.0.0.21"])
    fd = bound.fd("127.0.0.21")
    process = subprocess.Popen(
        [*AGENT_GW, "--mip-port", str(bound.port), "--mip-socket-fd", str(fd), *files],
        cwd=REPO,
        stderr=subprocess.PIPE,
        pass_fds=(fd,),
    )
    bound.close()  # the agent holds the port now
    deadline = time.monotonic() + 20
    while not state.exists():  # no sleep: the window is a few milliseconds
        assert process.poll() is None and time.monotonic() < deadline
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert json.loads(state.read_text())["running"] is False


def test_sighup_reloads_an_agent_s_file_and_keeps_what_needs_a_restart(tmp_path: Path) -> None:
    """SIGHUP: the file read again; the log level takes effect at once (debug
    lines for the next datagram), a changed port is logged as needing a
    restart and kept, a broken file keeps the running configuration."""
    key = private(tmp_path / "gw.key", os.urandom(32))
    state, log = tmp_path / "gw.json", tmp_path / "gw.log"
    config = tmp_path / "gw.toml"
    bound = bind_udp(["127.0.0.21"])
    base = f'address = "127.0.0.21"\ngateway_key_file = "{key}"\nhome_agents = ["127.0.0.2"]\n'
    config.write_text(base + f'mip_port = {bound.port}\nlog_level = "info"\n')
    fd = bound.fd("127.0.0.21")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*AGENT_GW[:5], "--config", str(config), "--mip-socket-fd", str(fd), "--state-file", str(state)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
        )
    bound.close()

    def logged(text: str, times: int = 1) -> None:
        deadline = time.monotonic() + 10
        while log.read_text().count(text) < times:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)

    try:
        logged("agent started")
        config.write_text(base + f'mip_port = {bound.port + 1}\nlog_level = "debug"\n')
        process.send_signal(signal.SIGHUP)
        logged("configuration reloaded")
        assert "changed setting needs a restart" in log.read_text() and "mip_port" in log.read_text()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.sendto(b"\x00" * 8, ("127.0.0.21", bound.port))  # still the old port: it answers nothing
        logged("received")  # a debug line: the new log level
        config.write_text("address = [")
        process.send_signal(signal.SIGHUP)
        logged("reload failed: keeping the running configuration")
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert process.returncode == 0, log.read_text()[-2000:]


# -- flow G with separate processes -------------------------------------------------------------------

#: Gateways that grant at most 2 s and ask the HA for a refresh with 1 s left,
#: once more 0.5 s later (docs/protocol.md section 3.10).
SHORT_GATEWAY_BINDINGS = ("--max-lifetime", "2", "--refresh-threshold", "0.5", "--refresh-retries", "1")


def counters(topology: Topology, name: str) -> dict[str, int]:
    found: dict[str, int] = topology.state(name)["counters"]
    return found


def test_flow_g_gateways_ask_the_ha_and_expire_when_it_is_gone(tmp_path: Path) -> None:
    topology = start(tmp_path, gw_args=SHORT_GATEWAY_BINDINGS)
    try:
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        first = {name: spis(topology, name) for name in ("gw-static", "gw-dynamic")}
        # 1. the HA answers every Binding Request: the 2 s gateway bindings
        # live on (three lifetimes here), with the very same SAs
        time.sleep(6.0)
        assert topology.tables() == AFTER_REGISTRATION
        for name in ("gw-static", "gw-dynamic"):
            assert spis(topology, name) == first[name], name
            assert counters(topology, name)["bindings_refreshed"] >= 3, counters(topology, name)
            assert counters(topology, name).get("bindings_expired", 0) == 0
        assert counters(topology, "ha")["binding_requests.answered"] >= 6, counters(topology, "ha")
        # 2. the HA stops: nobody answers, and each gateway removes its binding
        # and its SAs when the binding ends (2 s at most)
        ha = topology.processes["ha"]
        ha.send_signal(signal.SIGTERM)
        assert ha.wait(timeout=10) == 0
        gone = {"gw-static": [], "gw-dynamic": []}
        assert topology.wait_for(gone, timeout=4.0) == {**topology.tables(), **gone}
        for name in gone:
            assert counters(topology, name)["bindings_expired"] == 1, counters(topology, name)
            assert topology.state(name)["bindings"] == []
        # the FA's visitor lives on until its own lifetime (600 s) ends
        assert topology.table("fa1") == AFTER_REGISTRATION["fa1"]
    finally:
        codes = topology.stop()
        assert codes == dict.fromkeys(codes, 0), codes


def test_flow_g_a_registration_nobody_renews_expires_everywhere(tmp_path: Path) -> None:
    topology = start(tmp_path, home_args=("--session-lifetime", "4"))
    try:
        code, result = topology.mn("register", "--fa", FA1, options=("--lifetime", "3"))
        assert (code, result["code"], result["lifetime"]) == (0, 0, 3), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        nothing = {name: [] for name in AGENTS}
        assert topology.wait_for(nothing, timeout=6.0) == nothing
        assert counters(topology, "fa1")["visitors_expired"] == 1
        assert counters(topology, "ha")["bindings_expired"] == 1
        assert topology.state("fa1")["visitors"] == [] and topology.state("ha")["bindings"] == []
        for name in ("gw-static", "gw-dynamic"):
            assert topology.state(name)["bindings"] == [], name
        # and the home AAA's session (4 s without a registration) has ended too
        time.sleep(max(0.0, out_expires(operator(topology, "session", "list")) - time.time()) + 0.2)
        code, out = operator(topology, "session", "list")
        assert code == 0 and [s for s in out["sessions"] if s["expires"] > time.time()] == [], out
    finally:
        codes = topology.stop()
        assert codes == dict.fromkeys(codes, 0), codes


def out_expires(listing: tuple[int, Any]) -> float:
    """The latest expiry in ``aaa-vpn --json session list`` output."""
    code, out = listing
    assert code == 0, out
    return max((float(s["expires"]) for s in out["sessions"]), default=0.0)


def restart_agent(topology: Topology, name: str) -> dict[str, Any]:
    """Stop ``name`` (SIGTERM, by its PID), start it again with the same
    command and wait until it runs; return its recovery note."""
    process = topology.processes[name]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    started = time.time()
    topology.respawn(name)
    deadline = time.monotonic() + 20
    while True:
        assert topology.processes[name].poll() is None, topology.logs[name].read_text()[-3000:]
        state = topology.state(name) if topology.state_file(name).exists() else {}
        if state.get("running") and state.get("started", 0) >= started:
            notes = [e for e in state["events"] if e["kind"] == "recovered"]
            assert notes, state["events"]
            return notes[-1]
        assert time.monotonic() < deadline, f"{name} did not come back"
        time.sleep(0.03)


def test_restarted_agents_carry_on_from_their_journal(tmp_path: Path) -> None:
    """Separate processes, the memory backend: an agent's SAs die with its
    process, so a restarted agent finds none, ends the state its journal
    holds (an HA withdraws the gateways' bindings at once) and the node's
    next registrations bring everything back, with fresh keys."""
    topology = start(tmp_path)
    try:
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        journal = tmp_path / "ha.journal"
        assert journal.stat().st_mode & 0o777 == 0o600
        assert json.loads(journal.read_text())["format"] == "aaa-vpn-agent-journal"
        note = restart_agent(topology, "ha")
        assert (note["restored"], note["kept"], note["ended"]) == (2, 0, 2), note
        # the gateways were told at once (lifetime 0), not left to expire
        gone = {"ha": [], "gw-static": [], "gw-dynamic": []}
        assert topology.wait_for(gone) == {**topology.tables(), **gone}
        assert counters(topology, "ha")["restart.bindings_without_sas"] == 1
        # the renewal: the gateways refuse the keys they removed (130); the next
        # registration asks for fresh ones and everything is up again
        code, result = topology.mn("register", "--fa", FA1)
        assert result["code"] == 130, result
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        assert_mirrored(topology, "fa1", "ha", "FA_HA")
        assert_mirrored(topology, "ha", "gw-static", "HA_GW")
        # an FA restart: its visitor ends with its SAs; the node's next
        # registration (no session named) starts a new session, up at once
        note = restart_agent(topology, "fa1")
        assert (note["restored"], note["kept"], note["ended"]) == (1, 0, 1), note
        assert topology.state("fa1")["visitors"] == []
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        assert_mirrored(topology, "fa1", "ha", "FA_HA")
        # a journal that does not open (here: garbage) is set aside, logged, and the agent starts clean
        (tmp_path / "gw-static.journal").write_bytes(b"not a journal")
        note = restart_agent(topology, "gw-static")
        assert note["restored"] == 0
        assert (tmp_path / "gw-static.journal.unreadable").read_bytes() == b"not a journal"
        assert "journal unreadable" in topology.logs["gw-static"].read_text()
    finally:
        codes = topology.stop()
        assert codes == dict.fromkeys(codes, 0), codes


def test_a_renewal_past_half_the_sa_lifetime_rekeys_every_path(tmp_path: Path) -> None:
    """Re-keying with separate processes: both services' SAs live
    60 s (the shortest a service allows); the registration is granted no
    more, and the renewal after 31 s (past half of it) gives every path new
    SPIs and keys, stationary ones included, at every node."""
    topology = start(tmp_path)
    try:
        for service in ("gold", "silver"):
            code, out = operator(topology, "service", "change", service, "--sa-lifetime", "60")
            assert code == 0, out
        code, result = topology.mn("register", "--fa", FA1)
        # granted what the keys have left: 60 s, less the moment the request took (whole seconds)
        assert (code, result["code"]) == (0, 0) and result["lifetime"] in (59, 60), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        first = {name: set(spis(topology, name)) for name in AGENTS if name not in ("fa2",)}
        time.sleep(31.0)
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        for name, old in first.items():
            now = set(spis(topology, name))
            assert now and not now & old, f"{name} still has SPIs of the old keys"
        assert_mirrored(topology, "fa1", "ha", "FA_HA")
        assert_mirrored(topology, "ha", "gw-static", "HA_GW")
        assert_mirrored(topology, "fa1", "gw-dynamic", "FA_GW")
        assert [b["epoch"] for b in topology.state("ha")["bindings"]] == [2]
    finally:
        codes = topology.stop()
        assert codes == dict.fromkeys(codes, 0), codes


def test_the_fa_and_ha_account_each_registration_start_interim_and_stop(tmp_path: Path) -> None:
    accounting = ("--accounting", "--accounting-interim", "1", "--accounting-port", "{accounting_port}")
    topology = start(tmp_path, aaa_args=accounting)
    try:
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
        time.sleep(1.5)  # at least one Interim-Update from each
        code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        code, result = topology.mn("deregister", "--fa", FA2)
        assert (code, result["code"]) == (0, 0), result
        expected = {"fa2": [], "ha": []}
        assert {k: v for k, v in topology.wait_for(expected).items() if k in expected} == expected
        deadline = time.monotonic() + 10
        while True:
            listing = aaa_vpn(
                "--db",
                str(tmp_path / "vpn.db"),
                "--key-file",
                str(tmp_path / "vpn.key"),
                "--json",
                "accounting",
                "list",
            )
            assert listing.returncode == 0, listing.stderr
            records = json.loads(listing.stdout)["accounting"]
            if len(records) == 4 and all(r["stopped"] for r in records):
                break
            assert time.monotonic() < deadline, records
            time.sleep(0.1)
        session = records[0]["session_id"]
        by = {(r["nas"], r["acct_session_id"]): r for r in records}
        assert set(by) == {(FA1, f"{session}#1"), (FA2, f"{session}#2"), (HA, f"{session}#1"), (HA, f"{session}#2")}
        assert all(r["session_id"] == session and r["nai"] == NAI for r in records)
        assert by[(FA1, f"{session}#1")]["updates"] >= 3  # Start, Interim-Update(s), Stop
        assert by[(FA1, f"{session}#1")]["terminate_cause"] == "Lost-Carrier"  # it moved to FA2
        assert by[(FA2, f"{session}#2")]["terminate_cause"] == "User-Request"
        assert by[(HA, f"{session}#1")]["terminate_cause"] == "NAS-Request"  # continued as epoch 2
        assert by[(HA, f"{session}#1")]["attributes"]["3GPP2-Session-Continue"] == 1
        assert by[(HA, f"{session}#2")]["terminate_cause"] == "User-Request"
        # the memory backend carries no traffic on loopback: counts are there, and zero
        assert by[(FA1, f"{session}#1")]["input_octets"] == 0
        for name in ("fa1", "fa2", "ha"):
            counters = topology.state(name)["counters"]
            sent = sum(counters.get(f"accounting.{kind}", 0) for kind in ("on", "start", "interim", "stop"))
            assert counters["accounting.answered"] == sent, (name, counters)
    finally:
        codes = topology.stop()
        assert codes == dict.fromkeys(codes, 0), codes
