"""Every exchange of the Mobile IP control plane survives loss, and forged or
malformed input changes nothing (docs/protocol.md section 3.11).

The whole system runs in one process over the fake link of tests/mobility.py
with a fake clock; ``net.drop`` loses chosen datagrams (one Binding Update,
one relayed registration ...) or, in the property test at the end, a seeded
random share of every datagram, while the mobile node registers, moves
(flows A to E) and deregisters. After every step the agents must agree: no
SA without the state that owns it, the gateways' bindings those of the HA,
the FA the HA names holding the same registration.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaa_vpn.net import coa_client
from aaa_vpn.roles.agent import LimitReached, backoff, transmission_times
from aaa_vpn.roles.fa import FaConfig, ForeignAgent
from aaa_vpn.roles.foreign_aaa import ForeignAaaOptions
from aaa_vpn.roles.gw import CorrespondentGateway, GwConfig
from aaa_vpn.roles.ha import HaConfig, HomeAgent
from aaa_vpn.roles.mn import MnConfig, MobileNode
from aaa_vpn.roles.radius_client import (
    DEFAULT_MAX_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    retransmission_waits,
    server_time,
)
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import ReplyCode
from aaa_vpn.wire.mip_auth import (
    CHAP_SPI,
    append_authentication,
    append_generalized_authentication,
    verify_authentication,
)

from .mobility import FA1, FA2, FA3, GW_DYNAMIC, GW_STATIC, HA, HOME_ADDRESS, MN_SOCKET, NAI, Network

Address = tuple[str, int]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    network.standard()
    yield network
    network.close()


def mn(net: Network) -> MobileNode:
    agent = net.nodes["mn"].agent
    assert isinstance(agent, MobileNode)
    return agent


def fa(net: Network, name: str) -> ForeignAgent:
    agent = net.nodes[name].agent
    assert isinstance(agent, ForeignAgent)
    return agent


def ha(net: Network) -> HomeAgent:
    agent = net.nodes["ha"].agent
    assert isinstance(agent, HomeAgent)
    return agent


def gw(net: Network, name: str) -> CorrespondentGateway:
    agent = net.nodes[name].agent
    assert isinstance(agent, CorrespondentGateway)
    return agent


def last_code(net: Network) -> int | None:
    done = net.nodes["mn"].done()
    return done[-1].code if done else None


def register(net: Network, address: str = FA1, previous: str | None = None, wait: float = 40.0) -> int | None:
    """The node registers (naming ``previous``); the clock runs until every
    exchange, retransmissions included, has ended. Its answer's code."""
    before = len(net.nodes["mn"].done())
    mn(net).register(net.fa_address(address), net.clock, IPv4Address(previous) if previous else None)
    net.settle()
    net.advance(wait)
    done = net.nodes["mn"].done()
    return done[-1].code if len(done) > before else None


def deregister(net: Network, wait: float = 40.0) -> int | None:
    before = len(net.nodes["mn"].done())
    mn(net).deregister(net.clock)
    net.settle()
    net.advance(wait)
    done = net.nodes["mn"].done()
    return done[-1].code if len(done) > before else None


def wire(
    net: Network, keep: Callable[[Address, Address, bytes], bool] | None = None
) -> list[tuple[Address, Address, bytes]]:
    """Record every datagram sent from now on (the link loses those ``keep`` refuses)."""
    seen: list[tuple[Address, Address, bytes]] = []

    def decide(source: Address, destination: Address, data: bytes) -> bool:
        seen.append((source, destination, data))
        return keep is not None and not keep(source, destination, data)

    net.drop = decide
    return seen


def decoded(data: bytes) -> object:
    try:
        return mip.decode_message(data)
    except mip.MipDecodeError:
        return None


def replies_to_node(seen: list[tuple[Address, Address, bytes]]) -> list[mip.RegistrationReply]:
    return [m for _s, d, data in seen if d[0] == MN_SOCKET and isinstance(m := decoded(data), mip.RegistrationReply)]


def sessions(net: Network) -> list[str]:
    return sorted(s.session_id for s in net.store.find_sessions(NAI))


# -- the invariants ---------------------------------------------------------------------------------


