"""Shared pieces of the Diameter tests: a provisioned home AAA with its
Diameter front end on loopback TCP, Registration Requests as a mobile node
builds them, and a foreign agent's Diameter client (our node)."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from aaa_vpn.lab.topology import HOME_ADDRESS, NAI
from aaa_vpn.net.diameter import DiameterTransport
from aaa_vpn.net.diameter_server import DiameterHomeServer, DiameterOptions
from aaa_vpn.roles import diameter_peer as peer
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService
from aaa_vpn.store.memory import MemoryStore
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire import mip
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Command, Message
from aaa_vpn.wire.mip import ChallengeExtension, ExtensionType, GeneralizedAuthSubtype, NaiExtension
from aaa_vpn.wire.mip_auth import CHAP_SPI, append_authentication, append_generalized_authentication, mn_aaa_proof
from aaa_vpn.wire.mip_vpn import previous_fa_extension
from tests.mobility import FA1, HA, MN_AAA, MN_HA, provision

HOME_REALM = "home.example"
HOME_HOST = "aaa.home.example"
FA_HOST = f"c-{FA1.replace('.', '-')}"  # the FA's RADIUS client name is its Diameter identity
HA_HOST = f"c-{HA.replace('.', '-')}"
VISITED_REALM = "visited.example"
#: The SPIs a mobile node asks RFC 3957 keys with (its MN-FA and MN-HA Key Generation Nonce Requests).
MN_FA_KEY_SPI = 0x3958
MN_HA_KEY_SPI = 0x3957
#: MIP-Feature-Vector asking for both keys (RFC 4004 section 7.5) besides the FA-HA key.
ALL_KEYS = d.FEATURE_FA_HA_KEY_REQUEST | d.FEATURE_MN_FA_KEY_REQUEST | d.FEATURE_MN_HA_KEY_REQUEST
_identification = itertools.count(1)


def home_service() -> HomeService:
    store = MemoryStore()
    provision(store)
    return HomeService(store)


def rrq(
    care_of: str = FA1,
    lifetime: int = 600,
    secret: Secret = MN_AAA,
    nai: str = NAI,
    challenge: bytes = b"0123456789abcdef",
    keys: bool = False,
    previous: str | None = None,
) -> bytes:
    """A Registration Request as the mobile node sends it (roles/mn.py); with
    ``keys``, asking for an MN-FA and an MN-HA key (RFC 3957); ``previous``:
    the FA it names as its previous one (after a move)."""
    requests = (
        (
            mip.KeyRequestExtension(ExtensionType.MN_FA_KEY_REQUEST, MN_FA_KEY_SPI),
            mip.KeyRequestExtension(ExtensionType.MN_HA_KEY_REQUEST, MN_HA_KEY_SPI),
        )
        if keys
        else ()
    )
    named = (previous_fa_extension(IPv4Address(previous)),) if previous else ()
    request = mip.RegistrationRequest(
        flags=mip.RegistrationFlags.T,
        lifetime=lifetime,
        home_address=IPv4Address(HOME_ADDRESS),
        home_agent=IPv4Address(HA),
        care_of_address=IPv4Address(care_of),
        identification=next(_identification) << 32,
        extensions=(NaiExtension(nai), *named, *requests),
    )
    data = append_authentication(mip.encode_registration_request(request), ExtensionType.MN_HA_AUTH, 3, MN_HA)
    data += mip.encode_extension(ChallengeExtension(challenge))
    return append_generalized_authentication(data, GeneralizedAuthSubtype.MN_AAA, CHAP_SPI, secret)


def mn_aaa_auth(request: bytes) -> d.Avp:
    proof = mn_aaa_proof(request)
    start = len(proof.preceding)
    return d.avp_grouped(
        C.MIP_MN_AAA_AUTH,
        [
            d.avp_u32(C.MIP_MN_AAA_SPI, proof.spi),
            d.avp_u32(C.MIP_AUTH_INPUT_DATA_LENGTH, start),
            d.avp_u32(C.MIP_AUTHENTICATOR_LENGTH, len(proof.authenticator)),
            d.avp_u32(C.MIP_AUTHENTICATOR_OFFSET, start),
        ],
    )


def amr(
    session_id: str,
    request: bytes | None = None,
    nai: str = NAI,
    origin: str = FA_HOST,
    drop: int = -1,
    auth_of: bytes | None = None,
    features: int = d.FEATURE_FA_HA_KEY_REQUEST,
) -> Message:
    """An AMR as an FA sends it (RFC 4004 section 5.1); ``drop`` leaves an AVP
    out, ``auth_of`` describes another request's MN-AAA extension."""
    request = rrq() if request is None else request
    avps = [
        d.avp_text(C.SESSION_ID, session_id),
        d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION),
        d.avp_text(C.ORIGIN_HOST, origin),
        d.avp_text(C.ORIGIN_REALM, VISITED_REALM),
        d.avp_text(C.DESTINATION_REALM, HOME_REALM),
        d.avp_text(C.USER_NAME, nai),
        d.avp_octets(C.MIP_REG_REQUEST, request),
        mn_aaa_auth(request if auth_of is None else auth_of),
        d.avp_u32(C.MIP_FEATURE_VECTOR, features),
    ]
    return Message(
        Command.AA_MOBILE_NODE,
        True,
        d.MOBILE_IPV4_APPLICATION,
        avps=tuple(a for a in avps if a.code != drop),
        proxiable=True,
    )


