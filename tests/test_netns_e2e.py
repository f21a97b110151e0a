"""The whole system with real IPsec and real traffic in network namespaces
(aaa_vpn.lab.netns): home AAA, foreign AAA, HA, three FAs, a static
and a dynamic gateway with a correspondent host behind each, and a mobile
node -- every element a real ``aaa-vpn`` process.

Both correspondents send steady traffic to the mobile node while it registers
at FA1 and moves FA1 -> FA2 (same domain, flow C) -> FA3 (other domain, flow
D) -> FA1 (flow D). Asserted: every registration is accepted; traffic arrives
after each move, both ways (the node pings both correspondents); a capture on
the backbone between the agents shows no inner packet in clear, only ESP and
the control protocols; tshark decrypts every ESP frame with the SAs the AAA
servers issued (read from the agents' sealed journals), with the ICV good and
the inner packets those of the VPN; and the datagrams lost during each move
are counted (reported; bench/handoff_outage.py measures them).

Run with both backends: ``userspace`` (the project's ESP; the keys are the
AAA-issued ones) and ``strongswan`` (a charon with kernel-libipsec per agent,
IKEv2 with the AAA-issued PSKs; ESP rides in UDP 4500 and its keys are
IKE's, read from charon's ``chd = 4`` log for tshark). With strongSwan the
run is without smooth handoff (kernel-libipsec picks the newest of two
policies with equal selectors, so the forwarding path's receiving end at the
new FA would take the node's own outbound traffic; docs/sa-backends.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aaa_vpn.lab.netns import CH1, CH2, Lab, expected_tables, losses
from aaa_vpn.lab.topology import BACKBONE, HOME_ADDRESS

from .test_sa_userspace import esp_sa_record, esp_sa_uat, tshark_rows

pytestmark = [pytest.mark.netns, pytest.mark.interop]

AFTER_FA1 = expected_tables("fa1")
#: 150 datagrams of 200 octets a second: under the static path's 512 kbit/s QoS class.
RATE = 150
STATIC_PORT, DYNAMIC_PORT = 9001, 9002
MOVES = (("fa2", "fa1"), ("fa3", "fa2"), ("fa1", "fa3"))


def running_lab(
    tmp_path: Path, require_tool: Callable[[str], str], backend: str, prefix: str, accounting_interim: float = 0.0
) -> Iterator[Lab]:
    """The lab (aaa_vpn.lab.netns) with ``backend``, up with its node driver, removed afterwards.

    strongSwan's kernel-libipsec prefers the newest of two policies with the
    same selectors and ignores explicit priorities: at the new FA the
    forwarding path's receiving end (set up after the node's own paths) would
    take the node's outbound traffic. Smooth handoff is off there."""
    for tool in ("ip", "tcpdump", "tshark", "ping") + (("charon-systemd",) if backend == "strongswan" else ()):
        require_tool(tool)
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)
    forwarding = 0 if backend == "strongswan" else 10
    running = Lab(
        tmp_path,
        backend=backend,
        prefix=prefix,
        log_keys=True,
        forwarding_lifetime=forwarding,
        accounting_interim=accounting_interim,
    )
    try:
        running.create()
        running.start()
        running.start_driver()
        yield running
    finally:
        running.close()


@pytest.fixture(params=["userspace", "strongswan"])
def lab(tmp_path: Path, require_tool: Callable[[str], str], request: pytest.FixtureRequest) -> Iterator[Lab]:
    backend = str(request.param)
    yield from running_lab(tmp_path, require_tool, backend, f"aae{os.getpid() % 10000}{backend[0]}_")


