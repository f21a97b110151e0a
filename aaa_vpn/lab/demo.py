"""``aaa-vpn demo``: the whole system on loopback, as real processes, and a
mobile node walked through flows A to F of docs/design.md section 2 (docs/flows.md).

What it does:

1. A temporary directory with a SQLite database provisioned through the
   library (:func:`aaa_vpn.lab.topology.provision`): the user
   ``mn1@home.example`` with one correspondent network behind a static
   gateway (stationary tunnel to the HA) and one behind a dynamic gateway
   (route optimisation); the HA, FA3
   and the visited domain's foreign AAA as RADIUS clients; the foreign AAA's
   TOML file with FA1 and FA2 as its clients; random secrets in files of
   mode 0600.
2. Eight processes, each an ``aaa-vpn`` command on its own loopback address:
   ``serve home`` (127.0.0.1), ``serve foreign`` (127.0.0.3, the domain
   visited-a.example of FA1 and FA2), ``agent ha`` (127.0.0.2), ``agent fa``
   FA1 (127.0.0.11), FA2 (127.0.0.12) and FA3 (127.0.0.13, domain
   visited-b.example, which asks the home AAA directly), ``agent gw`` static
   (127.0.0.21) and dynamic (127.0.0.22); the agents on one free high Mobile
   IP port (434 needs root), each with a ``--state-file``. The agents' ports
   are bound by the demo and inherited; the AAA servers bind port 0 and log
   the port they got (:class:`Topology`), so two demos can run side by side.
3. The steps, each one ``aaa-vpn mn`` run from 127.0.0.100: registration
   through FA1 (flows A and B, proxied by the foreign AAA), handoff to FA2
   answered by the foreign AAA alone (flow C), handoff to FA3 through the
   home AAA (flow D), back to FA1 (flow D through the foreign AAA), to FA3
   again (flow D); then the operator (``aaa-vpn`` on the home AAA's database,
   flow F) changes the VPN and pushes it (``session push --source``), and
   ends the session (``session disconnect --source``) -- FA3, not FA1, since
   FA1 and FA2 ask the foreign AAA and the home AAA's CoA/Disconnect-Requests
   go only to its own clients. After each step it waits until the state files show the
   expected SA tables (or a few seconds pass), asks the foreign AAA for its
   counters (SIGUSR1), then reports the node's result, a timeline of the
   messages and SA changes every node recorded, each node's SA table, and
   the checks.

The gateways grant bindings of at most 6 s (``GATEWAY_MAX_LIFETIME``) and
ask the HA for a refresh with half of one left (flow G, Binding Requests):
during the demo's seconds they do so several times; the push step checks
that each gateway asked, was refreshed and never let a binding expire.

After each handoff the new FA sends the old one a Previous-FA Notification
(flow E, smooth handoff): the old FA replaces the node's SAs with a forwarding
path toward the new FA, which both remove after ``forwarding_lifetime`` (10 s;
the push step waits for that, so that its SA tables are exact).

Every process is stopped by its PID (SIGTERM, then SIGKILL after a grace
period) and the temporary directory removed, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aaa_vpn.lab.processes import Processes, log_tail
from aaa_vpn.lab.topology import (
    AGENTS,
    BEHIND_FOREIGN_AAA,
    COA_AGENTS,
    HOME_ADDRESS,
    LOOPBACK,
    NAI,
    SERVERS,
    LabError,
    agent_args,
    bind_udp,
    home_aaa_args,
    mn_args,
    mn_result,
    provision,
    write_foreign_config,
)
from aaa_vpn.lab.verdict import failures, verdict

AAA, HA, AAAF = LOOPBACK.aaa, LOOPBACK.ha, LOOPBACK.aaaf
FA1, FA2, FA3 = LOOPBACK.fa1, LOOPBACK.fa2, LOOPBACK.fa3
GW_STATIC, GW_DYNAMIC = LOOPBACK.gw_static, LOOPBACK.gw_dynamic
MN_SOURCE = "127.0.0.100"

#: Element name -> its address.
ADDRESSES = {name: LOOPBACK.of(name) for name in (*SERVERS, *AGENTS)}
#: Address -> the element's name, for the timeline.
NAMES = {MN_SOURCE: "mn", **{address: name for name, address in ADDRESSES.items()}}

#: The gateways' longest binding (seconds): short, so that flow G happens during the demo.
GATEWAY_MAX_LIFETIME = 6
_START_TIMEOUT = 20.0
_SETTLE_TIMEOUT = 3.0
_STOP_GRACE = 5.0

Expected = dict[str, set[tuple[str, str]]]  # node -> {(path role, peer address)}


#: With ``--aaa-protocol diameter``: the home AAA's Diameter options (docs/diameter.md; plain
#: TCP on loopback is declared protected) and the visited realm of FA1 and FA2.
_DIAMETER_HOME = (
    *("--diameter-realm", "home.example", "--diameter-host", "aaa.home.example"),
    "--diameter-plain-is-secure",
)
_VISITED_REALM = "visited.example"
#: The foreign AAA's Diameter Origin-Host: its client name at the home AAA.
_FOREIGN_HOST = "aaaf"


@dataclass(frozen=True)
class DemoOptions:
    """How the demo runs."""

    mip_port: int = 0
    """The agents' Mobile IP port, bound by the demo for them; 0: a free high port."""
    radius_port: int = 0
    """The home AAA's RADIUS port; 0: a free one the server picks and logs."""
    keep: bool = False
    """Keep the temporary directory (database, logs, state files)."""
    python: str = sys.executable
    """The interpreter that runs ``-m aaa_vpn.cli`` for every process."""
    aaa_protocol: str = "radius"
    """``diameter``: the home and the foreign AAA also serve Diameter (RFC
    4004), every FA asks with AMRs and the HA takes HARs (docs/diameter.md);
    the foreign AAA proxies AMRs to the home AAA over Diameter (realm
    home.example of ``protocol = "diameter"``, docs/foreign-aaa.md), with
    the home AAA's RADIUS port still behind it for RADIUS and accounting."""