def agree(net: Network) -> None:
    """What must hold whenever no exchange is under way."""
    home = ha(net)
    for name, node in net.nodes.items():
        if node.backend is None:
            continue
        owners = {p.owner for p in node.backend.paths()}
        assert owners <= node.agent.owners(), f"{name} holds SAs nobody owns: {owners - node.agent.owners()}"
    # the gateways' bindings are the HA's (docs/protocol.md section 3.11): the
    # same home addresses, sessions, epochs and care-of addresses
    for name, address in (("gw-static", GW_STATIC), ("gw-dynamic", GW_DYNAMIC)):
        if name not in net.nodes:
            continue
        wanted = {
            b.home_address: b
            for b in home.bindings.values()
            if any(p.peer == IPv4Address(address) or p.local == IPv4Address(address) for p in b.profile.paths)
        }
        held = gw(net, name).bindings
        assert set(held) == set(wanted), (
            f"{name} holds bindings for {sorted(map(str, held))}, the HA {sorted(map(str, wanted))}"
        )
        for home_address, binding in held.items():
            theirs = wanted[home_address]
            ours = (binding.session, binding.care_of_address)
            assert ours == ((theirs.session_id, theirs.profile.epoch), theirs.care_of_address), (
                f"{name}'s binding of {home_address} is {ours}, the HA's"
                f" {(theirs.session_id, theirs.profile.epoch, theirs.care_of_address)}"
            )
    # the FA the HA's binding names holds the same registration
    for binding in home.bindings.values():
        at = next(n for n, node in net.nodes.items() if node.address == str(binding.care_of_address))
        visitor = fa(net, at).visitors.get(binding.nai)
        assert visitor is not None, f"the HA's binding names {at}, which has no visitor"
        assert (visitor.session_id, visitor.profile.epoch) == (binding.session_id, binding.profile.epoch), at


# -- every exchange survives the loss of one datagram ----------------------------------------------


def test_a_lost_binding_update_is_sent_again_and_nothing_starts_twice(net: Network) -> None:
    lost: list[bytes] = []

    def keep(source: Address, destination: Address, data: bytes) -> bool:
        if destination[0] == GW_DYNAMIC and isinstance(decoded(data), mip.BindingUpdate) and not lost:
            lost.append(data)
            return False
        return True

    seen = wire(net, keep)
    assert register(net) == 0
    updates = [data for s, d, data in seen if d[0] == GW_DYNAMIC and isinstance(decoded(data), mip.BindingUpdate)]
    assert updates[:2] == [lost[0], lost[0]], (
        f"expected the lost Binding Update {lost[0].hex()} sent again byte for byte, got {[u.hex() for u in updates]}"
    )
    replies = replies_to_node(seen)
    codes = [int(r.code) for r in replies]
    # 105 first: the node has no challenge of this FA yet (fa.py rule 1); the
    # acceptance, then its two copies (fa.py rule 5)
    assert codes == [105, 0, 0, 0], f"the node should get 105, then 0 and its copies; it got codes {codes}"
    accepted = [data for _s, d, data in seen if d[0] == MN_SOCKET and decoded(data) in replies[1:]]
    assert len(set(accepted)) == 1, "the copies of the acceptance are the same octets"
    assert len(sessions(net)) == 1
    agree(net)


def test_a_lost_relay_is_sent_again_and_the_node_never_gets_104(net: Network) -> None:
    lost: list[bytes] = []

    def keep(source: Address, destination: Address, data: bytes) -> bool:
        if source[0] == FA1 and destination[0] == HA and not lost:
            lost.append(data)
            return False
        return True

    seen = wire(net, keep)
    assert register(net) == 0
    relayed = [data for s, d, data in seen if s[0] == FA1 and d[0] == HA]
    assert relayed[0] == lost[0] and len(relayed) >= 2, f"expected the relayed request {lost[0].hex()} again"
    codes = [int(r.code) for r in replies_to_node(seen)]
    assert ReplyCode.FA_UNKNOWN_CHALLENGE not in codes and codes[-1] == 0, f"codes sent to the node: {codes}"
    assert len(sessions(net)) == 1
    assert ha(net).counters["accepted"] == 1
    agree(net)


