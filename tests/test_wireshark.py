"""tshark with aaa_vpn's Lua dissector and RADIUS dictionary, installed for one
run (aaa_vpn.wireshark.install under a temporary HOME, as ``python -m
aaa_vpn.wireshark`` does for a user), decoding the project's traffic.

* Every binding message (Mobile IP type 255: Binding Warning, Request, Update,
  Acknowledge, Previous-FA Notification) written by our encoder: tshark shows
  each header field and each extension as our decoder reads the same bytes,
  with no expert error and no "Malformed Packet"; broken ones get the
  dissector's own error, not a Lua error.
* A capture of the loopback demo (``aaa_vpn.lab.demo``: every agent and both
  AAA servers as processes): every Mobile IP message on the demo's port
  decodes with no expert error, all four binding messages of the flows are
  there, and the RADIUS vendor attributes are shown by name.

Without the dissector, tshark 4.0 marks type 255 "Malformed Packet"
(tests/test_mip_interop.py).
"""

from __future__ import annotations

import random
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from scapy.utils import wrpcap

from aaa_vpn.secret import Secret
from aaa_vpn.wire.mip import (
    BindingAcknowledge,
    BindingMessage,
    BindingRequest,
    BindingUpdate,
    BindingWarning,
    ExtensionType,
    GeneralizedAuthExtension,
    GeneralizedAuthSubtype,
    Message,
    NaiExtension,
    PaddingExtension,
    PreviousFaNotification,
    RegistrationFlags,
    RegistrationReply,
    RegistrationRequest,
    decode_message_spans,
    encode_message,
)
from aaa_vpn.wire.mip_vpn import encode_vpn_path, previous_fa_extension, session_extension
from aaa_vpn.wireshark import install, per_run_env, tshark_options

from .conftest import _require_tool
from .radius_client import probed_udp_port
from .test_mip_wire import _path

pytestmark = [pytest.mark.interop]

HOME = IPv4Address("198.51.100.10")
PORT = 40434  # the synthetic captures' Mobile IP port (they never touch the network)
SUBTYPE = {
    BindingWarning: 1,
    BindingRequest: 2,
    BindingUpdate: 3,
    BindingAcknowledge: 4,
    PreviousFaNotification: 5,
}
FIELDS = [
    "frame.number",
    "udp.payload",
    "mip.type",
    "aaa_vpn.type",
    "aaa_vpn.subtype",
    "aaa_vpn.flags.a",
    "aaa_vpn.status",
    "aaa_vpn.vendor_id",
    "aaa_vpn.lifetime",
    "aaa_vpn.home_address",
    "aaa_vpn.target_address",
    "aaa_vpn.care_of_address",
    "aaa_vpn.ext.type",
    "aaa_vpn.path.role",
    "aaa_vpn.path.spi_in",
    "aaa_vpn.previous_fa",
    "aaa_vpn.session.id",
    "aaa_vpn.auth.spi",
    "_ws.expert.severity",
    "_ws.expert.message",
    "_ws.malformed",
]
#: tshark's expert severities (epan/proto.h PI_WARN, PI_ERROR): nothing at these levels may appear.
WARN = 0x00600000


@pytest.fixture(scope="module")
def tshark_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """tshark's environment with the dissector and dictionary installed in a
    temporary HOME (nothing of the real user's is read or written)."""
    tshark = _require_tool("tshark")  # missing: skip, or fail under AAA_VPN_REQUIRE_TOOLS=1 (CI)
    home = tmp_path_factory.mktemp("wireshark-home")
    env = per_run_env(home)
    installed = install(tshark, env)
    assert installed.dissector.is_relative_to(home) and installed.dictionary.is_relative_to(home)
    protocols = subprocess.run([tshark, "-G", "protocols"], capture_output=True, text=True, env=env, check=True)
    names = {line.split("\t")[-1] for line in protocols.stdout.splitlines()}
    assert "aaa_vpn" in names, f"tshark did not load the installed dissector:\n{protocols.stderr}"
    yield env


def decode(
    pcap: Path, env: dict[str, str], mip_port: int, *extra: str, fields: list[str] = FIELDS
) -> list[dict[str, list[str]]]:
    """One dict per frame: field -> every occurrence, in order. (Text fields of
    corrupted messages may hold a newline: leave them out of ``fields`` there.)"""
    command = [
        _require_tool("tshark"),
        "-n",
        "-r",
        str(pcap),
        *tshark_options([mip_port], load=False),  # installed: only the port is said
        *extra,
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ]
    for name in fields:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0 and "Lua" not in result.stderr, result.stderr
    frames = []
    for line in result.stdout.splitlines():
        values = line.split("\t")
        frames.append({name: (value.split("|") if value else []) for name, value in zip(fields, values, strict=True)})
    return frames


