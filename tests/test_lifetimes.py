"""Flow G of docs/design.md section 2: lifetimes. Gateways ask the home agent to
refresh a binding before it ends (Binding Request, docs/protocol.md section
3.10); the HA answers only for a live binding and an authenticated request;
whatever nothing renews expires with its SAs, on every node. The whole system
runs in one process on loopback with a fake clock (tests/mobility.py): time
moves only in ``Network.advance``, which fires every timer on the way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from aaa_vpn import keys
from aaa_vpn.model import ValidationError
from aaa_vpn.roles.agent import Channel, RegistrationDone
from aaa_vpn.roles.fa import ForeignAgent
from aaa_vpn.roles.gw import CorrespondentGateway, GwConfig
from aaa_vpn.roles.ha import BINDING_SPI, HomeAgent
from aaa_vpn.secret import Secret
from aaa_vpn.service.agent_config import load_agent_settings, role_config
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip_auth import append_generalized_authentication, verify_authentication
from aaa_vpn.wire.mip_replay import timestamp_identification

from .mobility import FA1, FA2, GATEWAY_KEYS, GW_DYNAMIC, GW_STATIC, HA, HOME_ADDRESS, Network

GATEWAYS = ("gw-static", "gw-dynamic")
ADDRESS = {"gw-static": GW_STATIC, "gw-dynamic": GW_DYNAMIC}


def build(tmp_path: Path, lifetime: int = 600, **gw_options: Any) -> Network:
    """HA, FA1, FA2, both gateways (with ``gw_options``) and a mobile node
    asking for ``lifetime`` seconds."""
    net = Network(tmp_path)
    net.add_ha()
    net.add_fa("fa1", FA1)
    net.add_fa("fa2", FA2)
    for name, address in ADDRESS.items():
        gateway = CorrespondentGateway(GwConfig(IPv4Address(address), GATEWAY_KEYS[address], **gw_options))
        net._add(name, gateway, address, net.mip_port, radius=False, backend=True)
    net.add_mn(lifetime=lifetime)
    return net


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = build(tmp_path)
    yield network
    network.close()


def ha(net: Network) -> HomeAgent:
    agent = net.nodes["ha"].agent
    assert isinstance(agent, HomeAgent)
    return agent


def gw(net: Network, name: str) -> CorrespondentGateway:
    agent = net.nodes[name].agent
    assert isinstance(agent, CorrespondentGateway)
    return agent


def fa(net: Network, name: str) -> ForeignAgent:
    agent = net.nodes[name].agent
    assert isinstance(agent, ForeignAgent)
    return agent


def table(net: Network, name: str) -> list[tuple[str, str]]:
    """A node's installed paths as (role, peer), sorted."""
    backend = net.nodes[name].backend
    assert backend is not None
    return sorted((p.path.role.name, str(p.peer)) for p in backend.paths())


def spis(net: Network, name: str) -> list[tuple[str, int, int]]:
    backend = net.nodes[name].backend
    assert backend is not None
    return sorted((p.owner, p.spi_in, p.path.spi_out) for p in backend.paths())


def register(net: Network, fa_address: str = FA1, previous: str | None = None) -> RegistrationDone:
    previous_fa = IPv4Address(previous) if previous else None
    net.nodes["mn"].agent.register(net.fa_address(fa_address), net.clock, previous_fa=previous_fa)  # type: ignore[attr-defined]
    net.settle()
    done = net.nodes["mn"].done()
    assert done, "the mobile node got no answer"
    return done[-1]


def nothing_left(net: Network) -> None:
    """No SA on any node, and no visitor, binding or pending state anywhere."""
    for name, node in net.nodes.items():
        if node.backend is not None:
            assert node.backend.paths() == [], f"{name} kept SAs: {table(net, name)}"
    assert ha(net).bindings == {}
    assert ha(net)._pending == {} and ha(net)._by_owner == {} and ha(net)._nai_of == {}
    for name in ("fa1", "fa2"):
        assert fa(net, name).visitors == {}, name
        assert not getattr(fa(net, name), "forwarding", None), name  # flow E's forwarding paths
    for name in GATEWAYS:
        agent = gw(net, name)
        assert agent.bindings == {} and agent._pending == {}, name
        assert agent._binding_timers == {} and agent._refresh_timers == {}, name
        assert agent.get_timer() is None, f"{name} still has a timer armed"


