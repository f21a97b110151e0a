"""Settings of the mobility agents (``aaa-vpn agent fa|ha|gw``) and their TOML files.

One :class:`AgentSettings` describes one agent process: its role, its address,
the Mobile IP port, its AAA servers (FA and HA) or its gateway key (GW), the
state file and logging. :func:`load_agent_settings` reads the TOML file and
lets command-line values win over it; :func:`role_config` turns the settings
into the sans-IO role's own configuration (:class:`~aaa_vpn.roles.fa.FaConfig`,
:class:`~aaa_vpn.roles.ha.HaConfig`, :class:`~aaa_vpn.roles.gw.GwConfig`).

Rules (the format is in docs/agents.md):

* Every error is one :class:`~aaa_vpn.model.ValidationError` that names the
  file and the key (``aaa[1].port``): unknown keys (including keys of another
  role), wrong types, bad addresses, a secret given both inline and as a
  file, or neither.
* Secrets come from files (``secret_file``, ``gateway_key_file``) that must
  not be accessible by group or others (the error says which ``chmod`` fixes
  it); a file that holds a secret inline must not be either. One trailing
  newline of a secret file is dropped (``echo secret > file``). Relative file
  names in the TOML file are relative to the TOML file.
* Secrets become :class:`~aaa_vpn.secret.Secret` at once and are never
  logged or written to the state file.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from aaa_vpn.model import ValidationError
from aaa_vpn.roles.fa import FaConfig
from aaa_vpn.roles.gw import GwConfig
from aaa_vpn.roles.ha import HaConfig
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.service.config import LOG_FORMATS, LOG_LEVELS, read_toml

ROLES = ("fa", "ha", "gw")
#: Where an agent's SAs go (docs/sa-backends.md).
BACKENDS = ("memory", "strongswan", "xfrm", "userspace")
MIP_PORT = 434  # RFC 5944 section 1.8
RADIUS_PORT = 1812  # RFC 2865 section 3
COA_PORT = 3799  # RFC 5176 section 2.3
#: Shortest RADIUS shared secret accepted (RFC 2865 section 3 asks for 16; the model allows 8).
MIN_SECRET = 8
#: Shortest gateway key accepted (the provisioned keys are 32 random octets).
MIN_GATEWAY_KEY = 16

_Schema = dict[str, type | tuple[type, ...]]
_COMMON: _Schema = {
    "name": str,
    "address": str,
    "mip_port": int,
    "max_lifetime": int,
    "state_file": str,
    "journal": str,
    "backend": str,
    "vici_socket": str,
    "ike_timeout": (int, float),
    "xfrm_table": str,
    "tun_name": str,
    "route_into": str,
    "data_path": bool,
    "log_level": str,
    "log_format": str,
}
_RADIUS: _Schema = {"radius_timeout": (int, float), "radius_retries": int, "aaa": list, "coa_port": int}
_KEYS: dict[str, _Schema] = {
    "fa": {
        **_COMMON,
        **_RADIUS,
        "ha_timeout": (int, float),
        "challenge_lifetime": (int, float),
        "forwarding_lifetime": int,
    },
    "ha": {**_COMMON, **_RADIUS, "gateway_timeout": (int, float), "replay_tolerance": (int, float)},
    "gw": {
        **_COMMON,
        "gateway_key_file": str,
        "home_agents": list,
        "replay_tolerance": (int, float),
        "refresh_threshold": (int, float),
        "refresh_retries": int,
    },
}
_SERVER: _Schema = {"name": str, "address": str, "port": int, "secret": str, "secret_file": str}


@dataclass(frozen=True)
class AgentSettings:
    """Everything one agent process needs."""

    role: str
    """``fa``, ``ha`` or ``gw``."""
    address: IPv4Address
    """Its own address: the Mobile IP socket binds here (and the RADIUS client
    socket, on an ephemeral port: the home AAA tells clients apart by it)."""
    name: str = ""
    """For logs and the state file; default: the role."""
    mip_port: int = MIP_PORT
    """The Mobile IP UDP port, the same on every agent of a deployment."""
    aaa_servers: tuple[ServerConfig, ...] = ()
    """FA and HA: their AAA servers, in order of preference (failover)."""
    gateway_key: Secret | None = field(default=None, repr=False)
    """GW: the key provisioned for this gateway."""
    home_agents: frozenset[IPv4Address] = frozenset()
    """GW: the home agents whose Binding Updates it accepts (empty: any that authenticates)."""
    max_lifetime: int = 1800
    ha_timeout: float = 5.0
    challenge_lifetime: float = 30.0
    forwarding_lifetime: int = 10
    """FA: how long the previous FA is asked to forward after a move (smooth
    handoff, flow E); 0: no smooth handoff."""
    gateway_timeout: float = 3.0
    replay_tolerance: float = 7.0
    radius_timeout: float = 2.0
    radius_retries: int = 2
    coa_port: int = COA_PORT
    """FA and HA: the UDP port of Disconnect-/CoA-Requests from their AAA servers
    (RFC 5176; 0: none)."""
    refresh_threshold: float = 0.2
    """GW: send the HA a Binding Request when a binding's remaining lifetime
    falls to this fraction of the lifetime granted (0 < x < 1)."""
    refresh_retries: int = 3
    """GW: Binding Requests repeated after the first before the binding expires."""
    state_file: Path | None = None
    """Where the agent keeps its SA table and visitors/bindings as JSON (docs/agents.md)."""
    journal: Path | None = None
    """Where the agent keeps its live state, sealed, to carry on after a restart
    with the SAs its backend still holds (docs/agents.md, "Restart")."""
    backend: str = "memory"
    """Where its SAs go: ``memory``, ``strongswan`` (a charon over VICI) or
    ``xfrm`` (the kernel) -- docs/sa-backends.md."""
    vici_socket: Path | None = None
    """strongswan: the VICI socket of this node's charon."""
    ike_timeout: float = 2.0
    """strongswan: seconds an IKE exchange may take (below the FA's ``ha_timeout``)."""
    route_into: str | None = None
    """strongswan: lead each path's traffic into this TUN device (kernel-libipsec's
    ``ipsec0``) by policy routing, for a charon that installs no routes itself."""
    xfrm_table: Path | None = None
    """xfrm: the side table that keeps the SAs' owners across restarts."""
    tun_name: str = "aavpn0"
    """userspace: the TUN device of the node's ESP data plane."""
    data_path: bool = False
    """FA: route each visitor's home address to the link its registration came
    from (the Mobile IP data path; off where agents share a host, e.g. tests on
    loopback)."""
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValidationError(f"unknown agent role {self.role!r}: one of {', '.join(ROLES)}")
        if not isinstance(self.address, IPv4Address) or self.address.is_unspecified:
            raise ValidationError(f"the agent needs its own IPv4 address, not {self.address}")
        if not 1 <= self.mip_port <= 65535:
            raise ValidationError(f"invalid Mobile IP port {self.mip_port}: expected 1..65535")
        if self.role in ("fa", "ha") and not self.aaa_servers:
            raise ValidationError(f"the {self.role.upper()} needs at least one AAA server (--aaa HOST:PORT)")
        if self.role == "gw" and (self.gateway_key is None or not self.gateway_key):
            raise ValidationError("the gateway needs its provisioned key (--gateway-key-file)")
        if self.role == "gw" and self.gateway_key is not None and len(self.gateway_key) < MIN_GATEWAY_KEY:
            raise ValidationError(
                f"the gateway key has {len(self.gateway_key)} octets; at least {MIN_GATEWAY_KEY} are required"
            )
        if not 1 <= self.max_lifetime <= 0xFFFE:
            raise ValidationError(f"invalid maximum lifetime {self.max_lifetime}: 1..65534 seconds")
        for what, value in (
            ("HA timeout", self.ha_timeout),
            ("challenge lifetime", self.challenge_lifetime),
            ("gateway timeout", self.gateway_timeout),
            ("replay tolerance", self.replay_tolerance),
            ("RADIUS timeout", self.radius_timeout),
        ):
            if not value > 0:
                raise ValidationError(f"invalid {what} {value}: must be > 0")
        if not 0 <= self.coa_port <= 65535:
            raise ValidationError(f"invalid CoA port {self.coa_port}: expected 1..65535, or 0 for none")
        if self.radius_retries < 0:
            raise ValidationError(f"invalid RADIUS retries {self.radius_retries}: must be >= 0")
        if not 0 < self.refresh_threshold < 1:
            raise ValidationError(
                f"invalid refresh threshold {self.refresh_threshold}: a fraction of the lifetime, 0 < x < 1"
            )
        if not 0 <= self.refresh_retries <= 100:
            raise ValidationError(f"invalid refresh retries {self.refresh_retries}: 0..100")
        if self.backend not in BACKENDS:
            raise ValidationError(f"unknown SA backend {self.backend!r}: one of {', '.join(BACKENDS)}")
        if self.backend == "strongswan" and self.vici_socket is None:
            raise ValidationError("the strongswan backend needs charon's VICI socket (--vici-socket, vici_socket)")
        if not 0 <= self.forwarding_lifetime <= 0xFFFF:
            raise ValidationError(f"invalid forwarding lifetime {self.forwarding_lifetime}: 0..65535 seconds")
        if not 0 < self.ike_timeout <= 60:
            raise ValidationError(f"invalid IKE timeout {self.ike_timeout}: 0 < x <= 60 seconds")
        if self.log_level not in LOG_LEVELS:
            raise ValidationError(f"invalid log level {self.log_level!r}: one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ValidationError(f"invalid log format {self.log_format!r}: one of {', '.join(LOG_FORMATS)}")

    @property
    def node(self) -> str:
        """The node's name in logs and the state file."""
        return self.name or self.role

    @property
    def credential(self) -> Secret:
        """The node's own secret, which seals its journal: a gateway's key,
        an FA's or HA's shared secret with its first AAA server."""
        if self.role == "gw":
            assert self.gateway_key is not None  # checked in __post_init__
            return self.gateway_key
        if not self.aaa_servers:
            raise ValidationError("an FA or HA needs an AAA server")
        return self.aaa_servers[0].secret


def role_config(settings: AgentSettings) -> FaConfig | HaConfig | GwConfig:
    """The sans-IO role's configuration."""
    if settings.role == "fa":
        return FaConfig(
            address=settings.address,
            aaa_servers=settings.aaa_servers,
            mip_port=settings.mip_port,
            max_lifetime=settings.max_lifetime,
            challenge_lifetime=settings.challenge_lifetime,
            ha_timeout=settings.ha_timeout,
            radius_timeout=settings.radius_timeout,
            radius_retries=settings.radius_retries,
            forwarding_lifetime=settings.forwarding_lifetime,
        )
    if settings.role == "ha":
        return HaConfig(
            address=settings.address,
            aaa_servers=settings.aaa_servers,
            mip_port=settings.mip_port,
            max_lifetime=settings.max_lifetime,
            gateway_timeout=settings.gateway_timeout,
            replay_tolerance=settings.replay_tolerance,
            radius_timeout=settings.radius_timeout,
            radius_retries=settings.radius_retries,
        )
    assert settings.gateway_key is not None  # checked by AgentSettings
    return GwConfig(
        address=settings.address,
        gateway_key=settings.gateway_key,
        home_agents=settings.home_agents,
        max_lifetime=settings.max_lifetime,
        replay_tolerance=settings.replay_tolerance,
        refresh_threshold=settings.refresh_threshold,
        refresh_retries=settings.refresh_retries,
    )


# -- reading values -------------------------------------------------------------------------------


def parse_ipv4(what: str, value: str) -> IPv4Address:
    """An IPv4 address literal, or a ValidationError naming ``what``."""
    try:
        address = ip_address(value.strip())
    except ValueError:
        raise ValidationError(f"{what}: {value!r} is not an IP address") from None
    if not isinstance(address, IPv4Address):
        raise ValidationError(f"{what}: {value!r}: only IPv4 is supported")
    return address


def parse_endpoint(what: str, value: str, default_port: int) -> tuple[IPv4Address, int]:
    """``ADDR`` or ``ADDR:PORT``."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep:
        host, port_text = value.strip(), ""
    address = parse_ipv4(what, host)
    if not port_text:
        return address, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValidationError(f"{what}: {value!r}: the port is not a number") from None
    if not 1 <= port <= 65535:
        raise ValidationError(f"{what}: {value!r}: the port must be 1..65535")
    return address, port


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file that group or others may access."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValidationError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ValidationError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValidationError(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise ValidationError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); fix: chmod 600 {path}"
        )


def read_secret_file(path: Path, what: str, minimum: int = 1) -> Secret:
    """The file's bytes, one trailing newline dropped; the file must be private."""
    check_private(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"{what} {path}: cannot read it: {exc.strerror}") from None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if len(data) < minimum:
        raise ValidationError(f"{what} {path} holds {len(data)} octets; at least {minimum} are required")
    return Secret(data)


def _type(value: object) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean", int: "integer", float: "float"}.get(
        type(value), type(value).__name__
    )


