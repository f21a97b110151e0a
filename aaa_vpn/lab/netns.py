"""The whole system in network namespaces, with real IPsec and real traffic:
the topology (:mod:`aaa_vpn.lab.topology` on its :data:`BACKBONE`) of
``aaa-vpn demo --netns``, of the end-to-end tests and of
``bench/handoff_outage.py``.

What :class:`Lab` builds (every name starts with its own prefix, default
``aae<pid>_``; nothing outside these namespaces is touched, and
:meth:`Lab.close` removes all of it):

* a backbone bridge (namespace ``hub``) joining the home AAA (192.0.2.1),
  the HA (192.0.2.2), the visited domain's foreign AAA (192.0.2.3), FA1,
  FA2 (192.0.2.11, .12: visited-a.example, asking the foreign AAA), FA3
  (192.0.2.13: visited-b.example, asking the home AAA), the static gateway
  (192.0.2.21) and the dynamic gateway (192.0.2.22). The backbone has no
  route to the home or correspondent networks: what crosses it between
  agents is ESP or the control protocols, never an inner packet in clear.
* the mobile node (namespace ``mn``) with its home address 198.51.100.10 and
  one link to each FA (10.0.k.0/30: the FA .1, the node .2). Moving to FA k
  takes the old link down (the radio is gone), brings link k up and points
  the default route there, then registers with FA k, naming the previous FA.
* a correspondent host behind each gateway: ``ch1`` 203.0.113.10 behind the
  static gateway (203.0.113.0/25), ``ch2`` 203.0.113.138 behind the dynamic
  one (203.0.113.128/25).
* every element as a real ``aaa-vpn`` process in its namespace (``ip netns
  exec``), the agents with the chosen SA backend: ``userspace`` (the
  project's ESP on a TUN device) or ``strongswan`` (one charon-systemd with
  kernel-libipsec per agent, started here by PID), their FAs with the
  Mobile IP data path (``--data-path``).

Traffic: :meth:`Lab.send` runs a UDP sender in a correspondent's namespace
(sequence-numbered datagrams at a fixed rate), :meth:`Lab.receive` a
receiver in the mobile node's; both are this module run as a program
(``python -m aaa_vpn.lab.netns send|receive``) and write JSON when stopped
(SIGTERM). :func:`losses` attributes every datagram that never arrived to the
move during which it was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aaa_vpn.lab.processes import Process, Processes, log_tail
from aaa_vpn.lab.topology import (
    AGENTS,
    BACKBONE,
    HOME_ADDRESS,
    MN_HA_SPI,
    NAI,
    Files,
    LabError,
    agent_args,
    home_aaa_args,
    mn_args,
    mn_result,
    provision,
    write_foreign_config,
)
from aaa_vpn.lab.verdict import check, failures, loss_check, verdict
from aaa_vpn.model import KeyMode

CH1 = "203.0.113.10"  # behind the static gateway
CH2 = "203.0.113.138"  # behind the dynamic gateway
MIP_PORT = 434
RADIUS_PORT = 1812
COA_PORT = 3799
TRAFFIC_PORT = 9000

#: The namespaces on the backbone: namespace -> the element in it.
BACKBONE_NAMESPACES = {"aaa": "home-aaa", "aaaf": "foreign-aaa", **{name: name for name in AGENTS}}
FAS = ("fa1", "fa2", "fa3")
BACKENDS = ("userspace", "strongswan")
_SHORT = {"aaa": "aaa", "aaaf": "aaf", "ha": "ha", "fa1": "fa1", "fa2": "fa2", "fa3": "fa3"}
_SHORT.update({"gw-static": "gws", "gw-dynamic": "gwd", "hub": "hub", "mn": "mn", "ch1": "ch1", "ch2": "ch2"})


def mn_link(fa: str) -> tuple[str, str]:
    """(the FA's address, the node's address) on the link between the node and ``fa``."""
    k = FAS.index(fa) + 1
    return f"10.0.{k}.1", f"10.0.{k}.2"


# -- link readiness ---------------------------------------------------------------------------------------

_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_IFLA_IFNAME, _IFLA_OPERSTATE = 3, 16
_IF_OPER_UP = 6
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change


class LinkWatch:
    """Whether the FA's end of a link to the node is operationally up (RFC 2863
    ``up``, rtnetlink ``IFLA_OPERSTATE``), read in the FA's namespace.

    Why it matters: when the node's end of a veth link comes up, the FA's end
    gets its carrier at once, but it can send only after the kernel's link
    watch has processed that (asynchronously, later under load; until then its
    transmit queue drops everything). An ARP reply the FA sends in between is
    lost, and the node retries ARP only after a second. A real node learns that
    the link works from the FA's Agent Advertisement; the lab's node waits for
    the FA's end to be up instead. One netlink socket per namespace, opened
    once."""

    def __init__(self) -> None:
        self._sockets: dict[str, Any] = {}

    def up(self, netns: str, interface: str) -> bool:
        from aaa_vpn.sa.netlink import NetlinkSocket, open_transport, split_message

        connection = self._sockets.get(netns)
        if connection is None:
            connection = self._sockets[netns] = NetlinkSocket(open_transport(0, netns), {_RTM_GETLINK: "RTM_GETLINK"})
        name = interface.encode() + b"\x00"
        request = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + struct.pack("=HH", 4 + len(name), _IFLA_IFNAME)
        request += name + bytes(-len(name) % 4)
        for message in connection.request(_RTM_GETLINK, request):
            if message.type != _RTM_NEWLINK:
                continue
            _fixed, attrs = split_message(message.payload, _IFINFOMSG.size, "ifinfomsg")
            for type_, value in attrs:
                if type_ & 0x3FFF == _IFLA_OPERSTATE and value:
                    return value[0] == _IF_OPER_UP
        return False

    def wait(self, netns: str, interface: str, timeout: float = 3.0) -> bool:
        """Wait until :meth:`up` (polling every millisecond), at most ``timeout`` s; whether it is."""
        deadline = time.monotonic() + timeout
        while not self.up(netns, interface):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self) -> None:
        for connection in self._sockets.values():
            connection.close()
        self._sockets.clear()


@dataclass
class Lab:
    """The namespaces, links and processes (see the module docstring)."""

    directory: Path
    backend: str = "userspace"
    forwarding_lifetime: int = 10
    prefix: str = field(default_factory=lambda: f"aae{os.getpid() % 100000}_")
    python: str = sys.executable
    log_keys: bool = False  # strongswan: CHILD_SA keys in charon's log, for tshark (tests only)
    accounting_interim: float = 0.0  # > 0: FAs and the HA send RADIUS accounting, Interim-Updates this often
    charons: dict[str, Any] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    attached: str | None = None
    processes: Processes = field(init=False)
    files: Files = field(init=False)

    def __post_init__(self) -> None:
        self.processes = Processes(self.directory)
        if self.backend not in BACKENDS:
            raise LabError(f"unknown backend {self.backend!r}: one of {', '.join(BACKENDS)}")
        if len(self.prefix) > 9:
            raise LabError("the prefix is at most 9 characters (interface names are 15)")

    # -- names and commands ----------------------------------------------------------------------------
    def ns(self, name: str) -> str:
        return self.prefix + _SHORT[name]

    def _ip(self, *args: str, ns: str | None = None) -> None:
        command = ["ip", *(("-n", self.ns(ns)) if ns else ()), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"{' '.join(command)}: {result.stderr.strip()}")

    def run(
        self, name: str, *command: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in ``name``'s namespace."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns(name), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise LabError(f"{name}: {' '.join(command)}: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def _sysctl(self, name: str, *settings: str) -> None:
        self.run(name, "sysctl", "-q", "-w", *settings)

    # -- building ---------------------------------------------------------------------------------------
    def create(self) -> None:
        """The namespaces and links (module docstring); LabError, with everything removed, on failure."""
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _veth(self, a: str, a_name: str, b: str, b_name: str, number: int) -> None:
        left, right = f"{self.prefix}{number}a", f"{self.prefix}{number}b"
        self._ip("link", "add", left, "type", "veth", "peer", "name", right)
        self._ip("link", "set", left, "netns", self.ns(a))
        self._ip("link", "set", right, "netns", self.ns(b))
        self._ip("link", "set", left, "name", a_name, ns=a)
        self._ip("link", "set", right, "name", b_name, ns=b)

    def _create(self) -> None:
        names = ["hub", *BACKBONE_NAMESPACES, "mn", "ch1", "ch2"]
        for name in names:
            self._ip("netns", "add", self.ns(name))
            self.namespaces.append(self.ns(name))
            self._ip("link", "set", "lo", "up", ns=name)
            self._sysctl(name, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        self._ip("link", "add", "br0", "type", "bridge", ns="hub")
        self._ip("link", "set", "br0", "up", ns="hub")
        number = 0
        for name, element in BACKBONE_NAMESPACES.items():
            number += 1
            self._veth(name, "eth0", "hub", f"p{_SHORT[name]}", number)
            self._ip("link", "set", f"p{_SHORT[name]}", "master", "br0", "up", ns="hub")
            self._ip("addr", "add", f"{BACKBONE.of(element)}/24", "dev", "eth0", ns=name)
            self._ip("link", "set", "eth0", "up", ns=name)
            if element in AGENTS:
                self._sysctl(name, "net.ipv4.ip_forward=1")
        for fa in FAS:
            number += 1
            fa_side, mn_side = mn_link(fa)
            self._veth(fa, "mn", "mn", fa, number)
            self._ip("addr", "add", f"{fa_side}/30", "dev", "mn", ns=fa)
            self._ip("addr", "add", f"{mn_side}/30", "dev", fa, ns="mn")
            self._ip("link", "set", "mn", "up", ns=fa)
        self._ip("addr", "add", f"{HOME_ADDRESS}/32", "dev", "lo", ns="mn")
        for gateway, host, (gw_address, host_address) in (
            ("gw-static", "ch1", ("203.0.113.1", CH1)),
            ("gw-dynamic", "ch2", ("203.0.113.129", CH2)),
        ):
            number += 1
            self._veth(gateway, "ch", host, "gw", number)
            self._ip("addr", "add", f"{gw_address}/25", "dev", "ch", ns=gateway)
            self._ip("addr", "add", f"{host_address}/25", "dev", "gw", ns=host)
            self._ip("link", "set", "ch", "up", ns=gateway)
            self._ip("link", "set", "gw", "up", ns=host)
            self._ip("route", "add", "default", "via", gw_address, ns=host)

    # -- processes ----------------------------------------------------------------------------------------
    def _spawn(self, name: str, netns: str, args: Sequence[str]) -> Process:
        return self.processes.spawn(name, ["ip", "netns", "exec", self.ns(netns), *args])

    def _aaa_vpn(self, *args: str) -> list[str]:
        return [self.python, "-m", "aaa_vpn.cli", *args]

    def state_file(self, name: str) -> Path:
        return self.processes.state_file(name)

    def state(self, name: str) -> dict[str, Any]:
        return self.processes.state(name)

    def start(self) -> None:
        """Provision, start every process, wait until all run."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        key_mode = KeyMode.IKEV2 if self.backend == "strongswan" else KeyMode.MANUAL
        # each element has a namespace of its own, and so its own ports: the well-known ones are free
        self.files = files = provision(self.directory, COA_PORT, BACKBONE, key_mode=key_mode)
        self._spawn("home-aaa", "aaa", self._aaa_vpn(*home_aaa_args(files, BACKBONE.aaa, RADIUS_PORT)))
        foreign = write_foreign_config(files, BACKBONE, RADIUS_PORT, RADIUS_PORT)
        self._spawn(
            "foreign-aaa", "aaaf", self._aaa_vpn("serve", "foreign", "--config", str(foreign), "--log-format", "json")
        )
        if self.backend == "strongswan":
            from aaa_vpn.sa.charon import Charon

            for name in AGENTS:
                charon = Charon(
                    self.directory / f"charon-{name}", netns=self.ns(name), log_keys=self.log_keys, install_routes=False
                )
                self.charons[name] = charon
                charon.start()
        for name, role in AGENTS.items():
            state_file = self.state_file(name)
            args = agent_args(name, files, BACKBONE, MIP_PORT, state_file, (RADIUS_PORT, RADIUS_PORT))
            args += ["--journal", str(self.directory / f"{name}.journal"), "--backend", self.backend]
            if self.backend == "strongswan":
                args += ["--vici-socket", str(self.charons[name].vici_socket), "--route-into", "ipsec0"]
            if role == "fa":
                args += ["--data-path", "--forwarding-lifetime", str(self.forwarding_lifetime)]
            if self.accounting_interim > 0 and role in ("fa", "ha"):
                args += ["--accounting", "--accounting-interim", str(self.accounting_interim)]
            self._spawn(name, name, self._aaa_vpn(*args))
        self.processes.wait_ready(30.0)

    def restart_agent(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """Stop agent ``name`` (SIGTERM, by its PID; its charon keeps running),
        start it again with the same command, wait until it runs; its
        ``recovered`` event (docs/agents.md, "Restart")."""
        started = time.time()
        self.processes.restart(name)
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(name)
            if state.get("running") and state.get("started", 0) >= started:
                notes: list[dict[str, Any]] = [e for e in state.get("events", []) if e.get("kind") == "recovered"]
                if notes:
                    return notes[-1]
            if self.processes[name].process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{name} did not come back: {log_tail(self.processes[name].log, 8, ' | ')}")
            time.sleep(0.05)

    # -- the mobile node --------------------------------------------------------------------------------
    def attach(self, fa: str) -> None:
        """The node's radio moves to ``fa``: the old link down, the new one up, the default route there."""
        if self.attached is not None and self.attached != fa:
            self._ip("link", "set", self.attached, "down", ns="mn")
        fa_side, _ = mn_link(fa)
        self._ip("link", "set", fa, "up", ns="mn")
        self._ip("route", "replace", "default", "via", fa_side, "dev", fa, "src", HOME_ADDRESS, ns="mn")
        watch = LinkWatch()
        try:
            watch.wait(self.ns(fa), "mn")  # the FA's end can send (LinkWatch)
        finally:
            watch.close()
        self.attached = fa

    def mn(self, fa: str, previous: str | None = None, deregister: bool = False) -> dict[str, Any]:
        """``aaa-vpn mn register|deregister`` from the node, over its link to ``fa``; the JSON result."""
        _, source = mn_link(fa)
        previous_fa = BACKBONE.of(previous) if previous else None
        args = mn_args(self.files, BACKBONE, MIP_PORT, source, BACKBONE.of(fa), previous_fa, deregister)
        return mn_result(self.run("mn", *self._aaa_vpn(*args), check=False, timeout=60))

    def start_driver(self, lifetime: int = 600) -> None:
        """A long-running mobile node in its namespace (``python -m aaa_vpn.lab.netns
        mn-driver``): a move is then the link switch and one registration, not
        an interpreter's start-up. Its registrations ask for ``lifetime``."""
        files = self.files
        process = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.ns("mn"), self.python, "-m", "aaa_vpn.lab.netns", "mn-driver"),
                *("--mn-ha-key-file", str(files.mn_ha_key), "--mn-aaa-secret-file", str(files.mn_aaa_secret)),
                *("--lifetime", str(lifetime)),
                *(word for fa in FAS for word in ("--fa-netns", f"{fa}={self.ns(fa)}")),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(self.directory / "mn-driver.log").open("ab"),
            start_new_session=True,  # a terminal's Ctrl-C reaches the lab, which stops it
        )
        self.processes.add("mn-driver", process, self.directory / "mn-driver.log")
        if self._driver("hello") != {"ready": True}:
            raise LabError("the mobile node driver did not start")

    def _driver(self, *words: str) -> dict[str, Any]:
        process = self.processes["mn-driver"].process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write((" ".join(words) + "\n").encode())
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise LabError(f"the mobile node driver exited: {log_tail(self.directory / 'mn-driver.log', 8, ' | ')}")
        document: dict[str, Any] = json.loads(line)
        return document

    def move(
        self, fa: str, previous: str | None = None, deregister: bool = False, overlap_ms: float | None = None
    ) -> dict[str, Any]:
        """Through the driver (:meth:`start_driver`): attach to ``fa`` (old link
        down, new one up; with ``overlap_ms`` the old link goes down that long
        after the reply instead) and register there naming ``previous``; the
        outcome with ``link_switched`` and ``finished`` (and ``old_link_down``)
        wall-clock times."""
        if deregister:
            words = ["deregister", fa]
        elif overlap_ms is not None:
            words = ["soft", fa, previous or "-", str(overlap_ms)]
        else:
            words = ["move", fa, previous or "-"]
        result = self._driver(*words)
        if not deregister:
            self.attached = fa
        return result

    def reaches(self, to: str) -> bool:
        """Whether the node, from its home address, gets an answer to a ping of ``to``."""
        ping = ("ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-I", HOME_ADDRESS, to)
        return self.run("mn", *ping, check=False).returncode == 0

    def tables(self) -> dict[str, list[tuple[str, str]]]:
        """Every agent's SA table as (role, peer), sorted."""
        return {name: sorted((sa["role"], sa["peer"]) for sa in self.state(name).get("sas", [])) for name in AGENTS}

    def wait_for(self, expected: dict[str, list[tuple[str, str]]], timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            tables = self.tables()
            if all(tables[n] == sorted(t) for n, t in expected.items()) or time.monotonic() > deadline:
                return tables
            time.sleep(0.05)

    # -- traffic and captures ------------------------------------------------------------------------
    def send(self, host: str, to: str, rate: float, size: int = 200, port: int = TRAFFIC_PORT) -> str:
        """Start a UDP sender in ``host``'s namespace (``ch1``, ``ch2`` or ``mn``); its name."""
        name = f"send-{host}-{port}"
        program = [self.python, "-m", "aaa_vpn.lab.netns", "send", "--to", to, "--rate", str(rate), "--size", str(size)]
        self._spawn(name, host, [*program, "--port", str(port), "--out", str(self.directory / f"{name}.json")])
        return name

    def receive(self, host: str, port: int = TRAFFIC_PORT) -> str:
        """Start a UDP receiver on ``port`` in ``host``'s namespace; its name."""
        name = f"receive-{host}-{port}"
        program = [self.python, "-m", "aaa_vpn.lab.netns", "receive", "--port", str(port)]
        self._spawn(name, host, [*program, "--out", str(self.directory / f"{name}.json")])
        return name

    def issued_sas(self) -> list[Any]:
        """The SAs the AAA servers issued, as the agents hold them now (read
        from their sealed journals with their own secrets): every installed
        path in both directions, as ``PathProfile`` views (``local`` sends on
        ``spi_out`` with ``key_out``)."""
        from ipaddress import IPv4Address

        from aaa_vpn.roles.ha import mirror
        from aaa_vpn.secret_files import SecretForm, read_secret_file
        from aaa_vpn.service.journal import decode_journal

        views: list[Any] = []
        for name, role in AGENTS.items():
            address = BACKBONE.of(name)
            path = self.directory / f"{name}.journal"
            if not path.exists():
                continue
            # the node's own secret seals its journal: a gateway's key (raw), an FA's or HA's shared secret
            form = SecretForm.RAW if role == "gw" else SecretForm.TEXT
            secret = read_secret_file(self.files.secrets[name], name, form)
            state = decode_journal(path.read_bytes(), role, IPv4Address(address), secret)
            for entry in state.get("visitors", []) + state.get("bindings", []):
                paths = entry["profile"].paths if "profile" in entry else entry["paths"]
                for view in paths:
                    if str(view.local) == address:
                        views += [view, mirror(view)]
        return views

    def charon_esp_sas(self) -> list[tuple[int, bytes, bytes]]:
        """strongswan with ``log_keys``: every CHILD_SA's ESP keys as charon
        logged them (``chd = 4``): (SPI, encryption key, integrity key or
        b"") per direction, read from every agent's charon log."""
        found: dict[int, tuple[bytes, bytes]] = {}
        for charon in self.charons.values() or [None]:
            logs = [charon.log_path] if charon is not None else []
            for log in logs:
                found.update(parse_charon_keys(log.read_text(errors="replace")))
        if not self.charons:
            for log in self.directory.glob("charon-*/charon.log"):
                found.update(parse_charon_keys(log.read_text(errors="replace")))
        return [(spi, enc, integ) for spi, (enc, integ) in found.items()]

    def stop_traffic(self, name: str) -> dict[str, Any]:
        """Stop a sender or receiver (SIGTERM by PID); its JSON report."""
        entry = self.processes.pop(name)
        entry.process.send_signal(signal.SIGTERM)
        entry.process.wait(10)
        report: dict[str, Any] = json.loads((self.directory / f"{name}.json").read_text())
        return report

    def capture(self, name: str = "backbone", interface: str = "br0", netns: str = "hub") -> Path:
        """Start tcpdump on the backbone bridge; stopped by :meth:`stop_capture`."""
        path = self.directory / f"{name}.pcap"
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns(netns),
                "tcpdump",
                "-i",
                interface,
                "-n",
                "-U",
                "--immediate-mode",
                "-w",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        line = process.stderr.readline()
        if b"listening on" not in line:
            process.kill()
            process.wait()
            raise LabError(f"tcpdump did not start: {line!r}")
        self.processes.add(f"capture-{name}", process, path)
        return path

    def stop_capture(self, name: str = "backbone") -> Path:
        entry = self.processes.pop(f"capture-{name}")
        entry.process.send_signal(signal.SIGINT)
        entry.process.wait(10)
        return entry.log

    # -- the end -----------------------------------------------------------------------------------------
    def stop(self) -> dict[str, int | None]:
        """Stop every process by its PID (SIGTERM, SIGKILL after 10 s), then the
        charons; the processes' exit statuses (``None``: killed)."""
        codes = self.processes.stop(10.0)
        for charon in self.charons.values():
            charon.stop()
        self.charons.clear()
        return codes

    def close(self) -> None:
        """Stop everything and delete the namespaces (also after a failed start).
        A second Ctrl-C while it does so is ignored: it must not leave
        namespaces and processes behind."""
        import threading

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self.stop()
            for netns in reversed(self.namespaces):
                subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
            self.namespaces.clear()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_HEX_DUMP = re.compile(r"^\d+: ((?:[0-9A-F]{2} )*[0-9A-F]{2})(?:  |$)")


def parse_charon_keys(text: str) -> dict[int, tuple[bytes, bytes]]:
    """SPI -> (encryption key, integrity key) from a charon log with ``chd = 4``.

    charon logs a CHILD_SA's keys (``encryption initiator key => N bytes``
    and a hex dump; likewise responder, integrity), then ``established with
    SPIs <in>_i <out>_o`` on the same thread, which earlier parsed the
    exchange's request (this end responds) or response (it initiated). The initiator's keys
    protect initiator -> responder: the responder's inbound SPI, the
    initiator's outbound one."""
    keys: dict[str, dict[str, bytearray]] = {}  # thread -> "encryption initiator" -> key
    current: dict[str, bytearray] = {}  # thread -> the key being dumped
    responder: dict[str, bool] = {}  # thread -> it parsed a request (so it answers)
    result: dict[int, tuple[bytes, bytes]] = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        thread, message = parts[1].split("[", 1)[0], parts[2]
        dump = _HEX_DUMP.match(message)
        if thread in current and dump is not None:
            current[thread] += bytes.fromhex(dump.group(1))
            continue
        current.pop(thread, None)
        if " key => " in message and ("initiator" in message or "responder" in message):
            name = message.split(" key =>", 1)[0].strip()  # e.g. "encryption initiator"
            current[thread] = keys.setdefault(thread, {}).setdefault(name, bytearray())
            current[thread].clear()
        elif message.startswith("parsed ") and (" request " in message or " response " in message):
            responder[thread] = " request " in message
        elif "established with SPIs" in message:
            words = message.split()
            spi_in = int(next(w for w in words if w.endswith("_i"))[:-2], 16)
            spi_out = int(next(w for w in words if w.endswith("_o"))[:-2], 16)
            found = keys.pop(thread, {})
            mine, theirs = ("responder", "initiator") if responder.get(thread) else ("initiator", "responder")
            for spi, side in ((spi_out, mine), (spi_in, theirs)):
                result[spi] = (
                    bytes(found.get(f"encryption {side}", b"")),
                    bytes(found.get(f"integrity {side}", b"")),
                )
    return result


# -- loss accounting --------------------------------------------------------------------------------------


def losses(sent: dict[str, Any], received: dict[str, Any], windows: dict[str, tuple[float, float]]) -> dict[str, int]:
    """Datagrams sent and never received, by the move window their send time
    falls in (``windows``: name -> (start, end), wall clock); ``other`` for the rest."""
    got = set(received["seqs"])
    counts = dict.fromkeys(windows, 0)
    counts["other"] = 0
    for seq, when in enumerate(sent["times"]):
        if seq in got:
            continue
        for name, (start, end) in windows.items():
            if start <= when <= end:
                counts[name] += 1
                break
        else:
            counts["other"] += 1
    return counts


# -- the traffic programs (python -m aaa_vpn.lab.netns send|receive) ------------------------------------------

_HEADER = struct.Struct("!Id")


def _send(to: str, rate: float, size: int, port: int, out: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    times: list[float] = []
    stop = False

    def finish(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    interval = 1.0 / rate
    start = time.monotonic()
    padding = b"\x00" * max(0, size - _HEADER.size)
    errors = 0
    while not stop:
        seq = len(times)
        now = time.time()
        try:
            sock.sendto(_HEADER.pack(seq, now) + padding, (to, port))
        except OSError:
            errors += 1  # e.g. no route yet: counted as sent and lost
        times.append(now)
        delay = start + (seq + 1) * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    out.write_text(json.dumps({"to": to, "rate": rate, "size": size, "times": times, "send_errors": errors}))


def _receive(port: int, out: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.2)
    seqs: list[int] = []
    arrivals: list[float] = []
    stop = False

    def finish(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    while not stop:
        try:
            data, _source = sock.recvfrom(65535)
        except (TimeoutError, InterruptedError):
            continue
        if len(data) >= _HEADER.size:
            seq, _sent = _HEADER.unpack_from(data)
            seqs.append(seq)
            arrivals.append(time.time())
    out.write_text(json.dumps({"seqs": seqs, "arrivals": arrivals}))


def _mn_driver(
    mn_ha_key_file: Path, mn_aaa_secret_file: Path, lifetime: int = 600, fa_netns: dict[str, str] | None = None
) -> None:
    """Commands on stdin, one JSON answer per line on stdout: ``hello``,
    ``move FA PREVIOUS|-`` (the old link down first: a hard handoff),
    ``soft FA PREVIOUS|- OVERLAP_MS`` (make before break: the new link up and
    the default route there while the old one stays up, the registration, the
    old link down OVERLAP_MS after the reply; the answer has
    ``old_link_down``), ``deregister FA``. Registrations ask for ``lifetime``.
    With the FAs' namespaces (``fa_netns``: FA -> namespace) a new link counts
    as switched once the FA's end of it is up (:class:`LinkWatch`); the answer
    says how long that took (``link_wait_ms``)."""
    from ipaddress import IPv4Address

    from aaa_vpn.net.agents import run_mobile_node
    from aaa_vpn.roles.mn import MnConfig, MobileNode
    from aaa_vpn.secret_files import SecretForm, read_secret_file

    config = MnConfig(
        NAI,
        IPv4Address(HOME_ADDRESS),
        IPv4Address(BACKBONE.ha),
        MN_HA_SPI,
        read_secret_file(mn_ha_key_file, "--mn-ha-key-file", SecretForm.RAW),
        read_secret_file(mn_aaa_secret_file, "--mn-aaa-secret-file", SecretForm.TEXT),
        lifetime=lifetime,
        retransmit=0.5,
        attempts=6,
    )
    node = MobileNode(config)  # one node throughout: it keeps the challenges the FAs gave it
    attached: str | None = None
    watch = LinkWatch()

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "hello":
            answer: dict[str, Any] = {"ready": True}
        elif words[0] in ("move", "soft", "deregister"):
            fa = words[1]
            fa_side, source = mn_link(fa)
            switched = time.time()
            link_wait_ms = 0.0
            old = attached if attached not in (None, fa) else None
            if words[0] != "deregister":
                if old is not None and words[0] == "move":
                    ip("link", "set", old, "down")
                ip("link", "set", fa, "up")
                ip("route", "replace", "default", "via", fa_side, "dev", fa, "src", HOME_ADDRESS)
                attached = fa
                switched = time.time()
                waited = time.monotonic()
                if fa_netns and fa in fa_netns:
                    watch.wait(fa_netns[fa], "mn")
                link_wait_ms = round(1000 * (time.monotonic() - waited), 1)
            previous = words[2] if len(words) > 2 and words[2] != "-" else None
            outcome = run_mobile_node(
                config,
                (BACKBONE.of(fa), MIP_PORT),
                deregister=words[0] == "deregister",
                previous_fa=IPv4Address(BACKBONE.of(previous)) if previous else None,
                source=source,
                node=node,
            )
            answer = {**outcome.to_json(), "link_switched": switched}
            if words[0] != "deregister":
                answer["link_wait_ms"] = link_wait_ms
            if words[0] == "soft" and old is not None:
                time.sleep(float(words[3]) / 1000 if len(words) > 3 else 0.0)
                ip("link", "set", old, "down")
                answer["old_link_down"] = time.time()
        else:
            answer = {"error": f"unknown command {words[0]!r}"}
        print(json.dumps(answer), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aaa_vpn.lab.netns", description="traffic for the netns lab")
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send")
    send.add_argument("--to", required=True)
    send.add_argument("--rate", type=float, default=200.0)
    send.add_argument("--size", type=int, default=200)
    send.add_argument("--port", type=int, default=TRAFFIC_PORT)
    send.add_argument("--out", type=Path, required=True)
    receive = commands.add_parser("receive")
    receive.add_argument("--port", type=int, default=TRAFFIC_PORT)
    receive.add_argument("--out", type=Path, required=True)
    driver = commands.add_parser("mn-driver")
    driver.add_argument("--mn-ha-key-file", type=Path, required=True)
    driver.add_argument("--mn-aaa-secret-file", type=Path, required=True)
    driver.add_argument("--lifetime", type=int, default=600)
    driver.add_argument("--fa-netns", action="append", default=[], metavar="FA=NETNS")
    args = parser.parse_args(argv)
    if args.command == "send":
        _send(args.to, args.rate, args.size, args.port, args.out)
    elif args.command == "receive":
        _receive(args.port, args.out)
    else:
        fa_netns = dict(item.split("=", 1) for item in args.fa_netns)
        _mn_driver(args.mn_ha_key_file, args.mn_aaa_secret_file, args.lifetime, fa_netns)
    return 0


# -- aaa-vpn demo --netns ---------------------------------------------------------------------------------------

_DEMO_STEPS = (
    ("fa1", None, "register through FA1 (flows A and B; proxied by the foreign AAA)"),
    ("fa2", "fa1", "handoff to FA2, same domain (flow C: the foreign AAA answers; flow E)"),
    ("fa3", "fa2", "handoff to FA3, another domain (flow D: the home AAA answers; flow E)"),
    ("fa1", "fa3", "back to FA1 (flow D through the foreign AAA; flow E)"),
)


def expected_tables(fa: str, previous: str | None = None, smooth: bool = True) -> dict[str, list[tuple[str, str]]]:
    """The SA tables after a registration at ``fa`` (coming from ``previous``):
    with smooth handoff both FAs also hold the forwarding path between them."""
    address = BACKBONE.of(fa)
    expected = {
        "ha": [("FA_HA", address), ("HA_GW", BACKBONE.gw_static)],
        fa: [("FA_GW", BACKBONE.gw_dynamic), ("FA_HA", BACKBONE.ha)],
        "gw-static": [("HA_GW", BACKBONE.ha)],
        "gw-dynamic": [("FA_GW", address)],
    }
    if previous is not None and smooth:
        expected[fa].append(("FA_FA", BACKBONE.of(previous)))
        expected[previous] = [("FA_FA", address)]
    return expected


def _names(table: Sequence[tuple[str, str]]) -> str:
    """``FA_HA -> ha, FA_GW -> gw-dynamic`` for a table of (role, peer address)."""
    names = {BACKBONE.of(name): name for name in AGENTS}
    return ", ".join(f"{role} -> {names.get(peer, peer)}" for role, peer in sorted(table)) or "none"


def step_checks(
    result: dict[str, Any],
    expected: dict[str, list[tuple[str, str]]],
    tables: dict[str, list[tuple[str, str]]],
    reached: dict[str, bool],
) -> list[dict[str, Any]]:
    """The checks of one step of the netns demo: the node's reply, every
    expected SA table, both correspondents reached."""
    code = result.get("code")
    detail = f"code {code}" + (f" ({result.get('code_name')})" if result.get("code_name") else "")
    if result.get("detail"):
        detail += f": {result['detail']}"
    checks = [check("the registration was accepted (code 0)", code == 0, detail)]
    for name, table in expected.items():
        have = tables.get(name, [])
        checks.append(
            check(
                f"{name} has SAs {_names(table)}",
                sorted(have) == sorted(table),
                f"it has {_names(have)}",
            )
        )
    for host, ok in reached.items():
        checks.append(
            check(
                f"the node reaches {host} (ping from its home address)",
                ok,
                "answered" if ok else f"no answer from {host} to 2 pings within 1 s each",
            )
        )
    return checks


def run_netns_demo(
    directory: Path, backend: str = "userspace", smooth: bool = True, progress: Any = None, rate: float = 150.0
) -> dict[str, Any]:
    """``aaa-vpn demo --netns``: the real topology (module docstring) with
    traffic from both correspondents while the node registers and moves
    FA1 -> FA2 -> FA3 -> FA1; a report of every step (reply code, time,
    SA tables, both correspondents reached, datagrams lost) with its checks,
    and ``verdict``: every check that failed, with its figures."""
    say = progress or (lambda _text: None)
    if os.geteuid() != 0:
        error = "the netns demo needs root (network namespaces, TUN devices)"
        return {"ok": False, "error": error, "verdict": verdict([], error)}
    missing = [t for t in ("ip", "ping", "tcpdump") if shutil.which(t) is None]
    if backend == "strongswan" and shutil.which("charon-systemd") is None:
        missing.append("charon-systemd")
    if missing:
        error = f"missing tools: {', '.join(missing)} (bash scripts/setup.sh installs them)"
        return {"ok": False, "error": error, "verdict": verdict([], error)}
    if backend == "strongswan" and smooth:
        say("note: with strongSwan's kernel-libipsec smooth handoff is off (docs/sa-backends.md)")
        smooth = False
    lab = Lab(directory, backend=backend, forwarding_lifetime=10 if smooth else 0)
    report: dict[str, Any] = {
        "backend": backend,
        "smooth_handoff": smooth,
        "directory": str(directory),
        "namespace_prefix": lab.prefix,
        "steps": [],
    }
    started = time.monotonic()
    try:
        say(f"building the topology in network namespaces {lab.prefix}* ({backend} backend) ...")
        lab.create()
        lab.start()
        lab.start_driver()
        say(f"  {len(lab.processes)} processes up in {time.monotonic() - started:.1f} s")
        lab.capture()
        streams = {"ch1": 9001, "ch2": 9002}
        receivers = {host: lab.receive("mn", port) for host, port in streams.items()}
        senders: dict[str, str] = {}
        windows: dict[str, tuple[float, float]] = {}
        for number, (fa, previous, title) in enumerate(_DEMO_STEPS, 1):
            say(f"\nstep {number}: {title}")
            result = lab.move(fa, previous)
            if not senders:
                senders = {h: lab.send(h, HOME_ADDRESS, rate, port=p) for h, p in streams.items()}
            windows[f"{number}:{fa}"] = (result.get("link_switched", 0.0) - 0.05, result.get("finished", 0.0) + 0.5)
            expected = expected_tables(fa, previous, smooth)
            tables = lab.wait_for(expected)
            time.sleep(1.0)
            reached = {host: lab.reaches(to) for host, to in (("ch1", CH1), ("ch2", CH2))}
            checks = step_checks(result, expected, tables, reached)
            step = {
                "step": number,
                "title": title,
                "fa": fa,
                "code": result.get("code"),
                "registration_ms": round(1000 * float(result.get("seconds", 0.0)), 1),
                "tables": {n: tables[n] for n in AGENTS},
                "tables_ok": all(tables[n] == sorted(t) for n, t in expected.items()),
                "reached": reached,
                "checks": checks,
                "ok": all(c["ok"] for c in checks),
            }
            report["steps"].append(step)
            say(f"  reply code {step['code']} after {step['registration_ms']} ms")
            for name in AGENTS:
                say(f"  {name:<10} " + (", ".join(f"{r} -> {p}" for r, p in tables[name]) or "(no SAs)"))
            say(f"  the node reaches ch1: {reached['ch1']}, ch2: {reached['ch2']}")
            for line in failures(checks):
                say(f"  FAILED: {line}")
        totals: dict[str, dict[str, Any]] = {}
        sent_by = {host: lab.stop_traffic(senders[host]) for host in streams}
        time.sleep(0.5)  # what is still in the tunnels arrives (not lost: counted as "other" otherwise)
        for host in streams:
            sent = sent_by[host]
            received = lab.stop_traffic(receivers[host])
            totals[host] = {
                "sent": len(sent["times"]),
                "received": len(set(received["seqs"])),
                "lost_per_step": losses(sent, received, windows),
            }
        report["traffic"] = totals
        report["checks"] = [loss_check(f"{host} -> mn", t["sent"], t["received"]) for host, t in totals.items()]
        pcap = lab.stop_capture()
        report["capture"] = str(pcap)
        say("\ntraffic to the node (datagrams lost while it moved):")
        for host, numbers in totals.items():
            say(
                f"  from {host}: sent {numbers['sent']}, received {numbers['received']},"
                f" lost {numbers['lost_per_step']}"
            )
        report["ok"] = all(s["ok"] for s in report["steps"]) and all(c["ok"] for c in report["checks"])
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        report["ok"] = False
        report["error"] = str(exc)
        say(f"error: {exc}")
    except KeyboardInterrupt:
        report["ok"] = False
        report["error"] = "interrupted"
    finally:
        lab.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    lines = [line for s in report["steps"] for line in failures(s["checks"], f"step {s['step']} ({s['title']})")]
    lines += failures(report.get("checks", []))
    report["verdict"] = verdict(lines, report.get("error"))
    if not report["verdict"] and not report["ok"]:
        report["verdict"] = verdict(["the run did not complete"])
    say(f"\n{report['verdict'] or 'every step succeeded'} ({report['seconds']} s); namespaces removed")
    return report


__all__ = ["BACKBONE", "Lab", "LabError", "expected_tables", "losses", "mn_link", "run_netns_demo", "step_checks"]


if __name__ == "__main__":
    raise SystemExit(main())