def test_a_retransmission_is_folded_into_the_registration_under_way(net: Network) -> None:
    # the home AAA's first three Access-Accepts to the FA are lost: the FA
    # asks again at 0.25, 0.75 and 1.75 s; meanwhile the node retransmits (at
    # 1 s) with a new Identification and the same challenge
    lost: list[bytes] = []

    def keep(source: Address, destination: Address, data: bytes) -> bool:
        if destination[0] == FA1 and source[1] == net.radius_port and len(lost) < 3:
            lost.append(data)
            return False
        return True

    seen = wire(net, keep)
    assert register(net) == 0
    requests = [
        m for s, _d, data in seen if s[0] == MN_SOCKET and isinstance(m := decoded(data), mip.RegistrationRequest)
    ]
    replies = replies_to_node(seen)
    codes = [int(r.code) for r in replies]
    assert codes == [ReplyCode.FA_MISSING_CHALLENGE, 0, 0, 0], (
        f"codes sent to the node: {codes} (expected 105, then 0 and its two copies)"
    )
    # the reply answers the node's latest transmission (RFC 5944 section 3.6.3)
    assert replies[-1].identification & 0xFFFFFFFF == requests[-1].identification & 0xFFFFFFFF, (
        f"reply Identification {replies[-1].identification:016x}, latest request {requests[-1].identification:016x}"
    )
    assert fa(net, "fa1").counters["retransmissions_folded"] >= 1
    assert len(sessions(net)) == 1 and ha(net).counters["requests"] == 1
    agree(net)


def test_a_withdrawal_removes_only_the_binding_it_created(net: Network) -> None:
    # The first registration (through FA1) never reaches the dynamic gateway;
    # meanwhile the node registers afresh through FA2 (a new session), which
    # does. When the first times out, the HA withdraws its Binding Updates:
    # the second registration's binding must stay at every gateway.
    def keep(source: Address, destination: Address, data: bytes) -> bool:
        message = decoded(data)
        return not (
            destination[0] == GW_DYNAMIC
            and isinstance(message, mip.BindingUpdate)
            and message.care_of_address == IPv4Address(FA1)
        )

    wire(net, keep)
    mn(net).register(net.fa_address(FA1), net.clock)
    net.settle()
    net.advance(0.1)
    assert register(net, FA2, wait=1.0) == 0
    net.advance(40.0)
    assert ha(net).counters["denied.130"] == 1  # the first, at gateway_timeout
    binding = gw(net, "gw-dynamic").bindings.get(IPv4Address(HOME_ADDRESS))
    assert binding is not None and binding.care_of_address == IPv4Address(FA2), (
        "the withdrawal of the first registration removed the dynamic gateway's binding toward FA2"
    )
    assert IPv4Address(HOME_ADDRESS) in gw(net, "gw-static").bindings
    agree(net)


def gateway_spis(net: Network, name: str) -> list[tuple[int, int]]:
    return sorted((p.spi_in, p.spi_out) for p in net.nodes[name].backend.paths())  # type: ignore[union-attr]


def test_a_failed_registration_of_a_new_session_leaves_the_gateways_the_binding_that_stands(net: Network) -> None:
    # The node holds a registration (session S1, through FA1) and registers
    # through FA2 without naming FA1: a new session S2. The static gateway
    # takes S2's Binding Update (its paths replace S1's there); the dynamic
    # gateway never gets one, so the HA denies S2 (130) and keeps S1. The
    # static gateway must then hold S1 again, with S1's very SAs.
    assert register(net, FA1) == 0
    first = next(iter(ha(net).bindings.values()))
    static_before = gateway_spis(net, "gw-static")

    def keep(source: Address, destination: Address, data: bytes) -> bool:
        message = decoded(data)
        return not (
            destination[0] == GW_DYNAMIC
            and isinstance(message, mip.BindingUpdate)
            and message.care_of_address == IPv4Address(FA2)
        )

    seen = wire(net, keep)
    assert register(net, FA2) == ReplyCode.HA_INSUFFICIENT_RESOURCES
    updates = [(d[0], m) for _s, d, data in seen if isinstance(m := decoded(data), mip.BindingUpdate)]
    assert any(g == GW_STATIC and m.care_of_address == IPv4Address(FA2) and m.lifetime for g, m in updates), (
        "the static gateway took the new session's Binding Update"
    )
    assert gw(net, "gw-static").counters["bindings_restored"] == 1
    binding = gw(net, "gw-static").bindings[IPv4Address(HOME_ADDRESS)]
    assert (binding.session, binding.care_of_address) == ((first.session_id, first.profile.epoch), IPv4Address(FA1))
    assert gateway_spis(net, "gw-static") == static_before, "the static gateway's SAs are S1's again"
    assert ha(net).bindings[NAI].session_id == first.session_id
    assert NAI not in fa(net, "fa2").visitors and net.nodes["fa2"].backend.paths() == []  # type: ignore[union-attr]
    agree(net)