def problems(frame: dict[str, list[str]]) -> list[str]:
    """The frame's expert items at warning level or above, and any Malformed mark."""
    found = [
        message
        for severity, message in zip(frame["_ws.expert.severity"], frame["_ws.expert.message"], strict=False)
        if int(severity, 0) >= WARN
    ]
    if frame["_ws.malformed"]:
        found.append("Malformed Packet")
    return found


def check_binding(frame: dict[str, list[str]]) -> BindingMessage:
    """tshark's view of a binding message against our decoder's, field by field."""
    payload = bytes.fromhex(frame["udp.payload"][0].replace(":", ""))
    message, spans = decode_message_spans(payload)
    assert isinstance(message, tuple(SUBTYPE)), message
    shown = {name: values for name, values in frame.items() if name.startswith("aaa_vpn.") and values}
    expected: dict[str, list[str]] = {
        "aaa_vpn.type": ["255"],
        "aaa_vpn.subtype": [str(SUBTYPE[type(message)])],
        "aaa_vpn.vendor_id": ["32473"],
        "aaa_vpn.home_address": [str(message.home_address)],
        "aaa_vpn.status": [str(int(getattr(message, "status", 0)))],
        "aaa_vpn.flags.a": ["1" if getattr(message, "acknowledge", False) else "0"],
    }
    if isinstance(message, BindingWarning):
        expected["aaa_vpn.target_address"] = [str(message.target_address)]
    if isinstance(message, (BindingUpdate, BindingAcknowledge, PreviousFaNotification)):
        expected["aaa_vpn.lifetime"] = [str(message.lifetime)]
        expected["aaa_vpn.care_of_address"] = [str(message.care_of_address)]
    expected["aaa_vpn.ext.type"] = [_extension_type(span.extension) for span in spans] or []
    for name, value in expected.items():
        assert shown.get(name, []) == value, (name, shown.get(name), value, payload.hex())
    auth = [e for e in message.extensions if isinstance(e, GeneralizedAuthExtension)]
    assert shown.get("aaa_vpn.auth.spi", []) == [str(e.spi) for e in auth]
    return message


def _extension_type(extension: object) -> str:
    names = {
        "PaddingExtension": ExtensionType.PADDING,
        "NaiExtension": ExtensionType.NAI,
        "GeneralizedAuthExtension": ExtensionType.GENERALIZED_AUTH,
        "ChallengeExtension": ExtensionType.MN_FA_CHALLENGE,
        "CriticalVendorExtension": ExtensionType.CVSE,
        "NormalVendorExtension": ExtensionType.NVSE,
    }
    kind = type(extension).__name__
    if kind in names:
        return str(int(names[kind]))
    return str(int(getattr(extension, "type", 0)))


# -- every binding message our encoder writes ----------------------------------------------------


def _messages() -> list[Message]:
    key = Secret(b"h" * 32)
    path = encode_vpn_path(_path(), key)
    auth = GeneralizedAuthExtension(GeneralizedAuthSubtype.BINDING, 0x1234, bytes(range(16)))
    care_of, target, old_fa = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.22"), IPv4Address("192.0.2.12")
    return [
        BindingWarning(HOME, target, 1, (auth,)),
        BindingRequest(HOME, 2, (NaiExtension("mn1@home.example"), auth)),
        BindingUpdate(30, HOME, care_of, 3, True, (path, session_extension("0f" * 16, 7), PaddingExtension(), auth)),
        BindingUpdate(0, HOME, care_of, 4, False, (auth,)),
        BindingAcknowledge(0, 30, HOME, care_of, 3, (auth,)),
        BindingAcknowledge(160, 0, HOME, care_of, 5, (auth,)),
        PreviousFaNotification(10, HOME, care_of, 6, True, (path, previous_fa_extension(old_fa), auth)),
    ]


