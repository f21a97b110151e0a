"""Flows A and B of docs/design.md section 2, and the ways a registration fails,
with the whole system in one process on loopback and a fake clock
(tests/mobility.py). After every step each node's SA table is checked, and
packets encrypted at one end of a path must decrypt at the other end and
nowhere else."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from aaa_vpn.roles.agent import RegistrationDone
from aaa_vpn.sa.esp import EspError
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.store import init_store
from aaa_vpn.wire.mip import ReplyCode
from aaa_vpn.wire.profile import PathRole

from . import mobility
from .mobility import (
    CN_DYNAMIC,
    CN_STATIC,
    FA1,
    FA2,
    GW_DYNAMIC,
    GW_STATIC,
    HA,
    HOME_ADDRESS,
    Network,
    inner_packet,
    provision,
    random_payload,
)


@pytest.fixture(autouse=True, params=["memory", "sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every flow runs on the in-memory store and on both databases."""
    if request.param == "sqlite":
        monkeypatch.setattr(mobility, "new_store", lambda: init_store(tmp_path / "flows.db")[0])
    elif request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        monkeypatch.setattr(mobility, "new_store", lambda: init_store(url, tmp_path / "flows.key")[0])
    return str(request.param)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    network.standard()
    yield network
    network.close()


def backend(net: Network, name: str) -> MemoryBackend:
    node_backend = net.nodes[name].backend
    assert node_backend is not None
    return node_backend


def table(net: Network, name: str) -> list[tuple[str, str]]:
    """A node's installed paths as (role, peer), sorted."""
    return sorted((p.path.role.name, str(p.peer)) for p in backend(net, name).paths())


def mn_result(net: Network) -> RegistrationDone:
    done = net.nodes["mn"].done()
    assert done, "the mobile node got no answer"
    return done[-1]


def register(net: Network, fa: str = FA1) -> RegistrationDone:
    net.nodes["mn"].agent.register(net.fa_address(fa), net.clock)  # type: ignore[attr-defined]
    net.settle()
    return mn_result(net)


def only_at(net: Network, sender: str, inner: bytes, receiver: str) -> bytes:
    """Encrypt ``inner`` at ``sender``; it must decrypt at ``receiver`` and at no other node."""
    protected = backend(net, sender).protect(inner)
    assert protected is not None, f"{sender} has no SA for this packet"
    destination, outer = protected
    assert str(destination) == net.nodes[receiver].address
    for name, node in net.nodes.items():
        if node.backend is None or name in (sender, receiver):
            continue
        with pytest.raises(EspError):
            node.backend.unprotect(outer)
    return backend(net, receiver).unprotect(outer)


def test_flow_a_static_gateway(net: Network) -> None:
    result = register(net)
    assert (result.code, result.lifetime) == (0, 600), result
    # FA: only its path to the HA carries traffic to the static correspondent
    assert ("FA_HA", HA) in table(net, "fa1")
    # HA: toward the FA, and the stationary path toward the static gateway
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    # the static gateway learnt its side from the HA's Binding Update
    assert table(net, "gw-static") == [("HA_GW", HA)]
    # MN -> correspondent: FA -> HA -> static gateway, encrypted on every hop
    outbound = inner_packet(HOME_ADDRESS, CN_STATIC, random_payload())
    assert only_at(net, "fa1", outbound, "ha") == outbound
    assert only_at(net, "ha", outbound, "gw-static") == outbound
    # correspondent -> MN: the reverse
    inbound = inner_packet(CN_STATIC, HOME_ADDRESS, random_payload())
    assert only_at(net, "gw-static", inbound, "ha") == inbound
    assert only_at(net, "ha", inbound, "fa1") == inbound
    # the other FA has nothing
    assert table(net, "fa2") == []