def test_traffic_follows_the_node_as_esp_only(lab: Lab, tmp_path: Path) -> None:
    lab.capture()
    receivers = [lab.receive("mn", STATIC_PORT), lab.receive("mn", DYNAMIC_PORT)]
    result = lab.move("fa1")
    assert result["code"] == 0, result
    assert lab.wait_for(AFTER_FA1) == {**lab.tables(), **AFTER_FA1}
    senders = [
        lab.send("ch1", HOME_ADDRESS, RATE, port=STATIC_PORT),
        lab.send("ch2", HOME_ADDRESS, RATE, port=DYNAMIC_PORT),
    ]
    issued = {v.spi_out: v for v in lab.issued_sas()}
    time.sleep(1.0)
    assert lab.reaches(CH1) and lab.reaches(CH2), "the node reaches both correspondents through FA1"
    windows: dict[str, tuple[float, float]] = {}
    for fa, previous in MOVES:
        result = lab.move(fa, previous)
        assert result["code"] == 0, (fa, result)
        windows[fa] = (result["link_switched"] - 0.05, result["finished"] + 0.5)
        time.sleep(1.0)
        assert lab.reaches(CH1) and lab.reaches(CH2), f"the node reaches both correspondents through {fa}"
        issued.update({v.spi_out: v for v in lab.issued_sas()})
    sent = [lab.stop_traffic(name) for name in senders]
    time.sleep(0.5)  # what is still in the tunnels arrives
    received = [lab.stop_traffic(name) for name in receivers]
    pcap = lab.stop_capture()

    # The HA tells the gateways while it negotiates its path with the new FA
    # (strongSwan, whose install waits for the IKE exchange), after installing it otherwise.
    ha = lab.state("ha")
    order: list[tuple[str, str]] = []  # (what, FA): the first Binding Update naming a care-of address, FA-HA installs
    for e in ha["events"]:
        if e["kind"] == "sent" and e.get("message") == "Binding Update" and e.get("lifetime"):
            if ("BU", e["care_of_address"]) != next((o for o in reversed(order) if o[0] == "BU"), None):
                order.append(("BU", e["care_of_address"]))
        elif e["kind"] == "sa_installed" and e.get("role") == "FA_HA":
            order.append(("FA-HA", e["peer"]))
    fas = [getattr(BACKBONE, fa) for fa in ("fa1", "fa2", "fa3", "fa1")]
    steps = ("BU", "FA-HA") if lab.backend == "strongswan" else ("FA-HA", "BU")
    assert order == [(what, fa) for fa in fas for what in steps], order
    assert ha["counters"].get("gateways_told_while_installing", 0) == (4 if lab.backend == "strongswan" else 0)

    # traffic arrived after every move, from both correspondents
    for stream, (s, r) in zip(("static", "dynamic"), zip(sent, received, strict=True), strict=True):
        arrivals = r["arrivals"]
        for fa, (_start, end) in windows.items():
            assert any(end < t < end + 1.0 for t in arrivals), f"{stream}: nothing arrived after the move to {fa}"
        lost = losses(s, r, windows)
        print(f"{stream}: sent {len(s['times'])}, lost {lost}")
        assert len(set(r["seqs"])) >= 0.9 * len(s["times"]), (stream, lost)

    config = tmp_path / "wireshark"
    # 1. no inner packet in clear on the backbone: without keys, nothing from or to the VPN's networks
    fields = ["frame.number", "ip.src", "ip.dst", "ip.proto", "udp.port", "esp.spi", "isakmp", "ip.flags.mf"]
    rows = tshark_rows("tshark", pcap, config, fields, [], timeout=300)
    inner = ("198.51.100.", "203.0.113.")
    leaks = [r for r in rows if any(a.startswith(inner) for a in r[1].split(",") + r[2].split(","))]
    assert leaks == [], leaks[:5]
    # ... and between the agents only ESP, IKE, Mobile IP (434), RADIUS (1812) and CoA (3799)
    control = {"434", "1812", "3799"}
    # (a fragmented datagram is judged by its last fragment, where tshark reassembles it)
    other = [r for r in rows if r[3] and not r[5] and not r[6] and r[7] != "1" and not set(r[4].split(",")) & control]
    assert other == [], other[:5]
    esp_frames = [r for r in rows if r[5]]
    assert len(esp_frames) > 2 * RATE, "the traffic crossed the backbone as ESP"

    # 2. tshark decrypts every ESP frame with the SAs: those the AAA issued
    # (userspace), or those charon negotiated with the AAA's PSKs (strongswan)
    if lab.backend == "userspace":
        records = [esp_sa_record(view) for view in issued.values()]
    else:
        records = [esp_sa_uat("*", "*", spi, enc, integ) for spi, enc, integ in lab.charon_esp_sas()]
    fields = ["esp.spi", "esp.icv_good", "esp.icv_bad", "ip.src", "ip.dst"]
    esp = [r for r in tshark_rows("tshark", pcap, config, fields, records, timeout=300) if r[0]]
    assert len(esp) == len(esp_frames)
    bad = [r for r in esp if r[1] != "1" or r[2] == "1"]
    assert bad == [], bad[:5]
    inner_addresses = {a for r in esp for a in (r[3].split(",")[1:] + r[4].split(",")[1:])}
    assert {HOME_ADDRESS, CH1, CH2} <= inner_addresses, inner_addresses


@pytest.fixture
def strongswan_lab(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Lab]:
    yield from running_lab(tmp_path, require_tool, "strongswan", f"aae{os.getpid() % 10000}r_")


