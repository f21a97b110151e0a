"""Settings objects the CLI builds and the daemons read.

Each setting is declared once, here, with its default, help, option, TOML key
and rule (:mod:`aaa_vpn.service.settings`); the CLI options, the ``[serve.home]``
table of the settings file and the environment variables (``AAA_VPN_DB``,
``AAA_VPN_KEY_FILE``) only fill them in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aaa_vpn.model import ValidationError
from aaa_vpn.service.settings import Bounds, Choices, check_declared, declared, setting
from aaa_vpn.store import DatabaseLocation, database_location, default_key_file, is_url

if TYPE_CHECKING:  # the roles pull in the RADIUS codecs, which provisioning commands do not need
    from aaa_vpn.roles.diameter_proxy import DiameterRealm
    from aaa_vpn.roles.foreign_aaa import ProxyClient, Realm

DB_ENV = "AAA_VPN_DB"
KEY_FILE_ENV = "AAA_VPN_KEY_FILE"
DEFAULT_DB_PATH = Path("aaa-vpn.db")

DEFAULT_LISTEN = "0.0.0.0"
DEFAULT_PORT = 1812  # RFC 2865 section 3
DEFAULT_DUP_CACHE_SECONDS = 10.0
DEFAULT_SESSION_LIFETIME = 3600
#: Seconds a server worker waits for the database's write lock before it
#: gives up on a batch's writes (the event loop never waits longer).
DEFAULT_DB_BUSY_TIMEOUT = 0.25
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def log_level_setting() -> Any:
    """The ``log_level`` setting of every daemon."""
    return setting(
        "info", help="The least severity logged.", flag="--log-level", check=Choices("log level", LOG_LEVELS)
    )


def log_format_setting() -> Any:
    """The ``log_format`` setting of every daemon."""
    return setting(
        "text",
        help="One line of text, or one JSON object, per event.",
        flag="--log-format",
        check=Choices("log format", LOG_FORMATS),
    )


def _listen() -> Any:
    return setting(DEFAULT_LISTEN, help="Address to listen on.", flag="--listen", metavar="ADDR")


def _port() -> Any:
    return setting(
        DEFAULT_PORT,
        help="RADIUS authentication port (0: any free port).",
        flag="--port",
        check=Bounds("port", 0, 65535),
    )


def _workers(**how: Any) -> Any:
    return setting(1, help="Worker processes.", flag="--workers", check=Bounds("number of workers", low=1), **how)


def metrics_listen_setting() -> Any:
    """The ``metrics_listen`` setting of every daemon (docs/metrics.md)."""
    return setting(
        None,
        help="Serve Prometheus metrics over HTTP on HOST:PORT (GET /metrics; docs/metrics.md).",
        flag="--metrics-listen",
        metavar="HOST:PORT",
        kind=str,
    )


def _dup_cache_seconds(flag: str | None) -> Any:
    return setting(
        DEFAULT_DUP_CACHE_SECONDS,
        help="How long replies are kept to answer retransmissions.",
        flag=flag,
        check=Bounds("duplicate cache time", low=0),
    )


#: RadSec's port (RFC 6614 section 2.1); roles/radsec.py has the same number.
RADSEC_PORT = 2083


def parse_radsec_listen(where: str, value: str) -> str:
    """``ADDR[:PORT]`` (port 2083 if none, 0: any free port), normalised to ``ADDR:PORT``."""
    from aaa_vpn.service.settings import parse_ipv4

    host, sep, port_text = value.strip().rpartition(":")
    if not sep:
        host, port_text = value.strip(), str(RADSEC_PORT)
    address = parse_ipv4(where, host)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValidationError(f"{where}: {value!r}: the port must be 0..65535")
    return f"{address}:{int(port_text)}"


def _parse_pin(where: str, value: str) -> str:
    from aaa_vpn.roles.radsec import parse_pin

    try:
        pin = parse_pin(value)
    except ValueError as exc:
        raise ValidationError(f"{where}: {exc}") from None
    return f"{pin.name}=sha256:{pin.fingerprint}"


def radsec_setting(name: str) -> Any:
    """The RadSec setting ``name`` every AAA server has (docs/radsec.md)."""
    return {
        "radsec_listen": setting(
            None,
            help="Also serve RadSec (RFC 6614: RADIUS over TLS) on ADDR[:PORT] (port 2083 if none; 0: any free"
            " port); needs --tls-cert, --tls-key and --tls-ca.",
            flag="--radsec-listen",
            metavar="ADDR[:PORT]",
            kind=str,
            parse=parse_radsec_listen,
        ),
        "tls_cert": setting(None, help="RadSec: this server's certificate (PEM).", flag="--tls-cert", kind=Path),
        "tls_key": setting(None, help="RadSec: its private key (PEM).", flag="--tls-key", kind=Path),
        "tls_ca": setting(
            None,
            help="RadSec: the CA certificate(s) clients' certificates must chain to (PEM).",
            flag="--tls-ca",
            kind=Path,
        ),
        "radsec_client": setting(
            (),
            help="RadSec: the client NAME is the certificate with this SHA-256 fingerprint (repeatable); other"
            " clients are known by their name or address in the certificate.",
            flag="--radsec-client",
            metavar="NAME=sha256:HEX",
            multiple=True,
            parse=_parse_pin,
        ),
        "radsec_idle_timeout": setting(
            600.0,
            help="RadSec: seconds after which a connection that sent nothing is closed.",
            flag="--radsec-idle-timeout",
            check=Bounds("RadSec idle timeout", low=0, low_open=True, rule="must be > 0"),
        ),
    }[name]


def check_radsec(settings: Any) -> None:
    """RadSec needs its three TLS files; they mean nothing without it."""
    files = (settings.tls_cert, settings.tls_key, settings.tls_ca)
    if settings.radsec_listen is not None:
        parse_radsec_listen("--radsec-listen", settings.radsec_listen)
        if None in files:
            raise ValidationError("--radsec-listen needs --tls-cert, --tls-key and --tls-ca")
    for pin in settings.radsec_client:
        _parse_pin("--radsec-client", pin)


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def key_file_for(db_path: DatabaseLocation, key_file: Path | None) -> Path | None:
    """The key file to use: the one named, else ``<db>.key`` beside an SQLite
    database; None for a PostgreSQL database without one (opening it says so)."""
    if key_file is not None:
        return key_file
    return None if is_url(db_path) else default_key_file(db_path)


@dataclass(frozen=True)
class StoreSettings:
    """Where the VPN database (a file, or a ``postgresql://`` URL) and its secrets key live."""

    db_path: DatabaseLocation = DEFAULT_DB_PATH
    key_file: Path | None = Path(f"{DEFAULT_DB_PATH}.key")

    @classmethod
    def resolve(cls, db_path: DatabaseLocation | None = None, key_file: Path | None = None) -> StoreSettings:
        """Fill in from the environment, then the defaults (options win over both)."""
        if db_path is None:
            db_path = database_location(os.environ.get(DB_ENV) or DEFAULT_DB_PATH)
        if key_file is None and os.environ.get(KEY_FILE_ENV):
            key_file = Path(os.environ[KEY_FILE_ENV])
        return cls(db_path=db_path, key_file=key_file_for(db_path, key_file))

    @property
    def shown(self) -> str:
        """The database as messages name it (a URL without its password)."""
        if is_url(self.db_path):
            from aaa_vpn.store.postgres import redacted

            return redacted(str(self.db_path))
        return str(self.db_path)


@dataclass(frozen=True)
class HomeServerSettings:
    """Everything ``aaa-vpn serve home`` needs to run the home AAA server."""

    db_path: DatabaseLocation
    key_file: Path | None
    listen: str = _listen()
    port: int = _port()
    workers: int = _workers(cli_default=default_workers, shown_default="number of CPUs")
    log_level: str = log_level_setting()
    log_format: str = log_format_setting()
    dup_cache_seconds: float = _dup_cache_seconds("--dup-cache-seconds")
    accounting_port: int | None = setting(
        None,
        help="RADIUS accounting port (RFC 2866) on the same address; 0: any free port.",
        flag="--accounting-port",
        shown_default="the authentication port + 1 (1813), or any free port with --port 0",
        kind=int,
        check=Bounds("accounting port", 0, 65535),
    )
    session_lifetime: int = setting(
        DEFAULT_SESSION_LIFETIME,
        help="Seconds a session lives without re-registration.",
        flag="--session-lifetime",
        check=Bounds("session lifetime", low=1),
    )
    db_busy_timeout: float = setting(
        DEFAULT_DB_BUSY_TIMEOUT,
        help="Seconds a worker waits for the database's write lock; requests whose writes cannot wait"
        " longer are dropped (their retransmissions are tried again).",
        flag="--db-busy-timeout",
        check=Bounds("database busy timeout", low=0, high=60, low_open=True, rule="0 < seconds <= 60"),
    )
    renewal_memo: bool = setting(
        True,
        help="Answer a renewal that asks exactly what an earlier one asked (and was confirmed) from memory,"
        " checking its authenticators and MN-AAA proof but not reading the database (docs/protocol.md"
        " section 1.3). --no-renewal-memo decides every request in full.",
        flag="--renewal-memo",
    )
    radsec_listen: str | None = radsec_setting("radsec_listen")
    tls_cert: Path | None = radsec_setting("tls_cert")  # noqa: RUF009 - a field declaration, default None
    tls_key: Path | None = radsec_setting("tls_key")  # noqa: RUF009 - a field declaration, default None
    tls_ca: Path | None = radsec_setting("tls_ca")  # noqa: RUF009 - a field declaration, default None
    radsec_client: tuple[str, ...] = radsec_setting("radsec_client")
    radsec_idle_timeout: float = radsec_setting("radsec_idle_timeout")
    metrics_listen: str | None = metrics_listen_setting()
    diameter_listen: str | None = setting(
        None,
        help="Also serve the Diameter Mobile IPv4 application (RFC 4004) over TCP on ADDR[:PORT]"
        " (3868 by default; docs/diameter.md).",
        flag="--diameter-listen",
        metavar="ADDR[:PORT]",
        kind=str,
        shown_default="off",
    )
    diameter_realm: str | None = setting(
        None,
        help="The Diameter Origin-Realm: the realm of this home AAA's users (needed with --diameter-listen).",
        flag="--diameter-realm",
        kind=str,
    )
    diameter_host: str | None = setting(
        None,
        help="The Diameter Origin-Host (an FQDN).",
        flag="--diameter-host",
        kind=str,
        shown_default="aaa.REALM",
    )
    diameter_peers: tuple[str, ...] | None = setting(
        None,
        help="A Diameter peer (Origin-Host) accepted besides the RADIUS clients' names, e.g. a relay.",
        flag="--diameter-peer",
        metavar="HOST",
        multiple=True,
        kind=str,
        shown_default="none",
    )
    diameter_plain_is_secure: bool = setting(
        False,
        help="Plain TCP to the Diameter peers is protected below Diameter (IPsec, a lab on loopback): keys"
        " may be sent on it. Without it and without TLS every AMR is answered 5025.",
        flag="--diameter-plain-is-secure",
    )
    diameter_tls_cert: Path | None = setting(
        None, help="Diameter over TLS: this server's certificate (PEM).", flag="--diameter-tls-cert", kind=Path
    )
    diameter_tls_key: Path | None = setting(
        None, help="Diameter over TLS: its private key (PEM).", flag="--diameter-tls-key", kind=Path
    )
    diameter_tls_ca: Path | None = setting(
        None,
        help="Diameter over TLS: peers must present a certificate this CA signed.",
        flag="--diameter-tls-ca",
        kind=Path,
    )

    def __post_init__(self) -> None:
        # The CLI validates its options already; this guards other callers.
        check_declared(self)
        check_radsec(self)
        if self.diameter_peers == ():  # the command line gives () for an option not given
            object.__setattr__(self, "diameter_peers", None)
        if self.diameter_listen is not None and not self.diameter_realm:
            raise ValidationError("--diameter-listen needs --diameter-realm")

    @property
    def accounting(self) -> int:
        """The accounting port to bind (0: any)."""
        if self.accounting_port is not None:
            return self.accounting_port
        return self.port + 1 if 0 < self.port < 65535 else 0


@dataclass(frozen=True)
class ForeignServerSettings:
    """Everything ``aaa-vpn serve foreign`` needs to run the foreign AAA proxy,
    read from its TOML file by :func:`aaa_vpn.service.foreign.load_foreign_settings`
    (docs/foreign-aaa.md)."""

    config_path: Path | None = None
    listen: str = _listen()
    port: int = _port()
    workers: int = _workers()
    log_level: str = log_level_setting()
    log_format: str = log_format_setting()
    dup_cache_seconds: float = _dup_cache_seconds(None)  # only in the file
    cache_size: int = setting(100_000, check=Bounds("cache size", low=1))
    source_address: str | None = None  # upstream sockets bind here; default: listen
    accounting_port: int | None = None  # the accounting socket; None: port + 1 (0 when port is 0)
    # the upstream RADIUS client's timing; None: the proxy's own defaults
    # (aaa_vpn.roles.foreign_aaa.ForeignAaaOptions, ordered inside the FAs' own)
    timeout: float | None = None
    retries: int | None = None
    max_timeout: float | None = None
    dead_time: float = 30.0
    status_interval: float | None = 6.0
    zombie_period: float = 40.0
    clients: tuple[ProxyClient, ...] = ()
    realms: tuple[Realm, ...] = ()
    radsec_listen: str | None = radsec_setting("radsec_listen")
    tls_cert: Path | None = radsec_setting("tls_cert")  # noqa: RUF009 - a field declaration, default None
    tls_key: Path | None = radsec_setting("tls_key")  # noqa: RUF009 - a field declaration, default None
    tls_ca: Path | None = radsec_setting("tls_ca")  # noqa: RUF009 - a field declaration, default None
    radsec_client: tuple[str, ...] = radsec_setting("radsec_client")
    radsec_idle_timeout: float = radsec_setting("radsec_idle_timeout")
    metrics_listen: str | None = metrics_listen_setting()
    diameter_listen: str | None = None
    """The ``[diameter]`` table's ``listen`` (ADDR[:PORT]): the first worker also
    takes its FAs' AMRs (RFC 4004) over TCP (net/foreign_diameter.py)."""
    diameter_host: str = ""
    """``[diameter]`` ``host``: its Origin-Host (default ``aaaf.`` + the first realm)."""
    diameter_realm: str = ""
    """``[diameter]`` ``realm``: its Origin-Realm, the visited realm."""
    diameter_plain_is_secure: bool = False
    """``[diameter]`` ``plain_is_secure``: plain TCP to its FAs (and to home
    peers without ``tls``) is protected below Diameter."""
    diameter_realms: tuple[DiameterRealm, ...] = ()
    """The ``[[realms]]`` of ``protocol = "diameter"``: AMRs for them go to
    their home peers over Diameter (roles/diameter_proxy.py)."""
    diameter_timeout: float | None = None
    """``[diameter]`` ``timeout``: seconds a forwarded AMR waits for its answer
    (then 3002); None: roles/diameter_proxy.py's default."""

    def __post_init__(self) -> None:
        check_declared(self)
        check_radsec(self)
        if self.diameter_realms and self.diameter_listen is None:
            raise ValidationError("a realm of protocol diameter needs the [diameter] table")
        tls_peers = any(p.tls for realm in self.diameter_realms for p in realm.peers)
        if tls_peers and None in (self.tls_cert, self.tls_key, self.tls_ca):
            raise ValidationError("a Diameter peer with tls = true needs tls_cert, tls_key and tls_ca")
        radsec_upstream = any(s.transport == "radsec" for realm in self.realms for s in realm.servers)
        if radsec_upstream and None in (self.tls_cert, self.tls_key, self.tls_ca):
            raise ValidationError("a home server of transport radsec needs tls_cert, tls_key and tls_ca")

    @property
    def upstream_address(self) -> str:
        """The address the upstream sockets bind to: how the home AAA knows us."""
        return self.source_address or self.listen

    @property
    def accounting_bind_port(self) -> int:
        """The accounting port to bind (0: any)."""
        if self.accounting_port is not None:
            return self.accounting_port
        return self.port + 1 if 0 < self.port < 65535 else 0


__all__ = [
    "DB_ENV",
    "DEFAULT_DB_PATH",
    "KEY_FILE_ENV",
    "ForeignServerSettings",
    "HomeServerSettings",
    "StoreSettings",
    "default_workers",
    "key_file_for",
]


CONFIG_ENV = "AAA_VPN_CONFIG"


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML settings file as a dictionary; every failure is one
    ValidationError naming the file (shared by all the settings files)."""
    import tomllib

    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ValidationError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ValidationError(f"config file {path} is a directory") from None
    except OSError as exc:
        raise ValidationError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib reads nested arrays and inline tables recursively
        raise ValidationError(
            f"config file {path} is not valid TOML: it nests arrays or tables deeper than the reader follows"
        ) from None


#: The keys of ``[serve.home]`` and their TOML types: the declared settings of ``serve home``.
_HOME_KEYS = {item.name: item.toml_type for item in declared(HomeServerSettings) if item.setting.flag}


@dataclass(frozen=True)
class ConfigFile:
    """What a TOML configuration file says; command-line options and the
    environment take precedence over it, and it over the defaults.

    Layout (every key optional)::

        db = "/var/lib/aaa-vpn/vpn.db"
        key_file = "/etc/aaa-vpn/vpn.key"

        [serve.home]
        listen = "192.0.2.5"
        port = 1812
        workers = 4
        log_level = "info"        # debug | info | warning | error
        log_format = "json"       # text | json
        dup_cache_seconds = 10
        session_lifetime = 3600
        metrics_listen = "127.0.0.1:9812"
    """

    db_path: DatabaseLocation | None = None
    key_file: Path | None = None
    serve_home: dict[str, object] | None = None

    @classmethod
    def load(cls, path: Path) -> ConfigFile:
        """Read and check ``path``; raise ValidationError naming the file and key."""
        data = read_toml(path)

        def where(key: str) -> str:
            return f"config file {path}: {key}"

        unknown = set(data) - {"db", "key_file", "serve"}
        if unknown:
            raise ValidationError(f"{where(sorted(unknown)[0])} is not a known setting")
        paths: dict[str, str | None] = {}
        for key in ("db", "key_file"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"{where(key)} must be a string (a file name or, for db, a postgresql:// URL)")
            paths[key] = value or None
        serve = data.get("serve", {})
        if not isinstance(serve, dict) or set(serve) - {"home"}:
            raise ValidationError(f"{where('serve')} may only hold a [serve.home] table")
        home = serve.get("home")
        if home is not None:
            if not isinstance(home, dict):
                raise ValidationError(f"{where('serve.home')} must be a table")
            for key, value in home.items():
                expected = _HOME_KEYS.get(key)
                if expected is None:
                    raise ValidationError(f"{where('serve.home.' + key)} is not a known setting")
                if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
                    raise ValidationError(f"{where('serve.home.' + key)} has the wrong type ({type(value).__name__})")
        return cls(
            db_path=database_location(paths["db"]) if paths["db"] else None,
            key_file=Path(paths["key_file"]) if paths["key_file"] else None,
            serve_home=dict(home) if home else None,
        )
