"""Recovery: an agent that restarts finds the SAs it owns in its
backend, keeps those that match its journal's live state and removes the rest
(aaa_vpn.service.journal; docs/agents.md, "Restart").

In one process with the fake clock: the role object is replaced by a new one
of the same configuration, restored from its sealed journal, and reconciled
with the *same* backend object -- a backend whose SAs outlive the agent (a
kernel, a charon). A backend that lost everything is a fresh one.
"""

from __future__ import annotations

import dataclasses
import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from aaa_vpn.roles.agent import Agent, Channel
from aaa_vpn.roles.fa import ForeignAgent
from aaa_vpn.roles.gw import CorrespondentGateway
from aaa_vpn.roles.ha import HomeAgent
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.secret import Secret
from aaa_vpn.service.agents import SaExecutor
from aaa_vpn.service.journal import JournalError, Recovery, decode_journal, encode_journal, recover, write_journal
from aaa_vpn.wire.profile import PathRole

from .mobility import FA1, FA2, GATEWAY_KEYS, GW_STATIC, HA, SECRETS, Network
from .test_flows import backend, move, register, table

ROLE = {"fa1": "fa", "fa2": "fa", "ha": "ha", "gw-static": "gw", "gw-dynamic": "gw"}
AGENTS = tuple(ROLE)


def credential(net: Network, name: str) -> Secret:
    """The node's own secret, which seals its journal."""
    address = net.nodes[name].address
    return GATEWAY_KEYS[address] if ROLE[name] == "gw" else SECRETS[address]


def journal(net: Network, name: str) -> bytes:
    node = net.nodes[name]
    return encode_journal(
        node.agent.export_state(), ROLE[name], IPv4Address(node.address), credential(net, name), net.clock
    )


def restart(net: Network, name: str, data: bytes | None = None, fresh_backend: bool = False) -> Recovery:
    """Replace ``name``'s role object with a new one restored from its journal
    (taken now unless ``data`` is given); the backend is kept unless
    ``fresh_backend`` (one that lost its SAs)."""
    node = net.nodes[name]
    data = journal(net, name) if data is None else data
    old = node.agent
    new: Agent
    if isinstance(old, ForeignAgent):
        new = ForeignAgent(old.config)
    elif isinstance(old, HomeAgent):
        new = HomeAgent(old.config)
    else:
        assert isinstance(old, CorrespondentGateway)
        new = CorrespondentGateway(old.config)
    if fresh_backend:
        node.backend = MemoryBackend(IPv4Address(node.address))
        node.executor = SaExecutor(node.backend, name)
    assert node.backend is not None
    state = decode_journal(data, ROLE[name], IPv4Address(node.address), credential(net, name))
    node.agent = new
    report = recover(new, node.backend, state, net.clock)
    net.settle()
    return report


def sa_tables(net: Network) -> dict[str, list[tuple[str, int, int]]]:
    return {
        name: sorted((p.owner, p.spi_in, p.spi_out) for p in backend(net, name).paths())
        for name in AGENTS
        if name in net.nodes
    }


@pytest.fixture
def net(tmp_path: Path) -> Any:
    network = Network(tmp_path)
    network.standard()
    try:
        yield network
    finally:
        network.close()


def test_every_agent_restarts_keeps_its_sas_and_carries_on(net: Network) -> None:
    assert register(net).code == 0
    before = sa_tables(net)
    for name in AGENTS:
        report = restart(net, name)
        assert (report.removed, report.ended, report.errors) == (0, 0, ()), (name, report)
        assert report.kept == len(before[name]), name
    assert sa_tables(net) == before  # nothing reinstalled, nothing removed
    assert table(net, "gw-dynamic") == [("FA_GW", FA1)]
    assert set(net.nodes["fa1"].agent.visitors) == {"mn1@home.example"}  # type: ignore[attr-defined]
    assert set(net.nodes["ha"].agent.bindings) == {"mn1@home.example"}  # type: ignore[attr-defined]
    # a renewal after the restarts: the HA's replay state survived (the node's
    # timestamp is newer), the same SAs stay, the gateways refresh
    net.advance(2.0)
    assert register(net).code == 0
    assert sa_tables(net) == before
    assert net.nodes["gw-dynamic"].done()[-1].detail == "binding refreshed"
    # a handoff and a deregistration work as ever and leave nothing behind
    net.advance(2.0)
    assert move(net, FA2, FA1).code == 0
    assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", GW_STATIC)]
    net.advance(1.0)
    net.nodes["mn"].agent.deregister(net.clock)  # type: ignore[attr-defined]
    net.settle()
    net.advance(30.0)  # the old FA's forwarding path ends too
    for name in AGENTS:
        assert backend(net, name).paths() == [], name