def intercept(
    net: Network, name: str, keep: Callable[[bytes, tuple[str, int]], bool], seen: list[Any] | None = None
) -> Callable[[], None]:
    """Make node ``name`` lose the Mobile IP datagrams ``keep`` refuses (and
    record (clock, data, source) of all in ``seen``); returns the undo."""
    agent = net.nodes[name].agent
    original = agent.receive_datagram  # type: ignore[attr-defined]

    def receive(channel: Channel, data: bytes, source: tuple[str, int], now: float) -> None:
        if channel is Channel.MIP and seen is not None:
            seen.append((now, data, source))
        if channel is not Channel.MIP or keep(data, source):
            original(channel, data, source, now)

    agent.receive_datagram = receive  # type: ignore[attr-defined]
    return lambda: delattr(agent, "receive_datagram")


def binding_requests(seen: list[Any], source: str) -> list[tuple[float, mip.BindingRequest, bytes]]:
    found = []
    for now, data, address in seen:
        message = mip.decode_message(data)
        if address[0] == source and isinstance(message, mip.BindingRequest):
            found.append((now, message, data))
    return found


def binding_auth_key(gateway: str) -> Secret:
    binding_key = keys.derive_binding_key(GATEWAY_KEYS[gateway], IPv4Address(HA), IPv4Address(gateway))
    return keys.binding_subkeys(binding_key)[0]


def signed_request(identification: int, auth_key: Secret, home_address: str = HOME_ADDRESS) -> bytes:
    request = mip.BindingRequest(IPv4Address(home_address), identification)
    return append_generalized_authentication(
        mip.encode_binding_message(request), mip.GeneralizedAuthSubtype.BINDING, BINDING_SPI, auth_key
    )


# -- the gateway asks, the home agent refreshes ---------------------------------------------------------


def test_gateway_refreshes_its_binding_before_it_ends_and_keeps_its_sas(tmp_path: Path) -> None:
    # The gateways grant at most 100 s; the node is registered for 600 s, so
    # each gateway must ask the HA to renew its binding, five times over.
    net = build(tmp_path, lifetime=600, max_lifetime=100)
    seen: list[Any] = []
    undo = intercept(net, "ha", lambda data, source: True, seen)
    try:
        start = net.clock
        assert register(net).code == 0
        before = {name: spis(net, name) for name in GATEWAYS}
        assert [gw(net, n).bindings[IPv4Address(HOME_ADDRESS)].lifetime for n in GATEWAYS] == [100, 100]
        net.advance(79.0)  # 79 s left of 100: above the 20 % threshold
        assert [gw(net, n).counters["binding_requests"] for n in GATEWAYS] == [0, 0]
        net.advance(2.0)  # 80 s: the threshold; asked and renewed at once
        for name in GATEWAYS:
            agent = gw(net, name)
            binding = agent.bindings[IPv4Address(HOME_ADDRESS)]
            assert agent.counters["binding_requests"] == 1, name
            assert agent.counters["bindings_refreshed"] == 1, name
            assert binding.expires == pytest.approx(start + 80 + 100, abs=0.01), name
            assert spis(net, name) == before[name], f"{name}: a refresh must not touch the SAs"
            # the refresh carries no A flag: no Binding Acknowledge beyond the registration's
            assert agent.counters["acknowledged.0"] == 1, name
        assert ha(net).counters["binding_requests.answered"] == 2
        assert ha(net).counters["dropped.unmatched_ack"] == 0
        # what went on the wire: sub-type 2, the home address, authenticated
        # under the HA-GW binding key like a Binding Update
        for address in (GW_STATIC, GW_DYNAMIC):
            ((_when, request, data),) = binding_requests(seen, address)
            assert data[:2] == bytes([255, 2]), data[:8].hex()
            assert request.home_address == IPv4Address(HOME_ADDRESS)
            assert verify_authentication(
                data,
                mip.ExtensionType.GENERALIZED_AUTH,
                binding_auth_key(address),
                subtype=mip.GeneralizedAuthSubtype.BINDING,
                spi=BINDING_SPI,
            )
        # and so on until the HA's binding ends (600 s): still the same SAs
        net.advance(590.0 - (net.clock - start))
        for name in GATEWAYS:
            assert gw(net, name).counters["bindings_refreshed"] >= 5, name
            assert spis(net, name) == before[name], name
        identifications = [r.identification for _, r, _ in binding_requests(seen, GW_STATIC)]
        assert identifications == sorted(set(identifications)), "identifications must strictly increase"
        net.advance(11.0)
        assert ha(net).counters["bindings_expired"] == 1
        nothing_left(net)
    finally:
        undo()
        net.close()