@dataclass
class _Step:
    name: str
    flow: str
    description: str
    fa: str
    previous_fa: str | None = None
    deregister: bool = False
    expected: Expected = field(default_factory=dict)
    foreign: tuple[int, int] | None = None
    """The foreign AAA's counters after the step: (proxied, handoffs_answered)."""
    notes: tuple[str, ...] = ()
    operator: str | None = None
    """Flow F: "push" (change the VPN, ``aaa-vpn session push``) or "disconnect"
    (``aaa-vpn session disconnect``) instead of the mobile node."""
    settle_timeout: float = _SETTLE_TIMEOUT
    """How long to wait for the expected SA tables."""

    @property
    def ends_session(self) -> bool:
        return self.deregister or self.operator == "disconnect"


_FA_PATHS = {("FA_HA", HA), ("FA_GW", GW_DYNAMIC)}
_OLD_FA = (
    "replaced the node's SAs with a forwarding path toward the new FA (flow E, smooth handoff),"
    " which both ends remove after 10 s"
)

STEPS = (
    _Step(
        "register via FA1",
        "A+B",
        "initial registration through FA1, proxied by the visited domain's foreign AAA: the static"
        " gateway's stationary tunnel to the HA (flow A) and route optimisation with the dynamic gateway (flow B)",
        FA1,
        expected={
            "fa1": _FA_PATHS,
            "fa2": set(),
            "fa3": set(),
            "ha": {("FA_HA", FA1), ("HA_GW", GW_STATIC)},
            "gw-static": {("HA_GW", HA)},
            "gw-dynamic": {("FA_GW", FA1)},
        },
        foreign=(1, 0),
    ),
    _Step(
        "handoff to FA2",
        "C",
        "the node moves to FA2 in the same domain: the foreign AAA answers FA2 from its cache (next epoch,"
        " keys derived from the session root key) without asking the home domain; the HA and the dynamic"
        " gateway replace their SAs toward FA1 with SAs toward FA2",
        FA2,
        previous_fa=FA1,
        expected={
            "fa2": _FA_PATHS | {("FA_FA", FA1)},
            "fa1": {("FA_FA", FA2)},
            "ha": {("FA_HA", FA2), ("HA_GW", GW_STATIC)},
            "gw-static": {("HA_GW", HA)},
            "gw-dynamic": {("FA_GW", FA2)},
        },
        foreign=(1, 1),
        notes=(f"fa1 {_OLD_FA}",),
    ),
    _Step(
        "handoff to FA3",
        "D",
        "the node moves to FA3 in another domain without a foreign AAA: FA3 asks the home AAA, which moves"
        " the session to FA3 (flow D)",
        FA3,
        previous_fa=FA2,
        expected={
            "fa3": _FA_PATHS | {("FA_FA", FA2)},
            "fa2": {("FA_FA", FA3)},
            "ha": {("FA_HA", FA3), ("HA_GW", GW_STATIC)},
            "gw-static": {("HA_GW", HA)},
            "gw-dynamic": {("FA_GW", FA3)},
        },
        foreign=(1, 1),
        notes=(f"fa2 {_OLD_FA}",),
    ),
    _Step(
        "back to FA1",
        "D",
        "the node returns to FA1: the foreign AAA's cache names FA2, not FA3, so it proxies the request to"
        " the home AAA (flow D); a new epoch gives FA1 fresh SPIs and keys",
        FA1,
        previous_fa=FA3,
        expected={
            "fa1": _FA_PATHS | {("FA_FA", FA3)},
            "fa3": {("FA_FA", FA1)},
            "ha": {("FA_HA", FA1), ("HA_GW", GW_STATIC)},
            "gw-static": {("HA_GW", HA)},
            "gw-dynamic": {("FA_GW", FA1)},
        },
        foreign=(2, 1),
        notes=(f"fa3 {_OLD_FA}",),
    ),
    _Step(
        "handoff to FA3 again",
        "D",
        "the node moves to FA3 again (the home AAA moves the session, flow D): the session is now at an FA"
        " that is a RADIUS client of the home AAA, which can reach it with CoA and Disconnect-Requests",
        FA3,
        previous_fa=FA1,
        expected={
            "fa3": _FA_PATHS | {("FA_FA", FA1)},
            "fa1": {("FA_FA", FA3)},
            "ha": {("FA_HA", FA3), ("HA_GW", GW_STATIC)},
            "gw-static": {("HA_GW", HA)},
            "gw-dynamic": {("FA_GW", FA3)},
        },
        foreign=(2, 1),
        notes=(f"fa1 {_OLD_FA}",),
    ),
    _Step(
        "operator pushes a VPN change",
        "F",
        "the operator changes the VPN record of the dynamic gateway's network to the gold service"
        " (aaa-vpn vpn change) and pushes it (aaa-vpn session push --source <home AAA>): the session moves"
        " to its next epoch at FA3; FA3 and the HA each get a CoA-Request with their new view, install the"
        " new epoch's paths (the HA also updates the gateways) and remove the old epoch's",
        FA3,
        operator="push",
        expected={
            "fa3": _FA_PATHS,
            "fa1": set(),
            "ha": {("FA_HA", FA3), ("HA_GW", GW_STATIC)},
            "gw-static": {("HA_GW", HA)},
            "gw-dynamic": {("FA_GW", FA3)},
        },
        foreign=(2, 1),
        settle_timeout=15.0,
        notes=(
            "the forwarding path between fa1 and fa3 of the last handoff ends with its forwarding lifetime"
            " (10 s, flow E); this step waits for that too",
            f"meanwhile the gateways, whose bindings last at most {GATEWAY_MAX_LIFETIME} s, ask the HA for"
            " refreshes with Binding Requests and get them (flow G)",
        ),
    ),
    _Step(
        "operator ends the session",
        "F",
        "the operator ends the session (aaa-vpn session disconnect --source <home AAA>): FA3 and the HA get"
        " a Disconnect-Request and remove its SAs, the HA withdraws the gateways' bindings, and the home AAA"
        " deletes the session",
        FA3,
        operator="disconnect",
        expected={name: set() for name in AGENTS},
        foreign=(2, 1),
    ),
)