def test_a_failed_handoff_gives_the_dynamic_gateway_its_path_to_the_old_fa_back(net: Network) -> None:
    # A move FA1 -> FA2 (same session, next epoch): the dynamic gateway
    # installs its path toward FA2 and acknowledges; the static gateway never
    # gets the update, so the HA denies the move and keeps the binding toward
    # FA1 -- and so must the dynamic gateway, with its path toward FA1.
    assert register(net, FA1) == 0
    dynamic_before = gateway_spis(net, "gw-dynamic")

    def keep(source: Address, destination: Address, data: bytes) -> bool:
        message = decoded(data)
        return not (
            destination[0] == GW_STATIC
            and isinstance(message, mip.BindingUpdate)
            and message.care_of_address == IPv4Address(FA2)
        )

    wire(net, keep)
    assert register(net, FA2, previous=FA1) == ReplyCode.HA_INSUFFICIENT_RESOURCES
    binding = gw(net, "gw-dynamic").bindings[IPv4Address(HOME_ADDRESS)]
    assert binding.care_of_address == IPv4Address(FA1) and [p.peer for p in binding.paths] == [IPv4Address(FA1)]
    assert gateway_spis(net, "gw-dynamic") == dynamic_before
    assert gw(net, "gw-dynamic").counters["bindings_restored"] == 1
    agree(net)


def test_a_gateway_lets_the_binding_it_replaced_go_when_the_ha_confirms_or_after_a_while(net: Network) -> None:
    assert register(net, FA1) == 0
    dynamic = gw(net, "gw-dynamic")
    # the HA's confirmation arrives: the path toward FA1 goes at once
    assert register(net, FA2, previous=FA1) == 0
    assert dynamic.held_owners() == set() and [p.peer for p in net.nodes["gw-dynamic"].backend.paths()] == [  # type: ignore[union-attr]
        IPv4Address(FA2)
    ]
    assert ha(net).counters["gateway_confirmations"] == 1  # only the dynamic gateway's paths changed

    # every confirmation is lost (the registration's own update is not): the
    # path toward FA2 stays until the hold ends
    first_update: list[int] = []

    def keep(source: Address, destination: Address, data: bytes) -> bool:
        message = decoded(data)
        if not (destination[0] == GW_DYNAMIC and isinstance(message, mip.BindingUpdate)):
            return True
        first_update[:] = first_update or [message.identification]
        return message.identification == first_update[0]

    net.add_fa("fa3", FA3)
    wire(net, keep)
    mn(net).register(net.fa_address(FA3), net.clock, IPv4Address(FA2))
    net.settle()
    assert last_code(net) == 0
    assert len(dynamic.held_owners()) == 1 and len(net.nodes["gw-dynamic"].backend.paths()) == 2  # type: ignore[union-attr]
    net.advance(dynamic.config.hold_replaced + 0.1)
    assert dynamic.held_owners() == set() and dynamic.counters["replaced_expired"] == 1
    assert [p.peer for p in net.nodes["gw-dynamic"].backend.paths()] == [IPv4Address(FA3)]  # type: ignore[union-attr]
    wire(net)
    net.advance(20.0)
    agree(net)


def test_the_coa_client_backs_off(net: Network) -> None:
    assert coa_client.waits(2.0, 2) == [2.0, 4.0, 8.0]
    assert transmission_times(0.25, 3.0) == [0.0, 0.25, 0.75, 1.75]
    assert transmission_times(0.25, 4.0, 0.5) == [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75]


