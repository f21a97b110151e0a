"""The whole system with real IPsec and real traffic in network namespaces
(issue 5; aaa_vpn.netlab): home AAA, foreign AAA, HA, three FAs, a static
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

The ``userspace`` backend runs here. The ``strongswan`` backend with
kernel-libipsec cannot carry an FA's paths on this machine (see the module
``aaa_vpn.sa.strongswan`` and docs/sa-backends.md): libipsec refuses a
CHILD_SA whose local selector (the visitor's home address) holds no address
of the node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aaa_vpn.netlab import BACKBONE, CH1, CH2, HOME_ADDRESS, Lab, losses

from .test_sa_userspace import tshark_fields

pytestmark = [pytest.mark.netns, pytest.mark.interop]

AFTER_FA1 = {
    "ha": [("FA_HA", BACKBONE.fa1), ("HA_GW", BACKBONE.gw_static)],
    "fa1": [("FA_GW", BACKBONE.gw_dynamic), ("FA_HA", BACKBONE.ha)],
    "gw-static": [("HA_GW", BACKBONE.ha)],
    "gw-dynamic": [("FA_GW", BACKBONE.fa1)],
}
#: 150 datagrams of 200 octets a second: under the static path's 512 kbit/s QoS class.
RATE = 150
STATIC_PORT, DYNAMIC_PORT = 9001, 9002
MOVES = (("fa2", "fa1"), ("fa3", "fa2"), ("fa1", "fa3"))


@pytest.fixture
def lab(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Lab]:
    for tool in ("ip", "tcpdump", "tshark", "ping"):
        require_tool(tool)
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)
    running = Lab(tmp_path, backend="userspace", prefix=f"aae{os.getpid() % 10000}u_")
    try:
        running.create()
        running.start()
        running.start_driver()
        yield running
    finally:
        running.close()


def ping(lab: Lab, to: str) -> bool:
    result = lab.run("mn", "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-I", HOME_ADDRESS, to, check=False)
    return result.returncode == 0


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
    issued = {(v.local, v.spi_out): v for v in lab.issued_sas()}
    time.sleep(1.0)
    assert ping(lab, CH1) and ping(lab, CH2), "the node reaches both correspondents through FA1"
    windows: dict[str, tuple[float, float]] = {}
    for fa, previous in MOVES:
        result = lab.move(fa, previous)
        assert result["code"] == 0, (fa, result)
        windows[fa] = (result["link_switched"] - 0.05, result["finished"] + 0.5)
        time.sleep(1.0)
        assert ping(lab, CH1) and ping(lab, CH2), f"the node reaches both correspondents through {fa}"
        issued.update({(v.local, v.spi_out): v for v in lab.issued_sas()})
    sent = [lab.stop_traffic(name) for name in senders]
    received = [lab.stop_traffic(name) for name in receivers]
    pcap = lab.stop_capture()

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
    clear = tshark_fields("tshark", pcap, config, ["frame.number", "ip.src", "ip.dst", "ip.proto"], sas=[])
    inner = ("198.51.100.", "203.0.113.")
    leaks = [
        row for row in clear if any(address.startswith(inner) for address in row[1].split(",") + row[2].split(","))
    ]
    assert leaks == [], leaks[:5]
    # ... and between the agents only ESP (50), Mobile IP (434), RADIUS (1812) and CoA (3799)
    rows = tshark_fields("tshark", pcap, config, ["frame.number", "ip.proto", "udp.port"], sas=[])
    other = [r for r in rows if r[1] and r[1] != "50" and not set(r[2].split(",")) & {"434", "1812", "3799"}]
    assert other == [], other[:5]
    esp_frames = [r for r in rows if r[1] == "50"]
    assert len(esp_frames) > 2 * RATE, "the traffic crossed the backbone as ESP"

    # 2. tshark decrypts every ESP frame with the SAs the AAA issued, ICV good
    fields = ["esp.spi", "esp.icv_good", "esp.icv_bad", "ip.src", "ip.dst"]
    decrypted = tshark_fields("tshark", pcap, config, fields, sas=list(issued.values()))
    esp = [row for row in decrypted if row[0]]
    assert len(esp) == len(esp_frames)
    bad = [row for row in esp if row[1] != "1" or row[2] == "1"]
    assert bad == [], bad[:5]
    inner_addresses = {a for row in esp for a in (row[3].split(",")[1:] + row[4].split(",")[1:])}
    assert {HOME_ADDRESS, CH1, CH2} <= inner_addresses, inner_addresses
