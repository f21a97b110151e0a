"""The one topology that the demo, the namespace lab, the benchmarks and the
tests build: its elements and where they are, the sample user's VPN in the
database, and the ``aaa-vpn`` command lines that start each element.

The elements (docs/design.md section 2):

* the home AAA, the HA, the static gateway (stationary tunnel to the HA,
  protecting :data:`STATIC_NETWORK`) and the dynamic gateway (route
  optimisation, :data:`DYNAMIC_NETWORK`) in the home domain;
* a visited domain ``visited-a.example`` with a foreign AAA and FA1 and FA2,
  its clients (:data:`BEHIND_FOREIGN_AAA`);
* a visited domain ``visited-b.example`` without one: FA3 asks the home AAA;
* the mobile node :data:`NAI` with its home address :data:`HOME_ADDRESS`.

Where they are is an :class:`Addresses`: :data:`LOOPBACK` (the demo, the
in-process and live tests) or :data:`BACKBONE` (the namespace lab).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from aaa_vpn.model import (
    Client,
    ClientRole,
    EspTransform,
    Gateway,
    GatewayMode,
    KeyMode,
    QosClass,
    Service,
    User,
    VpnRecord,
)
from aaa_vpn.secret import Secret
from aaa_vpn.store import Store, init_store

NAI = "mn1@home.example"
HOME_ADDRESS = "198.51.100.10"
MN_HA_SPI = 256
STATIC_NETWORK = "203.0.113.0/25"
DYNAMIC_NETWORK = "203.0.113.128/25"


class LabError(Exception):
    """A topology could not be built or one of its processes did not come up."""


@dataclass(frozen=True)
class Addresses:
    """Where the topology's elements are."""

    aaa: str
    ha: str
    aaaf: str
    fa1: str
    fa2: str
    fa3: str
    gw_static: str
    gw_dynamic: str

    def of(self, name: str) -> str:
        """The address of element ``name`` (``home-aaa``, ``foreign-aaa`` or one of :data:`AGENTS`)."""
        address: str = getattr(self, _FIELDS[name])
        return address


#: Every element on its own loopback address.
LOOPBACK = Addresses(
    aaa="127.0.0.1",
    ha="127.0.0.2",
    aaaf="127.0.0.3",
    fa1="127.0.0.11",
    fa2="127.0.0.12",
    fa3="127.0.0.13",
    gw_static="127.0.0.21",
    gw_dynamic="127.0.0.22",
)
#: The backbone of the network-namespace lab (:mod:`aaa_vpn.lab.netns`).
BACKBONE = Addresses(
    aaa="192.0.2.1",
    ha="192.0.2.2",
    aaaf="192.0.2.3",
    fa1="192.0.2.11",
    fa2="192.0.2.12",
    fa3="192.0.2.13",
    gw_static="192.0.2.21",
    gw_dynamic="192.0.2.22",
)

#: The agents: name -> role (``aaa-vpn agent ROLE``).
AGENTS: dict[str, str] = {
    "ha": "ha",
    "fa1": "fa",
    "fa2": "fa",
    "fa3": "fa",
    "gw-static": "gw",
    "gw-dynamic": "gw",
}
#: The agents that take CoA and Disconnect-Requests (RFC 5176): the RADIUS clients.
COA_AGENTS = tuple(name for name, role in AGENTS.items() if role in ("fa", "ha"))
#: The AAA servers, which keep no state file: ready when their log says so.
SERVERS = ("home-aaa", "foreign-aaa")
#: The FAs of the visited domain with a foreign AAA; FA3 asks the home AAA directly.
BEHIND_FOREIGN_AAA = ("fa1", "fa2")
_FIELDS = {
    "home-aaa": "aaa",
    "foreign-aaa": "aaaf",
    "ha": "ha",
    "fa1": "fa1",
    "fa2": "fa2",
    "fa3": "fa3",
    "gw-static": "gw_static",
    "gw-dynamic": "gw_dynamic",
}


