"""The HA on a backend whose installs wait for the FA (strongSwan, where the
HA initiates the FA-HA IKE exchange: ``aaa_vpn.sa.base.StagedBackend``): it
tells its gateways while that negotiation runs, and answers only when its own
path is up and every gateway has acknowledged; a failed negotiation denies the
registration (130) and leaves the gateways as a refused Binding Update would.

The whole system in one process (tests/mobility.py). The HA's backend is the
memory backend with its FA-HA installs finished one round of the network later,
or failing, as a negotiation with the FA does; the real one, with charons, is
tested in tests/test_sa_strongswan.py and, in the agents, in
tests/test_netns_e2e.py (the HA's order of Binding Updates and installs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.roles.agent import RegistrationDone
from aaa_vpn.roles.gw import CorrespondentGateway
from aaa_vpn.sa.base import InstalledPath, SaError, StagedBackend
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.service.agents import SaExecutor
from aaa_vpn.wire.mip import ReplyCode
from aaa_vpn.wire.profile import PathProfile, PathRole

from .mobility import FA1, FA2, GW_STATIC, HA, Network


@dataclass
class Negotiation:
    owner: str
    path: PathProfile


class NegotiatingBackend(MemoryBackend):
    """Memory SAs whose FA-HA paths are installed by :meth:`finish_install`
    (a negotiation with the FA), which fails toward the peers in ``failing``."""

    def __init__(self, node: IPv4Address, gateway: CorrespondentGateway) -> None:
        super().__init__(node)
        self.failing: set[IPv4Address] = set()
        self.log: list[str] = []
        self.gateway = gateway  # whose Binding Updates seen so far each finish records

    def begin_install(self, path: PathProfile, owner: str) -> InstalledPath | Negotiation:
        if path.role is not PathRole.FA_HA:
            return self.install(path, owner)
        self.log.append(f"begin {path.peer}")
        return Negotiation(owner, path)

    def finish_install(self, pending: Negotiation) -> InstalledPath:
        self.log.append(f"finish {pending.path.peer} (gateway had {self.gateway.counters['binding_updates']} BUs)")
        if pending.path.peer in self.failing:
            raise SaError(f"no IKE answer from {pending.path.peer}")
        return self.install(pending.path, pending.owner)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    network.standard()
    node = network.nodes["ha"]
    gateway = network.nodes["gw-dynamic"].agent
    assert isinstance(gateway, CorrespondentGateway)
    node.backend = NegotiatingBackend(IPv4Address(HA), gateway)
    node.executor = SaExecutor(node.backend, "ha")
    assert isinstance(node.backend, StagedBackend)
    yield network
    network.close()


def table(net: Network, name: str) -> list[tuple[str, str]]:
    backend = net.nodes[name].backend
    assert backend is not None
    return sorted((p.path.role.name, str(p.peer)) for p in backend.paths())


def register(net: Network, fa: str, previous: str | None = None) -> RegistrationDone:
    previous_fa = IPv4Address(previous) if previous else None
    net.nodes["mn"].agent.register(net.fa_address(fa), net.clock, previous_fa=previous_fa)  # type: ignore[attr-defined]
    net.settle()
    done = net.nodes["mn"].done()
    assert done, "the mobile node got no answer"
    return done[-1]


def ha_backend(net: Network) -> NegotiatingBackend:
    backend = net.nodes["ha"].backend
    assert isinstance(backend, NegotiatingBackend)
    return backend


def test_gateways_are_told_while_the_ha_negotiates_and_the_reply_waits_for_both(net: Network) -> None:
    assert register(net, FA1).code == 0
    net.advance(2.0)
    assert register(net, FA2, FA1).code == 0
    # Each time the gateway had the Binding Update before the HA's own path was up ...
    assert ha_backend(net).log == [
        f"begin {FA1}",
        f"finish {FA1} (gateway had 1 BUs)",
        f"begin {FA2}",
        f"finish {FA2} (gateway had 2 BUs)",
    ]
    assert net.nodes["ha"].agent.counters["gateways_told_while_installing"] == 2  # type: ignore[attr-defined]
    decisions = net.nodes["gw-dynamic"].done()
    assert decisions and all(e.code == 0 for e in decisions)
    # ... and everything ends where it does without staging (tests/test_flows.py).
    assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", GW_STATIC)]
    assert table(net, "gw-dynamic") == [("FA_GW", FA2)]
    assert table(net, "gw-static") == [("HA_GW", HA)]
    assert ("FA_HA", HA) in table(net, "fa2")


def test_a_failed_negotiation_at_the_first_registration_is_130_and_the_gateways_withdraw(net: Network) -> None:
    ha_backend(net).failing.add(IPv4Address(FA1))
    result = register(net, FA1)
    assert result.code == ReplyCode.HA_INSUFFICIENT_RESOURCES, result
    assert ha_backend(net).log == [f"begin {FA1}", f"finish {FA1} (gateway had 1 BUs)"]
    # The gateways were told (while the HA negotiated) and then told to withdraw: nothing is left anywhere.
    assert net.nodes["ha"].agent.counters["gateways_told_while_installing"] == 1  # type: ignore[attr-defined]
    for name in ("ha", "fa1", "gw-static", "gw-dynamic"):
        assert table(net, name) == [], name
    assert not net.nodes["gw-dynamic"].agent.bindings  # type: ignore[attr-defined]
    # The next attempt, with the FA answering, succeeds.
    ha_backend(net).failing.clear()
    net.advance(2.0)
    assert register(net, FA1).code == 0
    assert table(net, "gw-dynamic") == [("FA_GW", FA1)] and table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]


def test_a_failed_negotiation_in_a_handoff_is_130_and_the_next_registration_recovers(net: Network) -> None:
    assert register(net, FA1).code == 0
    ha_backend(net).failing.add(IPv4Address(FA2))
    net.advance(2.0)
    result = register(net, FA2, FA1)
    assert result.code == ReplyCode.HA_INSUFFICIENT_RESOURCES, result
    # The HA keeps its binding through FA1; nothing of the failed move is left at the HA or FA2.
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    assert ("FA_HA", HA) not in table(net, "fa2")
    # The dynamic gateway, told while the HA negotiated, is restored to the binding the HA
    # kept, as when another gateway refuses a move (docs/protocol.md section 3.11).
    assert table(net, "gw-dynamic") == [("FA_GW", FA1)]
    ha_backend(net).failing.clear()
    net.advance(2.0)
    assert register(net, FA2, FA1).code == 0
    assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", GW_STATIC)]
    assert table(net, "gw-dynamic") == [("FA_GW", FA2)]
    assert ("FA_HA", HA) in table(net, "fa2")
