"""Recovery: sessions survive a home AAA restart, and a foreign AAA
that lost its cache falls back to the home domain."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from aaa_vpn.roles.foreign_aaa import ForeignAaa, ProxyClient, Realm
from aaa_vpn.roles.radius_client import ServerConfig

from .mobility import AAA, AAAF, FA1, FA2, GW_DYNAMIC, GW_STATIC, SECRETS, Network
from .test_flows import backend, move, register, table


def restart_home_aaa(net: Network, tmp_path: Path) -> None:
    """A new home AAA on the same store: empty caches, nothing but what the
    store holds (the process restarted)."""
    net.restart_home()


def test_sessions_survive_a_home_aaa_restart(tmp_path: Path) -> None:
    net = Network(tmp_path)
    net.standard()
    try:
        assert register(net).code == 0
        (before,) = net.store.find_sessions("mn1@home.example")
        tables = {name: table(net, name) for name in ("fa1", "ha", "gw-static", "gw-dynamic")}
        restart_home_aaa(net, tmp_path)
        net.advance(2.0)
        # a renewal after the restart: the same session and keys (nothing reinstalled)
        spis = sorted(p.spi_in for p in backend(net, "fa1").paths())
        assert register(net).code == 0
        (after,) = net.store.find_sessions("mn1@home.example")
        assert (after.session_id, after.epoch) == (before.session_id, before.epoch)
        assert after.session_root_key == before.session_root_key
        assert sorted(p.spi_in for p in backend(net, "fa1").paths()) == spis
        assert {name: table(net, name) for name in tables} == tables
        # and a handoff after another restart: the HA's request finds the session
        restart_home_aaa(net, tmp_path)
        net.advance(2.0)
        assert move(net, FA2, FA1).code == 0
        (moved,) = net.store.find_sessions("mn1@home.example")
        assert (moved.session_id, moved.epoch, str(moved.care_of_address)) == (before.session_id, 2, FA2)
        assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", GW_STATIC)]
    finally:
        net.close()


def test_a_foreign_aaa_without_its_cache_asks_the_home_domain(tmp_path: Path) -> None:
    net = Network(tmp_path, foreign=True)
    net.standard()
    try:
        assert register(net).code == 0
        assert net.foreign is not None and net.foreign.counters["proxied"] == 1
        # the foreign AAA restarts: same configuration, empty cache
        net.foreign = ForeignAaa(
            [ProxyClient(f"fa-{a}", IPv4Network(f"{a}/32"), SECRETS[a]) for a in (FA1, FA2)],
            [Realm("home.example", (ServerConfig(AAA, net.radius_port, SECRETS[AAAF]),))],
            now=net.clock,
        )
        net.advance(2.0)
        assert move(net, FA2, FA1).code == 0
        # not answered locally: proxied home, where the home AAA moved the session (flow D)
        assert net.foreign.counters["handoffs_answered"] == 0 and net.foreign.counters["proxied"] == 1
        (session,) = net.store.find_sessions("mn1@home.example")
        assert (session.epoch, str(session.care_of_address)) == (2, FA2)
        assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", GW_STATIC)]
        assert ("FA_GW", GW_DYNAMIC) in table(net, "fa2")
        # and the cache is filled again: the next same-domain handoff is local
        assert net.foreign.lookup("mn1@home.example", IPv4Address(FA2), net.clock) is not None
        net.advance(2.0)
        assert move(net, FA1, FA2).code == 0
        assert net.foreign.counters["handoffs_answered"] == 1
        assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    finally:
        net.close()


def test_a_restarted_home_aaa_process_still_knows_the_session(tmp_path: Path) -> None:
    from aaa_vpn.wire import radius as rc
    from aaa_vpn.wire.profile import RequestType
    from aaa_vpn.wire.radius_profile import decode_profile

    from .radius_client import access_request, exchange, served_port, wait_until_serving
    from .test_home_server import HA_SECRET, MN_SECRET, NAI, SECRET, provision, start_server, stop

    db = tmp_path / "vpn.db"
    provision(db)
    process = start_server(db, 0, 1, tmp_path / "first.log")
    try:
        server = ("127.0.0.1", served_port(process, tmp_path / "first.log"))
        wait_until_serving(server, SECRET)
        ex = exchange(server, access_request(SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2"))
        assert ex.code == rc.ACCESS_ACCEPT
        fa_view = decode_profile(ex.reply[20:], SECRET, ex.authenticator)
    finally:
        assert stop(process) == 0
    process = start_server(db, 0, 2, tmp_path / "second.log")  # the restarted server: a port of its own
    try:
        server = ("127.0.0.1", served_port(process, tmp_path / "second.log"))
        wait_until_serving(server, SECRET)
        # the HA asks after the restart: the stored session answers, mirrored to the FA's view
        request = access_request(
            HA_SECRET, NAI, MN_SECRET, nas_ip="127.0.0.2", care_of="127.0.0.1", request_type=RequestType.HA_REGISTRATION
        )
        ex = exchange(server, request, source=("127.0.0.2", 0))
        assert ex.code == rc.ACCESS_ACCEPT, ex.attributes
        ha_view = decode_profile(ex.reply[20:], HA_SECRET, ex.authenticator)
        assert ha_view.session_id == fa_view.session_id
        at_fa = {p.role: p for p in fa_view.paths}
        at_ha = {p.role: p for p in ha_view.paths if p.local == ha_view.home_agent}
        for role, path in at_ha.items():
            if role in at_fa:
                assert (path.spi_in, path.key_in) == (at_fa[role].spi_out, at_fa[role].key_out)
        # and the FA's renewal (naming the session) keeps it
        renewal = access_request(
            SECRET, NAI, MN_SECRET, care_of="127.0.0.1", home_agent="127.0.0.2", session_id=fa_view.session_id
        )
        ex = exchange(server, renewal)
        assert decode_profile(ex.reply[20:], SECRET, ex.authenticator).session_id == fa_view.session_id
    finally:
        assert stop(process) == 0