def test_timeouts_are_ordered_inner_before_outer() -> None:
    """docs/protocol.md section 3.11: an inner exchange, retries included, ends
    before the one around it gives up, and what answers a retransmission is
    kept as long as the requester retransmits, with the defaults."""
    radius = server_time()  # 0.25, 0.5, then 1 s apart: 7.75 s per server
    fa_sent = list(itertools.accumulate([0.0, *retransmission_waits(DEFAULT_TIMEOUT, DEFAULT_RETRIES, 1.0)[:-1]]))
    options = ForeignAaaOptions()
    upstream = server_time(options.timeout, options.retries, options.max_timeout)
    ha_config = HaConfig(IPv4Address(HA), ())
    fa_config = FaConfig(IPv4Address(FA1), ())
    gw_config = GwConfig(IPv4Address(GW_STATIC), Secret(b"k" * 16))
    node = MnConfig(NAI, IPv4Address(HOME_ADDRESS), IPv4Address(HA), 256, Secret(b"k"), Secret(b"s"))
    node_waits = [backoff(node.retransmit, n) for n in range(1, node.attempts + 1)]
    node_gives_up, node_last_sent = sum(node_waits), sum(node_waits[:-1])
    updates = transmission_times(
        ha_config.gateway_retransmit, ha_config.gateway_timeout, ha_config.gateway_max_retransmit
    )
    assert len(updates) == 9 and updates[-1] < ha_config.gateway_timeout
    assert radius + ha_config.gateway_timeout < fa_config.ha_timeout  # 11.75 < 15
    # a foreign AAA gives up upstream while the FA still has a transmission to fetch its answer with
    assert upstream + DEFAULT_MAX_TIMEOUT <= fa_sent[-1]  # 5.75 + 1 <= 6.75
    assert radius + fa_config.ha_timeout < node_gives_up  # 22.75 < 31
    # answers to retransmissions outlive the node's retransmissions
    assert node_last_sent + fa_config.ha_timeout < min(ha_config.answer_cache_seconds, fa_config.answer_lifetime)
    # a replaced gateway binding outlives the HA's Binding Updates and their restoration
    assert 2 * ha_config.gateway_timeout < gw_config.hold_replaced


# -- forged and malformed input changes nothing -----------------------------------------------------


def forged_deregistration(nai: str, home_agent: str, identification: int, mn_ha: bool = True) -> bytes:
    request = mip.RegistrationRequest(
        flags=mip.RegistrationFlags(0),
        lifetime=0,
        home_address=IPv4Address(HOME_ADDRESS),
        home_agent=IPv4Address(home_agent),
        care_of_address=IPv4Address(FA1),
        identification=identification,
        extensions=(mip.NaiExtension(nai),) if nai else (),
    )
    data = mip.encode_registration_request(request)
    return append_authentication(data, mip.ExtensionType.MN_HA_AUTH, 256, Secret(b"guess")) if mn_ha else data


def test_forged_deregistrations_are_relayed_nowhere_and_leave_nothing(net: Network) -> None:
    assert register(net) == 0
    stranger = net.socket("127.0.0.66")
    seen = wire(net)
    rng = random.Random(7)
    for n in range(2000):
        nai = rng.choice([NAI, f"user{n}@home.example", ""])
        home_agent = rng.choice([HA, "127.0.0.99", f"10.0.{n % 250}.1"])
        stranger.sendto(forged_deregistration(nai, home_agent, n, mn_ha=rng.random() < 0.5), (FA1, net.mip_port))
    net.settle()
    relayed = [(d, data) for s, d, data in seen if s[0] == FA1 and d[1] == net.mip_port and d[0] != "127.0.0.66"]
    bad = [d for d, _ in relayed if d[0] != HA]
    assert bad == [], f"relayed to addresses that are no agent: {sorted(set(bad))[:5]}"
    agent = fa(net, "fa1")
    assert len(agent._pending) <= 1 and len(agent._keys) == len([k for p in agent._pending.values() for k in p.keys])
    net.advance(40.0)
    assert agent._pending == {} and agent._keys == {} and agent._by_challenge == {}
    answers = {int(m.code) for data, _src in stranger.inbox if isinstance(m := decoded(data), mip.RegistrationReply)}
    assert answers <= {97, 194, 131, 70}, answers
    assert mn(net).current_fa is not None and NAI in agent.visitors  # the node is still registered
    agree(net)


