"""The home AAA's Diameter front end against independent implementations:
``aaa-vpn serve home --diameter-listen`` (the real process, on SQLite) behind
freeDiameter (freeDiameterd, Debian's freediameterd) as a relay agent of the
visited realm, with two foreign agents (our Diameter node) behind the relay:
capabilities exchange, watchdogs, routing by Destination-Realm, a
registration and a handoff to the other FA through the relay, STR; tshark
decodes every message of the captured run with its own dictionary (RFC 4004's
``mobileipv4.xml``, plus the project's vendor AVPs from
``dictionaries/wireshark-diameter-aaa_vpn.xml``) with no malformed packet and
no expert error. Loopback only; every process is stopped by its PID."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from aaa_vpn.lab.topology import NAI
from aaa_vpn.store import open_store
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire import mip
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import ResultCode
from aaa_vpn.wire.diameter_profile import decode_profile_avps
from aaa_vpn.wire.mip import ChallengeExtension, ExtensionType, GeneralizedAuthSubtype, NaiExtension
from aaa_vpn.wire.mip_auth import CHAP_SPI, append_authentication, append_generalized_authentication
from aaa_vpn.wire.mip_vpn import previous_fa_extension
from tests.diameter_lab import ALL_KEYS, FA_HOST, HOME_HOST, HOME_REALM, Client, amr, rrq, wait_for
from tests.mobility import FA1, FA2, MN_AAA, MN_HA, provision

REPO = Path(__file__).resolve().parents[1]
RELAY = "relay.visited.example"
FA2_HOST = f"c-{FA2.replace('.', '-')}"
DICTIONARY = REPO / "aaa_vpn" / "dictionaries" / "wireshark-diameter-aaa_vpn.xml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _certificate(directory: Path) -> tuple[Path, Path]:
    """freeDiameter wants TLS credentials even when its peers speak plain TCP."""
    cert, key = directory / "relay.pem", directory / "relay.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={RELAY}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _relay_config(directory: Path, port: int, home_port: int, fa_ports: dict[str, int]) -> Path:
    cert, key = _certificate(directory)
    peers = "".join(
        f'ConnectPeer = "{host}" {{ ConnectTo = "127.0.0.1"; Port = {p}; No_TLS; }};\n' for host, p in fa_ports.items()
    )
    config = directory / "freeDiameter.conf"
    config.write_text(
        f'Identity = "{RELAY}";\nRealm = "visited.example";\nPort = {port};\nSecPort = 0;\nNo_SCTP;\nNo_IPv6;\n'
        f'ListenOn = "127.0.0.1";\nTLS_Cred = "{cert}", "{key}";\nTLS_CA = "{cert}";\nTcTimer = 3;\nTwTimer = 6;\n'
        f'ConnectPeer = "{HOME_HOST}" {{ ConnectTo = "127.0.0.1"; Port = {home_port}; No_TLS; }};\n{peers}'
    )
    return config


def _start_capture(tshark: str, ports: list[int], pcap: Path) -> subprocess.Popen[bytes]:
    capture = subprocess.Popen(
        [tshark, "-n", "-i", "lo", "-f", " or ".join(f"tcp port {p}" for p in ports), "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert capture.stderr is not None
    deadline, seen = time.monotonic() + 20, b""
    while b"Capture started" not in seen:
        if capture.poll() is not None or time.monotonic() > deadline:
            capture.kill()
            raise AssertionError(f"tshark did not start capturing: {seen.decode(errors='replace')}")
        seen += capture.stderr.read1(4096)
    return capture


SYSTEM_DICTIONARY = Path("/usr/share/wireshark/diameter")


def _dictionary(directory: Path) -> Path:
    """Wireshark's own diameter/ directory (RFC 4004's mobileipv4.xml
    included) plus our vendor's AVPs. Wireshark 4.0 reads dictionaries only
    from its global data directory: :func:`_tshark` binds this one over it in
    a mount namespace of tshark's own, leaving the system's untouched."""
    target = directory / "diameter"
    shutil.copytree(SYSTEM_DICTIONARY, target)
    (target / "aaa_vpn.xml").write_text(DICTIONARY.read_text())
    main = (target / "dictionary.xml").read_text()
    main = main.replace("<!ENTITY Custom", '<!ENTITY AaaVpn SYSTEM "aaa_vpn.xml">\n<!ENTITY Custom', 1)
    main = main.replace("&Custom;", "&Custom;\n&AaaVpn;", 1)
    (target / "dictionary.xml").write_text(main)
    return target


def _tshark(tshark: str, dictionary: Path, args: list[str]) -> str:
    argv = ["unshare", "--mount", "sh", "-c",
            f'mount --bind {dictionary} {SYSTEM_DICTIONARY} && exec "$@"', "tshark", tshark, *args]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def test_freediameter_relay_registration_handoff_and_tshark(tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    fd, tshark = require_tool("freeDiameterd"), require_tool("tshark")
    require_tool("openssl")
    require_tool("unshare")
    db = tmp_path / "vpn.db"
    subprocess.run([sys.executable, "-m", "aaa_vpn.cli", "--db", str(db), "db", "init"], cwd=REPO, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    with open_store(db) as store:
        provision(store)
    home_port, relay_port = _free_port(), _free_port()
    log = tmp_path / "home.log"
    with log.open("wb") as out:
        home = subprocess.Popen(
            [sys.executable, "-m", "aaa_vpn.cli", "--db", str(db), "serve", "home", "--listen", "127.0.0.1",
             "--port", "0", "--workers", "1", "--log-level", "debug",
             "--diameter-listen", f"127.0.0.1:{home_port}", "--diameter-realm", HOME_REALM,
             "--diameter-host", HOME_HOST, "--diameter-peer", RELAY, "--diameter-plain-is-secure"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    processes = [home]
    pcap = tmp_path / "diameter.pcap"
    ports: list[int] = []

    async def main() -> None:
        deadline = time.monotonic() + 30
        while "diameter listening" not in log.read_text(errors="replace"):
            assert home.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            await asyncio.sleep(0.1)
        fa1 = Client(FA_HOST, routes={HOME_REALM: [RELAY]})
        fa2 = Client(FA2_HOST, routes={HOME_REALM: [RELAY]})
        fa_ports = {}
        for fa in (fa1, fa2):
            listener = await fa.transport.listen("127.0.0.1", 0)
            fa_ports[fa.host] = listener.sockets[0].getsockname()[1]
        ports.extend([home_port, *fa_ports.values()])
        processes.append(_start_capture(tshark, ports, pcap))
        config = _relay_config(tmp_path, relay_port, home_port, fa_ports)
        relay_log = (tmp_path / "relay.log").open("wb")
        processes.append(subprocess.Popen([fd, "-c", str(config)], stdout=relay_log, stderr=subprocess.STDOUT))
        # Capabilities exchange: the relay connects to the home AAA and both FAs.
        await asyncio.wait_for(asyncio.gather(fa1.up.wait(), fa2.up.wait()), 30)
        assert [c.host for c in fa1.node.peers()] == [RELAY]
        relay_up = f"peer={RELAY}"
        await wait_for(lambda: relay_up in log.read_text(errors="replace"), 30, "the relay's CER at the home AAA")

        # A registration through the relay, routed by Destination-Realm.
        ama = await fa1.ask(amr("fa1;relay;1"))
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)
        assert ama.origin_host == HOME_HOST  # answered by the home AAA, not the relay
        first = decode_profile_avps(ama.avps)
        assert str(first.care_of_address) == FA1

        # A handoff to FA2 (another FA behind the relay): the session moves.
        request = mip.decode_message(rrq(care_of=FA2))
        assert isinstance(request, mip.RegistrationRequest)
        moved = _with_previous_fa(request)
        ama2 = await fa2.ask(amr("fa2;relay;1", moved, origin=FA2_HOST))
        assert ama2.result_code == ResultCode.SUCCESS, ama2.text(C.ERROR_MESSAGE)
        second = decode_profile_avps(ama2.avps)
        assert second.session_id == first.session_id and second.epoch == first.epoch + 1
        assert str(second.care_of_address) == FA2 and str(second.previous_fa) == FA1

        # Watchdogs: the relay's Tw is 6 s; the home AAA answers its DWRs.
        decoded = await wait_for(
            lambda: (text := _decoded(tshark, pcap, ports)) and "cmd=Device-Watchdog Answer" in text and text,
            30,
            "a DWR/DWA between the relay and the home AAA",
        )
        assert "cmd=Device-Watchdog Request" in decoded

        # STR through the relay ends the session.
        sta = await fa2.ask(_str("fa2;relay;1", FA2_HOST))
        assert sta.result_code == ResultCode.SUCCESS
        with open_store(db) as store:
            assert store.find_sessions(NAI) == []
        # Stop capturing only once the last answer is in the file (dumpcap buffers).
        await wait_for(
            lambda: "cmd=Session-Termination Answer" in _decoded(tshark, pcap, ports), 30, "the STA in the capture"
        )
        await fa1.transport.close()
        await fa2.transport.close()

    try:
        asyncio.run(main())
    finally:
        for process in reversed(processes):
            _stop(process)
    # tshark: every message decodes with its dictionaries, no malformed packet, no expert error.
    dictionary = _dictionary(tmp_path / "wireshark")
    base = ["-n", "-r", str(pcap), *_decode_as(ports)]
    fields = _tshark(tshark, dictionary, [*base, "-Y", "diameter", "-T", "fields", "-e", "diameter.cmd.code"])
    commands = {c for line in fields.split("\n") for c in line.split(",") if c}
    assert {"257", "260", "275", "280"} <= commands, commands  # CER/CEA, AMR/AMA, STR/STA, DWR/DWA
    bad = _tshark(tshark, dictionary, [*base, "-Y", "_ws.malformed || _ws.expert.severity >= warning", "-V"])
    assert bad.strip() == "", bad[:4000]
    ama_filter = "diameter.cmd.code == 260 && diameter.flags.request == 0"
    decoded = _tshark(tshark, dictionary, [*base, "-Y", ama_filter, "-V"])
    assert "MIP-Home-Agent-Address" in decoded and "MIP-FA-to-HA-MSA" in decoded
    assert "Aaa-Vpn-Path-Role: 1" in decoded and "Aaa-Vpn-Session-Id" in decoded
    assert re.search(r"Result-Code: DIAMETER_SUCCESS \(2001\)", decoded)


def _decoded(tshark: str, pcap: Path, ports: list[int]) -> str:
    """The messages decoded so far in the capture (tshark reads a file being written)."""
    result = subprocess.run([tshark, "-n", "-r", str(pcap), *_decode_as(ports), "-Y", "diameter"],
                            capture_output=True, timeout=60, check=False)  # fmt: skip
    return result.stdout.decode(errors="replace")


def _decode_as(ports: list[int]) -> list[str]:
    """Our ports are not 3868: tell tshark they carry Diameter."""
    return [arg for p in ports for arg in ("-d", f"tcp.port=={p},diameter")]


def _with_previous_fa(request: mip.RegistrationRequest) -> bytes:
    """The request as the node sends it after a move: it names its previous
    FA (docs/protocol.md) and answers the new FA's challenge."""
    plain = dataclasses.replace(request, extensions=(NaiExtension(NAI), previous_fa_extension(IPv4Address(FA1))))
    data = append_authentication(mip.encode_registration_request(plain), ExtensionType.MN_HA_AUTH, 3, MN_HA)
    data += mip.encode_extension(ChallengeExtension(b"fedcba9876543210"))
    return append_generalized_authentication(data, GeneralizedAuthSubtype.MN_AAA, CHAP_SPI, MN_AAA)


