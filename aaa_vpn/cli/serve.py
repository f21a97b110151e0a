"""The ``serve`` group: the home AAA server and the foreign AAA proxy.

Their options are the declared settings of
:class:`~aaa_vpn.service.config.HomeServerSettings` and
:class:`~aaa_vpn.service.config.ForeignServerSettings`. The servers are
imported when they start (they pull in asyncio and pyrad, which the
provisioning commands do not need), each in one place:
:func:`_run_home_server`, :func:`_foreign_settings`, :func:`_run_foreign_server`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from aaa_vpn.cli.common import App, InvalidInput, StoreFailure, emit, example, exit_with, pass_app, with_options
from aaa_vpn.cli.options import given_options, setting_options
from aaa_vpn.service.config import ConfigFile, ForeignServerSettings, HomeServerSettings, StoreSettings
from aaa_vpn.service.settings import declared
from aaa_vpn.store import DatabaseLocation
from aaa_vpn.store.base import StoreError

if TYPE_CHECKING:
    from aaa_vpn.roles.diameter_proxy import DiameterPeerConfig

FOREIGN_CONFIG_ENV = "AAA_VPN_FOREIGN_CONFIG"


# -- the calls into the servers ----------------------------------------------------------------


def _home_server() -> Any:
    try:
        return importlib.import_module("aaa_vpn.net.home_server")
    except ImportError as exc:
        raise StoreFailure(f"the home AAA server is not available: {exc}") from None


def _run_home_server(settings: HomeServerSettings, reloader: Callable[[], HomeServerSettings] | None = None) -> int:
    return int(_home_server().run_home_server(settings, reloader))


def _check_home_server(settings: HomeServerSettings) -> dict[str, Any]:
    """``serve home --check``: the server's own check (net/home_server.py); a
    failure is the one-line error every command gives."""
    server = _home_server()
    metrics = importlib.import_module("aaa_vpn.net.metrics_server")
    try:
        if settings.metrics_listen:
            metrics.parse_listen(settings.metrics_listen)
        document: dict[str, Any] = server.check_home(settings)
    except (server.ServerError, metrics.MetricsError) as exc:
        raise InvalidInput(str(exc)) from None
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing key file, corrupt database: one line
        raise StoreFailure(f"cannot open the database: {type(exc).__name__}: {exc}") from None
    return document


def _home_reloader(
    ctx: click.Context, db_path: DatabaseLocation | None, key_file: Path | None, given: dict[str, Any]
) -> Callable[[], HomeServerSettings]:
    """How ``serve home`` reads its settings again on SIGHUP: the --config
    file's ``[serve.home]`` table anew, under the options and environment
    given at start (which still win), over the declared defaults."""
    root = ctx.find_root()
    config_file: Path | None = root.params.get("config_file")
    defaults = {
        item.name: item.setting.cli_default() if item.setting.cli_default else item.default
        for item in declared(HomeServerSettings)
        if item.setting.flag
    }

    def reload() -> HomeServerSettings:
        values = dict(defaults)
        paths_db, paths_key = db_path, key_file
        if config_file is not None:
            config = ConfigFile.load(config_file)
            for name, value in (config.serve_home or {}).items():
                is_float = isinstance(defaults.get(name), float) and isinstance(value, int | float)
                values[name] = float(value) if is_float else value  # type: ignore[arg-type]
            paths_db = paths_db or config.db_path
            paths_key = paths_key or config.key_file
        values.update(given)
        store = StoreSettings.resolve(paths_db, paths_key)
        return HomeServerSettings(db_path=store.db_path, key_file=store.key_file, **values)

    return reload


def _foreign_settings(config_path: Path, overrides: dict[str, Any]) -> ForeignServerSettings:
    foreign = importlib.import_module("aaa_vpn.service.foreign")
    settings: ForeignServerSettings = foreign.load_foreign_settings(config_path, **overrides)
    return settings


def _run_foreign_server(
    settings: ForeignServerSettings, reloader: Callable[[], ForeignServerSettings] | None = None
) -> int:
    server = importlib.import_module("aaa_vpn.net.foreign_server")
    return int(server.run_foreign_server(settings, reloader))


# -- the commands ------------------------------------------------------------------------------


@click.group(epilog=example("aaa-vpn serve home --port 1812 --workers 4"))
def serve() -> None:
    """Run the AAA servers."""


@serve.command(
    "home",
    epilog=example(
        "aaa-vpn --db /var/lib/aaa-vpn/vpn.db serve home --listen 192.0.2.10",
        "aaa-vpn --config /etc/aaa-vpn/aaa-vpn.toml serve home --check",
    ),
)
@with_options(setting_options(declared(HomeServerSettings)))
@click.option("--check", is_flag=True, help="Only check the configuration and the database, print a summary and exit.")
@pass_app
def serve_home(app: App, /, check: bool, **options: Any) -> None:
    """Run the home AAA server (RADIUS) on the VPN database.

    Its options may also come from the [serve.home] table of the global
    --config file; options and the environment win over it. SIGHUP reads
    that file again (docs/operations.md)."""
    settings = HomeServerSettings(db_path=app.settings.db_path, key_file=app.settings.key_file, **options)
    if check:
        document = _check_home_server(settings)
        document["db"] = app.settings.shown
        emit(
            app,
            document,
            f"{app.settings.shown}: OK, {document['clients']} client(s); RADIUS on {document['listen']},"
            f" accounting on {document['accounting']}"
            + (f", metrics on {document['metrics_listen']}" if document["metrics_listen"] else ""),
        )
        return
    ctx = click.get_current_context()
    root = ctx.find_root().params
    reloader = _home_reloader(ctx, root.get("db_path"), root.get("key_file"), given_options(ctx, options))
    exit_with(_run_home_server(settings, reloader))


def _diameter_peer(peer: DiameterPeerConfig) -> str:
    """A home Diameter peer of ``serve foreign --check``: host (address:port[, tls])."""
    return f"{peer.host} ({peer.address}:{peer.port}{', tls' if peer.tls else ''})"


@serve.command(
    "foreign",
    epilog=example(
        "aaa-vpn serve foreign --config /etc/aaa-vpn/foreign.toml",
        "aaa-vpn serve foreign --config foreign.toml --check",
    ),
)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=FOREIGN_CONFIG_ENV,
    show_envvar=True,
    help="The proxy's TOML file: listen address, clients, realms and home servers (docs/foreign-aaa.md);"
    " options win over it.",
)
@with_options(setting_options(declared(ForeignServerSettings)))
@click.option("--check", is_flag=True, help="Only check the configuration, print a summary and exit.")
@pass_app
def serve_foreign(app: App, /, config_path: Path, check: bool, **options: Any) -> None:
    """Run the foreign-domain AAA: a RADIUS (and Diameter) proxy routing by NAI realm to home AAA pools."""
    given = given_options(click.get_current_context(), options)
    settings = _foreign_settings(config_path, given)
    if check:
        document = {
            "config": str(config_path),
            "listen": f"{settings.listen}:{settings.port}",
            "upstream_address": settings.upstream_address,
            "workers": settings.workers,
            "clients": [{"name": c.name, "address": str(c.network)} for c in settings.clients],
            "realms": [{"name": r.name, "servers": [s.name for s in r.servers]} for r in settings.realms],
            "diameter_realms": [
                {"name": r.name, "peers": [_diameter_peer(p) for p in r.peers]} for r in settings.diameter_realms
            ],
        }
        lines = [f"{config_path}: OK, listening on {settings.listen}:{settings.port}"]
        lines += [f"client {c.name} {c.network}" for c in settings.clients]
        lines += [f"realm {r.name} -> {', '.join(s.name for s in r.servers)}" for r in settings.realms]
        lines += [
            f"realm {r.name} -> diameter {', '.join(_diameter_peer(p) for p in r.peers)}"
            for r in settings.diameter_realms
        ]
        emit(app, document, "\n".join(lines))
        return
    # SIGHUP reads the file again, with the same command-line options winning.
    exit_with(_run_foreign_server(settings, lambda: _foreign_settings(config_path, given)))