def test_a_forged_deregistration_reply_changes_nothing(net: Network) -> None:
    """An accepted reply to a deregistration that only seems to come from the
    HA (its address, the node's Identification, no valid FA-HA authenticator)
    removes no visitor: the FA shares an FA-HA key with the HA for that
    visitor and believes only replies that authenticate under it (RFC 5944
    sections 3.5.4, 3.7.3.1); the genuine reply does."""
    assert register(net) == 0
    agent = fa(net, "fa1")
    paths_before = sorted(p.owner for p in net.nodes["fa1"].backend.paths())  # type: ignore[union-attr]
    held: list[bytes] = []

    def keep(source: Address, destination: Address, data: bytes) -> bool:
        if source == (HA, net.mip_port) and destination[0] == FA1 and isinstance(decoded(data), mip.RegistrationReply):
            held.append(data)  # the HA's genuine replies wait
            return False
        return True

    seen = wire(net, keep)
    mn(net).deregister(net.clock)
    net.settle()
    relayed = [
        m
        for s, d, data in seen
        if s[0] == FA1 and d[0] == HA
        if isinstance(m := decoded(data), mip.RegistrationRequest)
    ]
    assert relayed and relayed[0].lifetime == 0
    forger = net.socket(HA, 4343)  # the HA's address, not its key
    for key in (None, Secret(b"a guessed FA-HA key")):
        reply = mip.encode_registration_reply(
            mip.RegistrationReply(
                code=ReplyCode.ACCEPTED,
                lifetime=0,
                home_address=IPv4Address(HOME_ADDRESS),
                home_agent=IPv4Address(HA),
                identification=relayed[0].identification,
                extensions=(mip.NaiExtension(NAI),),
            )
        )
        reply = append_authentication(reply, mip.ExtensionType.MN_HA_AUTH, 256, Secret(b"a guessed MN-HA key"))
        if key is not None:
            reply = append_authentication(reply, mip.ExtensionType.FA_HA_AUTH, 256, key)
        forger.sendto(reply, (FA1, net.mip_port))
        net.settle()
        assert NAI in agent.visitors, "a forged acceptance removed the visitor"
        assert sorted(p.owner for p in net.nodes["fa1"].backend.paths()) == paths_before  # type: ignore[union-attr]
    assert agent.counters["dropped.bad_fa_ha_auth"] == 2
    # the HA's own reply (FA-HA authenticated) does
    assert held and all(
        verify_authentication(data, mip.ExtensionType.FA_HA_AUTH, agent.visitors[NAI].profile.fa_ha_key)  # type: ignore[arg-type]
        for data in held
    ), "the HA authenticates its replies to deregistrations"
    wire(net)
    net.advance(40.0)
    assert NAI not in agent.visitors and net.nodes["fa1"].backend.paths() == []  # type: ignore[union-attr]
    assert last_code(net) == 0


def test_a_home_agent_denial_without_mn_ha_reaches_the_node_with_its_code(net: Network) -> None:
    assert register(net) == 0
    # the HA restarts without its binding: the node's deregistration reaches
    # an HA that has no MN-HA key for it and answers 131 without MN-HA
    net.remove("ha")
    net.add_ha()
    seen = wire(net)
    assert deregister(net) == ReplyCode.HA_MN_FAILED_AUTHENTICATION
    replies = replies_to_node(seen)
    assert [int(r.code) for r in replies] == [131], replies


def test_the_challenges_an_fa_hands_out_are_bounded(tmp_path: Path) -> None:
    net = Network(tmp_path)
    net.add_ha()
    agent = net.add_fa("fa1", FA1, max_challenges=50)
    stranger = net.socket("127.0.0.66")
    try:
        for n in range(500):  # each without a challenge: answered 105 with a fresh one
            request = mip.RegistrationRequest(
                flags=mip.RegistrationFlags(0),
                lifetime=60,
                home_address=IPv4Address(HOME_ADDRESS),
                home_agent=IPv4Address(HA),
                care_of_address=IPv4Address(FA1),
                identification=n + 1,
                extensions=(mip.NaiExtension(f"x{n}@home.example"),),
            )
            stranger.sendto(mip.encode_registration_request(request), (FA1, net.mip_port))
        net.settle()
        assert len(agent._challenges) == 50
        assert agent.counters["limits.challenges"] == 450
        reports = [e for e in net.nodes["fa1"].events if isinstance(e, LimitReached)]
        assert [(e.table, e.limit) for e in reports] == [("challenges", 50)], "one report a minute, not one a hit"
    finally:
        net.close()