def test_restarted_agents_keep_the_sas_charon_still_holds(strongswan_lab: Lab) -> None:
    """Recovery after a restart with a backend whose SAs outlive the agent: the HA
    and the FA restart (their charons keep running); each finds its
    connections in charon, keeps them (none removed, no state ended), and the
    traffic goes on through the very same CHILD_SAs; the next renewal and a
    handoff work as ever."""
    lab = strongswan_lab
    receiver = lab.receive("mn", DYNAMIC_PORT)
    assert lab.move("fa1")["code"] == 0
    assert lab.wait_for(AFTER_FA1) == {**lab.tables(), **AFTER_FA1}
    sender = lab.send("ch2", HOME_ADDRESS, RATE, port=DYNAMIC_PORT)
    before = {name: lab.state(name)["sas"] for name in ("ha", "fa1")}
    for name, paths in (("ha", 2), ("fa1", 2)):
        note = lab.restart_agent(name)
        assert (note["restored"], note["kept"], note["removed"], note["ended"]) == (
            len({sa["owner"] for sa in before[name]}),
            paths,
            0,
            0,
        ), (name, note)
        assert lab.state(name)["sas"] == before[name], name
    time.sleep(1.0)
    assert lab.reaches(CH1) and lab.reaches(CH2)
    # a renewal through the restarted FA and HA: the same paths (identical re-installs are no-ops)
    assert lab.move("fa1", None)["code"] == 0
    assert lab.tables() == {**lab.tables(), **AFTER_FA1}
    assert lab.state("ha")["sas"] == before["ha"] and lab.state("fa1")["sas"] == before["fa1"]
    # and a handoff
    assert lab.move("fa2", "fa1")["code"] == 0
    time.sleep(1.0)
    assert lab.reaches(CH1) and lab.reaches(CH2)
    sent, received = lab.stop_traffic(sender), lab.stop_traffic(receiver)
    assert len(set(received["seqs"])) >= 0.9 * len(sent["times"])


@pytest.fixture
def accounting_lab(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Lab]:
    yield from running_lab(tmp_path, require_tool, "userspace", f"aae{os.getpid() % 10000}a_", accounting_interim=1.0)


def _accounting(lab: Lab) -> list[dict[str, object]]:
    files = lab.files
    database = ("--db", str(files.db), "--key-file", str(files.key))
    result = subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", *database, "--json", "accounting", "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    records: list[dict[str, object]] = json.loads(result.stdout)["accounting"]
    return records


def test_the_agents_account_the_traffic_their_sas_carried(accounting_lab: Lab) -> None:
    """FA1 (through the foreign AAA, which proxies accounting home) and the HA
    account the registration: Interim-Updates carry the userspace backend's
    SA counters after real traffic; the move to FA3 stops FA1's record."""
    lab = accounting_lab
    receiver = lab.receive("mn", DYNAMIC_PORT)
    assert lab.move("fa1")["code"] == 0
    assert lab.wait_for(AFTER_FA1) == {**lab.tables(), **AFTER_FA1}
    sender = lab.send("ch2", HOME_ADDRESS, RATE, port=DYNAMIC_PORT)
    deadline = time.monotonic() + 20
    fa1, ha = BACKBONE.of("fa1"), BACKBONE.of("ha")
    while True:
        records = {(r["nas"], r["acct_session_id"]): r for r in _accounting(lab)}
        at_fa1 = [r for (nas, _), r in records.items() if nas == fa1]
        at_ha = [r for (nas, _), r in records.items() if nas == ha]
        if at_fa1 and at_ha and int(at_fa1[0]["input_octets"] or 0) > 0 and int(at_fa1[0]["updates"]) >= 2:  # type: ignore[call-overload]
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.5)
    lab.stop_traffic(sender)
    lab.stop_traffic(receiver)
    (record,) = at_fa1
    assert record["stopped"] is None and record["client"] == "aaaf"  # proxied by the foreign AAA
    # The dynamic gateway's traffic enters the FA's FA-GW SA: input at FA1, in octets and packets.
    assert int(record["input_packets"]) > 0 and int(record["input_octets"]) >= 200 * int(record["input_packets"])  # type: ignore[call-overload]
    assert lab.move("fa3", "fa1")["code"] == 0
    deadline = time.monotonic() + 20
    while not all(r["stopped"] for r in _accounting(lab) if r["nas"] == fa1):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    (stopped,) = [r for r in _accounting(lab) if r["nas"] == fa1]
    assert stopped["terminate_cause"] == "Lost-Carrier"
    assert int(stopped["input_octets"]) >= int(record["input_octets"])  # type: ignore[call-overload]
