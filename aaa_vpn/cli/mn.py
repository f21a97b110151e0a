"""The ``mn`` group: a simulated mobile node registers, moves or deregisters
through an FA, one exchange per call (docs/agents.md).

The node's identity and keys are options of the group, checked by the
subcommand (so that ``mn register --help`` works without them); the
exchange runs in :func:`aaa_vpn.net.agents.run_mobile_node`.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import click

from aaa_vpn.cli.common import (
    MN_AAA_SECRET,
    MN_HA_KEY,
    App,
    InvalidInput,
    StoreFailure,
    example,
    exit_with,
    file_option,
    hex_file_option,
    required_secret,
)
from aaa_vpn.model import check_nai, check_node_address, parse_ipv4
from aaa_vpn.service.agent_config import MIP_PORT
from aaa_vpn.service.settings import parse_endpoint


@click.group(
    "mn",
    epilog=example(
        "aaa-vpn mn --nai mn1@home.example --home-address 198.51.100.10 --home-agent 192.0.2.2 \\",
        "    --mn-ha-spi 256 --mn-ha-key-file mn1.mnha --mn-aaa-secret-file mn1.secret \\",
        "    register --fa 192.0.2.1",
    ),
)
@click.option("--nai", help="The mobile node's NAI, e.g. mn1@home.example (required).")
@click.option("--home-address", metavar="ADDR", help="Its home address (required).")
@click.option("--home-agent", metavar="ADDR", help="Its home agent (required).")
@click.option("--mn-ha-spi", type=click.IntRange(256, 0xFFFFFFFF), help="The MN-HA SPI (required).")
@file_option(MN_HA_KEY)
@hex_file_option(MN_HA_KEY)
@click.option("--mn-ha-key-hex", metavar="HEX", help="The MN-HA key in hex.")
@file_option(MN_AAA_SECRET)
@click.option("--mn-aaa-secret", metavar="TEXT", help="The MN-AAA secret as text (visible in 'ps').")
@click.option("--lifetime", type=click.IntRange(1, 0xFFFE), default=600, show_default=True, help="Lifetime to ask for.")
@click.option(
    "--retransmit",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds before the first retry (doubled for each next one).",
)
@click.option("--attempts", type=click.IntRange(1, 20), default=5, show_default=True, help="Tries before giving up.")
@click.option(
    "--mip-port", type=click.IntRange(1, 65535), default=MIP_PORT, show_default=True, help="The FAs' Mobile IP port."
)
@click.option("--source", default="0.0.0.0", show_default=True, metavar="ADDR", help="Address to send from.")
@click.option(
    "--request-keys",
    is_flag=True,
    help=(
        "Ask the home AAA for MN-FA and MN-HA keys (RFC 3957 nonces; given over Diameter only). "
        "An FA that has no MN-FA key to give answers 107; the node then asks it for the MN-HA key only."
    ),
)
@click.pass_context
def mn(ctx: click.Context, /, **options: Any) -> None:
    """Simulate a mobile node: register through an FA, move, deregister (one exchange per call).

    Exit status 0 when the registration was accepted, 1 when it was denied or
    not answered, 2 for invalid input."""
    ctx.obj = (ctx.find_object(App), options)


def _run_mn(ctx: click.Context, fa: str, previous_fa: str | None, deregister: bool, json_flag: bool) -> None:
    """One exchange of the node the group's options describe, through ``fa``."""
    app, options = ctx.obj
    for name in ("nai", "home_address", "home_agent", "mn_ha_spi"):
        if options.get(name) is None:
            raise InvalidInput(f"missing option --{name.replace('_', '-')} (before the subcommand)")
    check_nai(options["nai"])
    generated: dict[str, Any] = {}
    mn_ha_key = required_secret(MN_HA_KEY, dict(options), generated)
    if len(mn_ha_key) < 16:
        raise InvalidInput(
            f"the MN-HA key has {len(mn_ha_key)} octets; at least 16 are required (RFC 5944 section 5.1)"
        )
    mn_aaa_secret = required_secret(MN_AAA_SECRET, dict(options), generated)
    source = options["source"]
    parse_ipv4("--source", source)
    home_address = check_node_address(
        "--home-address", parse_ipv4("--home-address", options["home_address"]), loopback=False
    )
    home_agent = check_node_address("--home-agent", parse_ipv4("--home-agent", options["home_agent"]))
    address, port = parse_endpoint("--fa", fa, options["mip_port"])
    check_node_address("--fa", address)
    previous = parse_ipv4("--previous-fa", previous_fa) if previous_fa is not None else None
    if previous is not None:
        check_node_address("--previous-fa", previous)

    # Imported here: the node and its driver pull in the Mobile IP codecs and asyncio.
    agents = importlib.import_module("aaa_vpn.net.agents")
    from aaa_vpn.roles.mn import MnConfig

    config = MnConfig(
        nai=options["nai"],
        home_address=home_address,
        home_agent=home_agent,
        mn_ha_spi=options["mn_ha_spi"],
        mn_ha_key=mn_ha_key,
        mn_aaa_secret=mn_aaa_secret,
        lifetime=options["lifetime"],
        retransmit=options["retransmit"],
        attempts=options["attempts"],
        request_keys=options["request_keys"],
    )
    try:
        outcome = agents.run_mobile_node(
            config, (str(address), port), deregister=deregister, previous_fa=previous, source=source
        )
    except agents.AgentError as exc:
        raise StoreFailure(str(exc)) from None
    document = outcome.to_json()
    if app.json_output or json_flag:
        click.echo(json.dumps(document, indent=2))
    else:
        what = "deregistration" if deregister else "registration"
        verdict = "accepted" if outcome.accepted else "denied"
        text = (
            f"{what} of {config.nai} through {address}:{port}: {verdict},"
            f" code {outcome.code} ({document['code_name']}), lifetime {outcome.lifetime} s"
            f" ({document['seconds']} s)"
        )
        if outcome.detail and not outcome.accepted:
            text += f": {outcome.detail}"
        click.echo(text)
    exit_with(0 if outcome.accepted else 1)


_JSON = click.option("--json", "json_flag", is_flag=True, help="Print the result as JSON (like the global --json).")


@mn.command("register", epilog=example("aaa-vpn mn ... register --fa 192.0.2.12 --previous-fa 192.0.2.11"))
@click.option("--fa", required=True, metavar="ADDR[:PORT]", help="The foreign agent to register through.")
@click.option("--previous-fa", metavar="ADDR", help="The FA the node comes from (a handoff).")
@_JSON
@click.pass_context
def mn_register(ctx: click.Context, fa: str, previous_fa: str | None, json_flag: bool) -> None:
    """Register once through an FA; print the reply code and lifetime."""
    _run_mn(ctx, fa, previous_fa, False, json_flag)


@mn.command("deregister", epilog=example("aaa-vpn mn ... deregister --fa 192.0.2.11"))
@click.option("--fa", required=True, metavar="ADDR[:PORT]", help="The foreign agent the node is registered through.")
@_JSON
@click.pass_context
def mn_deregister(ctx: click.Context, fa: str, json_flag: bool) -> None:
    """Deregister (lifetime 0) through an FA: every node removes the node's SAs."""
    _run_mn(ctx, fa, None, True, json_flag)
