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
from pathlib import Path
from typing import Any

import click

from aaa_vpn.cli.common import App, StoreFailure, emit, example, exit_with, pass_app, with_options
from aaa_vpn.cli.options import given_options, setting_options
from aaa_vpn.service.config import ForeignServerSettings, HomeServerSettings
from aaa_vpn.service.settings import declared

FOREIGN_CONFIG_ENV = "AAA_VPN_FOREIGN_CONFIG"


# -- the calls into the servers ----------------------------------------------------------------


def _run_home_server(settings: HomeServerSettings) -> int:
    try:
        home_server = importlib.import_module("aaa_vpn.net.home_server")
    except ImportError as exc:
        raise StoreFailure(f"the home AAA server is not available: {exc}") from None
    return int(home_server.run_home_server(settings))


def _foreign_settings(config_path: Path, overrides: dict[str, Any]) -> ForeignServerSettings:
    foreign = importlib.import_module("aaa_vpn.service.foreign")
    settings: ForeignServerSettings = foreign.load_foreign_settings(config_path, **overrides)
    return settings


def _run_foreign_server(settings: ForeignServerSettings) -> int:
    server = importlib.import_module("aaa_vpn.net.foreign_server")
    return int(server.run_foreign_server(settings))


# -- the commands ------------------------------------------------------------------------------


@click.group(epilog=example("aaa-vpn serve home --port 1812 --workers 4"))
def serve() -> None:
    """Run the AAA servers."""


@serve.command("home", epilog=example("aaa-vpn --db /var/lib/aaa-vpn/vpn.db serve home --listen 192.0.2.10"))
@with_options(setting_options(declared(HomeServerSettings)))
@pass_app
def serve_home(app: App, /, **options: Any) -> None:
    """Run the home AAA server (RADIUS) on the VPN database.

    Its options may also come from the [serve.home] table of the global
    --config file; options and the environment win over it."""
    settings = HomeServerSettings(db_path=app.settings.db_path, key_file=app.settings.key_file, **options)
    exit_with(_run_home_server(settings))


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
    """Run the foreign-domain AAA: a RADIUS proxy routing by NAI realm to home AAA pools."""
    settings = _foreign_settings(config_path, given_options(click.get_current_context(), options))
    if check:
        document = {
            "config": str(config_path),
            "listen": f"{settings.listen}:{settings.port}",
            "upstream_address": settings.upstream_address,
            "workers": settings.workers,
            "clients": [{"name": c.name, "address": str(c.network)} for c in settings.clients],
            "realms": [{"name": r.name, "servers": [s.name for s in r.servers]} for r in settings.realms],
        }
        lines = [f"{config_path}: OK, listening on {settings.listen}:{settings.port}"]
        lines += [f"client {c.name} {c.network}" for c in settings.clients]
        lines += [f"realm {r.name} -> {', '.join(s.name for s in r.servers)}" for r in settings.realms]
        emit(app, document, "\n".join(lines))
        return
    exit_with(_run_foreign_server(settings))
