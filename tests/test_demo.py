"""``aaa-vpn demo``: the whole topology as processes on loopback, every step
succeeding, and nothing left behind -- also when interrupted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that has not been reaped yet counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Neighbour:
    """A process beside the demo that binds, just before each of the demo's
    processes starts, every port that process's command line names on its
    address -- as anyone on the host may, by chance (an ephemeral port, a
    second demo) or not. A port the demo merely probed would be lost to it;
    a port the demo holds (or a server's port 0) cannot be."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, int]] = []
        self._sockets: list[socket.socket] = []

    def grab(self, argv: Sequence[str]) -> None:
        words = list(argv)

        def value(flag: str) -> str | None:
            return words[words.index(flag) + 1] if flag in words else None

        address = value("--address") or value("--listen")
        for flag in ("--mip-port", "--coa-port", "--port"):
            port = value(flag)
            if address is None or port is None or int(port) == 0:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((address, int(port)))
            except OSError:
                sock.close()
            else:
                self._sockets.append(sock)
                self.taken.append((address, int(port)))

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def test_two_demos_side_by_side_and_a_neighbour_that_takes_free_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two demos at once on the same loopback addresses, one of them (in this
    process) with a :class:`Neighbour` grabbing every port its processes are
    given just before they start: every step of both succeeds, and the
    neighbour got no port."""
    from aaa_vpn.lab import processes
    from aaa_vpn.lab.demo import DemoOptions, run_demo

    other = subprocess.Popen(
        [sys.executable, "-m", "aaa_vpn.cli", "demo", "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    neighbour = Neighbour()
    spawn = processes.Processes.spawn

    def spawn_beside_a_neighbour(
        self: processes.Processes, name: str, argv: Sequence[str], *rest: Any, **more: Any
    ) -> Any:
        neighbour.grab(argv)
        return spawn(self, name, argv, *rest, **more)

    monkeypatch.setattr(processes.Processes, "spawn", spawn_beside_a_neighbour)
    try:
        mine = run_demo(DemoOptions())
        stdout, stderr = other.communicate(timeout=180)
    finally:
        neighbour.close()
        if other.poll() is None:
            other.kill()
            other.wait()
    assert neighbour.taken == []
    failed = [(s["name"], [c for c in s["checks"] if not c["ok"]]) for s in mine["steps"] if not s["ok"]]
    assert mine["ok"] is True, (mine.get("error"), failed)
    assert other.returncode == 0, stdout[-5000:] + stderr[-5000:]
    report = json.loads(stdout)
    assert report["ok"] is True
    assert report["topology"]["mip_port"] != mine["topology"]["mip_port"]
    assert report["topology"]["home_aaa"] != mine["topology"]["home_aaa"]
    _every_step_succeeded(report)


def _every_step_succeeded(report: dict[str, Any]) -> None:
    """What ``aaa-vpn demo --json`` reports when every step succeeded."""
    assert [(s["name"], s["flow"], s["ok"]) for s in report["steps"]] == [
        ("register via FA1", "A+B", True),
        ("handoff to FA2", "C", True),
        ("handoff to FA3", "D", True),
        ("back to FA1", "D", True),
        ("handoff to FA3 again", "D", True),
        ("operator pushes a VPN change", "F", True),
        ("operator ends the session", "F", True),
    ]
    first, handoff, other_domain, _back, _again, push, disconnect = report["steps"]
    assert first["mn"]["code"] == 0 and first["mn"]["lifetime"] > 0
    # flow F: the operator's push and disconnect, each acknowledged by FA3 and the HA
    assert push["operator"]["exit_status"] == 0 and push["operator"]["epoch"] == 6
    assert [a["answer"] for a in push["operator"]["agents"]] == ["CoA-ACK", "CoA-ACK"]
    fa3_owners = {sa["owner"] for sa in push["nodes"]["fa3"]["sas"]}
    assert fa3_owners and all(owner.endswith("#6") for owner in fa3_owners), fa3_owners
    assert [a["answer"] for a in disconnect["operator"]["agents"]] == ["Disconnect-ACK", "Disconnect-ACK"]
    assert disconnect["operator"]["deleted"] is True
    assert all(view["sas"] == [] for view in disconnect["nodes"].values())
    assert all(check["ok"] for step in report["steps"] for check in step["checks"])
    # the timeline shows the messages and the SA changes, in time order
    texts = [(e["node"], e["kind"]) for e in first["timeline"]]
    assert ("gw-dynamic", "sa_installed") in texts and ("ha", "sa_installed") in texts
    times = [e["time"] for e in first["timeline"]]
    assert times == sorted(times)
    assert ("ha", "sa_removed") in [(e["node"], e["kind"]) for e in handoff["timeline"]]
    # flow C: the foreign AAA answered FA2 itself; flow D: FA3 asked the home AAA
    assert [e["outcome"] for e in handoff["timeline"] if e["node"] == "foreign-aaa"] == ["handoff"]
    assert handoff["foreign_aaa"]["handoffs_answered"] == 1 and handoff["foreign_aaa"]["proxied"] == 1
    fa3_sent = [e.get("peer", "") for e in other_domain["timeline"] if e["node"] == "fa3" and e["kind"] == "sent"]
    assert any(peer.startswith("127.0.0.1:") for peer in fa3_sent), fa3_sent
    assert sorted((sa["role"], sa["peer"]) for sa in first["nodes"]["ha"]["sas"]) == [
        ("FA_HA", "127.0.0.11"),
        ("HA_GW", "127.0.0.21"),
    ]
    # every process exited cleanly and is gone; the temporary directory too
    assert set(report["exit_codes"].values()) == {0}
    assert not any(_alive(node["pid"]) for node in report["topology"]["nodes"].values())
    assert report["directory"] is None
    assert "Flow E" in " ".join(report["notes"]) and "Flow F" in " ".join(report["notes"])


def test_ctrl_c_stops_everything_and_removes_the_files() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "aaa_vpn.cli", "demo"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job inherits SIGINT ignored, and Python keeps an
        # ignored SIGINT ignored: give the demo the default a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    directory, pids = None, []
    try:
        for line in process.stdout:
            if line.startswith("[demo] temporary directory "):
                directory = Path(line.split()[-1])
            if line.startswith("[demo] all processes ready"):
                pids = [int(part.rstrip("),")) for part in line.split() if part.rstrip("),").isdigit()]
                process.send_signal(signal.SIGINT)
                break
        rest = process.stdout.read()
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 130, rest
    assert "interrupted" in rest and "stopped 8 processes" in rest, rest
    assert len(pids) == 8 and not any(_alive(pid) for pid in pids)
    assert directory is not None and not directory.exists()


def test_netns_demo_json_every_step_succeeds_and_removes_its_namespaces(
    require_tool: Callable[[str], str],
) -> None:
    """``aaa-vpn demo --netns``: the real topology with the userspace backend
    (tests/test_netns_e2e.py asserts the wire, with both backends)."""
    for tool in ("ip", "ping", "tcpdump"):
        require_tool(tool)
    if os.geteuid() != 0:
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail("AAA_VPN_REQUIRE_TOOLS=1 but the netns demo needs root")
        pytest.skip("the netns demo needs root")
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    result = subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", "demo", "--netns", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["backend"] == "userspace" and report["smooth_handoff"] is True
    assert [(s["fa"], s["code"], s["tables_ok"], s["reached"]) for s in report["steps"]] == [
        (fa, 0, True, {"ch1": True, "ch2": True}) for fa in ("fa1", "fa2", "fa3", "fa1")
    ]
    for stream in report["traffic"].values():
        assert stream["received"] >= 0.9 * stream["sent"] and stream["lost_per_step"]["other"] == 0
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = {line.split()[0] for line in after.splitlines()} - {line.split()[0] for line in before.splitlines()}
    assert not left, f"the demo left namespaces behind: {left}"
