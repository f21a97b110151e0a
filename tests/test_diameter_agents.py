"""A foreign agent that speaks Diameter (``aaa-vpn agent fa --aaa-protocol
diameter``) in the live loopback topology of tests/test_agents_live.py: every
process real (home AAA with ``--diameter-listen``, HA and gateways over RADIUS,
FA1 over Diameter, ``aaa-vpn mn``), SAs in the memory backend. The node
registers through FA1 (flows A + B: the AMR's AMA installs FA1's paths, the
HA asks over RADIUS as always), renews, moves to FA2 (RADIUS) and back, and
deregisters."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mobility import AAA, FA1, FA2, HA
from tests.test_agents_live import AFTER_REGISTRATION, Topology, assert_mirrored, start

FA1_HOST = f"c-{FA1.replace('.', '-')}"  # FA1's RADIUS client name at the home AAA


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


HA_HOST = f"c-{HA.replace('.', '-')}"


def _diameter(port: int, host: str, realm: str) -> tuple[str, ...]:
    return ("--aaa-protocol", "diameter", "--diameter-server", f"{AAA}:{port}", "--diameter-host", host,
            "--diameter-realm", realm, "--diameter-peer-host", "aaa.home.example")  # fmt: skip


@pytest.fixture(params=["fa1", "fa1+ha"])
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """FA1 over Diameter; with ``fa1+ha`` the HA too (it takes the home AAA's HARs)."""
    port = _free_port(AAA)
    home = ("--diameter-listen", f"{AAA}:{port}", "--diameter-realm", "home.example",
            "--diameter-host", "aaa.home.example", "--diameter-plain-is-secure")  # fmt: skip
    agents = {"fa1": _diameter(port, FA1_HOST, "visited.example")}
    if request.param == "fa1+ha":
        agents["ha"] = _diameter(port, HA_HOST, "home.example")
    running = start(tmp_path, home_args=home, agent_args=agents)
    running.diameter_ha = request.param == "fa1+ha"  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        codes = running.stop()
        logs = "\n".join(f"--- {n}\n{p.read_text()[-3000:]}" for n, p in running.logs.items())
        assert codes == dict.fromkeys(codes, 0), f"exit codes {codes}\n{logs}"


def test_fa_over_diameter_registers_renews_moves_and_deregisters(topology: Topology) -> None:
    home_log = topology.logs["home-aaa"]
    fa1_log = topology.logs["fa1"]

    def diameter_up() -> bool:
        return "diameter peer up" in fa1_log.read_text(errors="replace")

    topology_wait(diameter_up, "FA1's CER/CEA with the home AAA")
    diameter_ha = getattr(topology, "diameter_ha", False)
    if diameter_ha:
        topology_wait(
            lambda: f"peer={HA_HOST}" in home_log.read_text(errors="replace"), "the HA's CER/CEA with the home AAA"
        )
    code, result = topology.mn("register", "--fa", FA1)
    assert (code, result["code"], result["accepted"]) == (0, 0, True), (result, fa1_log.read_text()[-3000:])
    assert topology.wait_for(AFTER_REGISTRATION) == AFTER_REGISTRATION
    assert_mirrored(topology, "fa1", "ha", "FA_HA")
    # FA1's registration was decided by the home AAA's Diameter process, not a RADIUS worker.
    text = home_log.read_text(errors="replace")
    diameter_pid = re.search(r"aaa_vpn\.diameter\[(\d+)\]: diameter listening", text)
    created = re.search(rf"aaa_vpn\.home\[(\d+)\]: session created .*client={FA1_HOST} ", text)
    assert diameter_pid and created and created.group(1) == diameter_pid.group(1), text[-3000:]
    # The HA's part: with a Diameter HA the home AAA decided it for the HAR
    # (in its Diameter process) and the HA asked nothing over RADIUS.
    asked = re.findall(r"aaa_vpn\.home\[(\d+)\]: session \w+ .*client=" + HA_HOST + " request=ha_registration", text)
    assert asked, text[-3000:]
    assert (set(asked) == {diameter_pid.group(1)}) == diameter_ha, (asked, diameter_pid.group(1))

    # A renewal through FA1: the same Diameter session, the same keys.
    before = topology.state("fa1")["sas"]
    code, result = topology.mn("register", "--fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    assert topology.state("fa1")["sas"] == before

    # Move to FA2 (RADIUS) and back to FA1 (Diameter): the same session moves.
    code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
    assert (code, result["code"]) == (0, 0), result
    code, result = topology.mn("register", "--fa", FA1, "--previous-fa", FA2)
    assert (code, result["code"]) == (0, 0), result

    code, result = topology.mn("deregister", "--fa", FA1)
    assert (code, result["code"]) == (0, 0), result


def topology_wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def test_the_demo_runs_with_diameter() -> None:
    import json
    import shutil

    from aaa_vpn.lab.demo import DemoOptions, run_demo

    report = run_demo(DemoOptions(aaa_protocol="diameter", keep=True))
    directory = Path(report["directory"])
    try:
        assert report["ok"], json.dumps(report, indent=1)[-4000:]
        text = (directory / "home-aaa.log").read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        stopped = [line for line in lines if line.get("msg") == "diameter stopped"]
        # FA3's registrations (flow D, twice) and those the foreign AAA proxied (FA1, FA1
        # again) were AMRs answered by the home AAA's Diameter process, which sent the HA
        # a HAR for each; the foreign AAA's were relayed (a Route-Record), not translated.
        assert stopped and stopped[0]["diameter_amr_accepted"] >= 4, stopped
        assert stopped[0]["diameter_received_HAA"] == stopped[0]["diameter_amr_accepted"], stopped
        text = (directory / "foreign-aaa.log").read_text()
        foreign = [json.loads(line) for line in text.splitlines() if '"diameter stopped"' in line]
        # FA1 and FA1 again proxied home over Diameter, FA2's handoff answered from the cache.
        assert foreign and foreign[0]["diameter_proxy_forwarded_AMR"] >= 2, foreign
        assert foreign[0]["diameter_amr_accepted"] >= 1, foreign
        counters = [json.loads(line) for line in text.splitlines() if '"worker stopped"' in line]
        assert counters and counters[0].get("proxied", 0) == 0, counters  # no RADIUS Access-Request home
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_foreign_aaa_serves_its_fas_over_diameter(tmp_path: Path) -> None:
    """The visited domain's foreign AAA with a ``[diameter]`` table: FA1 and
    FA2 send it AMRs; the first registration is proxied to the home AAA over
    RADIUS (flow A), the handoff to FA2 answered from its cache (flow C)."""
    from tests.test_agents_live import AFTER_REGISTRATION as A

    port = _free_port("127.0.0.3")
    toml = f'[diameter]\nlisten = "127.0.0.3:{port}"\nrealm = "visited.example"\nplain_is_secure = true\n'
    agents = {
        name: ("--aaa-protocol", "diameter", "--diameter-server", f"127.0.0.3:{port}", "--diameter-host",
               f"fa-{address}", "--diameter-realm", "visited.example", "--diameter-peer-host", "aaaf.visited.example")
        for name, address in (("fa1", FA1), ("fa2", FA2))
    }  # fmt: skip
    topology = start(tmp_path, foreign=True, agent_args=agents, foreign_toml=toml)
    try:
        foreign_log = topology.logs["foreign-aaa"]
        topology_wait(lambda: foreign_log.read_text(errors="replace").count("diameter peer up") >= 2, "FA1/FA2 CER")
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"], result["accepted"]) == (0, 0, True), (result, foreign_log.read_text()[-3000:])
        assert topology.wait_for(A) == A
        home_before = topology.logs["home-aaa"].read_text(errors="replace").count("request=fa_registration")
        code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
        assert (code, result["code"]) == (0, 0), result
        # Flow C: the foreign AAA answered the handoff itself; the home AAA saw no FA registration.
        home_after = topology.logs["home-aaa"].read_text(errors="replace").count("request=fa_registration")
        assert home_after == home_before
        code, result = topology.mn("deregister", "--fa", FA2)
        assert (code, result["code"]) == (0, 0), result
    finally:
        codes = topology.stop()
        logs = "\n".join(f"--- {n}\n{p.read_text()[-2000:]}" for n, p in topology.logs.items())
        assert codes == dict.fromkeys(codes, 0), f"exit codes {codes}\n{logs}"
    stopped = re.search(r"diameter stopped .*diameter_amr_accepted=(\d+)", foreign_log.read_text())
    assert stopped and int(stopped.group(1)) == 2, foreign_log.read_text()[-2000:]  # FA1's and FA2's AMRs


def test_the_node_gets_its_keys_over_diameter(tmp_path: Path) -> None:
    """FA1 and the HA over Diameter, ``aaa-vpn mn --request-keys``: the home AAA
    makes an MN-FA and an MN-HA key (AMA, HAR), the HA's reply carries the MN-HA
    Key Generation Nonce Reply and is authenticated under the new key, FA1 adds
    the MN-FA one: the node accepts the reply only if the key it derives from
    the nonce verifies it (roles/mn.py rule 7)."""
    port = _free_port(AAA)
    home = ("--diameter-listen", f"{AAA}:{port}", "--diameter-realm", "home.example",
            "--diameter-host", "aaa.home.example", "--diameter-plain-is-secure")  # fmt: skip
    agents = {"fa1": _diameter(port, FA1_HOST, "visited.example"), "ha": _diameter(port, HA_HOST, "home.example")}
    topology = start(tmp_path, home_args=home, agent_args=agents)
    try:
        home_log = topology.logs["home-aaa"]
        topology_wait(lambda: "diameter peer up" in topology.logs["fa1"].read_text(errors="replace"), "FA1's CER")
        topology_wait(lambda: f"peer={HA_HOST}" in home_log.read_text(errors="replace"), "the HA's CER")
        code, result = topology.mn("register", "--fa", FA1, options=("--request-keys",))
        assert (code, result["accepted"]) == (0, True), result
        [reply] = [m for m in result["exchange"] if m["direction"] == "received" and m.get("code") == 0]
        assert reply["keys"] == ["mn_ha", "mn_fa"], reply
        # On the wire: MN-HA and MN-FA authentication under the new MSAs' SPIs (roles/mn.py's
        # defaults) are HMAC-SHA-1, the algorithm the MSAs name: 20-octet authenticators.
        assert reply["authentication"] == [
            {"extension": "mn_ha", "spi": 0x3957, "octets": 20},
            {"extension": "mn_fa", "spi": 0x3958, "octets": 20},
        ], reply
        # The next call starts from the provisioned MN-HA key again (HMAC-MD5): the HA accepts it too.
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["accepted"]) == (0, True), result
        [reply] = [m for m in result["exchange"] if m["direction"] == "received" and m.get("code") == 0]
        assert [(a["extension"], a["octets"]) for a in reply["authentication"]] == [("mn_ha", 16)], reply
    finally:
        codes = topology.stop()
    logs = "\n".join(f"--- {n}\n{p.read_text()[-3000:]}" for n, p in topology.logs.items())
    assert codes == dict.fromkeys(codes, 0), f"exit codes {codes}\n{logs}"
    for name, log in topology.logs.items():
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, (name, text[-3000:])


def test_foreign_aaa_proxies_amrs_to_a_diameter_home_aaa(tmp_path: Path) -> None:
    """The foreign AAA as a Diameter proxy (realm home.example of ``protocol =
    "diameter"``): FA1 and FA2 send it AMRs, it forwards FA1's to the home
    AAA's Diameter server (no RADIUS between the AAAs), learns the session
    from the AMA and answers the handoff to FA2 itself (flow C). Both of its
    legs run through taps that record every message: FA1 -> tap -> foreign
    AAA -> tap -> home AAA. Then the home AAA takes AMRs and never answers
    (3002 after the foreign AAA's timeout), then is gone (3002 at once):
    the node's registration is refused cleanly each time."""
    from aaa_vpn.wire import diameter as d
    from aaa_vpn.wire.diameter import AvpCode as C
    from aaa_vpn.wire.diameter import Command
    from aaa_vpn.wire.diameter_profile import decode_profile_avps
    from aaa_vpn.wire.mip import ReplyCode
    from aaa_vpn.wire.profile import VENDOR_ID
    from aaa_vpn.wire.radius import AaaVpnAttr
    from tests.diameter_lab import Tap
    from tests.metrics_scrape import metrics_address, scrape
    from tests.mobility import AAAF
    from tests.test_agents_live import AFTER_REGISTRATION as A

    aaaf_host = f"c-{AAAF.replace('.', '-')}"  # the foreign AAA's client name at the home AAA (role foreign-aaa)
    home_port, foreign_port = _free_port(AAA), _free_port(AAAF)
    home = ("--diameter-listen", f"{AAA}:{home_port}", "--diameter-realm", "home.example",
            "--diameter-host", "aaa.home.example", "--diameter-plain-is-secure")  # fmt: skip
    to_home = Tap((AAA, home_port))
    to_foreign = Tap((AAAF, foreign_port))
    realms = (
        f'[[realms]]\nname = "home.example"\nprotocol = "diameter"\n[[realms.peers]]\nhost = "aaa.home.example"\n'
        f'address = "127.0.0.1"\nport = {to_home.port}\n'
    )
    toml = (
        f'[diameter]\nlisten = "{AAAF}:{foreign_port}"\nrealm = "visited.example"\nhost = "{aaaf_host}"\n'
        "plain_is_secure = true\ntimeout = 2\n"
    )
    agents = {
        name: ("--aaa-protocol", "diameter", "--diameter-server", server, "--diameter-host", f"fa-{address}",
               "--diameter-realm", "visited.example", "--diameter-peer-host", aaaf_host)
        for name, address, server in (("fa1", FA1, f"127.0.0.1:{to_foreign.port}"),
                                      ("fa2", FA2, f"{AAAF}:{foreign_port}"))
    }  # fmt: skip
    topology = start(
        tmp_path,
        foreign=True,
        home_args=home,
        agent_args=agents,
        foreign_toml=toml,
        foreign_realms=realms,
        extra={"foreign-aaa": ("--metrics-listen", f"{AAAF}:0")},
    )
    foreign_log, home_log = topology.logs["foreign-aaa"], topology.logs["home-aaa"]
    try:
        topology_wait(
            lambda: foreign_log.read_text(errors="replace").count("diameter peer up") >= 3, "FA1, FA2 and home CER"
        )
        cer = to_home.messages("up", Command.CAPABILITIES_EXCHANGE, True)
        assert [m.origin_host for m in cer] == [aaaf_host]

        # Flow A through the proxy: FA1's AMR goes home over Diameter.
        code, result = topology.mn("register", "--fa", FA1)
        assert (code, result["code"], result["accepted"]) == (0, 0, True), (result, foreign_log.read_text()[-3000:])
        assert topology.wait_for(A) == A
        (fa_amr,) = to_foreign.messages("up", Command.AA_MOBILE_NODE, True)
        (fa_ama,) = to_foreign.messages("down", Command.AA_MOBILE_NODE, False)
        (home_amr,) = to_home.messages("up", Command.AA_MOBILE_NODE, True)
        (home_ama,) = to_home.messages("down", Command.AA_MOBILE_NODE, False)
        # RFC 6733 section 6.1.9: the same request, one Route-Record naming the
        # peer it came from (FA1), a new Hop-by-Hop, the same End-to-End.
        assert home_amr.session_id == fa_amr.session_id and home_amr.origin_host == f"fa-{FA1}"
        assert [r.as_text() for r in home_amr.find_all(C.ROUTE_RECORD)] == [f"fa-{FA1}"]
        assert [a for a in home_amr.avps if a.code != C.ROUTE_RECORD] == list(fa_amr.avps)
        assert home_amr.end_to_end == fa_amr.end_to_end and home_amr.hop_by_hop != fa_amr.hop_by_hop
        # The answers: 2001 both ways, each with its leg's identifiers; the
        # session root key reached the foreign AAA (role foreign-aaa) and
        # stops there; everything else reaches FA1 as the home AAA sent it.
        assert (home_ama.result_code, fa_ama.result_code) == (2001, 2001)
        assert (home_ama.hop_by_hop, home_ama.end_to_end) == (home_amr.hop_by_hop, home_amr.end_to_end)
        assert (fa_ama.hop_by_hop, fa_ama.end_to_end) == (fa_amr.hop_by_hop, fa_amr.end_to_end)
        root_key = (VENDOR_ID, int(AaaVpnAttr.SESSION_ROOT_KEY))
        assert root_key in {(a.vendor, a.code) for a in home_ama.avps}
        assert [a for a in home_ama.avps if (a.vendor, a.code) != root_key] == list(fa_ama.avps)
        assert decode_profile_avps(home_ama.avps).session_root_key is not None
        assert decode_profile_avps(fa_ama.avps).session_root_key is None
        # Decided by the home AAA's Diameter process for its client of role
        # foreign-aaa; no RADIUS Access-Request between the AAAs.
        text = home_log.read_text(errors="replace")
        diameter_pid = re.search(r"aaa_vpn\.diameter\[(\d+)\]: diameter listening", text)
        created = re.search(rf"aaa_vpn\.home\[(\d+)\]: session created .*client={aaaf_host} ", text)
        assert diameter_pid and created and created.group(1) == diameter_pid.group(1), text[-3000:]
        assert "request=fa_registration" not in "".join(
            line for line in text.splitlines() if f"aaa_vpn.home[{diameter_pid.group(1)}]" not in line
        )

        # Flow C: the handoff to FA2 is answered from the foreign AAA's cache.
        fa_registrations = text.count("request=fa_registration")
        code, result = topology.mn("register", "--fa", FA2, "--previous-fa", FA1)
        assert (code, result["code"], result["accepted"]) == (0, 0, True), (result, foreign_log.read_text()[-3000:])
        assert len(to_home.messages("up", Command.AA_MOBILE_NODE, True)) == 1  # nothing new went home
        assert home_log.read_text(errors="replace").count("request=fa_registration") == fa_registrations
        assert "handoff answered from the cache" in foreign_log.read_text(errors="replace")

        # The home AAA takes AMRs and never answers: 3002 after the foreign AAA's 2 s.
        to_home.swallow = lambda message: message.command == Command.AA_MOBILE_NODE
        started = time.monotonic()
        code, result = topology.mn("register", "--fa", FA1, options=("--attempts", "1", "--retransmit", "4"))
        assert (code, result["accepted"], result["code"]) == (1, False, ReplyCode.FA_INSUFFICIENT_RESOURCES), result
        assert 1.5 < time.monotonic() - started < 4.5
        failed = to_foreign.messages("down", Command.AA_MOBILE_NODE, False)[-1]
        assert failed.result_code == d.ResultCode.UNABLE_TO_DELIVER and failed.error, failed
        assert len(to_home.messages("up", Command.AA_MOBILE_NODE, True)) == 2

        # The home AAA is gone (its connection closes, it cannot be reached again): 3002 at once.
        to_home.close()
        topology_wait(lambda: "diameter home peer unreachable" in foreign_log.read_text(errors="replace"), "home down")
        started = time.monotonic()
        code, result = topology.mn("register", "--fa", FA1, options=("--attempts", "1", "--retransmit", "4"))
        assert (code, result["accepted"], result["code"]) == (1, False, ReplyCode.FA_INSUFFICIENT_RESOURCES), result
        assert time.monotonic() - started < 1.5
        failed = to_foreign.messages("down", Command.AA_MOBILE_NODE, False)[-1]
        assert failed.result_code == d.ResultCode.UNABLE_TO_DELIVER, failed
        events = scrape(metrics_address(foreign_log))
        assert events.total("aaa_vpn_role_events_total", event="diameter_proxy.unable_to_deliver") == 2
        assert events.total("aaa_vpn_role_events_total", event="diameter_proxy.timeouts") == 1
        assert events.total("aaa_vpn_role_events_total", event="diameter_proxy.forwarded.AMR") == 3
    finally:
        to_home.close()
        to_foreign.close()
        codes = topology.stop()
        logs = "\n".join(f"--- {n}\n{p.read_text()[-2000:]}" for n, p in topology.logs.items())
        assert codes == dict.fromkeys(codes, 0), f"exit codes {codes}\n{logs}"
    text = foreign_log.read_text()
    assert text.count("diameter request not delivered home") == 2, text[-3000:]
    stopped = re.search(r"diameter stopped .*", text)
    assert stopped, text[-2000:]
    counters = dict(re.findall(r"(diameter_proxy_\w+)=(\d+)", stopped.group(0)))
    assert counters["diameter_proxy_forwarded_AMR"] == "3" and counters["diameter_proxy_unable_to_deliver"] == "2", (
        counters
    )