def test_a_renewal_that_does_not_extend_the_binding_is_not_asked_again(net: Network) -> None:
    # Gateway and HA grant the same 600 s: at 480 s the gateway asks, the HA
    # answers with its remaining 120 s (the same end), and the gateway waits
    # for the end rather than asking over and over.
    start = net.clock
    assert register(net).code == 0
    net.advance(481.0)
    for name in GATEWAYS:
        agent = gw(net, name)
        assert agent.counters["binding_requests"] == 1, name
        assert agent.bindings[IPv4Address(HOME_ADDRESS)].expires == pytest.approx(start + 600, abs=1.01)
    net.advance(118.0)
    assert [gw(net, n).counters["binding_requests"] for n in GATEWAYS] == [1, 1]
    # a new registration renews the gateways through the HA's own Binding Update
    assert register(net).code == 0
    net.advance(400.0)  # 999 s: the first binding would have ended at 600
    for name in GATEWAYS:
        assert gw(net, name).bindings[IPv4Address(HOME_ADDRESS)].expires > net.clock, name
    net.advance(200.0)
    nothing_left(net)


def test_the_ha_does_not_answer_for_a_node_that_is_gone(tmp_path: Path) -> None:
    net = build(tmp_path, lifetime=600, max_lifetime=100)
    seen: list[Any] = []
    watch = intercept(net, "ha", lambda data, source: True, seen)
    try:
        start = net.clock
        assert register(net).code == 0
        before = {name: spis(net, name) for name in GATEWAYS}
        net.advance(1.0)
        # the node deregisters, but the HA's withdrawals (lifetime 0), sent
        # again until the HA's gateway_timeout (4 s), are all lost
        lose = [intercept(net, name, lambda data, source: False) for name in GATEWAYS]
        net.nodes["mn"].agent.deregister(net.clock)  # type: ignore[attr-defined]
        net.settle()
        net.advance(4.5)
        for undo in lose:
            undo()
        assert ha(net).bindings == {}
        assert table(net, "ha") == [] and table(net, "fa1") == []
        for name in GATEWAYS:  # stale, until their lifetime ends
            assert spis(net, name) == before[name], name
        net.advance(75.5)  # 81 s: past the threshold; the HA stays silent
        assert ha(net).counters["binding_requests.no_binding"] >= 2
        assert ha(net).counters["binding_requests.answered"] == 0
        for name in GATEWAYS:
            assert spis(net, name) == before[name], name
        net.advance(18.0)  # 99 s: every retry went out, none answered
        for address in (GW_STATIC, GW_DYNAMIC):
            sent = binding_requests(seen, address)
            # the first at 80 s, then 3 retries after 1.25, 2.5 and 5 s: backoff
            # within the last 20 s (t = 20 / 2^4)
            assert [t - start for t, _, _ in sent] == pytest.approx([80, 81.25, 83.75, 88.75], abs=0.01), address
            identifications = [r.identification for _, r, _ in sent]
            assert identifications == sorted(set(identifications)), address
        assert ha(net).counters["binding_requests.no_binding"] == 8
        net.advance(1.5)  # 100 s: the gateways' bindings expire with their SAs
        for name in GATEWAYS:
            assert gw(net, name).counters["bindings_expired"] == 1, name
        nothing_left(net)
        net.advance(1000.0)
        assert [gw(net, n).counters["binding_requests"] for n in GATEWAYS] == [4, 4]
    finally:
        watch()
        net.close()