@dataclass
class Client:
    """A Diameter client (an FA, or an HA answering HARs) on our node."""

    host: str
    realm: str = VISITED_REALM
    routes: dict[str, list[str]] = field(default_factory=dict)
    on_request: Callable[[peer.RequestReceived, peer.DiameterNode], None] | None = None

    def __post_init__(self) -> None:
        counter = itertools.count(int.from_bytes(os.urandom(2), "big"))
        identity = d.Identity(self.host, self.realm, (IPv4Address("127.0.0.1"),))
        self.node = peer.DiameterNode(
            identity,
            [d.MOBILE_IPV4_APPLICATION],
            {d.MOBILE_IPV4_APPLICATION: frozenset(d.AVPS)},
            routes=self.routes,
            random_u32=lambda: next(counter),
        )
        self.answers: dict[object, Message] = {}
        self.failed: dict[object, str] = {}
        self.requests: list[Message] = []
        self.up = asyncio.Event()
        self.transport = DiameterTransport(self.node, self._event)
        self._tags = itertools.count()

    def _event(self, event: peer.Event) -> None:
        if isinstance(event, peer.PeerUp):
            self.up.set()
        elif isinstance(event, peer.AnswerReceived):
            self.answers[event.tag] = event.message
        elif isinstance(event, peer.RequestFailed):
            self.failed[event.tag] = event.reason
        elif isinstance(event, peer.RequestReceived):
            self.requests.append(event.message)
            if self.on_request is not None:
                self.on_request(event, self.node)
            else:
                self.node.answer(event.handle, peer.answer_to(event.message, self.node.identity, 2001), 0.0)

    async def connect(self, port: int) -> None:
        await self.transport.connect("127.0.0.1", port)
        await asyncio.wait_for(self.up.wait(), 10)

    async def ask(self, message: Message, timeout: float = 10.0) -> Message:
        tag = next(self._tags)
        self.node.send_request(message, 0.0, tag=tag)
        self.transport.pump()
        return await wait_for(lambda: self.answers.pop(tag, None), timeout, f"no answer to {message.name}")


async def wait_for(get: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = get()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.01)


async def start_home(
    aaa: HomeService | None = None, plain_is_secure: bool = True, peers: tuple[str, ...] = ()
) -> tuple[DiameterHomeServer, int]:
    server = DiameterHomeServer(
        aaa or home_service(),
        DiameterOptions(HOME_HOST, HOME_REALM, "127.0.0.1", 0, peers=peers, plain_is_secure=plain_is_secure),
    )
    listener = await server.start()
    return server, listener.sockets[0].getsockname()[1]


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def certificates(
    directory: Path, server: str, client: str
) -> tuple[tuple[Path, Path], tuple[Path, Path], tuple[Path, Path]]:
    """A test CA and a server and a client certificate it signs (key, cert
    each; the CA's as (key, cert)), each naming its host and 127.0.0.1."""

    def make(name: str, ca: tuple[Path, Path] | None) -> tuple[Path, Path]:
        key, cert = directory / f"{name}.key", directory / f"{name}.pem"
        out = cert if ca is None else directory / f"{name}.csr"
        args = ["-x509", "-days", "1"] if ca is None else []
        subprocess.run(
            ["openssl", "req", *args, "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
             "-out", str(out)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        if ca is not None:
            subprocess.run(
                ["openssl", "x509", "-req", "-in", str(out), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
                 "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", "/dev/stdin"],
                input=f"subjectAltName=DNS:{name},IP:127.0.0.1".encode(),
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        return key, cert

    ca = make("test-ca", None)
    return ca, make(server, ca), make(client, ca)


class Tap:
    """A TCP relay on loopback between two real Diameter peers: every message
    each way is recorded (decoded with our codec) and passed on unchanged,
    except requests toward ``target`` that ``swallow`` picks (a home peer that
    takes them and never answers). :meth:`close` stops it and every
    connection (the peer behind it is then down)."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.seen: list[tuple[str, Message]] = []  # ("up": toward target, "down": back)
        self.swallow: Callable[[Message], bool] = lambda _message: False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def messages(self, direction: str, command: int, request: bool) -> list[Message]:
        with self._lock:
            return [m for way, m in self.seen if way == direction and m.command == command and m.request == request]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                near, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                far = socket.create_connection(self.target, timeout=5)
            except OSError:
                near.close()
                continue
            with self._lock:
                self._sockets += [near, far]
            for way, source, sink in (("up", near, far), ("down", far, near)):
                threading.Thread(target=self._pump, args=(way, source, sink), daemon=True).start()

    def _pump(self, way: str, source: socket.socket, sink: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= int.from_bytes(buffer[1:4], "big"):
                length = int.from_bytes(buffer[1:4], "big")
                raw, buffer = buffer[:length], buffer[length:]
                message = d.decode_message(raw)
                with self._lock:
                    self.seen.append((way, message))
                if way == "up" and message.request and self.swallow(message):
                    continue
                try:
                    sink.sendall(raw)
                except OSError:
                    break
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