NOTES = (
    "Flow E (smooth handoff): after a move the old FA keeps only a forwarding path toward the new FA, for 10 s.",
    "Flow F: the operator's CoA and Disconnect-Requests go to the session's FA and HA from the home AAA's"
    " address; FA1 and FA2 ask the foreign AAA, so the session is moved to FA3 (a client of the home AAA) first.",
    "The node's own deregistration (lifetime 0) is not a step: the operator's disconnect ends the session.",
)


# -- the topology -----------------------------------------------------------------------------------


class Topology:
    """The processes of the demo; :meth:`stop` ends them by PID.

    Ports: the agents' Mobile IP port (one for all six) and the FAs' and the
    HA's CoA port are bound here on every agent's address before anything
    starts (:func:`~aaa_vpn.lab.topology.bind_udp`) and handed to the agents
    (``--mip-socket-fd``, ``--coa-socket-fd``); the AAA servers bind port 0
    and say in their log which one they got, before anyone is told it. No
    process is ever given a port that is merely believed free, so demos run
    side by side."""

    def __init__(self, options: DemoOptions, directory: Path) -> None:
        self.options = options
        agents = [LOOPBACK.of(name) for name in AGENTS]
        self.mip = bind_udp(agents, options.mip_port)
        try:
            self.coa = bind_udp([LOOPBACK.of(name) for name in COA_AGENTS])
        except LabError:
            self.mip.close()
            raise
        try:
            self.files = provision(directory, self.coa.port)
        except BaseException:
            self.mip.close()
            self.coa.close()
            raise
        self.processes = Processes(directory)
        self.radius_port = 0
        self.diameter_port = 0
        self.foreign_port = 0
        self._foreign_log_offset = 0

    @property
    def mip_port(self) -> int:
        return self.mip.port

    def _command(self, *args: str) -> list[str]:
        return [self.options.python, "-m", "aaa_vpn.cli", *args]

    def start(self) -> None:
        files = self.files
        home = home_aaa_args(files, AAA, self.options.radius_port)
        if self.options.aaa_protocol == "diameter":
            home += ["--diameter-listen", f"{AAA}:0", *_DIAMETER_HOME]
        self.processes.spawn("home-aaa", self._command(*home))
        self.processes.wait_ready(_START_TIMEOUT)
        self.radius_port = self.processes.listening_port("home-aaa")
        if self.options.aaa_protocol == "diameter":
            self.diameter_port = self._diameter_port()
        config = write_foreign_config(files, LOOPBACK, 0, self.radius_port)
        diameter = self.options.aaa_protocol == "diameter"
        if diameter:
            # Its FAs send it AMRs, and it proxies them to the home AAA's Diameter
            # side as its client "aaaf" (role foreign-aaa): its Origin-Host is that
            # name (docs/foreign-aaa.md, "Diameter home realms").
            realm = '[[realms]]\nname = "home.example"\n'
            text = config.read_text()
            if realm not in text:  # pragma: no cover - write_foreign_config writes it
                raise LabError("the foreign AAA's file has no realm home.example")
            config.write_text(
                text.replace(
                    realm,
                    f'{realm}protocol = "diameter"\n[[realms.peers]]\nhost = "{_DIAMETER_HOME[3]}"\n'
                    f'address = "{AAA}"\nport = {self.diameter_port}\n',
                )
                + f'\n[diameter]\nlisten = "{AAAF}:0"\nrealm = "{_VISITED_REALM}"\nhost = "{_FOREIGN_HOST}"\n'
                "plain_is_secure = true\n"
            )
        self.processes.spawn(
            "foreign-aaa",
            self._command("serve", "foreign", "--config", str(config), "--log-format", "json", "--log-level", "debug"),
        )
        self.processes.wait_ready(_START_TIMEOUT)
        self.foreign_port = self.processes.listening_port("foreign-aaa")
        foreign_diameter = self._diameter_port("foreign-aaa") if diameter else 0
        for name, role in AGENTS.items():
            address = LOOPBACK.of(name)
            sockets = {"mip": self.mip.fd(address)}
            if name in COA_AGENTS:
                sockets["coa"] = self.coa.fd(address)
            args = agent_args(
                name,
                files,
                LOOPBACK,
                self.mip_port,
                self.processes.state_file(name),
                (self.radius_port, self.foreign_port),
                sockets,
            )
            if role in ("fa", "ha"):
                args += ["--radius-retries", "2"]
            else:
                # Flow G within the demo's seconds: bindings of at most 6 s, a
                # Binding Request to the HA when half of one is left.
                args += ["--max-lifetime", str(GATEWAY_MAX_LIFETIME), "--refresh-threshold", "0.5"]
            if diameter and role in ("fa", "ha"):
                # Every FA and the HA speak Diameter: FA1 and FA2 to the foreign AAA,
                # FA3 and the HA to the home AAA (its names are their client names).
                behind = name in BEHIND_FOREIGN_AAA
                server = f"{AAAF}:{foreign_diameter}" if behind else f"{AAA}:{self.diameter_port}"
                realm = "home.example" if role == "ha" else _VISITED_REALM if behind else "visited3.example"
                args += ["--aaa-protocol", "diameter", "--diameter-server", server]
                args += ["--diameter-host", name, "--diameter-realm", realm]
                args += ["--diameter-peer-host", _FOREIGN_HOST if behind else _DIAMETER_HOME[3]]
            self.processes.spawn(name, self._command(*args), pass_fds=tuple(sockets.values()))
        self.processes.wait_ready(_START_TIMEOUT)

    def _diameter_port(self, server: str = "home-aaa") -> int:
        """The port an AAA server's log says its Diameter side listens on."""
        deadline = time.monotonic() + _START_TIMEOUT
        pattern = re.compile(r'diameter listening.*?\baddress"?[=:] ?"?[\d.]+:(\d+)')
        while time.monotonic() < deadline:
            found = pattern.search(self.processes.log(server).read_text(errors="replace"))
            if found:
                return int(found.group(1))
            time.sleep(0.05)
        raise LabError(f"{server} did not start its Diameter front end")

    def foreign_counters(self) -> dict[str, Any]:
        """Ask the foreign AAA for its counters (SIGUSR1) and read them from its log."""
        entry = self.processes["foreign-aaa"]
        before = entry.log.read_text(errors="replace").count('"msg": "counters"')
        os.kill(entry.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            lines = [line for line in entry.log.read_text(errors="replace").splitlines() if '"msg": "counters"' in line]
            if len(lines) > before:
                counters: dict[str, Any] = json.loads(lines[-1])
                return counters
            time.sleep(0.02)
        return {}

    def foreign_events(self) -> list[dict[str, Any]]:
        """The foreign AAA's decisions logged since the last call (JSON lines)."""
        entry = self.processes["foreign-aaa"]
        with entry.log.open("rb") as handle:
            handle.seek(self._foreign_log_offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._foreign_log_offset += len(complete)
        events = []
        for line in complete.decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "outcome" in record:
                events.append(record)
        return events

    def mn(self, step: _Step) -> dict[str, Any]:
        """Run ``aaa-vpn mn`` for ``step``; its JSON result."""
        args = mn_args(
            self.files, LOOPBACK, self.mip_port, MN_SOURCE, step.fa, step.previous_fa, deregister=step.deregister
        )
        return mn_result(subprocess.run(self._command(*args), capture_output=True, timeout=60, check=False))

    def operator(self, *args: str) -> dict[str, Any]:
        """Run ``aaa-vpn --json ARGS`` on the home AAA's database (the operator
        on the home AAA host); its JSON document with ``exit_status``."""
        command = self._command("--db", str(self.files.db), "--key-file", str(self.files.key), "--json", *args)
        result = subprocess.run(command, capture_output=True, timeout=60, check=False)
        try:
            document = json.loads(result.stdout)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            error = result.stderr.decode(errors="replace").strip()
            document = {"detail": error or "no output"}
        document["exit_status"] = result.returncode
        document["command"] = " ".join(["aaa-vpn", *args])
        return document

    def operate(self, step: _Step) -> dict[str, Any]:
        """Flow F: the operator's commands for ``step``; the last one's result,
        with every command run under ``commands``."""
        commands: list[dict[str, Any]] = []
        sessions = self.operator("session", "list", "--user", NAI)
        commands.append(sessions)
        live = sessions.get("sessions") or []
        if sessions["exit_status"] != 0 or len(live) != 1:
            return {"acknowledged": False, "detail": f"expected one session, found {len(live)}", "commands": commands}
        session_id = str(live[0]["session_id"])
        if step.operator == "push":
            records = self.operator("vpn", "list", "--user", NAI)
            commands.append(records)
            ids = [
                r.get("id")
                for value in records.values()
                if isinstance(value, list)
                for r in value
                if isinstance(r, dict) and r.get("gateway") == "gw-dynamic"
            ]
            if len(ids) != 1:
                return {"acknowledged": False, "detail": "no VPN record for gw-dynamic", "commands": commands}
            changed = self.operator("vpn", "change", str(ids[0]), "--service", "gold")
            commands.append(changed)
            if changed["exit_status"] != 0:
                return {"acknowledged": False, "detail": changed.get("detail", ""), "commands": commands}
        action = "push" if step.operator == "push" else "disconnect"
        result = self.operator("session", action, session_id, "--source", AAA, "--timeout", "1")
        return {**result, "action": action, "session": session_id, "commands": [*commands, result]}

    def states(self) -> dict[str, dict[str, Any]]:
        return {name: self.processes.state(name) for name in AGENTS}

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every process (agents first, the AAA servers last), wait,
        SIGKILL what remains; then release the ports bound for them."""
        try:
            return self.processes.stop(_STOP_GRACE)
        finally:
            self.mip.close()
            self.coa.close()


# -- checks --------------------------------------------------------------------------------------------


def sa_table(state: dict[str, Any]) -> set[tuple[str, str]]:
    return {(sa["role"], sa["peer"]) for sa in state.get("sas", [])}


def _spis(state: dict[str, Any], role: str | None = None) -> list[tuple[int, int]]:
    return sorted((sa["spi_in"], sa["spi_out"]) for sa in state.get("sas", []) if role is None or sa["role"] == role)


def _describe_table(table: set[tuple[str, str]]) -> str:
    return ", ".join(f"{role} -> {NAMES.get(peer, peer)}" for role, peer in sorted(table)) or "none"


def _checks(
    step: _Step, index: int, states: dict[str, dict[str, Any]], history: list[dict[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(what: str, ok: bool, detail: str = "") -> None:
        checks.append({"check": what, "ok": ok, "detail": detail})

    for name, expected in step.expected.items():
        actual = sa_table(states.get(name, {}))
        check(
            f"{name} has SAs {_describe_table(expected)}",
            actual == expected,
            "" if actual == expected else f"it has {_describe_table(actual)}",
        )
    if history and not step.ends_session:
        last = history[-1]
        for name, role, what in (("ha", "HA_GW", "ha"), ("gw-static", None, "gw-static")):
            before, now = _spis(last.get(name, {}), role), _spis(states.get(name, {}), role)
            if step.operator == "push":
                # A push re-keys every path, the stationary one too (new SPIs, new keys).
                ok = bool(now) and not set(before) & set(now)
                check(f"{what}: the stationary path was re-keyed (new SPIs)", ok, f"SPIs {before} -> {now}")
            else:
                check(
                    f"{what}: the stationary path is unchanged (same SPIs as in the step before)",
                    before == now,
                    "" if before == now else f"SPIs {before} became {now}",
                )
    fa_name = NAMES[step.fa]
    earlier = {spi for previous in history for spi in _spis(previous.get(fa_name, {}))}
    if earlier and not step.ends_session:  # back at an FA of an earlier step: a new epoch, fresh SPIs
        now_spis = set(_spis(states.get(fa_name, {})))
        check(f"{fa_name} uses fresh SPIs, none of its earlier visit (a new epoch)", not (earlier & now_spis), "")
    ha_bindings = states.get("ha", {}).get("bindings", [])
    if step.ends_session:
        check("the HA has no binding", not ha_bindings, json.dumps(ha_bindings))
    else:
        found = [(b.get("care_of_address"), b.get("epoch")) for b in ha_bindings if b.get("nai") == NAI]
        check(
            f"the HA's binding points at {NAMES[step.fa]}, session epoch {index + 1}",
            found == [(step.fa, index + 1)],
            f"care-of and epoch {found}",
        )
    return checks


def _operator_checks(
    step: _Step,
    result: dict[str, Any],
    states: dict[str, dict[str, Any]],
    history: list[dict[str, dict[str, Any]]],
    topology: Topology,
) -> list[dict[str, Any]]:
    """Flow F: what the operator's command answered and what it changed."""
    checks: list[dict[str, Any]] = []

    def check(what: str, ok: bool, detail: str = "") -> None:
        checks.append({"check": what, "ok": ok, "detail": detail})

    answer = "CoA-ACK" if step.operator == "push" else "Disconnect-ACK"
    answers = [(a.get("role"), a.get("answer")) for a in result.get("agents", [])]
    check(
        f"aaa-vpn session {result.get('action', step.operator)} exited 0: the FA and the HA answered {answer}",
        result.get("exit_status") == 0 and answers == [("fa", answer), ("ha", answer)],
        f"exit status {result.get('exit_status')}, answers {answers} {result.get('detail', '')}".strip(),
    )
    fa = states.get(NAMES[step.fa], {})
    if step.operator == "push":
        epoch = result.get("epoch")
        owners = sorted({sa.get("owner", "") for sa in fa.get("sas", [])})
        check(
            f"{NAMES[step.fa]}'s paths are all of the new epoch {epoch}, the old epoch's are gone",
            bool(owners) and all(owner.endswith(f"#{epoch}") for owner in owners),
            f"owners {owners}",
        )
        before = history[-1] if history else {}

        def transform(state: dict[str, Any]) -> str | None:
            return next((sa["esp_transform"] for sa in state.get("sas", []) if sa["role"] == "FA_GW"), None)

        was, now = transform(before.get(NAMES[step.fa], {})), transform(fa)
        gateway = transform(states.get("gw-dynamic", {}))
        check(
            "the FA_GW path uses the changed service's transform at both ends",
            now is not None and now != was and now == gateway,
            f"was {was}, now {now}, at gw-dynamic {gateway}",
        )
        # Flow G, over the whole demo: the gateways' 6 s bindings lived on
        # because each asked the HA (Binding Request) and got a refresh.
        for name in ("gw-static", "gw-dynamic"):
            counters = states.get(name, {}).get("counters", {})
            asked, refreshed = counters.get("binding_requests", 0), counters.get("bindings_refreshed", 0)
            expired = counters.get("bindings_expired", 0)
            check(
                f"flow G: {name}'s {GATEWAY_MAX_LIFETIME} s binding was refreshed through Binding Requests"
                " to the HA, never expired",
                asked >= 1 and refreshed >= 1 and expired == 0,
                f"binding_requests {asked}, bindings_refreshed {refreshed}, bindings_expired {expired}",
            )
    else:
        check("the session is deleted from the database", result.get("deleted") is True, json.dumps(result))
        listed = topology.operator("session", "list")
        check(
            "aaa-vpn session list shows no session",
            listed.get("exit_status") == 0 and listed.get("sessions") == [],
            json.dumps(listed.get("sessions")),
        )
        check(f"{NAMES[step.fa]} has no visitor", not fa.get("visitors"), json.dumps(fa.get("visitors")))
        gw_bindings = states.get("gw-dynamic", {}).get("bindings", [])
        check("gw-dynamic has no binding", not gw_bindings, json.dumps(gw_bindings))
    return checks


# -- the timeline --------------------------------------------------------------------------------------


def _peer_name(peer: str | None) -> str:
    if not peer:
        return "?"
    address = peer.rsplit(":", 1)[0]
    return NAMES.get(address, peer)


def _event_text(event: dict[str, Any]) -> str:
    kind = event["kind"]
    if kind in ("sent", "received"):
        message = str(event.get("message", ""))
        extra = []
        if "code" in event:
            extra.append(f"code {event['code']} {event.get('code_name', '')}".strip())
        if "status" in event:
            extra.append(f"status {event['status']} {event.get('status_name', '')}".strip())
        if "lifetime" in event:
            extra.append(f"lifetime {event['lifetime']}")
        if event.get("care_of_address") and message != "Registration Reply":
            extra.append(f"care-of {_peer_name(event['care_of_address'])}")
        detail = f" ({', '.join(extra)})" if extra else ""
        arrow = "->" if kind == "sent" else "<-"
        return f"{arrow} {_peer_name(event.get('peer'))}: {message}{detail}"
    if kind == "sa_installed":
        return (
            f"installed SA {event['role']} <-> {_peer_name(event['peer'])}"
            f" (SPI in 0x{event['spi_in']:06x}, out 0x{event['spi_out']:06x}, {event['esp_transform']})"
        )
    if kind == "sa_removed":
        return (
            f"removed SA {event['role']} <-> {_peer_name(event['peer'])}"
            f" (SPI in 0x{event['spi_in']:06x}, out 0x{event['spi_out']:06x})"
        )
    if kind == "sa_install_failed":
        return f"could not install SAs: {event.get('error', '')}"
    if kind == "registration":
        who = event.get("nai") or event.get("home_address", "")
        detail = f": {event['detail']}" if event.get("detail") else ""
        return f"decided {who}: {event['code_name']} (code {event['code']}), lifetime {event['lifetime']}{detail}"
    return json.dumps(event)


_SERVERS = ("home-aaa", "foreign-aaa")  # they keep no event log: their answers are shown where received


def _foreign_text(record: dict[str, Any]) -> str:
    outcome, client = record.get("outcome"), record.get("client", "?")
    if outcome == "handoff":
        return f"answered {client}'s handoff itself from its cache ({record.get('detail', '')}): nothing sent home"
    if outcome == "accept":
        return f"proxied {client}'s Access-Request to {record.get('server', 'the home AAA')}: Access-Accept relayed"
    return f"{outcome} for {client}: {record.get('detail', '')}"


def timeline(
    mn_result: dict[str, Any],
    states: dict[str, dict[str, Any]],
    seen: dict[str, int],
    foreign: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every node's new events since ``seen`` (updated), the foreign AAA's
    decisions and the mobile node's exchange, in time order. A message
    appears once, at its sender, unless the sender keeps no event log (the
    AAA servers)."""
    entries: list[dict[str, Any]] = []
    for record in foreign:
        entries.append(
            {
                "node": "foreign-aaa",
                "kind": "decision",
                "time": record.get("ts", 0.0),
                "outcome": record.get("outcome"),
                "client": record.get("client"),
                "detail": record.get("detail", ""),
                "text": _foreign_text(record),
            }
        )
    for item in mn_result.get("exchange", []):
        if item.get("direction") == "sent":
            entries.append({"node": "mn", "kind": "sent", **{k: v for k, v in item.items() if k != "direction"}})
    for name, state in states.items():
        last = seen.get(name, 0)
        for event in state.get("events", []):
            if event["seq"] <= last:
                continue
            seen[name] = max(seen.get(name, 0), event["seq"])
            if event["kind"] == "received" and _peer_name(event.get("peer")) not in _SERVERS:
                continue
            entries.append({"node": name, **event})
    entries.sort(key=lambda e: (e["time"], e.get("seq", 0)))
    for entry in entries:
        entry.setdefault("text", _event_text(entry))
    return entries


def _node_view(state: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {
        "address": state.get("address"),
        "running": state.get("running", False),
        "sas": [{k: v for k, v in sa.items() if k not in ("local",)} for sa in state.get("sas", [])],
    }
    for key in ("visitors", "bindings"):
        if key in state:
            view[key] = state[key]
    return view


# -- running -------------------------------------------------------------------------------------------


def _settle(topology: Topology, step: _Step) -> dict[str, dict[str, Any]]:
    """Wait until every expected SA table is there and nothing changed for a
    moment (a deregistration tells the gateways after replying), or time out."""
    deadline = time.monotonic() + step.settle_timeout
    last: dict[str, Any] | None = None
    quiet_since = time.monotonic()
    while True:
        states = topology.states()
        marks = {name: (s.get("updated"), len(s.get("events", []))) for name, s in states.items()}
        if marks != last:
            last, quiet_since = marks, time.monotonic()
        done = all(sa_table(states.get(name, {})) == expected for name, expected in step.expected.items())
        if (done and time.monotonic() - quiet_since >= 0.15) or time.monotonic() > deadline:
            return states
        time.sleep(0.03)


def _render_step(number: int, step: _Step, report: dict[str, Any]) -> str:
    mn_result = report["mn"]
    lines = [
        "",
        f"== step {number}/{len(STEPS)}: {step.name} (flow {step.flow}) ==",
        f"   {step.description}",
        "",
    ]
    operator_result = report.get("operator")
    if operator_result is not None:
        for command in operator_result.get("commands", []):
            lines.append(f"   operator: {command.get('command', '')} -> exit status {command.get('exit_status')}")
        for agent in operator_result.get("agents", []):
            cause = f" (Error-Cause {agent['error_cause']})" if agent.get("error_cause") else ""
            answer = agent.get("answer") or f"no answer: {agent.get('error', '')}"
            lines.append(f"   {_peer_name(agent.get('address')):<10} answered {answer}{cause}")
        if "epoch" in operator_result:
            lines.append(f"   session epoch {operator_result.get('previous_epoch')} -> {operator_result['epoch']}")
        if operator_result.get("detail"):
            lines.append(f"   operator: FAILED: {operator_result['detail']}")
    elif mn_result.get("code") is None:
        lines.append(f"   mobile node: FAILED: {mn_result.get('detail', '')}")
    else:
        verdict = (
            f"accepted (code {mn_result['code']})"
            if mn_result.get("accepted")
            else f"DENIED (code {mn_result['code']}, {mn_result.get('code_name', '')})"
        )
        lines.append(
            f"   mobile node: {mn_result.get('action', '')} through {_peer_name(mn_result.get('fa'))}: {verdict},"
            f" lifetime {mn_result.get('lifetime')} s, answered in {mn_result.get('seconds', 0) * 1000:.1f} ms"
        )
    lines += ["", "   timeline:"]
    start = report["timeline"][0]["time"] if report["timeline"] else 0.0
    for entry in report["timeline"]:
        lines.append(f"     +{(entry['time'] - start) * 1000:7.1f} ms  {entry['node']:<11}  {entry['text']}")
    lines += ["", "   SA tables (keys never shown):"]
    for name, view in report["nodes"].items():
        sas = view["sas"]
        if not sas:
            lines.append(f"     {name:<10}  (no SAs)")
        for index, sa in enumerate(sas):
            label = name if index == 0 else ""
            lines.append(
                f"     {label:<10}  {sa['role']:<5} <-> {_peer_name(sa['peer']):<10}"
                f"  SPI in 0x{sa['spi_in']:06x} out 0x{sa['spi_out']:06x}  {sa['esp_transform']}"
            )
        for visitor in view.get("visitors", []):
            lines.append(f"     {'':<10}  visitor {visitor['nai']} (home address {visitor['home_address']})")
        for binding in view.get("bindings", []):
            care_of = _peer_name(binding.get("care_of_address"))
            who = binding.get("nai") or binding.get("home_address")
            lines.append(f"     {'':<10}  binding {who} -> care-of {care_of}")
    lines += ["", "   checks:"]
    for item in report["checks"]:
        mark = "ok  " if item["ok"] else "FAIL"
        detail = f" -- {item['detail']}" if item["detail"] and not item["ok"] else ""
        lines.append(f"     [{mark}] {item['check']}{detail}")
    for note in step.notes:
        lines.append(f"     note: {note}")
    lines.append(f"   => step {'succeeded' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that cleanup runs."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_verdict(report: dict[str, Any]) -> str:
    """``""`` when the run succeeded; otherwise ``FAILED:`` and every check
    that failed, with its step and figures (and the error that stopped the
    run, if one did)."""
    lines = [
        line
        for step in report.get("steps", [])
        for line in failures(step.get("checks", []), f"step {step.get('step')} ({step.get('name')})")
    ]
    found = verdict(lines, report.get("error"))
    if not found and not report.get("ok"):
        found = verdict(["the run did not complete"])
    return found


def run_demo(options: DemoOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo; the report as data (``aaa-vpn demo --json``). ``progress``
    gets the readable text as the demo goes."""
    say = progress or (lambda _text: None)
    directory = Path(tempfile.mkdtemp(prefix="aaa_vpn-demo."))
    report: dict[str, Any] = {"ok": False, "steps": [], "notes": list(NOTES), "directory": str(directory)}
    topology: Topology | None = None
    try:
        with _terminate_on_sigterm():
            try:
                topology = Topology(options, directory)
                say(f"[demo] temporary directory {directory}")
                say(f"[demo] starting (Mobile IP port {topology.mip_port}, CoA port {topology.coa.port}):")
                say(f"[demo]   {'home-aaa':<11} aaa-vpn serve home --listen {AAA} --port {options.radius_port}")
                say(f"[demo]   {'foreign-aaa':<11} aaa-vpn serve foreign (listen {AAAF}, port 0)")
                for name, role in AGENTS.items():
                    address = ADDRESSES[name]
                    server = "foreign-aaa" if name in BEHIND_FOREIGN_AAA else "home-aaa"
                    asks = f", asks {server}" if role in ("fa", "ha") else ""
                    if role in ("fa", "ha") and options.aaa_protocol == "diameter":
                        asks += " over Diameter (RFC 4004)"
                    say(f"[demo]   {name:<11} aaa-vpn agent {role} --address {address}{asks}")
                topology.start()
                say(f"[demo] home-aaa on {AAA}:{topology.radius_port}, foreign-aaa on {AAAF}:{topology.foreign_port}")
            except LabError as exc:
                report["error"] = str(exc)
                say(f"[demo] cannot start: {exc}")
                return report
            pids = topology.processes.pids()
            report["topology"] = {
                "mip_port": topology.mip_port,
                "home_aaa": f"{AAA}:{topology.radius_port}",
                "mobile_node": {"nai": NAI, "home_address": HOME_ADDRESS, "source": MN_SOURCE},
                "nodes": {name: {"address": ADDRESSES[name], "pid": pid} for name, pid in pids.items()},
            }
            say(f"[demo] all processes ready: {', '.join(f'{n} (pid {p})' for n, p in pids.items())}")
            seen: dict[str, int] = {}
            topology_states = topology.states()
            for name, state in topology_states.items():  # startup events are not part of step 1
                seen[name] = max((e["seq"] for e in state.get("events", [])), default=0)
            history: list[dict[str, dict[str, Any]]] = []
            all_ok = True
            for index, step in enumerate(STEPS):
                operator_result: dict[str, Any] | None = None
                if step.operator is not None:
                    operator_result = topology.operate(step)
                    mn_result: dict[str, Any] = {}
                    states = _settle(topology, step)
                    checks = _operator_checks(step, operator_result, states, history, topology)
                else:
                    mn_result = topology.mn(step)
                    states = _settle(topology, step)
                    expected_code_ok = mn_result.get("accepted") is True and mn_result.get("exit_status") == 0
                    checks = [
                        {
                            "check": f"the mobile node's {'deregistration' if step.deregister else 'registration'}"
                            " was accepted",
                            "ok": expected_code_ok,
                            "detail": f"code {mn_result.get('code')}: {mn_result.get('detail', '')}",
                        }
                    ]
                checks += _checks(step, index, states, history)
                counters = topology.foreign_counters()
                if step.foreign is not None:
                    proxied, answered = step.foreign
                    # proxied home over RADIUS, or over Diameter (docs/foreign-aaa.md)
                    home_bound = counters.get("proxied", 0) + counters.get("diameter_proxy_forwarded_AMR", 0)
                    actual = (home_bound, counters.get("handoffs_answered", 0))
                    checks.append(
                        {
                            "check": f"the foreign AAA proxied {proxied} request(s) home and answered"
                            f" {answered} handoff(s) itself so far",
                            "ok": actual == (proxied, answered),
                            "detail": f"proxied {actual[0]}, handoffs answered {actual[1]}",
                        }
                    )
                ok = all(item["ok"] for item in checks)
                all_ok = all_ok and ok
                step_report = {
                    "step": index + 1,
                    "name": step.name,
                    "flow": step.flow,
                    "description": step.description,
                    "ok": ok,
                    "mn": mn_result,
                    "operator": operator_result,
                    "timeline": timeline(mn_result, states, seen, topology.foreign_events()),
                    "foreign_aaa": {
                        k: v for k, v in counters.items() if k in ("proxied", "handoffs_answered", "received")
                    },
                    "nodes": {name: _node_view(state) for name, state in states.items()},
                    "checks": checks,
                    "notes": list(step.notes),
                }
                report["steps"].append(step_report)
                history.append(states)
                say(_render_step(index + 1, step, step_report))
            report["ok"] = all_ok
    except KeyboardInterrupt:
        report["error"] = "interrupted"
        say("\n[demo] interrupted: stopping everything")
    except (OSError, subprocess.SubprocessError) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        say(f"[demo] failed: {report['error']}")
    finally:
        # Clean up first, talk afterwards: a closed stdout must not keep processes or files around.
        messages: list[str] = []
        if topology is not None:
            codes = topology.stop()
            report["exit_codes"] = codes
            unclean = {name: code for name, code in codes.items() if code != 0}
            if unclean:
                report["ok"] = False
                report.setdefault("error", f"processes did not stop cleanly: {unclean}")
                for name, code in unclean.items():
                    messages.append(
                        f"[demo] {name} exited with {code}; its log:\n{log_tail(topology.processes.log(name))}"
                    )
            messages.append(f"[demo] stopped {len(codes)} processes")
        if options.keep:
            messages.append(f"[demo] kept {directory} (database, logs, state files)")
        else:
            shutil.rmtree(directory, ignore_errors=True)
            report["directory"] = None
        with contextlib.suppress(OSError):
            for message in messages:
                say(message)
    report["verdict"] = run_verdict(report)
    say(f"[demo] {report['verdict'] or 'every step succeeded'}")
    for note in NOTES:
        say(f"[demo] note: {note}")
    return report


__all__ = ["DemoOptions", "run_demo"]