def test_a_gateway_whose_ha_is_silent_lets_the_binding_expire(tmp_path: Path) -> None:
    net = build(tmp_path, lifetime=600, max_lifetime=50, refresh_threshold=0.5, refresh_retries=1)
    try:
        start = net.clock
        assert register(net).code == 0
        undo = intercept(net, "ha", lambda data, source: source[0] not in (GW_STATIC, GW_DYNAMIC))
        net.advance(49.0)
        assert [gw(net, n).counters["binding_requests"] for n in GATEWAYS] == [2, 2]  # at 25 s and 31.25 s
        assert all(table(net, n) for n in GATEWAYS)
        net.advance(1.5)
        for name in GATEWAYS:
            assert table(net, name) == [] and gw(net, name).bindings == {}, name
        # the HA still has its binding: only the gateways gave up
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)] and ha(net).bindings
        assert net.clock - start < 600
        undo()
    finally:
        net.close()


# While the node stays registered, a gateway that let its binding expire gets
# the same paths again on the next renewal, and an SA backend refuses keys it
# removed before (an AES-GCM key must not restart its sequence numbers, RFC
# 4106 section 3.1): the gateway answers 161, the HA denies 130. The FA keeps
# the registration that renewal was for (its SAs stay until it expires) and
# asks for fresh keys at the next registration (a Service-Update request): the
# home AAA re-keys the session (a new epoch, stationary paths included).
# After a deregistration the FA no longer names the session, so the home AAA
# starts a new one.


def test_registering_again_after_deregistration_gets_fresh_keys(net: Network) -> None:
    assert register(net).code == 0
    net.advance(1.0)
    net.nodes["mn"].agent.deregister(net.clock)  # type: ignore[attr-defined]
    net.settle()
    net.advance(5.0)
    assert register(net).code == 0


def test_registering_again_after_a_gateway_expired_its_binding(tmp_path: Path) -> None:
    net = build(tmp_path, lifetime=600, max_lifetime=50)
    try:
        assert register(net).code == 0
        (session,) = net.store.find_sessions("mn1@home.example")
        fa_before, ha_before = spis(net, "fa1"), spis(net, "ha")
        undo = intercept(net, "ha", lambda data, source: source[0] not in (GW_STATIC, GW_DYNAMIC))
        net.advance(51.0)
        undo()
        assert table(net, "gw-static") == table(net, "gw-dynamic") == []  # the gateways gave up
        # 1. the renewal: the gateways refuse the keys they removed; the HA denies
        assert register(net).code == 130
        assert gw(net, "gw-static").counters["acknowledged.161"] == 1
        assert fa(net, "fa1").counters["renewals_refused"] == 1
        # ... and the registration it renewed stands, with its SAs, at the FA and the HA
        assert spis(net, "fa1") == fa_before and spis(net, "ha") == ha_before
        # 2. the next registration asks for fresh keys and gets them everywhere
        assert register(net).code == 0
        (rekeyed,) = net.store.find_sessions("mn1@home.example")
        assert rekeyed.session_id == session.session_id
        assert (rekeyed.epoch, rekeyed.stationary_epoch) == (2, 2)
        assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
        assert table(net, "gw-static") == [("HA_GW", HA)] and table(net, "gw-dynamic") == [("FA_GW", FA1)]
        old = {spi for _, spi_in, spi_out in fa_before + ha_before for spi in (spi_in, spi_out)}
        for name in ("fa1", "ha", "gw-static", "gw-dynamic"):
            assert not {spi for _, spi_in, _ in spis(net, name) for spi in (spi_in,)} & old, name
        assert fa(net, "fa1").visitors["mn1@home.example"].renewal_refused is False
    finally:
        net.close()