@dataclass
class BoundPort:
    """One UDP port bound on several addresses, held by the program that
    starts the processes which serve on it (:func:`bind_udp`)."""

    port: int
    sockets: dict[str, socket.socket]
    """Address -> the socket bound to ``(address, port)``."""

    def fd(self, address: str) -> int:
        """The file descriptor to hand the process that serves on ``address``."""
        return self.sockets[address].fileno()

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def bind_udp(addresses: Sequence[str], port: int = 0) -> BoundPort:
    """UDP sockets bound to one port on every one of ``addresses``.

    The sockets stay bound: they are handed to the processes that serve on
    them (``pass_fds`` and ``--mip-socket-fd`` / ``--coa-socket-fd``), never
    closed for a process to bind the port again later -- a port probed and
    closed can be taken by anyone before its process binds it (two demos side
    by side, an agent's own ephemeral RADIUS socket). ``port`` 0: the kernel
    picks one free on the first address, which is then bound on the others;
    when one of them has it taken, all are closed and another is tried.
    Raises :class:`LabError` when a given ``port`` is taken, or no port is free
    on all of them."""
    for _ in range(1 if port else 200):
        bound: dict[str, socket.socket] = {}
        chosen = port
        try:
            for address in addresses:
                sock = bound[address] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((address, chosen))
                chosen = int(sock.getsockname()[1])
        except OSError as exc:
            for sock in bound.values():
                sock.close()
            if port:
                raise LabError(f"cannot bind UDP port {port} on {address}: {exc.strerror}") from None
            continue
        return BoundPort(chosen, bound)
    raise LabError(f"no UDP port is free on every one of {', '.join(addresses)}")


# -- the database -------------------------------------------------------------------------------------


def add_gateways(store: Store, addresses: Addresses, keys: Mapping[str, Secret]) -> None:
    """The static and the dynamic gateway; ``keys``: gateway name -> its key."""
    for name, mode, network in (
        ("gw-static", GatewayMode.STATIC, STATIC_NETWORK),
        ("gw-dynamic", GatewayMode.DYNAMIC, DYNAMIC_NETWORK),
    ):
        store.add_gateway(Gateway(name, IPv4Address(addresses.of(name)), mode, (IPv4Network(network),), keys[name]))


def add_user_vpn(
    store: Store,
    addresses: Addresses,
    mn_aaa: Secret,
    mn_ha: Secret,
    key_mode: KeyMode = KeyMode.MANUAL,
    gateways: tuple[str, ...] = ("static", "dynamic"),
) -> None:
    """The user :data:`NAI` and its VPN: the static gateway's network with the
    gold service and the voice QoS class, the dynamic gateway's with silver
    (``gateways`` chooses which); both services keyed by ``key_mode``."""
    store.add_user(
        User(NAI, IPv4Address(addresses.ha), mn_aaa, MN_HA_SPI, mn_ha, home_address=IPv4Address(HOME_ADDRESS))
    )
    store.add_service(Service("gold", key_mode=key_mode, esp_transform=EspTransform.AES_GCM_16_256))
    store.add_service(Service("silver", key_mode=key_mode, esp_transform=EspTransform.AES_CBC_128_HMAC_SHA256))
    store.add_qos(QosClass("voice", dscp=46, rate_kbps=512))
    if "static" in gateways:
        store.add_vpn_record(VpnRecord(NAI, IPv4Network(STATIC_NETWORK), "gw-static", "gold", "voice"))
    if "dynamic" in gateways:
        store.add_vpn_record(VpnRecord(NAI, IPv4Network(DYNAMIC_NETWORK), "gw-dynamic", "silver"))


