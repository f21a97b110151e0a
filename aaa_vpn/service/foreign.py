"""The foreign AAA's service glue: its TOML configuration file, and the
:class:`ForeignService` that wraps the sans-IO proxy
(:mod:`aaa_vpn.roles.foreign_aaa`) with logging and housekeeping for the
network layer (:mod:`aaa_vpn.net.foreign_server`).

Configuration rules (the format is in docs/foreign-aaa.md):

* One TOML file; every error is one :class:`~aaa_vpn.model.ValidationError`
  naming the file and the key (``clients[1].address``): unknown keys, wrong
  types, bad addresses, duplicate client networks or realms, a secret given
  both inline and as a file, or neither.
* A file that holds secrets inline must not be accessible by group or
  others (the error says which ``chmod`` fixes it); the same goes for every
  ``secret_file``. Relative ``secret_file`` paths are relative to the
  configuration file. A secret file loses one trailing newline: the file is
  read as the agents read theirs (the TOML reader of
  :mod:`aaa_vpn.service.settings`, :mod:`aaa_vpn.secret_files`).
* Secrets become :class:`~aaa_vpn.secret.Secret` at once and are never
  logged; the log shows names, addresses, realms and counters.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import Any

from aaa_vpn.model import ValidationError, check_client_network, check_node_address
from aaa_vpn.roles.diameter_proxy import DIAMETER_PORT, DiameterPeerConfig, DiameterRealm
from aaa_vpn.roles.foreign_aaa import (
    ACCOUNTING_SOCKET,
    DEFAULT_REALM,
    Answered,
    Datagram,
    Dropped,
    ForeignAaa,
    ForeignAaaOptions,
    ProxyClient,
    Realm,
    UpstreamDown,
    UpstreamUp,
)
from aaa_vpn.roles.pools import POOL_TYPES
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.roles.radsec import RADSEC_SECRET
from aaa_vpn.secret_files import check_private
from aaa_vpn.service.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    ForeignServerSettings,
    read_toml,
)
from aaa_vpn.service.logging import configure_logging, fields
from aaa_vpn.service.metrics import Recorder, Snapshot
from aaa_vpn.service.settings import TomlReader, parse_ipv4
from aaa_vpn.wire.nai import realm_problem
from aaa_vpn.wire.radius import code_name

log = logging.getLogger("aaa_vpn.foreign")

_LOG_BURST = 20  # per drop reason and minute
_TIMED_LIMIT = 100_000  # requests whose reply is awaited for the duration histogram
_TIMED_FOR = 60.0  # seconds after which an unanswered one is forgotten

_TOP: dict[str, type | tuple[type, ...]] = {
    "listen": str,
    "port": int,
    "workers": int,
    "log_level": str,
    "log_format": str,
    "dup_cache_seconds": (int, float),
    "cache_size": int,
    "source_address": str,
    "metrics_listen": str,
    "accounting_port": int,
    "upstream": dict,
    "clients": list,
    "realms": list,
    "radsec_listen": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
    "radsec_client": list,
    "radsec_idle_timeout": (int, float),
    "diameter": dict,
}
_DIAMETER: dict[str, type | tuple[type, ...]] = {
    "listen": str,
    "host": str,
    "realm": str,
    "plain_is_secure": bool,
    "timeout": (int, float),
}
_UPSTREAM: dict[str, type | tuple[type, ...]] = {
    "timeout": (int, float),
    "max_timeout": (int, float),
    "retries": int,
    "dead_time": (int, float),
    "status_interval": (int, float),
    "zombie_period": (int, float),
}
_CLIENT: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "address": str,
    "secret": str,
    "secret_file": str,
    "require_message_authenticator": bool,
}
_REALM: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "servers": list,
    "pool": str,
    "protocol": str,
    "peers": list,
}
_PEER: dict[str, type | tuple[type, ...]] = {"host": str, "address": str, "port": int, "tls": bool}
#: ``protocol`` of a ``[[realms]]`` entry: how its AMRs and Access-Requests go home.
PROTOCOLS = ("radius", "diameter")
_SERVER: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "address": str,
    "port": int,
    "accounting_port": int,
    "secret": str,
    "secret_file": str,
    "transport": str,
    "tls_name": str,
}


def load_foreign_settings(path: Path, **overrides: Any) -> ForeignServerSettings:
    """Read the foreign AAA's configuration file; ``overrides`` (command-line
    options that were given) win over it. Raises ValidationError."""
    data = read_toml(path)
    reader = TomlReader(path)
    top = reader.table(data, "", _TOP)
    values: dict[str, Any] = {"config_path": path}
    for name in (
        "listen",
        "port",
        "workers",
        "log_level",
        "log_format",
        "cache_size",
        "source_address",
        "metrics_listen",
        "accounting_port",
    ):
        if name in top:
            values[name] = top[name]
    if "dup_cache_seconds" in top:
        values["dup_cache_seconds"] = float(top["dup_cache_seconds"])
    # RadSec (docs/radsec.md): the same settings as serve home's options.
    if "radsec_listen" in top:
        values["radsec_listen"] = top["radsec_listen"]
    for name in ("tls_cert", "tls_key", "tls_ca"):
        if name in top:
            values[name] = reader.file(top[name])
    if "radsec_client" in top:
        values["radsec_client"] = tuple(str(pin) for pin in top["radsec_client"])
    if "radsec_idle_timeout" in top:
        values["radsec_idle_timeout"] = float(top["radsec_idle_timeout"])
    for name in ("listen", "source_address"):
        if name in values:
            parse_ipv4(reader.where(name), values[name])
    if "log_level" in values and values["log_level"] not in LOG_LEVELS:
        raise reader.error("log_level", f"{values['log_level']!r}: expected one of {', '.join(LOG_LEVELS)}")
    if "log_format" in values and values["log_format"] not in LOG_FORMATS:
        raise reader.error("log_format", f"{values['log_format']!r}: expected one of {', '.join(LOG_FORMATS)}")
    upstream = reader.table(top.get("upstream", {}), "upstream", _UPSTREAM)
    if "timeout" in upstream:
        if upstream["timeout"] <= 0:
            raise reader.error("upstream.timeout", "must be > 0")
        values["timeout"] = float(upstream["timeout"])
    if "max_timeout" in upstream:
        if upstream["max_timeout"] <= 0:
            raise reader.error("upstream.max_timeout", "must be > 0")
        values["max_timeout"] = float(upstream["max_timeout"])
    if "retries" in upstream:
        if upstream["retries"] < 0:
            raise reader.error("upstream.retries", "must be >= 0")
        values["retries"] = upstream["retries"]
    if "dead_time" in upstream:
        if upstream["dead_time"] < 0:
            raise reader.error("upstream.dead_time", "must be >= 0")
        values["dead_time"] = float(upstream["dead_time"])
    if "zombie_period" in upstream:
        if upstream["zombie_period"] < 0:
            raise reader.error("upstream.zombie_period", "must be >= 0 (0: dead at the first timeout)")
        values["zombie_period"] = float(upstream["zombie_period"])
    if "status_interval" in upstream:
        interval = upstream["status_interval"]
        if interval < 0:
            raise reader.error("upstream.status_interval", "must be >= 0 (0: no Status-Server probes)")
        values["status_interval"] = float(interval) or None
    diameter = reader.table(top.get("diameter", {}), "diameter", _DIAMETER)
    if diameter:
        if "listen" not in diameter or "realm" not in diameter:
            raise reader.error("diameter", "needs listen (ADDR[:PORT]) and realm")
        values["diameter_listen"] = diameter["listen"]
        values["diameter_realm"] = diameter["realm"]
        values["diameter_host"] = diameter.get("host", "")
        values["diameter_plain_is_secure"] = diameter.get("plain_is_secure", False)
        if "timeout" in diameter:
            if not 0 < diameter["timeout"] <= 60:
                raise reader.error("diameter.timeout", f"{diameter['timeout']}: expected seconds in (0, 60]")
            values["diameter_timeout"] = float(diameter["timeout"])
    values["clients"] = _clients(reader, top.get("clients", []))
    values["realms"], values["diameter_realms"] = _realms(reader, top.get("realms", []))
    if values["diameter_realms"] and not diameter:
        raise reader.error(
            "diameter", "a realm of protocol diameter needs the [diameter] table (this AAA's listen and realm)"
        )
    if any(p.tls for r in values["diameter_realms"] for p in r.peers) and not all(
        name in values for name in ("tls_cert", "tls_key", "tls_ca")
    ):
        raise reader.error("realms", "a Diameter peer with tls = true needs tls_cert, tls_key and tls_ca")
    if reader.inline_secrets:
        check_private(path, "config file")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ForeignServerSettings(**values)
    except ValidationError as exc:
        raise ValidationError(f"config file {path}: {exc}") from None


def _clients(reader: TomlReader, items: list[Any]) -> tuple[ProxyClient, ...]:
    if not items:
        raise reader.error("clients", "at least one [[clients]] entry is required")
    clients: list[ProxyClient] = []
    seen: dict[IPv4Network, str] = {}
    names: set[str] = set()
    for index, item in enumerate(items):
        key = f"clients[{index}]"
        table = reader.table(item, key, _CLIENT)
        name = reader.required(table, "name", key)
        if not name or name in names:
            raise reader.error(f"{key}.name", f"{name!r} is empty or used twice")
        names.add(name)
        address = reader.required(table, "address", key)
        try:
            network = ip_network(address, strict=True)
        except ValueError as exc:
            raise reader.error(f"{key}.address", f"{address!r} is not an address or CIDR block ({exc})") from None
        if not isinstance(network, IPv4Network):
            raise reader.error(f"{key}.address", f"{address!r}: only IPv4 is supported")
        try:
            check_client_network("client address", network)
        except ValidationError as exc:
            raise reader.error(f"{key}.address", str(exc)) from None
        if network in seen:
            raise reader.error(f"{key}.address", f"{network} is also the network of client {seen[network]}")
        seen[network] = name
        clients.append(
            ProxyClient(
                name,
                network,
                reader.shared_secret(table, key),
                require_message_authenticator=table.get("require_message_authenticator", True),
            )
        )
    return tuple(clients)


def _peers(reader: TomlReader, table: dict[str, Any], key: str, name: str) -> DiameterRealm:
    """A realm of ``protocol = "diameter"``: its ``[[realms.peers]]``, the home Diameter servers."""
    entries = reader.required(table, "peers", key)
    if not entries:
        raise reader.error(f"{key}.peers", "a Diameter realm needs at least one [[realms.peers]] entry")
    peers: list[DiameterPeerConfig] = []
    for number, entry in enumerate(entries):
        where = f"{key}.peers[{number}]"
        peer = reader.table(entry, where, _PEER)
        host = reader.required(peer, "host", where)
        address = parse_ipv4(reader.where(f"{where}.address"), reader.required(peer, "address", where))
        try:
            check_node_address("Diameter peer", address)
            peers.append(DiameterPeerConfig(host, address, peer.get("port", DIAMETER_PORT), peer.get("tls", False)))
        except (ValidationError, ValueError) as exc:
            raise reader.error(where, str(exc)) from None
    try:
        return DiameterRealm(name, tuple(peers))
    except ValueError as exc:
        raise reader.error(f"{key}.peers", str(exc)) from None


def _realms(reader: TomlReader, items: list[Any]) -> tuple[tuple[Realm, ...], tuple[DiameterRealm, ...]]:
    """The RADIUS realms (with their pools) and the Diameter realms (with their peers)."""
    if not items:
        raise reader.error("realms", "at least one [[realms]] entry is required")
    realms: list[Realm] = []
    diameter_realms: list[DiameterRealm] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        key = f"realms[{index}]"
        table = reader.table(item, key, _REALM)
        name = reader.required(table, "name", key)
        problem = None if name.upper() == DEFAULT_REALM else realm_problem(name)
        if problem is not None:
            raise reader.error(f"{key}.name", f"{name!r} is not a realm name: {problem}")
        folded = DEFAULT_REALM if name.upper() == DEFAULT_REALM else name.lower()
        if folded in seen:
            raise reader.error(f"{key}.name", f"realm {name!r} is configured twice (realms compare case-insensitively)")
        seen.add(folded)
        protocol = table.get("protocol", "radius")
        if protocol not in PROTOCOLS:
            raise reader.error(f"{key}.protocol", f"{protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if protocol == "diameter":
            if folded == DEFAULT_REALM:
                raise reader.error(f"{key}.protocol", "DEFAULT cannot be a Diameter realm: name the realm")
            diameter_realms.append(_peers(reader, table, key, name))
            if "servers" not in table:  # RADIUS servers are optional: accounting, RADIUS FAs
                continue
        elif "peers" in table:
            raise reader.error(f"{key}.peers", 'only a realm of protocol = "diameter" has Diameter peers')
        servers: list[ServerConfig] = []
        accounting_ports: list[int] = []
        endpoints: set[tuple[IPv4Address, int]] = set()
        entries = reader.required(table, "servers", key)
        if not entries:
            raise reader.error(f"{key}.servers", "the pool needs at least one home server")
        for number, entry in enumerate(entries):
            where = f"{key}.servers[{number}]"
            server = reader.table(entry, where, _SERVER)
            address = parse_ipv4(reader.where(f"{where}.address"), reader.required(server, "address", where))
            try:
                check_node_address("home server", address)
            except ValidationError as exc:
                raise reader.error(f"{where}.address", str(exc)) from None
            port = server.get("port", 1812)
            if not 1 <= port <= 65535:
                raise reader.error(f"{where}.port", f"{port}: expected 1..65535")
            if (address, port) in endpoints:
                raise reader.error(where, f"{address}:{port} is already in this pool")
            transport = server.get("transport", "udp")
            if transport not in ("udp", "radsec"):
                raise reader.error(f"{where}.transport", f"{transport!r}: udp or radsec")
            # RadSec carries accounting on the server's own connection (RFC 6614 section 2.1)
            accounting_port = server.get("accounting_port", port if transport == "radsec" else min(port + 1, 65535))
            if not 1 <= accounting_port <= 65535:
                raise reader.error(f"{where}.accounting_port", f"{accounting_port}: expected 1..65535")
            if transport == "radsec" and accounting_port != port:
                raise reader.error(f"{where}.accounting_port", "a radsec server takes accounting on its own port")
            accounting_ports.append(accounting_port)
            endpoints.add((address, port))
            if transport == "radsec":
                # RFC 6614 section 2.3: the secret of a RadSec connection is "radsec" (docs/radsec.md)
                if "secret" in server or "secret_file" in server:
                    raise reader.error(where, "a radsec server has no shared secret (RFC 6614: it is 'radsec')")
                secret = RADSEC_SECRET
            else:
                secret = reader.shared_secret(server, where)
            servers.append(
                ServerConfig(str(address), port, secret, server.get("name", ""), transport, server.get("tls_name", ""))
            )
        pool = table.get("pool", "fail-over")
        if pool not in POOL_TYPES:
            raise reader.error(f"{key}.pool", f"{pool!r}: expected one of {', '.join(POOL_TYPES)}")
        realms.append(Realm(name, tuple(servers), tuple(accounting_ports), pool))
    return tuple(realms), tuple(diameter_realms)


def options_for(settings: ForeignServerSettings) -> ForeignAaaOptions:
    """The proxy's options from the settings."""
    nas: IPv4Address | None = None
    address = IPv4Address(settings.upstream_address)
    if not address.is_unspecified:
        nas = address
    timing = {
        name: value
        for name, value in (
            ("timeout", settings.timeout),
            ("retries", settings.retries),
            ("max_timeout", settings.max_timeout),
        )
        if value is not None
    }
    return ForeignAaaOptions(
        dup_cache_seconds=settings.dup_cache_seconds,
        cache_size=settings.cache_size,
        dead_time=settings.dead_time,
        status_interval=settings.status_interval,
        zombie_period=settings.zombie_period,
        nas_ip_address=nas,
        **timing,  # type: ignore[arg-type]
    )