def test_forged_or_replayed_binding_requests_are_ignored_and_counted(net: Network) -> None:
    assert register(net).code == 0
    gateway_socket = net.nodes["gw-static"].sockets[Channel.MIP]
    home_agent = (HA, net.mip_port)
    updates = gw(net, "gw-static").counters["binding_updates"]
    # 1. the right sender, the wrong key
    wrong_key = keys.binding_subkeys(Secret(b"guessed-binding-key"))[0]
    gateway_socket.sendto(signed_request(timestamp_identification(net.clock), wrong_key), home_agent)
    net.settle()
    assert ha(net).counters["dropped.bad_binding_auth"] == 1
    # 2. the right key, a stale timestamp (outside the replay window)
    key = binding_auth_key(GW_STATIC)
    gateway_socket.sendto(signed_request(timestamp_identification(net.clock - 60), key), home_agent)
    net.settle()
    assert ha(net).counters["binding_requests.identification_mismatch"] == 1
    # 3. a home address the HA has no binding for
    gateway_socket.sendto(signed_request(timestamp_identification(net.clock), key, "198.51.100.99"), home_agent)
    net.settle()
    assert ha(net).counters["binding_requests.no_binding"] == 1
    # 4. a sender that is not one of the binding's gateways
    fa_socket = net.nodes["fa1"].sockets[Channel.MIP]
    fa_socket.sendto(signed_request(timestamp_identification(net.clock), key), home_agent)
    net.settle()
    assert ha(net).counters["binding_requests.not_a_gateway"] == 1
    assert ha(net).counters["binding_requests.answered"] == 0
    assert gw(net, "gw-static").counters["binding_updates"] == updates  # nothing was answered
    # 5. a genuine one is answered; the very same bytes again (a duplicate)
    # get the very same Binding Update again, which changes nothing
    genuine = signed_request(timestamp_identification(net.clock), key)
    gateway_socket.sendto(genuine, home_agent)
    net.settle()
    assert ha(net).counters["binding_requests.answered"] == 1
    assert gw(net, "gw-static").counters["binding_updates"] == updates + 1
    assert net.nodes["gw-static"].done()[-1].detail == "binding refreshed"
    gateway_socket.sendto(genuine, home_agent)
    net.settle()
    assert ha(net).counters["binding_requests.identification_mismatch"] == 1
    assert (ha(net).counters["binding_requests.answered"], ha(net).counters["binding_requests.duplicates"]) == (1, 1)
    assert gw(net, "gw-static").counters["duplicates"] == 1


def test_a_gateway_drops_a_binding_request_sent_to_it(net: Network) -> None:
    assert register(net).code == 0
    data = signed_request(timestamp_identification(net.clock), binding_auth_key(GW_STATIC))
    net.nodes["ha"].sockets[Channel.MIP].sendto(data, (GW_STATIC, net.mip_port))
    net.settle()
    assert gw(net, "gw-static").counters["dropped.unexpected"] == 1


# -- expiry and deregistration everywhere -------------------------------------------------------------


def test_deregistration_leaves_every_node_clean_at_once(net: Network) -> None:
    assert register(net).code == 0
    assert all(table(net, name) for name in ("fa1", "ha", *GATEWAYS))
    net.advance(1.0)
    net.nodes["mn"].agent.deregister(net.clock)  # type: ignore[attr-defined]
    net.settle()
    assert net.nodes["mn"].done()[-1].lifetime == 0
    nothing_left(net)  # no clock advance: right after the reply
    requests = ha(net).counters["binding_requests"]
    net.advance(700.0)  # no timer of the old binding fires later
    assert ha(net).counters["binding_requests"] == requests == 0
    assert ha(net).counters["bindings_expired"] == 0 and fa(net, "fa1").counters["visitors_expired"] == 0


def test_the_ha_binding_and_the_fa_visitor_expire_with_their_sas(tmp_path: Path) -> None:
    net = build(tmp_path, lifetime=30)
    try:
        assert register(net).code == 0
        net.advance(29.0)
        assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
        assert table(net, "gw-static") == [("HA_GW", HA)] and table(net, "gw-dynamic") == [("FA_GW", FA1)]
        net.advance(1.5)
        assert ha(net).counters["bindings_expired"] == 1
        assert fa(net, "fa1").counters["visitors_expired"] == 1
        # the HA's expiry withdrew the gateways' bindings (lifetime 0) at the same moment
        for name in GATEWAYS:
            assert net.nodes[name].done()[-1].detail == "binding removed", name
        nothing_left(net)
    finally:
        net.close()


