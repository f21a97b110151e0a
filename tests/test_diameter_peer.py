"""The Diameter base protocol (roles/diameter_peer.py) between real nodes:
in memory with a fake clock (capabilities exchange, watchdogs, disconnect,
the M-bit rule, duplicates, realm routing through a relay, failover) and
over loopback TCP (net/diameter.py)."""

from __future__ import annotations

import asyncio
import itertools
from ipaddress import IPv4Address

import pytest

from aaa_vpn.net.diameter import DiameterTransport, sctp_available
from aaa_vpn.roles import diameter_peer as p
from aaa_vpn.wire import diameter as d
from aaa_vpn.wire.diameter import AvpCode as C
from aaa_vpn.wire.diameter import Command, Message, ResultCode

APP = d.MOBILE_IPV4_APPLICATION
KNOWN = {APP: frozenset(d.AVPS)}


def node(host: str, realm: str, routes: dict[str, list[str]] | None = None, **kw: object) -> p.DiameterNode:
    counter = itertools.count(1000)
    identity = d.Identity(host, realm, (IPv4Address("127.0.0.1"),))
    return p.DiameterNode(identity, [APP], KNOWN, routes=routes, random_u32=lambda: next(counter), **kw)  # type: ignore[arg-type]


class Link:
    """Connections between nodes, carried by hand."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[int, int], tuple[p.DiameterNode, int]] = {}  # (id(node), conn) -> other end
        self.cut: set[tuple[int, int]] = set()
        self.nodes: list[p.DiameterNode] = []

    def connect(self, a: p.DiameterNode, b: p.DiameterNode, now: float) -> tuple[int, int]:
        ca = a.connection_made(now, initiator=True)
        cb = b.connection_made(now, initiator=False)
        self.pairs[(id(a), ca)] = (b, cb)
        self.pairs[(id(b), cb)] = (a, ca)
        for n in (a, b):
            if n not in self.nodes:
                self.nodes.append(n)
        self.run(now)
        return ca, cb

    def run(self, now: float) -> None:
        moved = True
        while moved:
            moved = False
            for n in self.nodes:
                for conn, data in n.data_to_send():
                    if (id(n), conn) in self.cut:
                        continue
                    other, other_conn = self.pairs[(id(n), conn)]
                    other.data_received(other_conn, data, now)
                    moved = True
                for conn in n.to_close():
                    pair = self.pairs.pop((id(n), conn), None)
                    if pair is not None:
                        other, other_conn = pair
                        self.pairs.pop((id(other), other_conn), None)
                        other.connection_lost(other_conn, now)
                        moved = True


def events(n: p.DiameterNode) -> list[p.Event]:
    out = []
    while (e := n.next_event()) is not None:
        out.append(e)
    return out


def amr(session: str = "fa1;1", realm: str = "home.example", *extra: d.Avp) -> Message:
    return Message(
        Command.AA_MOBILE_NODE,
        True,
        APP,
        avps=(
            d.avp_text(C.SESSION_ID, session),
            d.avp_u32(C.AUTH_APPLICATION_ID, APP),
            d.avp_text(C.ORIGIN_HOST, "fa1.visited.example"),
            d.avp_text(C.ORIGIN_REALM, "visited.example"),
            d.avp_text(C.DESTINATION_REALM, realm),
            d.avp_text(C.USER_NAME, "alice@home.example"),
            *extra,
        ),
        proxiable=True,
    )


def test_capabilities_exchange_opens_both_sides() -> None:
    fa, home, link = node("fa1.visited.example", "visited.example"), node("aaa.home.example", "home.example"), Link()
    link.connect(fa, home, 0.0)
    up_fa = [e for e in events(fa) if isinstance(e, p.PeerUp)]
    up_home = [e for e in events(home) if isinstance(e, p.PeerUp)]
    assert [(e.host, e.realm, e.applications) for e in up_fa] == [
        ("aaa.home.example", "home.example", frozenset({APP}))
    ]
    assert [(e.host, e.realm) for e in up_home] == [("fa1.visited.example", "visited.example")]
    assert fa.counters["sent.CER"] == 1 and home.counters["sent.CEA"] == 1


@pytest.mark.parametrize(
    ("drop", "accept", "apps", "code"),
    [
        (C.HOST_IP_ADDRESS, True, [APP], ResultCode.MISSING_AVP),
        (None, False, [APP], ResultCode.UNKNOWN_PEER),
        (None, True, [4], ResultCode.NO_COMMON_APPLICATION),
    ],
)
def test_capabilities_refused(drop: int | None, accept: bool, apps: list[int], code: int) -> None:
    home = node("aaa.home.example", "home.example", accept_peer=lambda h, r: accept)
    conn = home.connection_made(0.0, initiator=False)
    avps = [
        d.avp_text(C.ORIGIN_HOST, "x.example"),
        d.avp_text(C.ORIGIN_REALM, "example"),
        d.avp_address(C.HOST_IP_ADDRESS, IPv4Address("127.0.0.1")),
        d.avp_u32(C.VENDOR_ID, 0),
        d.avp_text(C.PRODUCT_NAME, "t"),
        *(d.avp_u32(C.AUTH_APPLICATION_ID, a) for a in apps),
    ]
    cer = Message(Command.CAPABILITIES_EXCHANGE, True, 0, 7, 8, tuple(a for a in avps if a.code != drop))
    home.data_received(conn, cer.encode(), 0.0)
    [(_, wire)] = home.data_to_send()
    cea = d.decode_message(wire)
    assert (cea.command, cea.request, cea.hop_by_hop, cea.result_code) == (257, False, 7, code)
    assert home.to_close() == [conn]


def test_anything_before_cer_closes() -> None:
    home = node("aaa.home.example", "home.example")
    conn = home.connection_made(0.0, initiator=False)
    home.data_received(conn, amr().encode(), 0.0)
    assert home.data_to_send() == [] and home.to_close() == [conn]


def test_watchdog_okay_suspect_down() -> None:
    fa, home, link = node("fa1.visited.example", "visited.example"), node("aaa.home.example", "home.example"), Link()
    ca, cb = link.connect(fa, home, 0.0)
    events(fa), events(home)
    # Tw without traffic: DWR, answered, both stay OKAY.
    now = fa.get_timer()
    assert now == 30.0
    fa.handle_timer(now)
    link.run(now)
    assert fa.counters["sent.DWR"] == 1 and home.counters["sent.DWA"] == 1
    assert fa.connections[ca].watchdog is p.Watchdog.OKAY and not fa.connections[ca].dwr_pending
    # The home AAA stops answering: DWR, then SUSPECT, then DOWN and closed.
    link.cut.add((id(home), cb))
    t = now + 30
    fa.handle_timer(t)
    link.run(t)
    assert fa.connections[ca].dwr_pending
    fa.handle_timer(t + 30)
    assert fa.connections[ca].watchdog is p.Watchdog.SUSPECT
    fa.handle_timer(t + 60)
    downs = [e for e in events(fa) if isinstance(e, p.PeerDown)]
    assert [(e.host, e.reason) for e in downs] == [("aaa.home.example", "watchdog")]
    assert fa.to_close() == [ca]


def test_disconnect_peer() -> None:
    fa, home, link = node("fa1.visited.example", "visited.example"), node("aaa.home.example", "home.example"), Link()
    ca, _ = link.connect(fa, home, 0.0)
    events(fa), events(home)
    fa.disconnect(ca, 1.0)
    link.run(1.0)
    assert home.counters["sent.DPA"] == 1
    assert [e.reason for e in events(fa) if isinstance(e, p.PeerDown)] == ["disconnected"]
    assert [e.reason for e in events(home) if isinstance(e, p.PeerDown)] in (["disconnected"], ["closed"])
    assert fa.connections == {} and home.connections == {}


def open_pair() -> tuple[p.DiameterNode, p.DiameterNode, Link]:
    to_home = ["aaa.home.example"]
    fa = node(
        "fa1.visited.example",
        "visited.example",
        routes=dict.fromkeys(("home.example", "nowhere.example", "elsewhere.example"), to_home),
    )
    home, link = node("aaa.home.example", "home.example"), Link()
    link.connect(fa, home, 0.0)
    events(fa), events(home)
    return fa, home, link


def answers(n: p.DiameterNode) -> list[Message]:
    return [e.message for e in events(n) if isinstance(e, p.AnswerReceived)]


def test_request_answer_and_duplicates() -> None:
    fa, home, link = open_pair()
    fa.send_request(amr(), 1.0, tag="t1")
    link.run(1.0)
    [req] = [e for e in events(home) if isinstance(e, p.RequestReceived)]
    assert req.peer == "fa1.visited.example" and req.message.session_id == "fa1;1"
    home.answer(req.handle, p.answer_to(req.message, home.identity, ResultCode.SUCCESS), 1.0)
    link.run(1.0)
    [ans] = [e for e in events(fa) if isinstance(e, p.AnswerReceived)]
    assert ans.tag == "t1" and ans.message.result_code == 2001 and ans.message.session_id == "fa1;1"
    # The same End-to-End from the same Origin-Host again (T bit): answered
    # from the cache, not handed to the application a second time.
    conn = next(iter(fa.connections.values()))
    again = Message(**{**req.message.__dict__, "hop_by_hop": 0x777, "retransmit": True})
    home_conn = next(iter(home.connections))
    home.data_received(home_conn, again.encode(), 2.0)
    assert not [e for e in events(home) if isinstance(e, p.RequestReceived)]
    [(_, wire)] = home.data_to_send()
    cached = d.decode_message(wire)
    assert (cached.hop_by_hop, cached.result_code, home.counters["duplicates"]) == (0x777, 2001, 1)
    del conn


def test_unknown_mandatory_avp_5001_with_failed_avp() -> None:
    fa, home, link = open_pair()
    odd = d.Avp(4242, b"\x00\x00\x00\x01", mandatory=True)
    fa.send_request(amr("s", "home.example", odd), 1.0, tag="x")
    link.run(1.0)
    assert not [e for e in events(home) if isinstance(e, p.RequestReceived)]
    [answer] = answers(fa)
    assert answer.result_code == ResultCode.AVP_UNSUPPORTED
    failed = answer.find(C.FAILED_AVP)
    assert failed is not None and failed.as_grouped() == (odd,)
    # The same AVP without the M bit is fine (kept, ignored).
    fa.send_request(amr("s2", "home.example", d.Avp(4242, b"\x00\x00\x00\x01")), 2.0, tag="y")
    link.run(2.0)
    assert [e.message.session_id for e in events(home) if isinstance(e, p.RequestReceived)] == ["s2"]


def test_wrong_application_and_unknown_realm() -> None:
    fa, _home, link = open_pair()
    fa.send_request(Message(**{**amr().__dict__, "application": 5}), 1.0, tag="app")
    fa.send_request(amr("s3", "nowhere.example"), 1.0, tag="realm")
    link.run(1.0)
    got = {e.tag: e.message for e in events(fa) if isinstance(e, p.AnswerReceived)}
    assert got["app"].result_code == ResultCode.APPLICATION_UNSUPPORTED and got["app"].error
    assert got["realm"].result_code == ResultCode.REALM_NOT_SERVED and got["realm"].error


def test_malformed_avp_answered_5014() -> None:
    _fa, home, _link = open_pair()
    wire = bytearray(amr().encode())
    wire[20 + 5 : 20 + 8] = (200).to_bytes(3, "big")  # Session-Id's Length runs past the message
    home.data_received(next(iter(home.connections)), bytes(wire), 1.0)
    [(_, out)] = home.data_to_send()
    answer = d.decode_message(out)
    assert answer.result_code == ResultCode.INVALID_AVP_LENGTH and answer.find(C.FAILED_AVP) is not None
    assert home.counters["dropped.malformed"] == 1
    assert home.peers()  # the connection stays


def test_framing_error_closes() -> None:
    _, home, _ = open_pair()
    conn = next(iter(home.connections))
    home.data_received(conn, b"\x01\x00\x00\x05" + bytes(16), 1.0)
    assert [e.reason for e in events(home) if isinstance(e, p.PeerDown)] == ["framing"]
    assert home.to_close() == [conn]


def test_relay_by_realm_and_failover() -> None:
    fa = node("fa1.visited.example", "visited.example", routes={"home.example": ["relay.visited.example"]})
    relay = node(
        "relay.visited.example", "visited.example", routes={"home.example": ["aaa1.home.example", "aaa2.home.example"]}
    )
    h1, h2 = node("aaa1.home.example", "home.example"), node("aaa2.home.example", "home.example")
    link = Link()
    link.connect(fa, relay, 0.0)
    r1, _ = link.connect(relay, h1, 0.0)
    link.connect(relay, h2, 0.0)
    for n in (fa, relay, h1, h2):
        events(n)
    fa.send_request(amr(), 1.0, tag="via-relay")
    link.run(1.0)
    [req] = [e for e in events(h1) if isinstance(e, p.RequestReceived)]
    assert [a.as_text() for a in req.message.find_all(C.ROUTE_RECORD)] == ["fa1.visited.example"]
    assert req.peer == "relay.visited.example"
    # aaa1 goes away before answering: the relay sends the request again, T bit set, to aaa2.
    link.cut.add((id(relay), r1))
    relay.connection_lost(r1, 2.0)
    link.run(2.0)
    [again] = [e for e in events(h2) if isinstance(e, p.RequestReceived)]
    assert again.message.retransmit and again.message.end_to_end == req.message.end_to_end
    h2.answer(again.handle, p.answer_to(again.message, h2.identity, ResultCode.SUCCESS), 2.0)
    link.run(2.0)
    [ans] = answers(fa)
    assert ans.result_code == 2001 and ans.origin_host == "aaa2.home.example"
    assert relay.counters["relayed"] == 1 and relay.counters["failed_over"] == 1


def test_loop_detected() -> None:
    fa, _home, link = open_pair()
    looped = amr("s", "elsewhere.example", d.avp_text(C.ROUTE_RECORD, "aaa.home.example"))
    fa.send_request(looped, 1.0, tag="loop")
    link.run(1.0)
    assert [m.result_code for m in answers(fa)] == [ResultCode.LOOP_DETECTED]


def test_sctp_on_this_kernel() -> None:
    # What the docs say: this machine's kernel has no SCTP. Elsewhere it may.
    import os

    assert sctp_available() == os.path.exists("/proc/net/sctp")


def test_over_loopback_tcp() -> None:
    async def main() -> None:
        home = node("aaa.home.example", "home.example")
        fa = node("fa1.visited.example", "visited.example", routes={"home.example": ["aaa.home.example"]})
        answered: list[Message] = []
        up = asyncio.Event()

        def home_event(event: p.Event) -> None:
            if isinstance(event, p.RequestReceived):
                home.answer(event.handle, p.answer_to(event.message, home.identity, ResultCode.SUCCESS), 0.0)

        def fa_event(event: p.Event) -> None:
            if isinstance(event, p.PeerUp):
                up.set()
            if isinstance(event, p.AnswerReceived):
                answered.append(event.message)

        server_side = DiameterTransport(home, home_event)
        server = await server_side.listen("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client_side = DiameterTransport(fa, fa_event)
        await client_side.connect("127.0.0.1", port)
        await asyncio.wait_for(up.wait(), 10)
        fa.send_request(amr(), 0.0, tag=1)
        client_side.pump()
        for _ in range(200):
            if answered:
                break
            await asyncio.sleep(0.02)
        assert [m.result_code for m in answered] == [2001]
        await client_side.close()
        for _ in range(200):
            if not home.peers():
                break
            await asyncio.sleep(0.02)
        assert home.peers() == [] and home.counters["sent.DPA"] == 1
        await server_side.close()

    asyncio.run(main())
