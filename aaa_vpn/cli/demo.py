"""The ``demo`` command: the whole system, walked through the flows of
docs/design.md, on loopback or in network namespaces.

The topologies live in :mod:`aaa_vpn.lab.demo` and :mod:`aaa_vpn.lab.netns`, imported
when the demo runs, in one place: :func:`_lab`.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from aaa_vpn.cli.common import App, example, exit_with, pass_app

#: The lab modules: the demo on loopback, the network-namespace lab.
_LAB_MODULES = {"demo": "aaa_vpn.lab.demo", "netlab": "aaa_vpn.lab.netns"}


def _lab(name: str) -> ModuleType:
    """The lab module ``name`` (imported on use: it pulls in every daemon's code)."""
    return importlib.import_module(_LAB_MODULES[name])


def _run(
    netns: bool, backend: str, mip_port: int, keep: bool, progress: Any, aaa_protocol: str = "radius"
) -> dict[str, Any]:
    """Run the demo; its report."""
    if not netns:
        demo_module = _lab("demo")
        report: dict[str, Any] = demo_module.run_demo(
            demo_module.DemoOptions(mip_port=mip_port, keep=keep, aaa_protocol=aaa_protocol), progress=progress
        )
        return report
    directory = Path(tempfile.mkdtemp(prefix="aaa-vpn-netns-demo-"))
    try:
        report = _lab("netlab").run_netns_demo(directory, backend=backend, progress=progress)
    finally:
        if keep:
            click.echo(f"kept {directory}", err=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return report


@click.command(
    "demo",
    epilog=example("aaa-vpn demo", "aaa-vpn demo --json > demo.json"),
)
@click.option(
    "--mip-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="The agents' Mobile IP port (0: a free high port; 434 needs root).",
)
@click.option("--json", "json_flag", is_flag=True, help="Print the report as one JSON document (like --json).")
@click.option("--keep", is_flag=True, help="Keep the temporary directory (database, logs, state files).")
@click.option(
    "--netns",
    is_flag=True,
    help="Run the real topology in network namespaces (root), with real IPsec and traffic (docs/agents.md).",
)
@click.option(
    "--backend",
    type=click.Choice(["userspace", "strongswan"]),
    default="userspace",
    show_default=True,
    help="With --netns: the agents' SA backend.",
)
@click.option(
    "--aaa-protocol",
    type=click.Choice(["radius", "diameter"]),
    default="radius",
    show_default=True,
    help="Without --netns: diameter makes every FA and the HA speak Diameter (RFC 4004) to the foreign and"
    " the home AAA, and the foreign AAA proxy AMRs home over Diameter.",
)
@pass_app
def demo(app: App, mip_port: int, json_flag: bool, keep: bool, netns: bool, backend: str, aaa_protocol: str) -> None:
    """Run the whole system and walk a mobile node through the flows of docs/design.md.

    Without --netns, on loopback with the in-memory SA backend: starts the home
    AAA on a temporary database with a sample user, a foreign AAA, a home
    agent, three foreign agents, a static and a dynamic gateway as separate
    processes; registers the node through FA1 (flows A and B), hands it off to
    FA2 (flow C: the foreign AAA answers), to FA3 (flow D: the home AAA
    answers), back to FA1 and to FA3 again, each with smooth handoff (flow E);
    then the operator pushes a VPN change and ends the session (flow F); the
    gateways' short bindings are refreshed through Binding Requests all along
    (flow G). After every step it prints what happened and every node's SAs.

    With --netns (as root): the same elements in network namespaces with real
    IPsec (--backend userspace or strongswan), a correspondent host behind
    each gateway streaming to the node, which registers and moves FA1 -> FA2
    -> FA3 -> FA1; every step shows the reply, the SA tables, whether the node
    reaches both correspondents, and the datagrams lost while it moved.

    Exit status 0 when every step succeeded. Everything is stopped and
    removed at the end, also on Ctrl-C."""
    as_json = app.json_output or json_flag
    report = _run(netns, backend, mip_port, keep, progress=None if as_json else click.echo, aaa_protocol=aaa_protocol)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    if report.get("error") == "interrupted":
        exit_with(130)  # 128 + SIGINT, as a shell reports Ctrl-C
    if not report["ok"]:
        if report.get("error") and not as_json:
            click.echo(f"Error: {report['error']}", err=True)
        exit_with(1)