def test_every_binding_message_decodes_field_by_field(tshark_env: dict[str, str], tmp_path: Path) -> None:
    messages = _messages()
    packets = [
        IP(src="192.0.2.2", dst="192.0.2.22") / UDP(sport=PORT, dport=PORT) / Raw(load=encode_message(m))
        for m in messages
    ]
    pcap = tmp_path / "binding.pcap"
    wrpcap(str(pcap), packets)
    frames = decode(pcap, tshark_env, PORT)
    assert len(frames) == len(messages)
    for frame, message in zip(frames, messages, strict=True):
        assert problems(frame) == [], (frame["frame.number"], problems(frame))
        assert check_binding(frame) == message
    update, path_update = frames[2], messages[2]
    assert isinstance(path_update, BindingUpdate)
    assert update["aaa_vpn.path.role"] == [str(int(_path().role))]
    assert [int(v, 0) for v in update["aaa_vpn.path.spi_in"]] == [_path().spi_in]  # shown as hex and decimal
    assert update["aaa_vpn.session.id"] == ["0f" * 16]
    assert frames[6]["aaa_vpn.previous_fa"] == ["192.0.2.12"]


def test_registrations_go_to_the_built_in_dissector_with_our_nvses_by_name(
    tshark_env: dict[str, str], tmp_path: Path
) -> None:
    request = RegistrationRequest(
        flags=RegistrationFlags(0),
        lifetime=30,
        home_address=HOME,
        home_agent=IPv4Address("192.0.2.2"),
        care_of_address=IPv4Address("192.0.2.11"),
        identification=9,
        extensions=(NaiExtension("mn1@home.example"), previous_fa_extension(IPv4Address("192.0.2.12"))),
    )
    reply = RegistrationReply(
        code=0, lifetime=30, home_address=HOME, home_agent=IPv4Address("192.0.2.2"), identification=9
    )
    pcap = tmp_path / "registration.pcap"
    wrpcap(
        str(pcap),
        [IP() / UDP(sport=PORT, dport=PORT) / Raw(load=encode_message(m)) for m in (request, reply)],
    )
    frames = decode(pcap, tshark_env, PORT)
    assert [f["mip.type"] for f in frames] == [["1"], ["3"]]
    assert all(problems(f) == [] for f in frames), [problems(f) for f in frames]
    assert frames[0]["aaa_vpn.previous_fa"] == ["192.0.2.12"]


@pytest.mark.parametrize(
    "case",
    ["extension runs past the end", "truncated fixed part", "reserved bits set", "VPN path counts do not add up"],
)
def test_a_broken_binding_message_is_the_dissectors_error_not_a_lua_error(
    tshark_env: dict[str, str], tmp_path: Path, case: str
) -> None:
    data = bytearray(encode_message(_messages()[2]))
    if case == "extension runs past the end":
        data += bytes([ExtensionType.NVSE, 40, 0, 0])
    elif case == "truncated fixed part":
        data = data[:20]
    elif case == "reserved bits set":
        data[2] |= 0x01
    else:  # the first extension is the VPN path CVSE: claim 200 local traffic selectors
        data[28 + 4 + 6 + 24] = 200
    pcap = tmp_path / "broken.pcap"
    wrpcap(str(pcap), [IP() / UDP(sport=PORT, dport=PORT) / Raw(load=bytes(data))])
    (frame,) = decode(pcap, tshark_env, PORT)
    found = problems(frame)
    assert found and all("Lua" not in p for p in found), found
    assert frame["aaa_vpn.subtype"] == ["3"]  # still shown for what it is


def test_no_truncation_or_corruption_makes_a_lua_error(tshark_env: dict[str, str], tmp_path: Path) -> None:
    """Every prefix of every message, and byte flips (a fixed seed): the dissector
    reports what is wrong as its own expert items and never fails in Lua."""
    rnd = random.Random(4064)
    whole = [encode_message(m) for m in _messages()]
    payloads = [data[:n] for data in whole for n in range(1, len(data))]
    for _ in range(500):
        data = bytearray(rnd.choice(whole))
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(1, len(data))] = rnd.randrange(256)
        payloads.append(bytes(data))
    pcap = tmp_path / "corrupt.pcap"
    wrpcap(str(pcap), [IP() / UDP(sport=PORT, dport=PORT) / Raw(load=p) for p in payloads])
    frames = decode(pcap, tshark_env, PORT, fields=["frame.number", "aaa_vpn.type", "_ws.expert.message"])
    assert len(frames) == len(payloads)
    lua = [(f["frame.number"], f["_ws.expert.message"]) for f in frames if "Lua" in " ".join(f["_ws.expert.message"])]
    assert lua == []
    # every frame is shown as a binding message of its sub-type or as not one of ours
    assert all(f["aaa_vpn.type"] == ["255"] for f in frames)


