"""A small RADIUS test client for the server tests: builds requests with pyrad,
sends them over a real UDP socket, verifies the reply like a NAS would."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyrad.packet

from aaa_vpn.lab.processes import listening_port
from aaa_vpn.lab.topology import BoundPort, bind_udp
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.secret import Secret
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import VENDOR_ID
from aaa_vpn.wire.radius import load_dictionary

#: A fake Registration Request prefix: what precedes the MN-AAA authenticator.
PRECEDING = (
    bytes.fromhex("0100070800000000c633640ac0000202c000020100000000deadbeef") + b"\x24\x01\x00\x14\x00\x00\x00\x02"
)


@dataclass
class Exchange:
    request: bytes
    reply: bytes | None
    authenticator: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def code(self) -> int | None:
        return self.reply[0] if self.reply else None


def split_attributes(packet: bytes) -> list[tuple[int, bytes]]:
    """The raw (type, value) attributes of a packet, in order, Vendor-Specific kept whole."""
    out, position = [], 20
    while position < len(packet):
        code, length = packet[position], packet[position + 1]
        out.append((code, packet[position + 2 : position + length]))
        position += length
    return out


def vendor_values(attributes: list[tuple[int, bytes]], vendor: int, vtype: int) -> list[bytes]:
    values = []
    for code, value in attributes:
        if code == 26 and struct.unpack("!I", value[:4])[0] == vendor and value[4] == vtype:
            values.append(value[6:])
    return values


def access_request(
    secret: bytes,
    nai: str,
    mn_aaa_secret: bytes | None,
    *,
    nas_ip: str = "127.0.0.1",
    request_type: int | None = None,
    care_of: str | None = None,
    home_agent: str | None = None,
    proxy_states: tuple[bytes, ...] = (),
    message_authenticator: bool = True,
    challenge: bytes | None = None,
    identifier: int | None = None,
    session_id: str | None = None,
    previous_fa: str | None = None,
) -> pyrad.packet.AuthPacket:
    """An Access-Request as an FA (or HA) sends it, with the MN-AAA proof as CHAP."""
    request = pyrad.packet.AuthPacket(
        id=identifier if identifier is not None else os.urandom(1)[0],
        secret=secret,
        dict=load_dictionary(),
    )
    request.authenticator = os.urandom(16)
    if message_authenticator:
        request.add_message_authenticator()
    request["User-Name"] = nai
    request["NAS-IP-Address"] = nas_ip
    if mn_aaa_secret is not None:
        chap_password, chap_challenge = mn_aaa_chap_attributes(
            challenge or os.urandom(8), PRECEDING, Secret(mn_aaa_secret)
        )
        request[rc.CHAP_PASSWORD] = [chap_password]
        request[rc.CHAP_CHALLENGE] = [chap_challenge]
    if request_type is not None:
        request[(VENDOR_ID, 2)] = [struct.pack("!I", request_type)]
    if care_of is not None:
        request[(VENDOR_ID, 5)] = [socket.inet_aton(care_of)]
    if home_agent is not None:
        request[(VENDOR_ID, 4)] = [socket.inet_aton(home_agent)]
    if session_id is not None:
        request[(VENDOR_ID, 1)] = [session_id.encode()]
    if previous_fa is not None:
        request[(VENDOR_ID, 6)] = [socket.inet_aton(previous_fa)]
    if proxy_states:
        request[rc.PROXY_STATE] = list(proxy_states)
    return request


def exchange(
    server: tuple[str, int],
    request: pyrad.packet.AuthPacket | bytes,
    *,
    source: tuple[str, int] = ("127.0.0.1", 0),
    timeout: float = 2.0,
    sock: socket.socket | None = None,
) -> Exchange:
    """Send one request, wait for one reply (None on timeout)."""
    raw = request if isinstance(request, bytes) else request.RequestPacket()
    own = sock is None
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(source)
    try:
        sock.settimeout(timeout)
        sock.sendto(raw, server)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply, _ = sock.recvfrom(8192)
            except TimeoutError:
                return Exchange(raw, None, raw[4:20])
            if reply[1] == raw[1]:
                return Exchange(raw, reply, raw[4:20], split_attributes(reply))
            if time.monotonic() > deadline:
                return Exchange(raw, None, raw[4:20])
    finally:
        if own:
            sock.close()


def status_server(server: tuple[str, int], secret: bytes, timeout: float = 1.0) -> Exchange:
    request = pyrad.packet.AuthPacket(code=pyrad.packet.StatusServer, id=1, secret=secret, dict=load_dictionary())
    request.authenticator = os.urandom(16)
    request.add_message_authenticator()
    request["NAS-IP-Address"] = "127.0.0.1"
    return exchange(server, request, timeout=timeout)


def wait_until_serving(server: tuple[str, int], secret: bytes, deadline_seconds: float = 15.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if status_server(server, secret, timeout=0.2).reply is not None:
            return
    raise TimeoutError(f"home AAA on {server} did not answer Status-Server")


def served_port(process: subprocess.Popen[bytes], log: Path, timeout: float = 15.0) -> int:
    """The port a server started with ``--port 0`` (or ``port = 0``) says in
    its log it is bound to: the servers pick their own ports, so no test hands
    one a port that someone else may have taken since it was probed."""
    deadline = time.monotonic() + timeout
    while (port := listening_port(log)) is None:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the server logged no 'worker listening' in {timeout} s:\n{log.read_text()}")
        time.sleep(0.02)
    return port


def silent_server(host: str = "127.0.0.1") -> BoundPort:
    """A port on ``host`` bound and never read: a RADIUS server that never
    answers, which no one else can start there while the test holds it."""
    return bind_udp([host])


def probed_udp_port(host: str) -> int:
    """A UDP port free on ``host`` a moment ago. Only for a program that can
    neither take a bound socket nor pick and report its port (FreeRADIUS):
    whoever uses it must start again when it turns out taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