def test_the_registrations_an_ha_works_on_are_bounded(tmp_path: Path) -> None:
    net = Network(tmp_path)
    agent = net.add_ha(max_pending=20)
    net.aaa_up = False  # AAA never answers: every registration waits for it
    stranger = net.socket("127.0.0.66")
    try:
        for n in range(100):
            request = mip.RegistrationRequest(
                flags=mip.RegistrationFlags(0),
                lifetime=60,
                home_address=IPv4Address(HOME_ADDRESS),
                home_agent=IPv4Address(HA),
                care_of_address=IPv4Address(FA1),
                identification=n + 1,
                extensions=(mip.NaiExtension(f"x{n}@home.example"), mip.ChallengeExtension(bytes(16))),
            )
            data = mip.encode_registration_request(request)
            data = append_authentication(data, mip.ExtensionType.MN_HA_AUTH, 256, Secret(b"guess"))
            data = append_generalized_authentication(data, mip.GeneralizedAuthSubtype.MN_AAA, CHAP_SPI, Secret(b"x"))
            stranger.sendto(data, (HA, net.mip_port))
        net.settle()
        assert len(agent._pending) == 20
        assert agent.counters["limits.pending"] == 80 and agent.counters["denied.130"] == 80
    finally:
        net.close()


# -- random loss on every link: flows A to E --------------------------------------------------------

STEPS = st.lists(st.sampled_from(["renew", "move", "move", "deregister"]), min_size=4, max_size=8)
FAS = {"fa1": FA1, "fa2": FA2, "fa3": FA3}


def run_under_loss(tmp_path: Path, loss: float, seed: int, steps: list[str]) -> tuple[int, int]:
    """The node registers, then takes ``steps`` while ``loss`` of every datagram
    is lost; the agents must agree after every step. (successes, attempts)."""
    net = Network(tmp_path, foreign=True)  # FA1 and FA2 behind the foreign AAA (flow C), FA3 not (flow D)
    net.standard()
    net.add_fa("fa3", FA3)
    rng = random.Random(seed)
    net.drop = lambda source, destination, data: rng.random() < loss
    successes = attempts = 0
    try:
        at: str | None = None
        for step in ["register", *steps]:
            attempts += 1
            if step == "deregister" and at is not None:
                code = deregister(net)
                if code == 0:
                    at = None
            elif step == "move" and at is not None:
                target = rng.choice([n for n in FAS if n != at])
                code = register(net, FAS[target], previous=FAS[at])
                if code == 0:
                    at = target
            else:
                target = at or rng.choice(list(FAS))
                code = register(net, FAS[target])
                if code == 0:
                    at = target
            successes += code == 0
            net.advance(15.0)  # forwarding (flow E) ends
            agree(net)
    finally:
        net.close()
    return successes, attempts


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), steps=STEPS)
def test_every_step_succeeds_at_five_percent_loss(tmp_path: Path, seed: int, steps: list[str]) -> None:
    successes, attempts = run_under_loss(tmp_path, 0.05, seed, steps)
    assert successes == attempts, f"{attempts - successes} of {attempts} steps failed at 5 % loss"


TWENTY_PERCENT: list[tuple[int, int]] = []


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), steps=STEPS)
def test_the_agents_agree_after_every_step_at_twenty_percent_loss(tmp_path: Path, seed: int, steps: list[str]) -> None:
    """A failure may happen (an exchange that lost every transmission), but
    every one leaves the agents agreeing (checked in the run)."""
    TWENTY_PERCENT.append(run_under_loss(tmp_path, 0.20, seed, steps))


def test_most_steps_succeed_at_twenty_percent_loss() -> None:
    if not TWENTY_PERCENT:
        pytest.skip("runs after test_the_agents_agree_after_every_step_at_twenty_percent_loss")
    successes = sum(s for s, _ in TWENTY_PERCENT)
    attempts = sum(a for _, a in TWENTY_PERCENT)
    # the bound (docs/protocol.md section 3.11); the namespace lab measures it too
    assert successes >= 0.99 * attempts, f"{successes} of {attempts} steps succeeded at 20 % loss"