def test_a_replayed_registration_is_refused_after_the_ha_restarted(net: Network) -> None:
    ha = net.nodes["ha"].agent
    relayed: list[tuple[bytes, tuple[str, int]]] = []
    receive = ha.receive_datagram  # type: ignore[attr-defined]

    def spy(channel: Channel, data: bytes, source: tuple[str, int], now: float) -> None:
        if channel is Channel.MIP:
            relayed.append((data, source))
        receive(channel, data, source, now)

    ha.receive_datagram = spy  # type: ignore[attr-defined]
    assert register(net).code == 0
    restart(net, "ha")
    # the FA's relayed request again (a replay): the restored HA remembers the
    # node's last Identification (RFC 5944 section 5.7) and refuses it, 133
    data, source = relayed[0]
    net.nodes["ha"].agent.receive_datagram(Channel.MIP, data, source, net.clock)  # type: ignore[attr-defined]
    net.settle()
    counters = net.nodes["ha"].agent.counters
    assert counters["denied.133"] == 1 and counters.get("accepted", 0) == 0


def test_sas_nobody_owns_any_more_are_removed(net: Network) -> None:
    assert register(net).code == 0
    before = sa_tables(net)
    ha_backend = backend(net, "ha")
    # SAs of a registration that was in flight when the HA stopped: installed,
    # never answered, so in no binding
    stray = dataclasses.replace(
        next(p.path for p in ha_backend.paths() if p.path.role is PathRole.FA_HA),
        spi_in=0xABCDE,
        spi_out=0xABCDF,
        key_in=Secret(bytes(36)),
        key_out=Secret(bytes(range(36))),
    )
    ha_backend.install(stray, "stale-session#1")
    report = restart(net, "ha")
    assert (report.removed, report.ended) == (1, 0)
    assert sa_tables(net) == before


def test_an_agent_whose_sas_were_lost_ends_that_state_and_the_node_recovers(net: Network) -> None:
    assert register(net).code == 0
    report = restart(net, "ha", fresh_backend=True)  # e.g. the host rebooted: the kernel's SAs are gone
    assert (report.kept, report.ended) == (0, 2)
    assert net.nodes["ha"].agent.bindings == {}  # type: ignore[attr-defined]
    # the gateways were told (lifetime 0) and removed theirs at once
    assert table(net, "gw-static") == table(net, "gw-dynamic") == []
    # the node's next renewal is refused (the gateways will not take the keys
    # they removed), and the one after it re-keys the session: up everywhere
    net.advance(2.0)
    assert register(net).code == 130
    net.advance(1.0)
    assert register(net).code == 0
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    assert table(net, "gw-static") == [("HA_GW", HA)] and table(net, "gw-dynamic") == [("FA_GW", FA1)]


def test_state_that_ended_while_the_agent_was_down_goes_with_its_sas(net: Network) -> None:
    assert register(net).code == 0
    saved = {name: journal(net, name) for name in ("fa1", "ha")}
    net.clock += 700.0  # past the 600 s registration, without running the timers
    for name in ("fa1", "ha"):
        report = restart(net, name, saved[name])
        assert report.restored == 0 and report.removed >= 1, (name, report)
        assert backend(net, name).paths() == [], name


def test_a_journal_opens_only_for_its_own_node_and_secret(net: Network, tmp_path: Path) -> None:
    assert register(net).code == 0
    data = journal(net, "ha")
    node = IPv4Address(HA)
    assert decode_journal(data, "ha", node, SECRETS[HA])["bindings"]
    with pytest.raises(JournalError, match="does not open with this node's secret"):
        decode_journal(data, "ha", node, Secret(b"another secret"))
    with pytest.raises(JournalError, match="not of this fa at"):
        decode_journal(data, "fa", IPv4Address(FA1), SECRETS[HA])
    document = json.loads(data)
    document["sealed"] = document["sealed"][:-8] + "AAAAAAA="
    with pytest.raises(JournalError, match="does not open"):
        decode_journal(json.dumps(document).encode(), "ha", node, SECRETS[HA])
    with pytest.raises(JournalError, match="not a JSON document"):
        decode_journal(b"\x00garbage", "ha", node, SECRETS[HA])
    with pytest.raises(JournalError, match="version"):
        decode_journal(json.dumps({**document, "version": 99}).encode(), "ha", node, SECRETS[HA])
    # no key in the clear: not the MN-HA key, not any SA key
    profile = net.nodes["ha"].agent.bindings["mn1@home.example"].profile  # type: ignore[attr-defined]
    secrets = [profile.mn_ha_key.value] + [p.key_in.value for p in profile.paths]
    for secret in secrets:
        assert secret.hex() not in data.decode() and secret not in data
    # written atomically, mode 0600
    path = tmp_path / "ha.journal"
    write_journal(path, data)
    assert path.read_bytes() == data and path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ha.journal.")]


def test_forwarding_paths_survive_a_restart_of_the_old_fa(net: Network) -> None:
    assert register(net).code == 0
    net.advance(1.0)
    assert move(net, FA2, FA1).code == 0
    fa1 = net.nodes["fa1"].agent
    assert fa1.forwarding  # type: ignore[attr-defined]
    before = sa_tables(net)["fa1"]
    assert table(net, "fa1") == [("FA_FA", FA2)]
    report = restart(net, "fa1")
    assert report.kept == 1 and report.removed == 0
    assert sa_tables(net)["fa1"] == before
    # and it still ends with its own lifetime
    net.advance(30.0)
    assert backend(net, "fa1").paths() == []
    assert net.nodes["fa1"].agent.counters["handoff.forwarding_expired"] == 1
