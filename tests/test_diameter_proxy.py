"""The foreign AAA as a Diameter proxy agent (roles/diameter_proxy.py with
roles/diameter_peer.py's ``forward``) between real nodes in memory, a fake
clock: what the home peer receives, what the FA gets back, failover with the
T bit, 3002/3004/3005/5012, duplicates; and the ``protocol = "diameter"``
realms of ``serve foreign``'s file."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from aaa_vpn.model import ValidationError
from aaa_vpn.net.diameter_agent import client_tls
from aaa_vpn.net.diameter_server import DiameterHomeServer, DiameterOptions
from aaa_vpn.net.foreign_diameter import ForeignDiameterFront
from aaa_vpn.roles import diameter_peer as p
from aaa_vpn.roles.diameter_proxy import DiameterPeerConfig, DiameterProxy, DiameterRealm, Reply
from aaa_vpn.roles.foreign_aaa import ForeignAaa, ProxyClient
from aaa_vpn.secret import Secret
from aaa_vpn.service.foreign import load_foreign_settings
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Message, ResultCode
from aaa_vpn.wire.diameter_profile import PATH_AVP, decode_profile_avps, encode_profile_avps
from aaa_vpn.wire.profile import VENDOR_ID, VpnProfile
from aaa_vpn.wire.radius import AaaVpnAttr
from tests.diameter_lab import HOME_HOST, Client, certificates, home_service, rrq, start_home, wait_for
from tests.diameter_lab import amr as fa_amr
from tests.mobility import AAAF, FA1, FA2, NAI, SECRETS
from tests.test_diameter_home import _str
from tests.test_diameter_peer import Link, amr, events, node
from tests.test_foreign_aaa import GOOD_CONFIG, write_config

PROXY_HOST = "aaaf.visited.example"
HOMES = ("aaa1.home.example", "aaa2.home.example")
PROXY_INFO = d.avp_grouped(C.PROXY_INFO, [d.avp_text(280, "relay0.visited.example"), d.avp_octets(33, b"state")])
ROOT_KEY = (VENDOR_ID, int(AaaVpnAttr.SESSION_ROOT_KEY))


def profile(root_key: bool = True) -> VpnProfile:
    return VpnProfile(
        session_id="s-1",
        home_address=IPv4Address("10.1.0.5"),
        home_agent=IPv4Address("192.0.2.1"),
        care_of_address=IPv4Address("198.51.100.1"),
        lifetime=600,
        epoch=0,
        fa_ha_spi=300,
        fa_ha_key=Secret(b"f" * 20),
        session_root_key=Secret(b"\x42" * 32) if root_key else None,
    )


@dataclasses.dataclass
class Lab:
    """FA -- proxy -- (aaa1, aaa2), every connection open; the proxy node
    serves home.example locally and hands every request to its DiameterProxy."""

    fa: p.DiameterNode
    proxy: p.DiameterNode
    homes: list[p.DiameterNode]
    role: DiameterProxy
    link: Link
    home_conns: list[int]
    replies: list[Reply] = dataclasses.field(default_factory=list)

    def step(self, now: float) -> None:
        """Carry the messages; let the proxy act on its events."""
        for _ in range(4):
            self.link.run(now)
            for event in events(self.proxy):
                if isinstance(event, p.RequestReceived):
                    realm = event.message.text(C.DESTINATION_REALM) or ""
                    nai = event.message.text(C.USER_NAME) or ""
                    tag = self.role.start(event.handle, event.message, nai, "fa1", realm, now)
                    if isinstance(tag, Message):
                        self.proxy.answer(event.handle, tag, now)
                        continue
                    code = self.node_forward(event.handle, now, tag)
                    if code is not None:
                        self.reply(self.role.not_sent(tag, code), now)
                elif isinstance(event, p.AnswerReceived):
                    self.reply(self.role.answered(event.tag, event.message), now)
                elif isinstance(event, p.RequestFailed):
                    self.reply(self.role.failed(event.tag, event.reason), now)
            for reply in self.role.expire(now):
                self.reply(reply, now)

    def node_forward(self, handle: int, now: float, tag: int) -> int | None:
        return self.proxy.forward(handle, now, tag)

    def reply(self, reply: Reply | None, now: float) -> None:
        if reply is not None:
            self.replies.append(reply)
            self.proxy.answer(reply.handle, reply.answer, now)

    def requests_at(self, index: int) -> list[p.RequestReceived]:
        return [e for e in events(self.homes[index]) if isinstance(e, p.RequestReceived)]

    def answers_at_fa(self) -> list[p.AnswerReceived]:
        return [e for e in events(self.fa) if isinstance(e, p.AnswerReceived)]


def lab(timeout: float = 4.0, limit: int = 100) -> Lab:
    identity = d.Identity(PROXY_HOST, "visited.example")
    role = DiameterProxy(
        identity,
        (DiameterRealm("home.example", tuple(DiameterPeerConfig(h, IPv4Address("192.0.2.9")) for h in HOMES)),),
        timeout,
        limit,
    )
    fa = node("fa1.visited.example", "visited.example", routes={"home.example": [PROXY_HOST]})
    proxy = node(PROXY_HOST, "visited.example", routes=role.routes(), local_realms=("home.example",))
    homes = [node(h, "home.example") for h in HOMES]
    link = Link()
    link.connect(fa, proxy, 0.0)
    conns = [link.connect(proxy, home, 0.0)[0] for home in homes]
    for n in (fa, proxy, *homes):
        events(n)
    return Lab(fa, proxy, homes, role, link, conns)


def home_answers(lab_: Lab, index: int, now: float, request: p.RequestReceived, avps: list[d.Avp]) -> None:
    home = lab_.homes[index]
    home.answer(request.handle, p.answer_to(request.message, home.identity, ResultCode.SUCCESS, avps), now)


def test_an_amr_goes_home_with_a_route_record_and_the_ama_comes_back_without_the_root_key() -> None:
    lab_ = lab()
    sent = amr("fa1;7", "home.example", PROXY_INFO)
    lab_.fa.send_request(sent, 1.0, tag="amr")
    lab_.step(1.0)
    [at_home] = lab_.requests_at(0)  # the first OKAY peer, in the configured order
    assert not lab_.requests_at(1)
    got = at_home.message
    assert at_home.peer == PROXY_HOST
    # RFC 6733 section 6.1.9: the same request plus a Route-Record naming the
    # peer it came from; Session-Id, End-to-End and Proxy-Info as they were.
    assert [a.as_text() for a in got.find_all(C.ROUTE_RECORD)] == ["fa1.visited.example"]
    assert got.avps[:-1] == sent.avps and got.find(C.PROXY_INFO) == PROXY_INFO
    [fa_conn] = lab_.fa.connections.values()
    assert got.end_to_end != 0 and not got.retransmit
    home_answers(lab_, 0, 1.5, at_home, encode_profile_avps(profile()))
    lab_.step(1.5)
    [answer] = lab_.answers_at_fa()
    ama = answer.message
    assert answer.tag == "amr" and ama.result_code == 2001 and ama.origin_host == HOMES[0]
    assert ama.session_id == "fa1;7" and ama.find(C.PROXY_INFO) == PROXY_INFO
    assert ROOT_KEY not in {(a.vendor, a.code) for a in ama.avps}
    assert decode_profile_avps(ama.avps) == dataclasses.replace(profile(), session_root_key=None)
    # What the cache learns: the whole profile, root key included.
    [reply] = lab_.replies
    assert reply.learned is not None and reply.learned.profile == profile()
    assert (reply.learned.client, reply.learned.realm, reply.learned.server) == ("fa1", "home.example", HOMES[0])
    shown = repr(reply)
    assert "B" * 8 not in shown and "42" * 8 not in shown and "\\x42" not in shown  # the key (0x42...) never shown
    assert lab_.proxy.counters["forwarded"] == 1 and lab_.role.pending == 0
    del fa_conn


def test_a_refusal_is_relayed_as_it_is_and_teaches_nothing() -> None:
    lab_ = lab()
    lab_.fa.send_request(amr(), 1.0, tag="amr")
    lab_.step(1.0)
    [at_home] = lab_.requests_at(0)
    home = lab_.homes[0]
    refusal = p.answer_to(at_home.message, home.identity, ResultCode.AUTHENTICATION_REJECTED, error_message="no")
    home.answer(at_home.handle, refusal, 1.2)
    lab_.step(1.2)
    [answer] = lab_.answers_at_fa()
    assert answer.message.result_code == ResultCode.AUTHENTICATION_REJECTED
    assert answer.message.text(C.ERROR_MESSAGE) == "no"
    assert [r.learned for r in lab_.replies] == [None]


def test_the_home_peer_goes_away_the_request_fails_over_with_the_t_bit_then_3002() -> None:
    lab_ = lab()
    lab_.fa.send_request(amr(), 1.0, tag="amr")
    lab_.step(1.0)
    [first] = lab_.requests_at(0)
    lab_.link.cut.add((id(lab_.proxy), lab_.home_conns[0]))
    lab_.proxy.connection_lost(lab_.home_conns[0], 2.0)
    lab_.step(2.0)
    [again] = lab_.requests_at(1)
    assert again.message.retransmit and again.message.end_to_end == first.message.end_to_end
    assert again.message.find_all(C.ROUTE_RECORD) == first.message.find_all(C.ROUTE_RECORD)
    lab_.link.cut.add((id(lab_.proxy), lab_.home_conns[1]))
    lab_.proxy.connection_lost(lab_.home_conns[1], 3.0)
    lab_.step(3.0)
    [answer] = lab_.answers_at_fa()
    assert answer.message.result_code == ResultCode.UNABLE_TO_DELIVER and answer.message.error
    assert answer.message.u32(C.AUTH_APPLICATION_ID) == d.MOBILE_IPV4_APPLICATION
    assert lab_.role.counters["unable_to_deliver"] == 1 and lab_.proxy.counters["failed_over"] == 1
    # With no home peer open, the next AMR is answered 3002 at once.
    lab_.fa.send_request(amr("fa1;2"), 4.0, tag="next")
    lab_.step(4.0)
    [answer] = lab_.answers_at_fa()
    assert answer.tag == "next" and answer.message.result_code == ResultCode.UNABLE_TO_DELIVER
    assert "no open home peer" in (answer.message.text(C.ERROR_MESSAGE) or "")


def test_no_answer_in_time_is_3002_and_a_late_answer_is_dropped() -> None:
    lab_ = lab(timeout=4.0)
    lab_.fa.send_request(amr(), 1.0, tag="amr")
    lab_.step(1.0)
    [at_home] = lab_.requests_at(0)
    assert lab_.role.get_timer() == 5.0
    lab_.step(4.9)
    assert not lab_.answers_at_fa()
    lab_.step(5.0)
    [answer] = lab_.answers_at_fa()
    assert answer.message.result_code == ResultCode.UNABLE_TO_DELIVER
    assert lab_.role.counters["timeouts"] == 1 and lab_.role.get_timer() is None
    home_answers(lab_, 0, 6.0, at_home, encode_profile_avps(profile()))
    lab_.step(6.0)
    assert not lab_.answers_at_fa() and lab_.role.counters["late_answers"] == 1


def test_a_loop_is_3005_and_a_full_table_3004() -> None:
    lab_ = lab(limit=1)
    lab_.fa.send_request(amr("s-loop", "home.example", d.avp_text(C.ROUTE_RECORD, PROXY_HOST)), 1.0, tag="loop")
    lab_.step(1.0)
    [answer] = lab_.answers_at_fa()
    assert answer.message.result_code == ResultCode.LOOP_DETECTED and not lab_.requests_at(0)
    lab_.fa.send_request(amr("s-1"), 2.0, tag="one")
    lab_.fa.send_request(amr("s-2"), 2.0, tag="two")
    lab_.step(2.0)
    [busy] = lab_.answers_at_fa()
    assert busy.tag == "two" and busy.message.result_code == ResultCode.TOO_BUSY
    assert [r.message.session_id for r in lab_.requests_at(0)] == ["s-1"]


def test_an_ama_whose_profile_does_not_decode_is_not_passed_on() -> None:
    lab_ = lab()
    lab_.fa.send_request(amr(), 1.0, tag="amr")
    lab_.step(1.0)
    [at_home] = lab_.requests_at(0)
    bad = [a for a in encode_profile_avps(profile()) if a.code != AaaVpnAttr.HOME_ADDRESS]
    bad.append(d.avp_octets(PATH_AVP, b"\x00\x00", VENDOR_ID, mandatory=False))
    home_answers(lab_, 0, 1.5, at_home, bad)
    lab_.step(1.5)
    [answer] = lab_.answers_at_fa()
    assert answer.message.result_code == ResultCode.UNABLE_TO_COMPLY
    assert not any(a.vendor == VENDOR_ID for a in answer.message.avps)
    assert lab_.role.counters["undecodable_answers"] == 1


def test_a_retransmission_is_answered_from_the_duplicate_cache_not_sent_home_again() -> None:
    lab_ = lab()
    sent = amr()
    lab_.fa.send_request(sent, 1.0, tag="amr")
    lab_.step(1.0)
    [at_home] = lab_.requests_at(0)
    home_answers(lab_, 0, 1.2, at_home, encode_profile_avps(profile()))
    lab_.step(1.2)
    [first] = lab_.answers_at_fa()
    # The FA sends it again, T bit set, the same End-to-End (RFC 6733 section 6.5).
    [(fa_conn, _)] = [(c, 0) for c in lab_.fa.connections]
    wire = dataclasses.replace(first.message, request=True, hop_by_hop=0x4711, retransmit=True)
    wire = dataclasses.replace(wire, avps=sent.avps, end_to_end=first.message.end_to_end)
    [proxy_conn] = [c for c, conn in lab_.proxy.connections.items() if conn.host == "fa1.visited.example"]
    lab_.proxy.data_received(proxy_conn, wire.encode(), 2.0)
    [(conn, out)] = [(c, data) for c, data in lab_.proxy.data_to_send() if c == proxy_conn]
    again = d.decode_message(out)
    assert (again.hop_by_hop, again.end_to_end) == (0x4711, first.message.end_to_end)
    assert again.result_code == 2001 and ROOT_KEY not in {(a.vendor, a.code) for a in again.avps}
    lab_.step(2.0)
    assert not lab_.requests_at(0) and lab_.proxy.counters["duplicates"] == 1
    del fa_conn, conn


def test_after_the_fas_connection_drops_its_retransmission_goes_home_again_with_the_t_bit() -> None:
    """Rule 4: the FA's connection closes while its AMR is on its way home; it
    connects again and retransmits (T bit, the same End-to-End). The proxy
    forwards that once more; the home node's duplicate detection answers it
    with the first answer, and the late answer to the lost connection is
    dropped (its session still cached)."""
    lab_ = lab()
    sent = amr()
    lab_.fa.send_request(sent, 1.0, tag="amr")
    lab_.step(1.0)
    [first] = lab_.requests_at(0)
    [(fa_side, proxy_side)] = [(a, b) for (n, a), (_, b) in lab_.link.pairs.items() if n == id(lab_.fa)]
    lab_.link.cut |= {(id(lab_.fa), fa_side), (id(lab_.proxy), proxy_side)}
    lab_.fa.connection_lost(fa_side, 1.5)
    lab_.proxy.connection_lost(proxy_side, 1.5)
    events(lab_.fa)
    home_answers(lab_, 0, 1.6, first, encode_profile_avps(profile()))  # to a connection that is gone
    lab_.step(1.6)
    assert [r.learned is not None for r in lab_.replies] == [True]
    lab_.link.connect(lab_.fa, lab_.proxy, 2.0)
    events(lab_.fa)
    # The FA node's own retransmission path (its failover, rule 8): the same
    # request, T bit set, a new Hop-by-Hop on the new connection.
    again = dataclasses.replace(first.message, retransmit=True, avps=sent.avps)
    [conn] = [c for c in lab_.fa.connections.values() if not c.closed]
    lab_.fa._send_request(conn, again, 2.0, p._Pending(again, "home.example", tag="again"))
    lab_.step(2.0)
    assert not lab_.requests_at(0)  # answered by the home node's duplicate cache, not its application
    assert lab_.homes[0].counters["duplicates"] == 1 and lab_.proxy.counters["forwarded"] == 2
    [answer] = lab_.answers_at_fa()
    assert answer.tag == "again" and answer.message.result_code == 2001
    assert answer.message.end_to_end == first.message.end_to_end
    assert ROOT_KEY not in {(a.vendor, a.code) for a in answer.message.avps}


def test_an_asr_of_the_home_aaa_reaches_the_fa_through_the_proxy() -> None:
    """The home AAA sends its ASR to the FA it knows (Destination-Host), through
    the peer the session's AMRs came from: the proxy relays it (rule 7)."""
    lab_ = lab()
    home = lab_.homes[0]
    asr = Message(
        d.Command.ABORT_SESSION,
        True,
        d.MOBILE_IPV4_APPLICATION,
        avps=(
            d.avp_text(C.SESSION_ID, "fa1;7"),
            d.avp_text(C.ORIGIN_HOST, HOMES[0]),
            d.avp_text(C.ORIGIN_REALM, "home.example"),
            d.avp_text(C.DESTINATION_REALM, "visited.example"),
            d.avp_text(C.DESTINATION_HOST, "fa1.visited.example"),
            d.avp_u32(C.AUTH_APPLICATION_ID, d.MOBILE_IPV4_APPLICATION),
        ),
        proxiable=True,
    )
    home.send_request(asr, 1.0, tag="asr", via=PROXY_HOST)
    lab_.step(1.0)
    [at_fa] = [e for e in events(lab_.fa) if isinstance(e, p.RequestReceived)]
    assert at_fa.message.session_id == "fa1;7"
    assert [r.as_text() for r in at_fa.message.find_all(C.ROUTE_RECORD)] == [HOMES[0]]
    lab_.fa.answer(at_fa.handle, p.answer_to(at_fa.message, lab_.fa.identity, ResultCode.SUCCESS), 1.1)
    lab_.step(1.1)
    [answer] = [e for e in events(home) if isinstance(e, p.AnswerReceived)]
    assert answer.tag == "asr" and answer.message.result_code == 2001
    assert answer.message.origin_host == "fa1.visited.example" and not lab_.replies