@pytest.mark.parametrize(
    ("survivor", "counter"),
    [("fa1", "visitors_expired"), ("ha", "bindings_expired"), ("gw-static", "bindings_expired")],
)
def test_each_node_expires_its_state_on_its_own(tmp_path: Path, survivor: str, counter: str) -> None:
    # After the registration every other node vanishes (no withdrawal, no
    # answer, no timer of theirs fires): the survivor's own timer still
    # removes its entry and its SAs when the lifetime ends.
    net = build(tmp_path, lifetime=30)
    try:
        assert register(net).code == 0
        for name in [n for n in net.nodes if n != survivor]:
            for sock in net.nodes.pop(name).sockets.values():
                sock.close()
        net.advance(29.0)
        assert table(net, survivor) != []
        net.advance(1.5)
        agent = net.nodes[survivor].agent
        assert agent.counters[counter] == 1
        assert table(net, survivor) == []
        assert not getattr(agent, "visitors", None) and not getattr(agent, "bindings", None)
    finally:
        net.close()


def test_nothing_stale_after_moves_fa1_fa2_fa1(tmp_path: Path) -> None:
    net = build(tmp_path, lifetime=20)
    try:
        start = net.clock
        assert register(net, FA1).code == 0
        net.advance(5.0)
        assert register(net, FA2, previous=FA1).code == 0
        net.advance(5.0)
        assert register(net, FA1, previous=FA2).code == 0  # t = 10 s, epoch 3
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
        assert table(net, "gw-dynamic") == [("FA_GW", FA1)]
        # (the FAs' exact tables also depend on smooth handoff, flow E: only what G decides is checked)
        assert {("FA_GW", GW_DYNAMIC), ("FA_HA", HA)} <= set(table(net, "fa1"))
        assert table(net, "fa2") != []  # its visitor, or a forwarding path (flow E), until its lifetime ends
        assert len(fa(net, "fa1").visitors) == 1
        net.advance(25.5 - (net.clock - start))  # FA2's visitor (registered at 5 s) is gone
        assert table(net, "fa2") == [] and fa(net, "fa2").visitors == {}
        assert not getattr(fa(net, "fa2"), "forwarding", None)
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
        assert {("FA_GW", GW_DYNAMIC), ("FA_HA", HA)} <= set(table(net, "fa1"))
        assert table(net, "gw-static") == [("HA_GW", HA)] and table(net, "gw-dynamic") == [("FA_GW", FA1)]
        net.advance(30.5 - (net.clock - start))  # the last registration (10 s + 20 s) is over
        nothing_left(net)
        assert ha(net).counters["bindings_expired"] == 1
        assert fa(net, "fa1").counters["visitors_expired"] == 1
        # the home AAA's session outlives the registration only by its own lifetime
        (session,) = net.store.find_sessions("mn1@home.example")
        assert session.epoch == 3
    finally:
        net.close()


# -- configuration ------------------------------------------------------------------------------------


def test_refresh_options_reach_the_gateway(tmp_path: Path) -> None:
    key_file = tmp_path / "gw.key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    config = tmp_path / "gw.toml"
    config.write_text(
        'address = "192.0.2.10"\ngateway_key_file = "gw.key"\nrefresh_threshold = 0.25\nrefresh_retries = 5\n'
    )
    settings = load_agent_settings("gw", config, {})
    gw_config = role_config(settings)
    assert isinstance(gw_config, GwConfig)
    assert (gw_config.refresh_threshold, gw_config.refresh_retries) == (0.25, 5)
    settings = load_agent_settings("gw", config, {"refresh_threshold": 0.1})
    assert role_config(settings).refresh_threshold == 0.1  # type: ignore[union-attr]
    for bad in ({"refresh_threshold": 1.0}, {"refresh_threshold": 0.0}, {"refresh_retries": -1}):
        with pytest.raises(ValidationError):
            load_agent_settings("gw", config, bad)
    ha_config = tmp_path / "ha.toml"
    ha_config.write_text('address = "192.0.2.2"\nrefresh_threshold = 0.5\n')
    with pytest.raises(ValidationError, match="refresh_threshold is not a known setting"):
        load_agent_settings("ha", ha_config, {})
    with pytest.raises(ValueError):
        GwConfig(IPv4Address("192.0.2.10"), Secret(b"k" * 32), refresh_threshold=1.5)