def _str(session_id: str, origin: str) -> d.Message:
    return d.Message(
        d.Command.SESSION_TERMINATION,
        True,
        d.MOBILE_IPV4_APPLICATION,
        avps=(
            d.avp_text(C.SESSION_ID, session_id),
            d.avp_text(C.ORIGIN_HOST, origin),
            d.avp_text(C.ORIGIN_REALM, "visited.example"),
            d.avp_text(C.DESTINATION_REALM, HOME_REALM),
            d.avp_u32(C.AUTH_APPLICATION_ID, 2),
            d.avp_u32(C.TERMINATION_CAUSE, d.TERMINATION_LOGOUT),
        ),
        proxiable=True,
    )


def test_tshark_decodes_har_haa_asr_str_and_errors(tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    """Every other message the home AAA sends or takes -- HAR/HAA with a
    Diameter HA, ASR/ASA, STR/STA, DPR/DPA, an error answer with a Failed-AVP
    -- captured on loopback and decoded by tshark with its own dictionary (and
    ours for the vendor AVPs): no malformed packet, no expert warning."""
    tshark = require_tool("tshark")
    require_tool("unshare")
    from aaa_vpn.roles import diameter_peer as peer
    from tests.diameter_lab import HA_HOST, home_service, start_home

    pcap = tmp_path / "more.pcap"
    ports: list[int] = []

    async def main() -> None:
        aaa = home_service()
        server, port = await start_home(aaa)
        ports.append(port)
        capture = _start_capture(tshark, ports, pcap)
        try:

            def answer_har(event: peer.RequestReceived, node: peer.DiameterNode) -> None:
                node.answer(event.handle, peer.answer_to(event.message, node.identity, 2001), 0.0)

            ha = Client(HA_HOST, realm="home.example", on_request=answer_har)
            await ha.connect(port)
            fa = Client(FA_HOST, routes={HOME_REALM: [HOME_HOST]})
            await fa.connect(port)
            ama = await fa.ask(amr("fa;t;1"))
            assert ama.result_code == ResultCode.SUCCESS
            odd = amr("fa;t;2")
            bad = await fa.ask(dataclasses.replace(odd, avps=(*odd.avps, d.Avp(4242, b"\0\0\0\1", mandatory=True))))
            assert bad.result_code == ResultCode.AVP_UNSUPPORTED
            # The node's keys too (RFC 3957 nonces): the MSA groups in the AMA and the HAR.
            ama2 = await fa.ask(amr("fa;t;3", rrq(keys=True), features=ALL_KEYS))
            assert ama2.find(C.MIP_FA_TO_MN_MSA) is not None and ama2.find(C.MIP_MN_TO_HA_MSA) is not None
            with_session = decode_profile_avps(ama2.avps).session_id
            aaa.store.delete_session(with_session)
            assert server.check_sessions(0.0) >= 1  # ASR to the FA
            await wait_for(lambda: any(m.command == 274 for m in fa.requests), 10, "the ASR")
            sta = await fa.ask(_str("fa;t;1", FA_HOST))
            assert sta.result_code in (ResultCode.SUCCESS, ResultCode.UNKNOWN_SESSION_ID)
            await fa.transport.close()  # DPR/DPA
            await ha.transport.close()
            await wait_for(
                lambda: "cmd=Disconnect-Peer Answer" in _decoded(tshark, pcap, ports), 30, "the DPA in the capture"
            )
        finally:
            _stop(capture)
            await server.transport.close()

    asyncio.run(main())
    dictionary = _dictionary(tmp_path / "wireshark")
    base = ["-n", "-r", str(pcap), *_decode_as(ports)]
    fields = _tshark(tshark, dictionary, [*base, "-Y", "diameter", "-T", "fields", "-e", "diameter.cmd.code"])
    commands = {c for line in fields.split("\n") for c in line.split(",") if c}
    assert {"257", "260", "262", "274", "275", "282"} <= commands, commands
    bad = _tshark(tshark, dictionary, [*base, "-Y", "_ws.malformed || _ws.expert.severity >= error", "-V"])
    assert bad.strip() == "", bad[:4000]
    # Warnings only where the test itself sent an AVP nobody defines (4242: the AMR and its 5001's Failed-AVP).
    warned = "(_ws.expert.severity >= warning) && !(diameter.avp.code == 4242)"
    bad = _tshark(tshark, dictionary, [*base, "-Y", warned, "-V"])
    assert bad.strip() == "", bad[:4000]
    har = _tshark(tshark, dictionary, [*base, "-Y", "diameter.cmd.code == 262 && diameter.flags.request == 1", "-V"])
    assert "MIP-HA-to-FA-MSA" in har and "Aaa-Vpn-Session-Root-Key" in har and "MIP-Reg-Request" in har
    assert "MIP-MN-to-HA-MSA" in har and "MIP-HA-to-MN-MSA" in har and "MIP-Nonce" in har
    ama = _tshark(tshark, dictionary, [*base, "-Y", "diameter.cmd.code == 260 && diameter.flags.request == 0", "-V"])
    assert "MIP-MN-to-FA-MSA" in ama and "MIP-FA-to-MN-MSA" in ama and "MIP-FA-to-MN-SPI" in ama