# -- a capture of the demo ---------------------------------------------------------------------------


def _start_capture(tshark: str, capture_filter: str, pcap: Path) -> subprocess.Popen[bytes]:
    """tshark recording loopback into ``pcap``, once it says it is capturing."""
    capture = subprocess.Popen(
        [tshark, "-n", "-i", "lo", "-f", capture_filter, "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert capture.stderr is not None
    deadline = time.monotonic() + 20
    seen = b""
    while b"Capture started" not in seen:  # "Capturing on" comes before the filter is attached
        if capture.poll() is not None or time.monotonic() > deadline:
            capture.kill()
            raise AssertionError(f"tshark did not start capturing: {seen.decode(errors='replace')}")
        seen += capture.stderr.read1(4096)
    return capture


@pytest.mark.integration
@pytest.mark.slow
def test_a_capture_of_the_demo_decodes_with_no_expert_error(
    tshark_env: dict[str, str], tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    from aaa_vpn.lab.demo import DemoOptions, run_demo
    from aaa_vpn.lab.topology import LabError

    tshark = require_tool("tshark")
    pcap = tmp_path / "demo.pcap"
    report: dict[str, object] = {}
    for attempt in range(3):  # the ports are probed: start again if one was taken meanwhile
        mip_port, radius_port = probed_udp_port("127.0.0.2"), probed_udp_port("127.0.0.1")
        capture = _start_capture(tshark, f"udp port {mip_port} or udp port {radius_port}", pcap)
        try:
            report = run_demo(DemoOptions(mip_port=mip_port, radius_port=radius_port))
            time.sleep(0.5)  # the last datagrams into the file
        except LabError:
            if attempt == 2:
                raise
            continue
        finally:
            capture.send_signal(signal.SIGINT)
            capture.wait(timeout=30)
        if report.get("ok") or "in use" not in str(report.get("error", "")):
            break
    assert report.get("ok") is True, report.get("error")

    frames = decode(pcap, tshark_env, mip_port, "-d", f"udp.port=={radius_port},radius")
    mobile = [f for f in frames if f["mip.type"] or f["aaa_vpn.type"]]
    assert len(mobile) >= 20, len(mobile)
    bad = {f["frame.number"][0]: problems(f) for f in frames if problems(f)}
    assert bad == {}, bad
    seen = set()
    for frame in mobile:
        if frame["aaa_vpn.type"]:
            seen.add(type(check_binding(frame)))
    # flows B, C-E and G: Binding Update and Acknowledge (HA <-> gateways), Binding
    # Request (gateway -> HA), Previous-FA Notification (new FA -> old FA)
    assert {BindingRequest, BindingUpdate, BindingAcknowledge, PreviousFaNotification} <= seen, seen

    # the RADIUS leg to the home AAA, with the vendor attributes by name
    names = subprocess.run(
        [
            tshark,
            "-n",
            "-r",
            str(pcap),
            "-d",
            f"udp.port=={radius_port},radius",
            "-Y",
            "radius.code == 2",
            "-T",
            "fields",
            "-e",
            "radius.Aaa_Vpn_Session_Id",
            "-e",
            "radius.Aaa_Vpn_Path_Role",
        ],
        capture_output=True,
        text=True,
        env=tshark_env,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    assert names and all(line.split("\t")[0] for line in names), names
    assert any(line.split("\t")[1] for line in names), names


def test_the_identification_is_shown_as_the_ntp_time_it_is(tshark_env: dict[str, str], tmp_path: Path) -> None:
    # RFC 5944 section 5.7: 2026-01-01 00:00:00 UTC as NTP seconds, fraction 0
    seconds = 3976214400
    message = BindingRequest(HOME, seconds << 32)
    pcap = tmp_path / "ntp.pcap"
    wrpcap(str(pcap), [IP() / UDP(sport=PORT, dport=PORT) / Raw(load=encode_message(message))])
    shown = subprocess.run(
        [
            _require_tool("tshark"),
            "-n",
            "-r",
            str(pcap),
            *tshark_options([PORT], load=False),
            "-T",
            "fields",
            "-e",
            "aaa_vpn.identification",
        ],
        capture_output=True,
        text=True,
        env=tshark_env,
        check=True,
    ).stdout
    assert "2026" in shown and "00:00:00" in shown, shown
    assert struct.unpack("!Q", encode_message(message)[12:20])[0] == seconds << 32