def test_agent_gw_check_shows_the_refresh_options(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    key = tmp_path / "gw.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    base = [sys.executable, "-m", "aaa_vpn.cli", "--json", "agent", "gw", "--address", "127.0.0.21"]
    base += ["--gateway-key-file", str(key)]
    repo = Path(__file__).resolve().parent.parent
    ok = subprocess.run(
        [*base, "--refresh-threshold", "0.3", "--refresh-retries", "2", "--check"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    document = json.loads(ok.stdout)
    assert (document["refresh_threshold"], document["refresh_retries"]) == (0.3, 2)
    bad = subprocess.run(
        [*base, "--refresh-threshold", "1", "--check"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "--refresh-threshold" in bad.stderr, bad.stderr


# -- re-keying (home_aaa rule 8, docs/protocol.md section 4) ------------------------------------------


def short_lived_keys(net: Network, sa_lifetime: int = 100) -> None:
    """Give both services an SA lifetime of ``sa_lifetime`` seconds."""
    for name in ("gold", "silver"):
        net.store.update_service(dataclasses.replace(net.store.get_service(name), sa_lifetime=sa_lifetime))


def all_spis(net: Network) -> dict[str, set[int]]:
    return {
        name: {spi for _, spi_in, spi_out in spis(net, name) for spi in (spi_in, spi_out)}
        for name in ("fa1", "ha", "gw-static", "gw-dynamic")
    }


def test_no_registration_outlives_its_keys_and_a_due_renewal_rekeys_every_path(net: Network) -> None:
    short_lived_keys(net, 100)
    start = net.clock
    # asked for 600 s, granted only what the keys have left (100 s), at the HA and so at the node
    done = register(net)
    assert (done.code, done.lifetime) == (0, 100)
    (first,) = net.store.find_sessions("mn1@home.example")
    assert (first.epoch, first.stationary_epoch, first.keyed_at) == (1, 1, start)
    before = all_spis(net)
    # a renewal before half the SA lifetime: same keys, and still not past their lifetime
    net.advance(30.0)
    done = register(net)
    assert (done.code, done.lifetime) == (0, 70)
    assert all_spis(net) == before
    # past half of it: the renewal re-keys everything, stationary paths included
    net.advance(25.0)
    done = register(net)
    assert (done.code, done.lifetime) == (0, 100)
    (rekeyed,) = net.store.find_sessions("mn1@home.example")
    assert (rekeyed.session_id, rekeyed.epoch, rekeyed.stationary_epoch) == (first.session_id, 2, 2)
    assert rekeyed.keyed_at == start + 55.0
    after = all_spis(net)
    for name, old in before.items():
        assert after[name] and not after[name] & old, f"{name} kept SPIs of the old keys"
    assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    assert table(net, "gw-static") == [("HA_GW", HA)] and table(net, "gw-dynamic") == [("FA_GW", FA1)]
    # both ends of every path agree on the new SPIs
    for a, b in (("fa1", "ha"), ("ha", "gw-static"), ("fa1", "gw-dynamic")):
        a_paths = {
            (p.path.spi_in, p.path.spi_out) for p in net.nodes[a].backend.paths() if str(p.peer) == net.nodes[b].address
        }  # type: ignore[union-attr]
        b_paths = {
            (p.path.spi_out, p.path.spi_in) for p in net.nodes[b].backend.paths() if str(p.peer) == net.nodes[a].address
        }  # type: ignore[union-attr]
        assert a_paths == b_paths, (a, b)


def test_a_node_that_stops_renewing_loses_its_sas_before_their_lifetime_ends(net: Network) -> None:
    short_lived_keys(net, 100)
    assert register(net).code == 0
    net.advance(99.0)
    assert table(net, "ha") and table(net, "fa1")
    net.advance(1.5)
    nothing_left(net)