class _Reader:
    """Checks one file's values; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inline_secrets = False

    def error(self, key: str, message: str) -> ValidationError:
        return ValidationError(f"config file {self.path}: {key}: {message}")

    def table(self, value: object, key: str, schema: _Schema) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {_type(value)}")
        for name, item in value.items():
            expected = schema.get(name)
            where = f"{key}.{name}" if key else name
            if expected is None:
                known = ", ".join(sorted(schema))
                raise ValidationError(f"config file {self.path}: {where} is not a known setting (known: {known})")
            if (isinstance(item, bool) and expected is not bool) or not isinstance(item, expected):
                raise ValidationError(f"config file {self.path}: {where} has the wrong type ({_type(item)})")
        return value

    def file(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path

    def secret(self, table: Mapping[str, Any], key: str) -> Secret:
        inline, file = table.get("secret"), table.get("secret_file")
        if (inline is None) == (file is None):
            raise self.error(key, "give exactly one of secret and secret_file")
        if inline is not None:
            self.inline_secrets = True
            value = Secret(str(inline))
        else:
            value = read_secret_file(self.file(str(file)), f"config file {self.path}: {key}.secret_file")
        if len(value) < MIN_SECRET:
            raise self.error(key, f"the shared secret has {len(value)} octets; at least {MIN_SECRET} are required")
        return value


def _file_ipv4(reader: _Reader, key: str, value: str) -> IPv4Address:
    try:
        address = ip_address(value.strip())
    except ValueError:
        raise reader.error(key, f"{value!r} is not an IP address") from None
    if not isinstance(address, IPv4Address):
        raise reader.error(key, f"{value!r}: only IPv4 is supported")
    return address


def _servers(reader: _Reader, items: Sequence[Any], secret: Secret | None) -> tuple[ServerConfig, ...]:
    servers: list[ServerConfig] = []
    seen: set[tuple[IPv4Address, int]] = set()
    for index, item in enumerate(items):
        key = f"aaa[{index}]"
        table = reader.table(item, key, _SERVER)
        if "address" not in table:
            raise reader.error(key, "address is required")
        address = _file_ipv4(reader, f"{key}.address", table["address"])
        port = table.get("port", RADIUS_PORT)
        if not 1 <= port <= 65535:
            raise reader.error(f"{key}.port", f"{port}: expected 1..65535")
        if (address, port) in seen:
            raise reader.error(key, f"{address}:{port} is listed twice")
        seen.add((address, port))
        # --secret-file wins over the file's secret (and lets the file omit it)
        server_secret = secret if secret is not None else reader.secret(table, key)
        servers.append(ServerConfig(str(address), port, server_secret, table.get("name", "")))
    return tuple(servers)


def load_agent_settings(
    role: str,
    path: Path | None,
    overrides: Mapping[str, Any],
    *,
    aaa: Sequence[tuple[IPv4Address, int]] = (),
    secret: Secret | None = None,
) -> AgentSettings:
    """The settings of an agent of ``role``: from the TOML file at ``path``
    (if any), with ``overrides`` (the command-line values that were given,
    already typed: ``address`` an IPv4Address, ``state_file`` and ``journal`` Paths, ...)
    winning over it. ``aaa`` (``--aaa``) replaces the file's AAA servers and
    needs ``secret`` (``--secret-file``), which otherwise replaces the secret
    of the file's servers. Raises ValidationError."""
    if role not in ROLES:
        raise ValidationError(f"unknown agent role {role!r}")
    values: dict[str, Any] = {"role": role}
    if path is not None:
        values.update(_read_file(role, path, secret))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if aaa:
        if secret is None:
            raise ValidationError("--aaa needs the RADIUS shared secret: --secret-file FILE")
        values["aaa_servers"] = tuple(ServerConfig(str(address), port, secret) for address, port in aaa)
    elif secret is not None and not values.get("aaa_servers"):
        raise ValidationError("--secret-file is the secret of the AAA servers: give them with --aaa HOST:PORT")
    if "address" not in values:
        raise ValidationError("the agent's address is required (--address, or address in the config file)")
    try:
        return AgentSettings(**values)
    except ValidationError as exc:
        if path is not None:
            raise ValidationError(f"{exc} (config file {path})") from None
        raise