def write_secret(path: Path, value: bytes) -> Path:
    """A new file of mode 0600 holding ``value``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return path


@dataclass
class Files:
    """What :func:`provision` wrote: the database, its key and the secret files."""

    directory: Path
    db: Path
    key: Path
    secrets: dict[str, Path]
    """Element name -> its RADIUS secret (FAs, HA, ``aaaf``) or gateway key file."""
    mn_ha_key: Path
    mn_aaa_secret: Path
    coa_port: int
    """The FAs' and the HA's port for CoA and Disconnect-Requests, as their client records name it."""


def provision(
    directory: Path,
    coa_port: int,
    addresses: Addresses = LOOPBACK,
    key_mode: KeyMode = KeyMode.MANUAL,
) -> Files:
    """A database in ``directory`` with the sample user's VPN and random
    secrets in files of mode 0600 for the processes to read. FA1 and FA2 share
    a secret with the foreign AAA; FA3, the HA and the foreign AAA (a proxy
    client) with the home AAA. The FA3 and HA client records name ``coa_port``
    for CoA and Disconnect-Requests (on loopback, one :func:`bind_udp` bound
    for the agents). ``key_mode``: how both services key their SAs (IKEv2 for
    strongSwan)."""
    a = addresses
    db, key = directory / "vpn.db", directory / "vpn.db.key"
    store, _ = init_store(db, key)
    client_secrets = {name: secrets.token_urlsafe(18).encode() for name in ("fa1", "fa2", "fa3", "ha", "aaaf")}
    gateway_keys = {name: secrets.token_bytes(32) for name in ("gw-static", "gw-dynamic")}
    mn_aaa, mn_ha = secrets.token_urlsafe(18).encode(), secrets.token_bytes(16)
    try:
        store.add_client(
            Client(
                "aaaf",
                IPv4Network(f"{a.aaaf}/32"),
                Secret(client_secrets["aaaf"]),
                ClientRole.FOREIGN_AAA,
                "visited-a.example",
            )
        )
        store.add_client(
            Client(
                "fa3",
                IPv4Network(f"{a.fa3}/32"),
                Secret(client_secrets["fa3"]),
                ClientRole.FA,
                "visited-b.example",
                coa_port=coa_port,
            )
        )
        store.add_client(
            Client("ha", IPv4Network(f"{a.ha}/32"), Secret(client_secrets["ha"]), ClientRole.HA, coa_port=coa_port)
        )
        add_gateways(store, a, {name: Secret(value) for name, value in gateway_keys.items()})
        add_user_vpn(store, a, Secret(mn_aaa), Secret(mn_ha), key_mode)
    finally:
        store.close()
    files = {name: write_secret(directory / f"{name}.secret", value) for name, value in client_secrets.items()}
    files.update({name: write_secret(directory / f"{name}.key", value) for name, value in gateway_keys.items()})
    return Files(
        directory,
        db,
        key,
        files,
        write_secret(directory / "mn1.mn-ha-key", mn_ha),
        write_secret(directory / "mn1.mn-aaa-secret", mn_aaa),
        coa_port,
    )


# -- the command lines --------------------------------------------------------------------------------


def home_aaa_args(files: Files, listen: str, port: int) -> list[str]:
    """``aaa-vpn`` arguments of the home AAA on ``files``' database."""
    return [
        *("--db", str(files.db), "--key-file", str(files.key), "serve", "home"),
        *("--listen", listen, "--port", str(port), "--workers", "1", "--log-format", "json"),
    ]


def write_foreign_config(files: Files, addresses: Addresses, port: int, home_port: int) -> Path:
    """The foreign AAA's TOML file (docs/foreign-aaa.md) in ``files.directory``:
    it listens on ``port``, FA1 and FA2 are its clients, realm home.example
    goes to the home AAA on ``home_port``."""
    path = files.directory / "foreign.toml"
    clients = "".join(
        f'[[clients]]\nname = "{name}"\naddress = "{addresses.of(name)}"\nsecret_file = "{files.secrets[name]}"\n\n'
        for name in BEHIND_FOREIGN_AAA
    )
    path.write_text(
        f'listen = "{addresses.aaaf}"\nport = {port}\nworkers = 1\n\n'
        f"{clients}"
        '[[realms]]\nname = "home.example"\n[[realms.servers]]\nname = "home-aaa"\n'
        f'address = "{addresses.aaa}"\nport = {home_port}\nsecret_file = "{files.secrets["aaaf"]}"\n'
    )
    path.chmod(0o600)
    return path