def test_flow_b_dynamic_gateway(net: Network) -> None:
    result = register(net)
    assert result.code == 0
    # FA: a path to the HA and a direct one to the dynamic gateway
    assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    # the dynamic gateway installed its side toward the FA before the HA replied
    assert table(net, "gw-dynamic") == [("FA_GW", FA1)]
    gw_done = net.nodes["gw-dynamic"].done()
    assert gw_done and gw_done[0].code == 0
    # the binding acknowledge came before the registration reply
    ha_done = net.nodes["ha"].done()
    assert ha_done[-1].code == 0
    # route optimisation: FA <-> dynamic gateway directly, the HA sees nothing
    outbound = inner_packet(HOME_ADDRESS, CN_DYNAMIC, random_payload())
    assert only_at(net, "fa1", outbound, "gw-dynamic") == outbound
    inbound = inner_packet(CN_DYNAMIC, HOME_ADDRESS, random_payload())
    assert only_at(net, "gw-dynamic", inbound, "fa1") == inbound
    # the same keys as the home AAA derives: the FA-GW SPIs match the session's
    (session,) = net.store.find_sessions("mn1@home.example")
    spis = {a.path: a.spi for a in session.spis}
    fa_gw = next(p.path for p in backend(net, "fa1").paths() if p.path.role is PathRole.FA_GW)
    assert fa_gw.spi_in == spis[f"fa-gw:{GW_DYNAMIC}:203.0.113.128/25@{FA1}"]


def test_renewal_through_the_same_fa_keeps_the_session_and_its_sas(net: Network) -> None:
    assert register(net).code == 0
    tables = {
        name: sorted((p.owner, p.spi_in) for p in backend(net, name).paths())
        for name in ("fa1", "ha", "gw-static", "gw-dynamic")
    }
    (before,) = net.store.find_sessions("mn1@home.example")
    net.advance(2.0)
    assert register(net).code == 0
    (after,) = net.store.find_sessions("mn1@home.example")
    assert (after.session_id, after.epoch) == (before.session_id, before.epoch)
    # the expiry moves, but never past the keys' lifetime (home_aaa rule 8:
    # SA lifetime 3600 s = the session lifetime here, counted from the first registration)
    assert after.expires == before.expires == after.keyed_at + 3600
    for name, paths in tables.items():
        assert sorted((p.owner, p.spi_in) for p in backend(net, name).paths()) == paths, name
    # the gateways refreshed their bindings rather than installing anything
    assert net.nodes["gw-dynamic"].done()[-1].detail == "binding refreshed"


def move(net: Network, fa: str, previous: str) -> RegistrationDone:
    net.nodes["mn"].agent.register(net.fa_address(fa), net.clock, previous_fa=IPv4Address(previous))  # type: ignore[attr-defined]
    net.settle()
    return mn_result(net)


def test_handoff_moves_the_fa_side_and_keeps_the_stationary_path(net: Network) -> None:
    assert register(net).code == 0
    static_before = [(p.owner, p.spi_in) for p in backend(net, "gw-static").paths()]
    ha_gw_before = [p.spi_in for p in backend(net, "ha").paths() if p.path.role is PathRole.HA_GW]
    stale = backend(net, "fa1").protect(inner_packet(HOME_ADDRESS, CN_STATIC))
    assert stale is not None
    net.advance(2.0)
    assert move(net, FA2, FA1).code == 0
    # the session moved: same session, next epoch, new care-of address
    (session,) = net.store.find_sessions("mn1@home.example")
    assert (str(session.care_of_address), session.epoch) == (FA2, 2)
    # HA: toward FA2 now, never toward FA1; the stationary path untouched
    assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", GW_STATIC)]
    assert [p.spi_in for p in backend(net, "ha").paths() if p.path.role is PathRole.HA_GW] == ha_gw_before
    assert [(p.owner, p.spi_in) for p in backend(net, "gw-static").paths()] == static_before
    # the dynamic gateway follows the node to FA2 (make before break)
    assert table(net, "gw-dynamic") == [("FA_GW", FA2)]
    # smooth handoff (flow E, tests/test_smooth_handoff.py): FA2 also holds the
    # receiving end of the forwarding path from FA1 for a while
    assert table(net, "fa2") == [("FA_FA", FA1), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    # traffic flows through FA2; what FA1 still encrypts no longer decrypts anywhere
    outbound = inner_packet(HOME_ADDRESS, CN_STATIC, random_payload())
    assert only_at(net, "fa2", outbound, "ha") == outbound
    assert only_at(net, "ha", inbound := inner_packet(CN_STATIC, HOME_ADDRESS), "fa2") == inbound
    direct = inner_packet(HOME_ADDRESS, CN_DYNAMIC, random_payload())
    assert only_at(net, "fa2", direct, "gw-dynamic") == direct
    with pytest.raises(EspError):
        backend(net, "ha").unprotect(stale[1])
    # the old FA no longer keeps its visitor's SAs until the lifetime ends: the
    # Previous-FA Notification (flow E) replaced them with the forwarding path
    # toward FA2, which both ends remove when the forwarding lifetime ends
    assert table(net, "fa1") == [("FA_FA", FA2)]
    net.advance(11.0)
    assert table(net, "fa1") == []
    assert table(net, "fa2") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]