@dataclass
class _Budget:
    window: float
    count: int


class ForeignService:
    """One worker's proxy: the sans-IO :class:`ForeignAaa` plus logging.

    The network layer calls the ``receive_*`` and ``handle_timer`` methods
    with the loop's monotonic clock and sends what :meth:`outgoing` returns."""

    def __init__(
        self, settings: ForeignServerSettings, now: float, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.settings = settings
        try:
            self.aaa = ForeignAaa(
                settings.clients,
                settings.realms,
                options_for(settings),
                now=now,
                random_bytes=random_bytes,
                diameter_realms=[r.name for r in settings.diameter_realms],
            )
            self.aaa.process_id = os.getpid()
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        self._budget: dict[str, _Budget] = {}
        self.more_counters: Callable[[], dict[str, int]] = dict
        """Counters of the worker's other parts (its Diameter side: ``diameter.*``,
        ``diameter_proxy.*``), for the log and the metrics; the network layer sets it."""
        self.metrics = Recorder("foreign")
        """Figures the proxy does not count (docs/metrics.md)."""
        self._timed: dict[tuple[str, tuple[str, int], int], tuple[float, str]] = {}

    def client_name(self, address: str) -> str:
        client = self.aaa.server.clients.lookup(address)
        return client.name if client is not None else "unknown"

    def _count_request(self, port: str, data: bytes, source: tuple[str, int], now: float) -> None:
        kind = code_name(data[0]) if data else "empty"
        self.metrics.inc("aaa_vpn_radius_requests_total", port=port, code=kind, client=self.client_name(source[0]))
        if len(data) > 1 and len(self._timed) < _TIMED_LIMIT:
            self._timed[(port, source, data[1])] = (now, kind)

    def receive_from_client(
        self, data: bytes, source: tuple[str, int], now: float, client: ProxyClient | None = None
    ) -> None:
        self._count_request("auth", data, source, now)
        self.aaa.receive_from_client(data, source, now, client)

    def receive_accounting(
        self, data: bytes, source: tuple[str, int], now: float, client: ProxyClient | None = None
    ) -> None:
        self._count_request("acct", data, source, now)
        self.aaa.receive_accounting(data, source, now, client)

    def apply_reload(self, new: ForeignServerSettings) -> list[str]:
        """A worker's part of a reload (SIGHUP): the clients and their secrets,
        logging and the duplicate cache's time take effect now; returns the
        names of the changed settings that need a restart."""
        configure_logging(new.log_level, new.log_format)
        self.aaa.server.set_clients(new.clients)
        self.aaa.accounting_server.set_clients(new.clients)
        self.aaa.server.duplicates.ttl = new.dup_cache_seconds
        self.aaa.accounting_server.duplicates.ttl = new.dup_cache_seconds
        current = self.settings
        fixed = [
            name
            for name in (
                "listen",
                "workers",
                "source_address",
                "realms",
                "timeout",
                "retries",
                "max_timeout",
                "diameter_realms",
                "diameter_timeout",
            )
            if getattr(new, name) != getattr(current, name)
        ]
        self.settings = replace(new, realms=current.realms, diameter_realms=current.diameter_realms)
        return fixed

    def receive_from_upstream(self, data: bytes, source: tuple[str, int], pool: int, now: float) -> None:
        self.aaa.receive_from_upstream(data, source, pool, now)

    def handle_timer(self, now: float) -> None:
        self.aaa.handle_timer(now)

    def outgoing(self, now: float | None = None) -> list[Datagram]:
        """What to send now; logs the events that came with it. ``now``: the
        clock of ``receive_from_client``, for the replies' durations."""
        self._log_events()
        datagrams = self.aaa.datagrams_to_send()
        for datagram in datagrams:
            if datagram.pool is None:
                port = "auth"
            elif datagram.pool == ACCOUNTING_SOCKET:
                port = "acct"
            else:
                continue  # upstream
            reply = datagram.data
            if not reply:
                continue
            self.metrics.inc(
                "aaa_vpn_radius_replies_total",
                port=port,
                code=code_name(reply[0]),
                client=self.client_name(datagram.address[0]),
            )
            timed = self._timed.pop((port, datagram.address, reply[1]), None) if len(reply) > 1 else None
            if timed is not None and now is not None:
                self.metrics.observe("aaa_vpn_request_duration_seconds", max(0.0, now - timed[0]), kind=timed[1])
        return datagrams

    def snapshot(self, now: float) -> Snapshot:
        """This worker's figures (docs/metrics.md)."""
        self.metrics.set("aaa_vpn_sessions", len(self.aaa.cache))
        self.metrics.set("aaa_vpn_pending_requests", self.aaa.pending)
        for pool in self.aaa.pools:
            for server in pool.client.servers:
                alive = pool.client.is_alive(server.name, now)
                self.metrics.set("aaa_vpn_upstream_server_up", 1 if alive else 0, server=server.name)
        counters = dict(self.aaa.counters)
        counters.update({f"upstream.{k}": v for k, v in self.aaa.upstream_counters().items()})
        counters.update(self.more_counters())
        return self.metrics.snapshot(counters)

    def housekeeping(self, now: float) -> None:
        stale = [key for key, (when, _kind) in self._timed.items() if now - when > _TIMED_FOR]
        for key in stale:
            del self._timed[key]
        count = self.aaa.expire(now)
        if count:
            log.info("cached sessions expired", extra=fields(count=count))

    def counters(self) -> dict[str, int]:
        merged = {k.replace(".", "_"): v for k, v in sorted(self.aaa.counters.items())}
        merged.update({f"upstream_{k.replace('.', '_')}": v for k, v in sorted(self.aaa.upstream_counters().items())})
        merged["cached_sessions"] = len(self.aaa.cache)
        merged["pending"] = self.aaa.pending
        merged.update({k.replace(".", "_"): v for k, v in sorted(self.more_counters().items())})
        return merged

    def _log_events(self) -> None:
        while (event := self.aaa.next_event()) is not None:
            if isinstance(event, Dropped):
                if self._allowed(event.reason):
                    log.warning(
                        "request dropped",
                        extra=fields(
                            reason=event.reason, source=f"{event.source[0]}:{event.source[1]}", detail=event.detail
                        ),
                    )
            elif isinstance(event, Answered):
                reason = "" if event.outcome in ("accept", "handoff") else event.outcome
                outcome = event.outcome if not reason else "rejected"
                self.metrics.inc("aaa_vpn_radius_decisions_total", client=event.client, outcome=outcome, reason=reason)
                level = logging.DEBUG if event.outcome == "accept" else logging.INFO
                message = {"accept": "access accepted", "handoff": "handoff answered from the cache"}.get(
                    event.outcome, "access rejected"
                )
                if log.isEnabledFor(level):
                    log.log(
                        level,
                        message,
                        extra=fields(
                            nai=event.nai,
                            client=event.client,
                            realm=event.realm,
                            outcome=event.outcome,
                            server=event.server,
                            detail=event.detail,
                        ),
                    )
            elif isinstance(event, UpstreamDown):
                log.warning(f"home server marked {event.state}", extra=fields(pool=event.pool, server=event.server))
            elif isinstance(event, UpstreamUp):
                log.info(
                    "home server in use again", extra=fields(pool=event.pool, server=event.server, reason=event.reason)
                )

    def _allowed(self, reason: str) -> bool:
        """At most _LOG_BURST log lines per drop reason and minute (a flood cannot flood the log)."""
        now = time.monotonic()
        budget = self._budget.get(reason)
        if budget is None or now - budget.window >= 60:
            budget = self._budget[reason] = _Budget(now, 0)
        budget.count += 1
        return budget.count <= _LOG_BURST


def with_port(settings: ForeignServerSettings, port: int) -> ForeignServerSettings:
    return replace(settings, port=port)


__all__ = ["ForeignService", "load_foreign_settings", "options_for", "with_port"]
