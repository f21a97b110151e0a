"""Settings of the mobility agents (``aaa-vpn agent fa|ha|gw``) and their TOML files.

One :class:`AgentSettings` describes one agent process: its role, its address,
the Mobile IP port, its AAA servers (FA and HA) or its gateway key (GW), the
state file and logging. Each of its fields declares, once, its default, its
command-line option, its TOML key, the roles that have it, its rule and its
parser (:mod:`aaa_vpn.service.settings`); from these :func:`agent_options`
gives the command line its options, :func:`settings_from_options` and
:func:`load_agent_settings` read the TOML file and let command-line values win
over it, and :func:`role_config` turns the settings into the sans-IO role's own
configuration (:class:`~aaa_vpn.roles.fa.FaConfig`,
:class:`~aaa_vpn.roles.ha.HaConfig`, :class:`~aaa_vpn.roles.gw.GwConfig`) by
field name.

Rules (the format is in docs/agents.md):

* Every error is one :class:`~aaa_vpn.model.ValidationError` that names the
  file and the key (``aaa[1].port``): unknown keys (including keys of another
  role), wrong types, bad addresses, a secret given both inline and as a
  file, or neither.
* Secrets come from files (``secret_file``, ``gateway_key_file``,
  ``gateway_key_hex_file``) read by :mod:`aaa_vpn.secret_files`: they must
  not be accessible by group or others (the error says which ``chmod`` fixes
  it), and neither may a file that holds a secret inline. A shared secret
  file loses one trailing newline (``echo secret > file``); a gateway key
  file is read exactly, or as hex digits when named by
  ``--gateway-key-hex-file`` / ``gateway_key_hex_file``. Relative file names
  in the TOML file are relative to the TOML file.
* Secrets become :class:`~aaa_vpn.secret.Secret` at once and are never
  logged or written to the state file.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aaa_vpn.model import MIN_SHARED_SECRET, ValidationError, check_node_address
from aaa_vpn.roles.pools import DEFAULT_DEAD_TIME, DEFAULT_ZOMBIE_PERIOD, POOL_TYPES
from aaa_vpn.secret import Secret
from aaa_vpn.secret_files import SecretForm, check_private, read_secret_file
from aaa_vpn.service.config import log_format_setting, log_level_setting, metrics_listen_setting, read_toml
from aaa_vpn.service.settings import (
    Bounds,
    Choices,
    Declared,
    Setting,
    TomlReader,
    check_declared,
    declared,
    parse_endpoint,
    parse_ipv4,
    setting,
)

if TYPE_CHECKING:  # the roles pull in the Mobile IP and RADIUS codecs, which the command line loads only to run
    from aaa_vpn.roles.fa import FaConfig
    from aaa_vpn.roles.gw import GwConfig
    from aaa_vpn.roles.ha import HaConfig
    from aaa_vpn.roles.radius_client import ServerConfig

ROLES = ("fa", "ha", "gw")
#: Where an agent's SAs go (docs/sa-backends.md).
BACKENDS = ("memory", "strongswan", "xfrm", "userspace")
MIP_PORT = 434  # RFC 5944 section 1.8
RADIUS_PORT = 1812  # RFC 2865 section 3
COA_PORT = 3799  # RFC 5176 section 2.3
#: Shortest gateway key accepted (the provisioned keys are 32 random octets).
MIN_GATEWAY_KEY = 16

_RADIUS_ROLES = ("fa", "ha")
_SERVER: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "address": str,
    "port": int,
    "secret": str,
    "secret_file": str,
    "transport": str,
    "tls_name": str,
}


# -- the settings ----------------------------------------------------------------------------------


def _positive(what: str) -> Bounds:
    return Bounds(what, low=0, low_open=True, rule="must be > 0")


def _secret_file(form: SecretForm, minimum: int, where: str, path: Path) -> Secret:
    return read_secret_file(path, where, form, minimum)


def _servers_from_file(reader: TomlReader, key: str, items: Sequence[Any]) -> tuple[ServerConfig, ...]:
    assert isinstance(reader, _Reader)
    return _servers(reader, items, reader.secret_override)


@dataclass(frozen=True)
class AgentSettings:
    """Everything one agent process needs.

    Each field is declared once, here: its default, its ``--option`` of
    ``aaa-vpn agent fa|ha|gw``, its key in the agent's TOML file, which roles
    have it, its rule and how a written value becomes the field's
    (:mod:`aaa_vpn.service.settings`). The command line, the TOML reader, the
    checks below and :func:`role_config` all come from these declarations."""

    role: str
    """``fa``, ``ha`` or ``gw``."""
    address: IPv4Address = setting(
        help="The agent's own IPv4 address (required).", flag="--address", metavar="ADDR", parse=parse_ipv4
    )
    """Its own address: the Mobile IP socket binds here (and the RADIUS client
    socket, on an ephemeral port: the home AAA tells clients apart by it)."""
    name: str = setting("", help="Its name in logs and the state file.", flag="--name", metavar="NAME")
    """For logs and the state file; default: the role."""
    mip_port: int = setting(
        MIP_PORT,
        help="The Mobile IP UDP port, the same on every agent.",
        flag="--mip-port",
        check=Bounds("Mobile IP port", 1, 65535, rule="expected 1..65535"),
    )
    aaa_servers: tuple[ServerConfig, ...] = setting(
        (),
        help=f"An AAA server, HOST or HOST:PORT (port {RADIUS_PORT} if none); repeat for failover, in order.",
        flag="--aaa",
        metavar="HOST[:PORT]",
        toml="aaa",
        multiple=True,
        roles=_RADIUS_ROLES,
        parse=functools.partial(parse_endpoint, default_port=RADIUS_PORT),
        from_file=_servers_from_file,
    )
    """FA and HA: their AAA servers, in order of preference (failover). The
    command line gives their endpoints (``--aaa``) and their secret
    (``--secret-file``, :data:`SECRET_FILE`); the file gives ``[[aaa]]`` tables."""
    radius_timeout: float = setting(
        0.25,
        help="Seconds before the first RADIUS retransmission (then twice as long each time, up to"
        " --radius-max-timeout).",
        flag="--radius-timeout",
        roles=_RADIUS_ROLES,
        check=_positive("RADIUS timeout"),
    )
    radius_retries: int = setting(
        8,
        help="Retransmissions per AAA server.",
        flag="--radius-retries",
        roles=_RADIUS_ROLES,
        check=Bounds("RADIUS retries", low=0, rule="must be >= 0"),
    )
    radius_max_timeout: float = setting(
        1.0,
        help="The longest wait between two RADIUS transmissions (--radius-timeout if that is longer).",
        flag="--radius-max-timeout",
        roles=_RADIUS_ROLES,
        check=_positive("RADIUS maximum timeout"),
    )
    """FA and HA: RADIUS retransmission (docs/radius-client.md rule 1): waits of
    ``radius_timeout``, doubled each time up to ``radius_max_timeout``, after
    each of ``1 + radius_retries`` transmissions per server (the role's
    defaults: aaa_vpn.roles.radius_client)."""
    radius_pool: str = setting(
        "fail-over",
        help="How requests are spread over the AAA servers: fail-over (in order), load-balance (fewest in"
        " flight), client-balance (by this agent), keyed-balance (by the NAI).",
        flag="--aaa-pool",
        toml="aaa_pool",
        roles=_RADIUS_ROLES,
        check=Choices("AAA pool type", POOL_TYPES),
    )
    radius_zombie_period: float = setting(
        DEFAULT_ZOMBIE_PERIOD,
        help="Seconds an AAA server that let a request time out is probed with Status-Server (and gets no"
        " new requests while another is live) before it is marked dead.",
        flag="--aaa-zombie-period",
        toml="aaa_zombie_period",
        roles=_RADIUS_ROLES,
        check=Bounds("AAA zombie period", low=0, rule="must be >= 0"),
    )
    radius_dead_time: float = setting(
        DEFAULT_DEAD_TIME,
        help="Seconds a dead AAA server gets no requests unless it answers a Status-Server probe.",
        flag="--aaa-dead-time",
        toml="aaa_dead_time",
        roles=_RADIUS_ROLES,
        check=Bounds("AAA dead time", low=0, rule="must be >= 0"),
    )
    """FA and HA: the pool of AAA servers (docs/radius-client.md rules 4 and 4a)."""
    accounting: bool = setting(
        False,
        help="Send RADIUS accounting (Start, Interim-Update, Stop) to the AAA servers' accounting ports"
        " (each server's port + 1).",
        flag="--accounting",
        roles=_RADIUS_ROLES,
    )
    accounting_port: int = setting(
        0,
        help="The UDP port of the AAA servers' accounting (0: each server's port + 1).",
        flag="--accounting-port",
        roles=_RADIUS_ROLES,
        check=Bounds("accounting port", 0, 65535, rule="expected 0..65535"),
    )
    accounting_interim: float = setting(
        300.0,
        help="Seconds between two Interim-Updates of a registration (0: none).",
        flag="--accounting-interim",
        roles=_RADIUS_ROLES,
        check=Bounds("accounting interim interval", low=0, rule="must be >= 0 (0: none)"),
    )
    """FA and HA: RADIUS accounting of their registrations (docs/accounting.md, "From the agents")."""
    coa_port: int = setting(
        COA_PORT,
        help="UDP port for Disconnect/CoA-Requests from the AAA servers (RFC 5176; 0: none).",
        flag="--coa-port",
        roles=_RADIUS_ROLES,
        check=Bounds("CoA port", 0, 65535, rule="expected 1..65535, or 0 for none"),
    )
    """FA and HA: the UDP port of Disconnect-/CoA-Requests from their AAA servers
    (RFC 5176; 0: none)."""
    ha_timeout: float = setting(
        15.0,
        help="Seconds to wait for the home agent before answering 78 (above the HA's RADIUS and gateway time).",
        flag="--ha-timeout",
        roles=("fa",),
        check=_positive("HA timeout"),
    )
    ha_retransmit: float = setting(
        1.0,
        help="Seconds before a relayed registration goes to the home agent again (doubled each time).",
        flag="--ha-retransmit",
        roles=("fa",),
        check=_positive("HA retransmission interval"),
    )
    challenge_lifetime: float = setting(
        30.0,
        help="Seconds an MN-FA challenge may be answered.",
        roles=("fa",),
        check=_positive("challenge lifetime"),
    )
    forwarding_lifetime: int = setting(
        10,
        help="Smooth handoff: seconds the previous FA forwards after a move; 0: none.",
        flag="--forwarding-lifetime",
        metavar="S",
        roles=("fa",),
        check=Bounds("forwarding lifetime", 0, 0xFFFF, rule="0..65535 seconds"),
    )
    """FA: how long the previous FA is asked to forward after a move (smooth
    handoff, flow E); 0: no smooth handoff."""
    gateway_timeout: float = setting(
        4.0,
        help="Seconds to wait for a gateway's Binding Acknowledge.",
        flag="--gateway-timeout",
        roles=("ha",),
        check=_positive("gateway timeout"),
    )
    gateway_retransmit: float = setting(
        0.25,
        help="Seconds before a Binding Update goes to a gateway again (doubled each time).",
        flag="--gateway-retransmit",
        roles=("ha",),
        check=_positive("gateway retransmission interval"),
    )
    replay_tolerance: float = setting(
        7.0,
        help="Seconds of timestamp tolerance (RFC 5944 section 5.7).",
        roles=("ha", "gw"),
        check=_positive("replay tolerance"),
    )
    gateway_key: Secret | None = setting(
        None,
        secret=True,
        help="The key provisioned for this gateway (mode 0600; the file given to 'gateway add').",
        flag="--gateway-key-file",
        toml="gateway_key_file",
        kind=Path,
        roles=("gw",),
        parse=functools.partial(_secret_file, SecretForm.RAW, MIN_GATEWAY_KEY),
    )
    """GW: the key provisioned for it, read exactly from ``--gateway-key-file``
    or as hex from ``--gateway-key-hex-file`` (:data:`GATEWAY_KEY_HEX_FILE`)."""
    home_agents: frozenset[IPv4Address] = setting(
        frozenset(),
        help="Accept Binding Updates only from this home agent (repeatable).",
        flag="--home-agent",
        metavar="ADDR",
        multiple=True,
        roles=("gw",),
        parse=parse_ipv4,
        collect=frozenset,
        shown_default="any",
    )
    """GW: the home agents whose Binding Updates it accepts (empty: any that authenticates)."""
    refresh_threshold: float = setting(
        0.2,
        help="Ask the HA for a refresh when this much of a binding's lifetime is left.",
        flag="--refresh-threshold",
        metavar="FRACTION",
        roles=("gw",),
        check=Bounds(
            "refresh threshold", 0, 1, low_open=True, high_open=True, rule="a fraction of the lifetime, 0 < x < 1"
        ),
    )
    """GW: send the HA a Binding Request when a binding's remaining lifetime
    falls to this fraction of the lifetime granted (0 < x < 1)."""
    refresh_retries: int = setting(
        3,
        help="Binding Requests repeated after the first before a binding expires.",
        flag="--refresh-retries",
        metavar="N",
        roles=("gw",),
        check=Bounds("refresh retries", 0, 100, rule="0..100"),
    )
    mip_socket_fd: int | None = setting(
        None,
        help="Serve Mobile IP on this inherited UDP socket, already bound to ADDR:MIP_PORT, instead of binding"
        " one (for a supervisor that binds the ports: the demo, the labs, systemd-style activation).",
        flag="--mip-socket-fd",
        metavar="FD",
        toml=False,
        kind=int,
        check=Bounds("inherited socket", low=3, rule="a file descriptor >= 3 (0-2 are the standard streams)"),
    )
    """The Mobile IP socket, inherited bound (``--mip-socket-fd``): the process
    that starts the agent holds the port, so no one can take it in between.
    Only on the command line: a file descriptor belongs to one start."""
    coa_socket_fd: int | None = setting(
        None,
        help="Take Disconnect/CoA-Requests on this inherited UDP socket, already bound to ADDR:COA_PORT.",
        flag="--coa-socket-fd",
        metavar="FD",
        toml=False,
        kind=int,
        roles=_RADIUS_ROLES,
        check=Bounds("inherited socket", low=3, rule="a file descriptor >= 3 (0-2 are the standard streams)"),
    )
    """FA and HA: the CoA socket, inherited bound like :attr:`mip_socket_fd`."""
    max_lifetime: int = setting(
        1800,
        help="Longest lifetime granted.",
        flag="--max-lifetime",
        check=Bounds("maximum lifetime", 1, 0xFFFE, rule="1..65534 seconds"),
    )
    tls_cert: Path | None = setting(
        None, help="RadSec: the agent's certificate (PEM).", flag="--tls-cert", kind=Path, roles=_RADIUS_ROLES
    )
    """FA and HA with an AAA server of transport ``radsec`` (docs/radsec.md)."""
    tls_key: Path | None = setting(
        None, help="RadSec: its private key (PEM).", flag="--tls-key", kind=Path, roles=_RADIUS_ROLES
    )
    tls_ca: Path | None = setting(
        None,
        help="RadSec: the CA certificate(s) the AAA servers' certificates must chain to (PEM).",
        flag="--tls-ca",
        kind=Path,
        roles=_RADIUS_ROLES,
    )
    state_file: Path | None = setting(
        None,
        help="Keep the SA table, visitors/bindings and recent events here as JSON (docs/agents.md).",
        flag="--state-file",
        kind=Path,
    )
    journal: Path | None = setting(
        None,
        help="Keep the live state here, sealed, and carry on from it after a restart (docs/agents.md, Restart).",
        flag="--journal",
        kind=Path,
    )
    """Where the agent keeps its live state, sealed, to carry on after a restart
    with the SAs its backend still holds (docs/agents.md, "Restart")."""
    backend: str = setting(
        "memory",
        help="Where the SAs go (docs/sa-backends.md).",
        flag="--backend",
        check=Choices("SA backend", BACKENDS, verb="unknown"),
    )
    """Where its SAs go: ``memory``, ``strongswan`` (a charon over VICI),
    ``xfrm`` (the kernel) or ``userspace`` -- docs/sa-backends.md."""
    vici_socket: Path | None = setting(
        None, help="strongswan: the VICI socket of this node's charon.", flag="--vici-socket", kind=Path
    )
    ike_timeout: float = setting(
        2.0,
        help="strongswan: seconds an IKE exchange may take (below the FA's ha_timeout).",
        check=Bounds("IKE timeout", 0, 60, low_open=True, rule="0 < x <= 60 seconds"),
    )
    route_into: str | None = setting(
        None,
        help="strongswan: lead the paths' traffic into this TUN device (ipsec0) by policy routing.",
        flag="--route-into",
        metavar="DEV",
    )
    """strongswan: lead each path's traffic into this TUN device (kernel-libipsec's
    ``ipsec0``) by policy routing, for a charon that installs no routes itself."""
    xfrm_table: Path | None = setting(
        None,
        help="xfrm: the side table that keeps the SAs' owners across restarts.",
        flag="--xfrm-table",
        kind=Path,
    )
    tun_name: str = setting("aavpn0", help="userspace: the data plane's TUN device.", flag="--tun-name", metavar="NAME")
    data_path: bool = setting(
        False, help="FA: route each visitor's home address to the link it registered from.", flag="--data-path"
    )
    """FA: route each visitor's home address to the link its registration came
    from (the Mobile IP data path; off where agents share a host, e.g. tests on
    loopback)."""
    log_level: str = log_level_setting()
    log_format: str = log_format_setting()
    metrics_listen: str | None = metrics_listen_setting()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValidationError(f"unknown agent role {self.role!r}: one of {', '.join(ROLES)}")
        if not isinstance(self.address, IPv4Address):
            raise ValidationError(f"the agent needs its own IPv4 address, not {self.address!r}")
        check_node_address("agent address", self.address)
        for server in self.aaa_servers:
            check_node_address("AAA server", IPv4Address(server.address))
        for home_agent in self.home_agents:
            check_node_address("trusted home agent", home_agent)
        if self.role in _RADIUS_ROLES and not self.aaa_servers:
            raise ValidationError(f"the {self.role.upper()} needs at least one AAA server (--aaa HOST:PORT)")
        if any(s.transport == "radsec" for s in self.aaa_servers) and None in (
            self.tls_cert,
            self.tls_key,
            self.tls_ca,
        ):
            raise ValidationError("an AAA server of transport radsec needs tls_cert, tls_key and tls_ca")
        if self.role == "gw" and (self.gateway_key is None or not self.gateway_key):
            raise ValidationError("the gateway needs its provisioned key (--gateway-key-file)")
        if self.role == "gw" and self.gateway_key is not None and len(self.gateway_key) < MIN_GATEWAY_KEY:
            raise ValidationError(
                f"the gateway key has {len(self.gateway_key)} octets; at least {MIN_GATEWAY_KEY} are required"
            )
        check_declared(self)
        if self.coa_socket_fd is not None and not self.coa_port:
            raise ValidationError("--coa-socket-fd needs the port it is bound to: --coa-port N")
        if self.backend == "strongswan" and self.vici_socket is None:
            raise ValidationError("the strongswan backend needs charon's VICI socket (--vici-socket, vici_socket)")

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
        for server in self.aaa_servers:
            if server.transport != "radsec":
                return server.secret
        # Only RadSec servers, whose secret is the public word "radsec": the
        # node's own secret is its TLS private key (a file of its own).
        assert self.tls_key is not None  # checked in __post_init__
        try:
            key = self.tls_key.read_bytes()
        except OSError as exc:
            raise ValidationError(f"cannot read the TLS key {self.tls_key}: {exc.strerror}") from None
        return Secret(hashlib.sha256(b"aaa-vpn agent journal\x00" + key).digest())


#: ``--secret-file``: the RADIUS shared secret of the AAA servers, those of
#: ``--aaa`` or of the file's ``[[aaa]]`` tables (whose own secrets it replaces).
#: Not a field: it becomes part of :attr:`AgentSettings.aaa_servers`.
SECRET_FILE = Declared(
    "secret_file",
    Setting(
        help="The RADIUS shared secret with the AAA servers (a file of mode 0600).",
        flag="--secret-file",
        toml=False,
        roles=_RADIUS_ROLES,
        parse=functools.partial(_secret_file, SecretForm.TEXT, MIN_SHARED_SECRET),
    ),
    kind=Path,
)

#: ``--gateway-key-hex-file``, ``gateway_key_hex_file``: the gateway's key as
#: hex digits (docs/agents.md). Not a field: it gives :attr:`AgentSettings.gateway_key`.
GATEWAY_KEY_HEX_FILE = Declared(
    "gateway_key_hex_file",
    Setting(
        help="The gateway's key as hex digits, in a file of mode 0600 (instead of --gateway-key-file).",
        flag="--gateway-key-hex-file",
        roles=("gw",),
        parse=functools.partial(_secret_file, SecretForm.HEX, MIN_GATEWAY_KEY),
    ),
    kind=Path,
)


def _one_gateway_key(values: dict[str, Any], where: str, names: tuple[str, str]) -> None:
    """Fold ``gateway_key_hex_file`` into ``gateway_key``: one of the two forms."""
    hex_key = values.pop(GATEWAY_KEY_HEX_FILE.name, None)
    if hex_key is None:
        return
    if values.get("gateway_key") is not None:
        raise ValidationError(f"{where}give the gateway key once: {names[0]} or {names[1]}")
    values["gateway_key"] = hex_key


def agent_options(role: str) -> tuple[Declared, ...]:
    """The command-line options of an agent of ``role``, in the order ``--help`` lists them."""
    options: list[Declared] = []
    for item in declared(AgentSettings):
        if item.setting.flag is not None and item.for_role(role):
            options.append(item)
            if item.name == "aaa_servers":
                options.append(SECRET_FILE)
            if item.name == "gateway_key":
                options.append(GATEWAY_KEY_HEX_FILE)
    return tuple(options)


def settings_from_options(role: str, path: Path | None, given: Mapping[str, Any]) -> AgentSettings:
    """The settings of an agent of ``role`` from its TOML file at ``path`` (if
    any) and the command-line options that were ``given`` (by field name, as
    the command line typed them), which win over the file. Raises ValidationError."""
    values = {item.name: item.from_option(given[item.name]) for item in agent_options(role) if item.name in given}
    _one_gateway_key(values, "", ("--gateway-key-file", "--gateway-key-hex-file"))
    aaa: Sequence[tuple[IPv4Address, int]] = values.pop("aaa_servers", ())
    secret: Secret | None = values.pop("secret_file", None)
    return load_agent_settings(role, path, values, aaa=aaa, secret=secret)


def role_config(settings: AgentSettings) -> FaConfig | HaConfig | GwConfig:
    """The sans-IO role's configuration: the settings of the role that the
    role's configuration has a field for."""
    from aaa_vpn.roles.fa import FaConfig
    from aaa_vpn.roles.gw import GwConfig
    from aaa_vpn.roles.ha import HaConfig

    config_type: type[FaConfig | HaConfig | GwConfig] = {"fa": FaConfig, "ha": HaConfig, "gw": GwConfig}[settings.role]
    wanted = {field.name for field in fields(config_type)}
    names = [item.name for item in declared(AgentSettings) if item.for_role(settings.role)]
    return config_type(**{name: getattr(settings, name) for name in names if name in wanted})