def agent_args(
    name: str,
    files: Files,
    addresses: Addresses,
    mip_port: int,
    state_file: Path,
    aaa_ports: tuple[int, int],
    sockets: Mapping[str, int] | None = None,
) -> list[str]:
    """``aaa-vpn agent`` arguments of agent ``name`` that every topology gives
    it: the FAs and the HA ask their AAA server (``aaa_ports``: the home AAA's
    and the foreign AAA's RADIUS port) and take CoA and Disconnect-Requests;
    the gateways hold their gateway key and know the HA. ``sockets``: the
    file descriptors of the ``mip`` and ``coa`` sockets :func:`bind_udp` bound
    for it, which the process inherits (``pass_fds``)."""
    role = AGENTS[name]
    inherited = sockets or {}
    args = ["agent", role, "--name", name, "--address", addresses.of(name), "--mip-port", str(mip_port)]
    args += ["--state-file", str(state_file), "--log-format", "json"]
    if "mip" in inherited:
        args += ["--mip-socket-fd", str(inherited["mip"])]
    if role in ("fa", "ha"):
        home_port, foreign_port = aaa_ports
        aaa = f"{addresses.aaaf}:{foreign_port}" if name in BEHIND_FOREIGN_AAA else f"{addresses.aaa}:{home_port}"
        args += ["--aaa", aaa, "--secret-file", str(files.secrets[name]), "--coa-port", str(files.coa_port)]
        if "coa" in inherited:
            args += ["--coa-socket-fd", str(inherited["coa"])]
    else:
        args += ["--gateway-key-file", str(files.secrets[name]), "--home-agent", addresses.ha]
    return args


def mn_args(
    files: Files,
    addresses: Addresses,
    mip_port: int,
    source: str,
    fa: str,
    previous_fa: str | None = None,
    deregister: bool = False,
) -> list[str]:
    """``aaa-vpn --json mn ... register|deregister`` arguments: the node :data:`NAI`
    sends from ``source`` to the FA at address ``fa``, naming ``previous_fa``."""
    args = [
        *("--json", "mn", "--nai", NAI, "--home-address", HOME_ADDRESS, "--home-agent", addresses.ha),
        *("--mn-ha-spi", str(MN_HA_SPI), "--mn-ha-key-file", str(files.mn_ha_key)),
        *("--mn-aaa-secret-file", str(files.mn_aaa_secret), "--mip-port", str(mip_port), "--source", source),
    ]
    if deregister:
        return [*args, "deregister", "--fa", fa]
    return [*args, "register", "--fa", fa, *(("--previous-fa", previous_fa) if previous_fa else ())]


def mn_result(result: subprocess.CompletedProcess[bytes] | subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON document ``aaa-vpn --json mn`` printed, with its ``exit_status``."""
    try:
        document: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
        return {
            "accepted": False,
            "code": None,
            "detail": stderr.strip() or "no output",
            "exit_status": result.returncode,
        }
    document["exit_status"] = result.returncode
    return document


__all__ = [
    "AGENTS",
    "BACKBONE",
    "BEHIND_FOREIGN_AAA",
    "COA_AGENTS",
    "DYNAMIC_NETWORK",
    "HOME_ADDRESS",
    "LOOPBACK",
    "MN_HA_SPI",
    "NAI",
    "SERVERS",
    "STATIC_NETWORK",
    "Addresses",
    "BoundPort",
    "Files",
    "LabError",
    "add_gateways",
    "add_user_vpn",
    "agent_args",
    "bind_udp",
    "home_aaa_args",
    "mn_args",
    "mn_result",
    "provision",
    "write_foreign_config",
    "write_secret",
]