def test_back_to_the_first_fa_uses_fresh_keys(net: Network) -> None:
    assert register(net).code == 0
    first = {p.spi_in: p.path.key_in for p in backend(net, "fa1").paths()}
    net.advance(2.0)
    assert move(net, FA2, FA1).code == 0
    net.advance(2.0)
    assert move(net, FA1, FA2).code == 0
    (session,) = net.store.find_sessions("mn1@home.example")
    assert (str(session.care_of_address), session.epoch) == (FA1, 3)
    now = {p.spi_in: p.path.key_in for p in backend(net, "fa1").paths() if p.path.role is not PathRole.FA_FA}
    assert len(now) == len(first)  # the first visit's paths were replaced, not kept beside
    assert not set(first.values()) & set(now.values())  # epoch 3: no key repeats
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    # smooth handoff (flow E): FA1's forwarding toward FA2 ended when the node
    # came back; FA2 (whose visitor used to stay until it expired) now forwards to FA1
    assert table(net, "fa1") == [("FA_FA", FA2), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert table(net, "fa2") == [("FA_FA", FA1)]
    outbound = inner_packet(HOME_ADDRESS, CN_DYNAMIC, random_payload())
    assert only_at(net, "fa1", outbound, "gw-dynamic") == outbound


def test_deregistration_tears_everything_down(net: Network) -> None:
    assert register(net).code == 0
    net.advance(1.0)
    net.nodes["mn"].agent.deregister(net.clock)  # type: ignore[attr-defined]
    net.settle()
    result = mn_result(net)
    assert (result.code, result.lifetime) == (0, 0)
    for name in ("fa1", "ha", "gw-static", "gw-dynamic"):
        assert table(net, name) == [], name


def no_sas_anywhere(net: Network) -> None:
    for name, node in net.nodes.items():
        if node.backend is not None:
            assert node.backend.paths() == [], f"{name} kept SAs"


def test_bad_mn_aaa_secret_is_67_and_leaves_nothing(tmp_path: Path) -> None:
    net = Network(tmp_path)
    net.standard()
    try:
        from aaa_vpn.secret import Secret

        mn = net.nodes["mn"].agent
        object.__setattr__(mn.config, "mn_aaa_secret", Secret(b"not-the-secret"))  # type: ignore[attr-defined]
        assert register(net).code == ReplyCode.FA_MN_FAILED_AUTHENTICATION
        no_sas_anywhere(net)
    finally:
        net.close()


def test_unknown_user_is_67(tmp_path: Path) -> None:
    def nobody(store: object) -> None:
        provision(store)  # type: ignore[arg-type]
        store.delete_user("mn1@home.example")  # type: ignore[attr-defined]

    net = Network(tmp_path, nobody)
    net.standard()
    try:
        assert register(net).code == ReplyCode.FA_MN_FAILED_AUTHENTICATION
        no_sas_anywhere(net)
    finally:
        net.close()


def test_aaa_unreachable_is_66_after_the_radius_retries(net: Network) -> None:
    net.aaa_up = False
    net.nodes["mn"].agent.register(net.fa_address(FA1), net.clock)  # type: ignore[attr-defined]
    net.settle()
    net.advance(20.0)  # RADIUS timeouts and retries; the MN retransmits meanwhile
    codes = [d.code for d in net.nodes["fa1"].done()]
    assert ReplyCode.FA_INSUFFICIENT_RESOURCES in codes, codes
    no_sas_anywhere(net)


def test_ha_unreachable_is_78_and_the_fa_rolls_back(tmp_path: Path) -> None:
    net = Network(tmp_path)
    net.add_fa("fa1", FA1, ha_timeout=3.0)
    net.add_gw("gw-static", GW_STATIC)
    net.add_mn(retransmit=30.0)
    try:
        net.nodes["mn"].agent.register(net.fa_address(FA1), net.clock)  # type: ignore[attr-defined]
        net.settle()
        # AAA accepted: the FA installed its paths and relayed to a silent HA
        assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
        net.advance(3.5)
        assert mn_result(net).code == ReplyCode.FA_REGISTRATION_TIMEOUT
        no_sas_anywhere(net)
    finally:
        net.close()


def test_replayed_request_changes_nothing(net: Network) -> None:
    assert register(net).code == 0
    fa_node = net.nodes["fa1"]
    # capture what the MN would send and send the identical bytes again later
    mn = net.nodes["mn"].agent
    mn.register(net.fa_address(FA1), net.clock)  # type: ignore[attr-defined]
    (datagram,) = mn.datagrams_to_send(net.clock)
    net.nodes["mn"].sockets[datagram.channel].sendto(datagram.data, datagram.address)
    net.settle()
    assert mn_result(net).code == 0
    before = {name: table(net, name) for name in ("fa1", "ha", "gw-static", "gw-dynamic")}
    sessions = net.store.find_sessions("mn1@home.example")
    decided = len(fa_node.done())
    # within the challenge's lifetime the same bytes are a retransmission of an
    # accepted registration (fa.py R2): the HA answers them again from its reply
    # cache, nothing is asked of AAA, installed or decided anew
    net.advance(1.0)
    net.nodes["mn"].sockets[datagram.channel].sendto(datagram.data, datagram.address)
    net.settle()
    assert fa_node.agent.counters["retransmissions_repeated"] == 1
    assert net.nodes["ha"].agent.counters["duplicates_answered"] == 1
    assert len(fa_node.done()) == decided
    assert net.store.find_sessions("mn1@home.example") == sessions
    assert {name: table(net, name) for name in before} == before
    # later the FA's challenge is simply used: 104 (unknown challenge), nothing changes
    net.advance(30.0)
    net.nodes["mn"].sockets[datagram.channel].sendto(datagram.data, datagram.address)
    net.settle()
    assert fa_node.done()[-1].code == ReplyCode.FA_UNKNOWN_CHALLENGE
    assert {name: table(net, name) for name in before} == before


def test_forged_binding_update_is_ignored(net: Network) -> None:
    from aaa_vpn import keys
    from aaa_vpn.secret import Secret
    from aaa_vpn.wire import mip
    from aaa_vpn.wire.mip_auth import append_generalized_authentication

    update = mip.BindingUpdate(
        lifetime=600,
        home_address=IPv4Address(HOME_ADDRESS),
        care_of_address=IPv4Address("127.0.0.66"),
        identification=1,
    )
    wrong_key = keys.binding_subkeys(Secret(b"guessed-binding-key"))[0]
    data = append_generalized_authentication(
        mip.encode_binding_message(update), mip.GeneralizedAuthSubtype.BINDING, 256, wrong_key
    )
    net.nodes["ha"].sockets[next(iter(net.nodes["ha"].sockets))].sendto(data, (GW_DYNAMIC, net.mip_port))
    net.settle()
    gw = net.nodes["gw-dynamic"]
    assert gw.agent.counters["dropped.bad_binding_auth"] == 1
    assert table(net, "gw-dynamic") == [] and gw.done() == []


def test_a_vpn_change_rolls_out_at_the_next_registration(tmp_path: Path) -> None:
    from ipaddress import IPv4Network

    from aaa_vpn.model import VpnRecord

    net = Network(tmp_path, lambda store: provision(store, gateways=("static",)))
    net.standard()
    try:
        assert register(net).code == 0
        assert table(net, "fa1") == [("FA_HA", HA)]
        assert table(net, "gw-dynamic") == []
        # the operator adds a correspondent behind the dynamic gateway
        net.store.add_vpn_record(VpnRecord("mn1@home.example", IPv4Network("203.0.113.128/25"), "gw-dynamic", "silver"))
        net.advance(2.0)
        assert register(net).code == 0
        (session,) = net.store.find_sessions("mn1@home.example")
        assert session.epoch == 2  # the VPN changed: a new epoch, new FA-side keys
        assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
        assert table(net, "gw-dynamic") == [("FA_GW", FA1)]
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
        outbound = inner_packet(HOME_ADDRESS, CN_DYNAMIC, random_payload())
        assert only_at(net, "fa1", outbound, "gw-dynamic") == outbound
    finally:
        net.close()


def test_flow_c_same_domain_handoff_answered_by_the_foreign_aaa(tmp_path: Path) -> None:
    net = Network(tmp_path, foreign=True)
    net.standard()
    try:
        foreign = net.foreign
        assert foreign is not None
        assert register(net).code == 0  # flows A+B through the foreign AAA
        assert foreign.counters["proxied"] == 1
        (session,) = net.store.find_sessions("mn1@home.example")
        assert session.foreign_domain == ""  # proxied for a client without a configured domain
        cached = foreign.lookup("mn1@home.example", IPv4Address(FA1), net.clock)
        assert cached is not None and cached.profile.session_root_key == session.session_root_key
        static_before = [(p.owner, p.spi_in) for p in backend(net, "gw-static").paths()]
        net.advance(2.0)
        assert move(net, FA2, FA1).code == 0
        # the foreign AAA answered the new FA itself: nothing more went home from it
        assert foreign.counters["proxied"] == 1 and foreign.counters["handoffs_answered"] == 1
        # the home AAA learnt the move from the HA and derived the same keys and SPIs
        (moved,) = net.store.find_sessions("mn1@home.example")
        assert (moved.session_id, moved.epoch, str(moved.care_of_address)) == (session.session_id, 2, FA2)
        fa2_paths = {p.path.role: p.path for p in backend(net, "fa2").paths()}
        ha_fa = next(p.path for p in backend(net, "ha").paths() if p.path.role is PathRole.FA_HA)
        assert (ha_fa.peer, ha_fa.spi_out, ha_fa.key_out) == (
            IPv4Address(FA2),
            fa2_paths[PathRole.FA_HA].spi_in,
            fa2_paths[PathRole.FA_HA].key_in,
        )
        assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", GW_STATIC)]
        assert table(net, "gw-dynamic") == [("FA_GW", FA2)]
        assert [(p.owner, p.spi_in) for p in backend(net, "gw-static").paths()] == static_before
        outbound = inner_packet(HOME_ADDRESS, CN_STATIC, random_payload())
        assert only_at(net, "fa2", outbound, "ha") == outbound
        direct = inner_packet(HOME_ADDRESS, CN_DYNAMIC, random_payload())
        assert only_at(net, "fa2", direct, "gw-dynamic") == direct
        # and back: answered locally again, epoch 3
        net.advance(2.0)
        assert move(net, FA1, FA2).code == 0
        assert foreign.counters["handoffs_answered"] == 2 and foreign.counters["proxied"] == 1
        (back,) = net.store.find_sessions("mn1@home.example")
        assert (back.epoch, str(back.care_of_address)) == (3, FA1)
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    finally:
        net.close()


def test_a_gateway_that_never_acknowledges_rolls_everything_back(tmp_path: Path) -> None:
    from aaa_vpn.roles.gw import CorrespondentGateway, GwConfig
    from aaa_vpn.secret import Secret

    net = Network(tmp_path)
    net.add_ha(gateway_timeout=2.0)
    net.add_fa("fa1", FA1)
    net.add_gw("gw-static", GW_STATIC)
    # the dynamic gateway has the wrong provisioned key: it cannot authenticate the
    # HA's Binding Update, drops it and never answers
    wrong = CorrespondentGateway(GwConfig(IPv4Address(GW_DYNAMIC), Secret(b"not-the-gateway-key")))
    net._add("gw-dynamic", wrong, GW_DYNAMIC, net.mip_port, radius=False, backend=True)
    net.add_mn(retransmit=30.0)
    try:
        net.nodes["mn"].agent.register(net.fa_address(FA1), net.clock)  # type: ignore[attr-defined]
        net.settle()
        assert table(net, "gw-static") == [("HA_GW", HA)]  # the static gateway did install
        net.advance(2.5)  # the HA gives up waiting for the dynamic gateway
        assert mn_result(net).code == ReplyCode.HA_INSUFFICIENT_RESOURCES
        assert wrong.counters["dropped.bad_binding_auth"] >= 1  # the update (and the withdrawal)
        no_sas_anywhere(net)  # the HA withdrew the static gateway's binding too
    finally:
        net.close()