# --- the front end (net/foreign_diameter.py) over loopback TCP -------------------------------------

AAAF_HOST = f"c-{AAAF.replace('.', '-')}"  # a client of role foreign-aaa at the home AAA


async def foreign_front(
    peer: DiameterPeerConfig, tls: ssl.SSLContext | None = None
) -> tuple[ForeignDiameterFront, ForeignAaa, int]:
    """The foreign AAA's Diameter side (FA1 and FA2 its clients, home.example
    of protocol diameter to ``peer``), as net/foreign_server.py runs it; its port."""
    loop = asyncio.get_running_loop()
    clients = tuple(ProxyClient(f"fa-{a}", IPv4Network(f"{a}/32"), SECRETS[a]) for a in (FA1, FA2))
    role = ForeignAaa(clients, [], now=loop.time(), diameter_realms=["home.example"])

    def inject(data: bytes, source: tuple[str, int], now: float) -> None:  # as net/foreign_server.py does
        role.receive_from_client(data, source, now)
        for datagram in role.datagrams_to_send():
            if datagram.pool is None and front.claims(datagram.address):
                front.reply(datagram.address, datagram.data)

    realm = DiameterRealm("home.example", (peer,))
    front = ForeignDiameterFront(
        AAAF_HOST, "visited.example", (), clients, inject, True, loop.time, role, (realm,), timeout=2.0, tls=tls
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    await front.listen(f"127.0.0.1:{port}")
    return front, role, port


def test_the_front_end_proxies_to_the_home_aaa_and_answers_the_handoff_from_its_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The foreign AAA's Diameter side with a real home AAA front end
    (tests/diameter_lab.py) behind it: FA1's AMR goes home and comes back
    without the root key, the session lands in the role's cache; FA2's AMR
    naming FA1 is answered here (the home AAA sees no second AMR); FA1's STR
    goes home and ends the session there."""

    async def main() -> None:
        home_aaa = home_service()
        home, home_port = await start_home(home_aaa)
        front, role, port = await foreign_front(DiameterPeerConfig(HOME_HOST, IPv4Address("127.0.0.1"), home_port))
        await wait_for(lambda: front.node.peer(HOME_HOST), 10, "the foreign AAA's CER to the home AAA")
        fa1 = Client(f"fa-{FA1}", routes={"home.example": [AAAF_HOST]})
        fa2 = Client(f"fa-{FA2}", routes={"home.example": [AAAF_HOST]})
        await fa1.connect(port)
        await fa2.connect(port)

        ama = await fa1.ask(fa_amr("fa1;1", rrq(care_of=FA1), origin=f"fa-{FA1}"))
        assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)
        assert ama.origin_host == HOME_HOST and ROOT_KEY not in {(a.vendor, a.code) for a in ama.avps}
        fa_view = decode_profile_avps(ama.avps)
        [cached] = list(role.cache)
        assert cached.session_id == fa_view.session_id and cached.session_root_key is not None
        assert cached.care_of_address == IPv4Address(FA1) and cached.client == f"fa-{FA1}"
        assert home.node.counters["received.AMR"] == 1

        moved = await fa2.ask(fa_amr("fa2;1", rrq(care_of=FA2, previous=FA1), origin=f"fa-{FA2}"))
        assert moved.result_code == ResultCode.SUCCESS, moved.text(C.ERROR_MESSAGE)
        assert moved.origin_host == AAAF_HOST  # answered here (flow C)
        view = decode_profile_avps(moved.avps)
        assert (view.session_id, view.epoch, view.care_of_address) == (
            fa_view.session_id,
            fa_view.epoch + 1,
            IPv4Address(FA2),
        )
        assert view.session_root_key is None and home.node.counters["received.AMR"] == 1
        assert role.counters["handoffs_answered"] == 1

        ended = _str("fa1;1")
        ended = dataclasses.replace(
            ended,
            avps=tuple(d.avp_text(C.ORIGIN_HOST, f"fa-{FA1}") if a.code == C.ORIGIN_HOST else a for a in ended.avps),
        )
        sta = await fa1.ask(ended)
        assert sta.result_code == ResultCode.SUCCESS and sta.origin_host == HOME_HOST
        assert home_aaa.store.find_sessions(NAI) == []
        assert front.proxy.counters["forwarded.STR"] == 1

        for client in (fa1, fa2):
            await client.transport.close()
        await front.close()
        await home.transport.close()

    caplog.set_level(logging.DEBUG, logger="aaa_vpn.diameter")
    asyncio.run(main())
    relayed = [r.fields for r in caplog.records if r.getMessage() == "diameter answer relayed from home"]  # type: ignore[attr-defined]
    assert [(f["command"], f["result"], f["cached"]) for f in relayed] == [("AMA", 2001, True), ("STA", 2001, False)]
    assert all(f["session"] for f in relayed)


@pytest.mark.parametrize("named", [HOME_HOST, "other.home.example"])
def test_the_front_end_reaches_a_tls_home_peer_by_its_certificate(tmp_path: Path, named: str) -> None:
    """``tls = true``: TLS both ways (the home AAA requires the foreign AAA's
    certificate for its Origin-Host); the home peer's certificate must name
    the configured ``host``, else no connection and the FA gets 3002."""
    ca, (server_key, server_cert), (client_key, client_cert) = certificates(tmp_path, HOME_HOST, AAAF_HOST)

    async def main() -> None:
        home_aaa = home_service()
        options = DiameterOptions(
            HOME_HOST, "home.example", "127.0.0.1", 0,
            tls_cert=str(server_cert), tls_key=str(server_key), tls_ca=str(ca[1]),
        )  # fmt: skip
        home = DiameterHomeServer(home_aaa, options)
        home_port = (await home.start()).sockets[0].getsockname()[1]
        tls = client_tls(ca[1], client_cert, client_key)
        peer = DiameterPeerConfig(named, IPv4Address("127.0.0.1"), home_port, tls=True)
        front, role, port = await foreign_front(peer, tls)
        fa1 = Client(f"fa-{FA1}", routes={"home.example": [AAAF_HOST]})
        await fa1.connect(port)
        if named == HOME_HOST:
            await wait_for(lambda: front.node.peer(HOME_HOST), 10, "the foreign AAA's CER over TLS")
        else:
            await asyncio.sleep(0.5)
            assert front.node.peer(HOME_HOST) is None  # its certificate does not name the configured host
        ama = await fa1.ask(fa_amr("fa1;1", rrq(care_of=FA1), origin=f"fa-{FA1}"))
        if named == HOME_HOST:
            assert ama.result_code == ResultCode.SUCCESS, ama.text(C.ERROR_MESSAGE)  # TLS: the keys may go
            [cached] = list(role.cache)
            assert cached.session_root_key is not None
        else:
            assert ama.result_code == ResultCode.UNABLE_TO_DELIVER and not list(role.cache)
        await fa1.transport.close()
        await front.close()
        await home.transport.close()

    asyncio.run(main())


# --- the file -----------------------------------------------------------------------------------

DIAMETER_REALM = """
[[realms]]
name = "diameter.example"
protocol = "diameter"
[[realms.peers]]
host = "aaa1.diameter.example"
address = "192.0.2.31"
[[realms.peers]]
host = "aaa2.diameter.example"
address = "192.0.2.32"
port = 13868
"""
DIAMETER_TABLE = '\n[diameter]\nlisten = "127.0.0.3:3868"\nrealm = "visited.example"\ntimeout = 2.5\n'


def test_a_diameter_realm_is_read(tmp_path: Path) -> None:
    settings = load_foreign_settings(write_config(tmp_path, GOOD_CONFIG + DIAMETER_REALM + DIAMETER_TABLE))
    assert [r.name for r in settings.realms] == ["home.example"]  # the RADIUS pools
    (realm,) = settings.diameter_realms
    assert realm.name == "diameter.example" and settings.diameter_timeout == 2.5
    assert realm.peers == (
        DiameterPeerConfig("aaa1.diameter.example", IPv4Address("192.0.2.31"), 3868),
        DiameterPeerConfig("aaa2.diameter.example", IPv4Address("192.0.2.32"), 13868),
    )


def test_check_shows_the_diameter_realms(tmp_path: Path) -> None:
    from tests.test_foreign_aaa import run_cli

    path = write_config(tmp_path, GOOD_CONFIG + DIAMETER_REALM + DIAMETER_TABLE)
    ok = run_cli("serve", "foreign", "--config", str(path), "--check")
    assert ok.returncode == 0, ok.stderr
    assert (
        "realm diameter.example -> diameter aaa1.diameter.example (192.0.2.31:3868),"
        " aaa2.diameter.example (192.0.2.32:13868)"
    ) in ok.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace('protocol = "diameter"', 'protocol = "sctp"'), "realms[1].protocol: 'sctp'"),
        (lambda t: t.replace(DIAMETER_TABLE, ""), "a realm of protocol diameter needs the [diameter] table"),
        (lambda t: t.replace('protocol = "diameter"\n', ""), "realms[1].peers: only a realm of protocol"),
        (lambda t: t.replace('address = "192.0.2.32"', 'address = "aaa2"'), "is not an IP address"),
        (lambda t: t.replace('host = "aaa2.diameter.example"', 'host = "a b"'), "realms[1].peers[1]"),
        (lambda t: t.replace("port = 13868", "port = 0"), "expected 1..65535"),
        (lambda t: t.replace('"aaa2.diameter.example"', '"AAA1.diameter.example"'), "named twice"),
        (lambda t: t.replace("port = 13868", "tls = true"), "tls = true needs tls_cert, tls_key and tls_ca"),
        (lambda t: t.replace('name = "diameter.example"', 'name = "DEFAULT"'), "DEFAULT cannot be a Diameter"),
        (lambda t: t.replace("timeout = 2.5", "timeout = 0"), "diameter.timeout: 0"),
        (lambda t: t.replace("port = 13868", "bogus = 1"), "bogus is not a known setting"),
    ],
)
def test_diameter_realm_errors_are_one_clear_message(
    tmp_path: Path, change: Callable[[str], str], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        load_foreign_settings(write_config(tmp_path, change(GOOD_CONFIG + DIAMETER_REALM + DIAMETER_TABLE)))
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)