def _read_file(role: str, path: Path, secret: Secret | None) -> dict[str, Any]:
    data = read_toml(path)
    reader = _Reader(path)
    top = reader.table(data, "", _KEYS[role])
    values: dict[str, Any] = {}
    for name in (
        "name",
        "backend",
        "forwarding_lifetime",
        "mip_port",
        "coa_port",
        "max_lifetime",
        "radius_retries",
        "refresh_retries",
        "log_level",
        "log_format",
    ):
        if name in top:
            values[name] = top[name]
    for name in (
        "ha_timeout",
        "challenge_lifetime",
        "gateway_timeout",
        "replay_tolerance",
        "radius_timeout",
        "refresh_threshold",
        "ike_timeout",
    ):
        if name in top:
            values[name] = float(top[name])
    if "address" in top:
        values["address"] = _file_ipv4(reader, "address", top["address"])
    if "state_file" in top:
        values["state_file"] = reader.file(top["state_file"])
    if "journal" in top:
        values["journal"] = reader.file(top["journal"])
    for name in ("vici_socket", "xfrm_table"):
        if name in top:
            values[name] = reader.file(top[name])
    for name in ("tun_name", "data_path", "route_into"):
        if name in top:
            values[name] = top[name]
    if "aaa" in top:
        values["aaa_servers"] = _servers(reader, top["aaa"], secret)
    if "gateway_key_file" in top:
        values["gateway_key"] = read_secret_file(
            reader.file(top["gateway_key_file"]), f"config file {path}: gateway_key_file", MIN_GATEWAY_KEY
        )
    if "home_agents" in top:
        agents: set[IPv4Address] = set()
        for index, item in enumerate(top["home_agents"]):
            if not isinstance(item, str):
                raise reader.error(f"home_agents[{index}]", f"must be a string, not {_type(item)}")
            agents.add(_file_ipv4(reader, f"home_agents[{index}]", item))
        values["home_agents"] = frozenset(agents)
    if reader.inline_secrets:
        check_private(path, "config file")
    return values


__all__ = [
    "BACKENDS",
    "MIP_PORT",
    "ROLES",
    "AgentSettings",
    "check_private",
    "load_agent_settings",
    "parse_endpoint",
    "parse_ipv4",
    "read_secret_file",
    "role_config",
]
