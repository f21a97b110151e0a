"""The ``agent`` group: ``aaa-vpn agent fa|ha|gw`` runs a Mobile IP agent.

Every option of a role is a declared field of
:class:`~aaa_vpn.service.agent_config.AgentSettings` (its flag, help, type,
default and TOML key live there; :func:`~aaa_vpn.service.agent_config.agent_options`
lists a role's); only ``--config`` (the agent's TOML file) and ``--check``
are the command's own. The options given win over the TOML file, which wins
over the defaults ``--help`` shows. docs/agents.md is the reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from aaa_vpn.cli.common import App, emit, example, exit_with, pass_app, with_options
from aaa_vpn.cli.options import given_options, setting_options
from aaa_vpn.service.agent_config import AgentSettings, agent_options, settings_from_options
from aaa_vpn.store.transfer import JsonObject


def _check(app: App, settings: AgentSettings) -> None:
    """Print what the agent would run with."""
    document: JsonObject = {
        "role": settings.role,
        "name": settings.node,
        "address": str(settings.address),
        "mip_port": settings.mip_port,
        "coa_port": settings.coa_port,
        "aaa": [s.name for s in settings.aaa_servers],
        "home_agents": sorted(str(a) for a in settings.home_agents),
        "state_file": str(settings.state_file) if settings.state_file else None,
        "journal": str(settings.journal) if settings.journal else None,
        "backend": settings.backend,
    }
    lines = [f"{settings.node} ({settings.role}): OK, Mobile IP on {settings.address}:{settings.mip_port}"]
    lines += [f"AAA server {s.name}" for s in settings.aaa_servers]
    if settings.role == "gw":
        trusted = ", ".join(sorted(str(a) for a in settings.home_agents)) or "any that authenticates"
        lines.append(f"home agents: {trusted}")
        document["refresh_threshold"] = settings.refresh_threshold
        document["refresh_retries"] = settings.refresh_retries
        lines.append(
            f"Binding Requests when {settings.refresh_threshold:g} of a binding's lifetime is left,"
            f" {settings.refresh_retries} retries"
        )
    if settings.state_file:
        lines.append(f"state file {settings.state_file}")
    if settings.journal:
        lines.append(f"journal {settings.journal}")
    lines.append(
        f"SA backend {settings.backend}" + (f" (charon at {settings.vici_socket})" if settings.vici_socket else "")
    )
    emit(app, document, "\n".join(lines))


def _run_agent(app: App, role: str, config_path: Path | None, check: bool, options: dict[str, Any]) -> None:
    given = given_options(click.get_current_context(), options)
    settings = settings_from_options(role, config_path, given)
    if check:
        _check(app, settings)
        return
    # Imported here: the agents pull in asyncio and the SA backend.
    agents = importlib.import_module("aaa_vpn.net.agents")
    # SIGHUP reads the file again, the same command-line options winning.
    exit_with(int(agents.run_agent(settings, lambda: settings_from_options(role, config_path, given))))


@click.group(
    epilog=example(
        "aaa-vpn agent fa --address 192.0.2.1 --aaa 192.0.2.5:1812 --secret-file fa1.secret",
        "aaa-vpn agent ha --config /etc/aaa-vpn/ha.toml",
    )
)
def agent() -> None:
    """Run the Mobile IP agents: foreign agent, home agent, correspondent gateway."""


#: Each role's command: its help and its examples.
_ROLES = {
    "fa": (
        "Run a foreign agent: Mobile IP registrations, AAA, visitors and their SAs.",
        (
            "aaa-vpn agent fa --address 192.0.2.1 --aaa 192.0.2.5:1812 --aaa 192.0.2.6 \\",
            "    --secret-file /etc/aaa-vpn/fa1.secret --state-file /run/aaa-vpn/fa1.json",
            "aaa-vpn agent fa --config /etc/aaa-vpn/fa1.toml",
        ),
    ),
    "ha": (
        "Run a home agent: mobility bindings, Binding Updates to gateways, their SAs.",
        (
            "aaa-vpn agent ha --address 192.0.2.2 --aaa 192.0.2.5:1812 --secret-file /etc/aaa-vpn/ha.secret",
            "aaa-vpn agent ha --config /etc/aaa-vpn/ha.toml --check",
        ),
    ),
    "gw": (
        "Run a correspondent gateway: authenticated Binding Updates from home agents, their SAs.",
        (
            "aaa-vpn agent gw --address 192.0.2.10 --gateway-key-file /etc/aaa-vpn/gw-hq.key --home-agent 192.0.2.2",
            "aaa-vpn agent gw --config /etc/aaa-vpn/gw-hq.toml",
        ),
    ),
}


def _agent_command(role: str, help_text: str, examples: tuple[str, ...]) -> click.Command:
    """``agent <role>``: the role's declared settings as options, and ``--config`` and ``--check``."""

    def run(app: App, /, config_path: Path | None, check: bool, **options: Any) -> None:
        _run_agent(app, role, config_path, check, options)

    decorators: list[Callable[[Any], Any]] = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The agent's TOML file (docs/agents.md); options win over it.",
        ),
        *setting_options(agent_options(role), defaults={"name": role}),
        click.option("--check", is_flag=True, help="Only check the settings, print a summary and exit."),
    ]
    return click.command(role, help=help_text, epilog=example(*examples))(with_options(decorators)(pass_app(run)))


for _role, (_help, _examples) in _ROLES.items():
    agent.add_command(_agent_command(_role, _help, _examples))