class _Reader(TomlReader):
    """Reads an agent's TOML file; ``--secret-file`` replaces the secrets of its AAA servers."""

    def __init__(self, path: Path, secret_override: Secret | None) -> None:
        super().__init__(path)
        self.secret_override = secret_override


def _servers(reader: _Reader, items: Iterable[Any], secret: Secret | None) -> tuple[ServerConfig, ...]:
    from aaa_vpn.roles.radius_client import ServerConfig

    servers: list[ServerConfig] = []
    seen: set[tuple[IPv4Address, int]] = set()
    for index, item in enumerate(items):
        key = f"aaa[{index}]"
        table = reader.table(item, key, _SERVER)
        if "address" not in table:
            raise reader.error(key, "address is required")
        address = parse_ipv4(reader.where(f"{key}.address"), table["address"])
        port = table.get("port", RADIUS_PORT)
        if not 1 <= port <= 65535:
            raise reader.error(f"{key}.port", f"{port}: expected 1..65535")
        if (address, port) in seen:
            raise reader.error(key, f"{address}:{port} is listed twice")
        seen.add((address, port))
        transport = table.get("transport", "udp")
        if transport not in ("udp", "radsec"):
            raise reader.error(f"{key}.transport", f"{transport!r}: udp or radsec")
        if transport == "radsec":
            # RFC 6614 section 2.3: the secret of a RadSec connection is "radsec"
            if "secret" in table or "secret_file" in table:
                raise reader.error(key, "a radsec server has no shared secret (RFC 6614: it is 'radsec')")
            from aaa_vpn.roles.radsec import RADSEC_SECRET

            server_secret = RADSEC_SECRET
        else:
            # --secret-file wins over the file's secret (and lets the file omit it)
            server_secret = secret if secret is not None else reader.shared_secret(table, key)
        servers.append(
            ServerConfig(str(address), port, server_secret, table.get("name", ""), transport, table.get("tls_name", ""))
        )
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
    from aaa_vpn.roles.radius_client import ServerConfig

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
    reader = _Reader(path, secret)
    items = [*(item for item in declared(AgentSettings) if item.for_role(role)), GATEWAY_KEY_HEX_FILE]
    values = reader.settings(read_toml(path), [item for item in items if item.for_role(role)])
    _one_gateway_key(values, f"config file {path}: ", ("gateway_key_file", "gateway_key_hex_file"))
    if reader.inline_secrets:
        check_private(path, "config file")
    return values


__all__ = [
    "BACKENDS",
    "GATEWAY_KEY_HEX_FILE",
    "MIP_PORT",
    "ROLES",
    "SECRET_FILE",
    "AgentSettings",
    "agent_options",
    "load_agent_settings",
    "role_config",
    "settings_from_options",
]
