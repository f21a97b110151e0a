"""Dynamic Authorization (RFC 5176, docs/design.md flow F): Disconnect-Requests
(and CoA pushes) from the home AAA to the agents, with the whole system in
one process over the fake link (tests/mobility.py). After every step each
node's SA table is checked. The command line's ``session push|disconnect``
runs against real processes in tests/test_agents_live.py."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pyrad.packet
import pytest

from aaa_vpn.model import Flavour, VpnRecord
from aaa_vpn.net import coa_client
from aaa_vpn.roles.ha import stationary_owner
from aaa_vpn.roles.home_aaa import Authorize, CoaTarget
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.secret import Secret
from aaa_vpn.wire import coa
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import VENDOR_ID, PathRole, VpnProfile

from .mobility import (
    AAA,
    CN_DYNAMIC,
    CN_STATIC,
    FA1,
    GW_DYNAMIC,
    GW_STATIC,
    HA,
    HOME_ADDRESS,
    NAI,
    SECRETS,
    Network,
    inner_packet,
    provision,
    random_payload,
)
from .test_flows import only_at


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    network.standard()
    network.enable_coa()
    yield network
    network.close()


def backend(net: Network, name: str) -> MemoryBackend:
    node_backend = net.nodes[name].backend
    assert node_backend is not None
    return node_backend


def ha_profile(net: Network) -> VpnProfile:
    """The HA's current view of the node's session."""
    return net.nodes["ha"].agent.bindings[NAI].profile  # type: ignore[attr-defined,no-any-return]


def table(net: Network, name: str) -> list[tuple[str, str]]:
    return sorted((p.path.role.name, str(p.peer)) for p in backend(net, name).paths())


def register(net: Network, fa: str = FA1) -> str:
    """Register the node through ``fa``; return its session id."""
    net.nodes["mn"].agent.register(net.fa_address(fa), net.clock)  # type: ignore[attr-defined]
    net.settle()
    done = net.nodes["mn"].done()
    assert done and done[-1].code == 0, done
    (session,) = net.store.find_sessions(NAI)
    return session.session_id


def everything_installed(net: Network) -> None:
    assert table(net, "fa1") == [("FA_GW", "127.0.0.22"), ("FA_HA", HA)]
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", "127.0.0.21")]
    assert table(net, "gw-static") == [("HA_GW", HA)]
    assert table(net, "gw-dynamic") == [("FA_GW", FA1)]


def no_sas_anywhere(net: Network) -> None:
    for name, node in net.nodes.items():
        if node.backend is not None:
            assert node.backend.paths() == [], f"{name} still has SAs"


def run_exchange(
    net: Network, requests: tuple[tuple[CoaTarget, bytes | None], ...], timeout: float = 1.0, retries: int = 2
) -> list[coa_client.TargetResult]:
    """The home AAA sends ``requests`` over the link; the network then settles
    (what the answers set off, Binding Updates to the gateways, is carried out)."""
    results = net.coa_exchange(requests, timeout, retries)
    net.settle()
    return results


def pushed(net: Network, session_id: str) -> Authorize:
    """The home AAA's push of the session: stored at the next epoch, requests ready."""
    plan = net.home.push(session_id, net.clock)
    assert not plan.error, plan.error
    return plan


class Peer:
    """An endpoint at the home AAA's address, for hand-made requests."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.sock = net.socket(AAA)

    def ask(self, packet: bytes, address: str) -> list[bytes]:
        self.sock.sendto(packet, (address, self.net.coa_port))
        self.net.settle()
        answers = []
        while self.sock.inbox:
            answers.append(self.sock.recvfrom()[0])
        return answers

    def close(self) -> None:
        self.sock.close()


def disconnect(session_id: str, address: str, identifier: int = 7, secret: Secret | None = None) -> bytes:
    key = (secret or SECRETS[address]).value
    return coa.encode_request(coa.DISCONNECT_REQUEST, identifier, key, coa.session_attributes(NAI, session_id))


# -- the codec ------------------------------------------------------------------------------------


def test_request_is_what_pyrad_verifies_and_the_other_way_round() -> None:
    secret = b"a-shared-secret"
    ours = coa.encode_request(coa.DISCONNECT_REQUEST, 9, secret, coa.session_attributes(NAI, "abc"))
    theirs = pyrad.packet.CoAPacket(packet=ours, secret=secret, dict=rc.load_dictionary())
    assert theirs.VerifyCoARequest()
    assert theirs.code == coa.DISCONNECT_REQUEST
    assert theirs["User-Name"] == [NAI]
    # the Message-Authenticator is computed with a zero authenticator (RFC 5176 section 3.4)
    assert rc.verify_message_authenticator(ours, secret, coa.ZERO_AUTHENTICATOR)
    decoded = coa.decode_request(ours, secret)
    assert decoded is not None and (decoded.nai, decoded.session_id, decoded.identifier) == (NAI, "abc", 9)
    # pyrad's own request (with a Message-Authenticator) decodes here
    packet = pyrad.packet.CoAPacket(
        code=pyrad.packet.DisconnectRequest, id=3, secret=secret, dict=rc.load_dictionary(), message_authenticator=True
    )
    packet["User-Name"] = NAI
    raw = packet.RequestPacket()
    decoded = coa.decode_request(raw, secret)
    assert decoded is not None and decoded.nai == NAI and decoded.identifier == 3


def test_wrong_secret_or_tampering_is_invalid() -> None:
    ours = coa.encode_request(coa.COA_REQUEST, 1, b"right-secret", coa.session_attributes(NAI, "abc"))
    assert coa.decode_request(ours, b"wrong-secret") is None
    tampered = bytearray(ours)
    tampered[-1] ^= 1
    assert coa.decode_request(bytes(tampered), b"right-secret") is None
    with pytest.raises(coa.CoaDecodeError):
        coa.decode_request(ours[:10], b"right-secret")


def test_answers_verify_against_their_request_only() -> None:
    secret = b"s3cret-s3cret"
    request = coa.encode_request(coa.DISCONNECT_REQUEST, 5, secret, coa.session_attributes(NAI, "x"))
    decoded = coa.decode_request(request, secret)
    assert decoded is not None
    nak = coa.encode_answer(decoded, False, secret, coa.ErrorCause.SESSION_CONTEXT_NOT_FOUND)
    answer = coa.decode_answer(nak, request, secret)
    assert answer == coa.CoaAnswer(coa.DISCONNECT_NAK, 503)
    assert not answer.acknowledged
    assert coa.decode_answer(nak, request, b"other-secret") is None
    other = coa.encode_request(coa.DISCONNECT_REQUEST, 5, secret, coa.session_attributes(NAI, "y"))
    assert coa.decode_answer(nak, other, secret) is None
    ack = coa.encode_answer(decoded, True, secret)
    assert coa.decode_answer(ack, request, secret) == coa.CoaAnswer(coa.DISCONNECT_ACK, None)
    # pyrad agrees on the reply's authenticator
    reply = pyrad.packet.CoAPacket(packet=ack, secret=secret, dict=rc.load_dictionary())
    sent = pyrad.packet.CoAPacket(packet=request, secret=secret, dict=rc.load_dictionary())
    assert sent.VerifyReply(reply, ack)


def _answer_without_ma(request: bytes, code: int, secret: bytes, ma_vector: bytes | None = None) -> bytes:
    """An ACK as a third-party server may send it: no Message-Authenticator,
    or one computed over ``ma_vector`` in the Authenticator field."""
    body = b""
    if ma_vector is not None:
        body = bytes((80, 18)) + bytes(16)
    head = bytes((code, request[1])) + (20 + len(body)).to_bytes(2, "big")
    if ma_vector is not None:
        body = bytes((80, 18)) + hmac.digest(secret, head + ma_vector + body, "md5")
    return head + hashlib.md5(head + request[4:20] + body + secret).digest() + body


def test_answers_are_believed_by_the_response_authenticator() -> None:
    """RFC 5176 section 3.4 makes the answer's Message-Authenticator optional:
    FreeRADIUS sends none by default, and with one it computes it over 16
    zero octets (its rad_sign). Both are believed; a wrong one, or none
    where the client requires one, is not; a wrong Response Authenticator
    never is."""
    secret = b"s3cret-s3cret"
    request = coa.encode_request(coa.DISCONNECT_REQUEST, 5, secret, coa.session_attributes(NAI, "x"))
    bare = _answer_without_ma(request, coa.DISCONNECT_ACK, secret)
    answer = coa.decode_answer(bare, request, secret)
    assert answer == coa.CoaAnswer(coa.DISCONNECT_ACK, None) and answer.signature is coa.Signature.NONE
    assert coa.decode_answer(bare, request, secret, require_message_authenticator=True) is None
    zero = _answer_without_ma(request, coa.DISCONNECT_ACK, secret, coa.ZERO_AUTHENTICATOR)
    answer = coa.decode_answer(zero, request, secret, require_message_authenticator=True)
    assert answer is not None and answer.signature is coa.Signature.ZERO
    rfc = _answer_without_ma(request, coa.DISCONNECT_ACK, secret, request[4:20])
    answer = coa.decode_answer(rfc, request, secret, require_message_authenticator=True)
    assert answer is not None and answer.signature is coa.Signature.RFC5176
    wrong = _answer_without_ma(request, coa.DISCONNECT_ACK, secret, b"\x01" * 16)
    assert coa.decode_answer(wrong, request, secret) is None
    forged = bytearray(bare)
    forged[4] ^= 1
    assert coa.decode_answer(bytes(forged), request, secret) is None


def test_requests_repeat_the_agents_identification_attributes() -> None:
    """RFC 5176 section 3: the NAS and session identification attributes the
    agent sent in its Access-Request, raw and in order, the first of each
    type; nothing else of the request. Aaa-Vpn-Session-Id only to an
    aaa-vpn client (another receiver would NAK an attribute it does not know)."""
    sent = [
        (rc.USER_NAME, NAI.encode()),
        (rc.NAS_IP_ADDRESS, bytes((192, 0, 2, 1))),
        (31, b"0012-3456"),  # Calling-Station-Id
        (80, bytes(16)),  # Message-Authenticator: not identification
        (44, b"acct-1"),  # Acct-Session-Id
        (rc.NAS_IP_ADDRESS, bytes((192, 0, 2, 9))),  # a second one: not repeated
        (rc.NAS_IDENTIFIER, b"pdsn-1"),
    ]
    raw = coa.identification(sent)
    assert raw == bytes.fromhex("04 06 c0000201") + b"\x1f\x0b0012-3456" + b"\x2c\x08acct-1" + b"\x20\x08pdsn-1"
    ours = coa.session_attributes(NAI, "abc", raw, Flavour.AAA_VPN)
    theirs = coa.session_attributes(NAI, "abc", raw, Flavour.THREEGPP2)
    assert theirs == [rc.attribute(rc.USER_NAME, NAI.encode()), raw]
    assert ours == [*theirs, rc.vendor_attribute(VENDOR_ID, coa.SESSION_ID_TYPE, b"abc")]
    secret = b"a-shared-secret"
    packet = pyrad.packet.CoAPacket(
        packet=coa.encode_request(coa.DISCONNECT_REQUEST, 1, secret, theirs), secret=secret, dict=rc.load_dictionary()
    )
    assert packet["NAS-IP-Address"] == ["192.0.2.1"] and packet["Acct-Session-Id"] == ["acct-1"]
    assert packet["Calling-Station-Id"] == ["0012-3456"] and packet["NAS-Identifier"] == ["pdsn-1"]


# -- disconnect ------------------------------------------------------------------------------------


def test_disconnect_removes_every_sa_on_fa_ha_and_gateways(net: Network) -> None:
    session_id = register(net)
    everything_installed(net)
    plan = net.home.disconnect(session_id, net.clock)
    targets = [target for target, _request in plan.requests]
    assert [(t.role, str(t.address), t.port) for t in targets] == [("fa", FA1, net.coa_port), ("ha", HA, net.coa_port)]
    results = run_exchange(net, plan.requests)
    assert [r.answer for r in results] == [coa.CoaAnswer(coa.DISCONNECT_ACK, None)] * 2
    assert all(r.attempts == 1 for r in results)
    no_sas_anywhere(net)
    assert net.nodes["fa1"].agent.visitors == {}  # type: ignore[attr-defined]
    assert net.nodes["ha"].agent.bindings == {}  # type: ignore[attr-defined]
    assert net.nodes["gw-static"].agent.bindings == {}  # type: ignore[attr-defined]
    assert net.nodes["gw-dynamic"].agent.bindings == {}  # type: ignore[attr-defined]
    # the node can come back: a new session, everything installed again
    net.store.delete_session(session_id)
    assert register(net) != session_id
    everything_installed(net)


def test_unknown_session_is_nak_503_and_changes_nothing(net: Network) -> None:
    register(net)
    peer = Peer(net)
    try:
        for address in (FA1, HA):
            request = disconnect("no-such-session", address)
            (answer,) = peer.ask(request, address)
            decoded = coa.decode_answer(answer, request, SECRETS[address].value)
            assert decoded == coa.CoaAnswer(coa.DISCONNECT_NAK, coa.ErrorCause.SESSION_CONTEXT_NOT_FOUND)
    finally:
        peer.close()
    everything_installed(net)


def test_wrong_secret_bad_authenticator_or_stranger_is_dropped_unanswered(net: Network) -> None:
    session_id = register(net)
    peer = Peer(net)
    stranger = net.socket("127.0.0.50")
    try:
        assert peer.ask(disconnect(session_id, FA1, secret=Secret(b"not-the-secret")), FA1) == []
        tampered = bytearray(disconnect(session_id, HA))
        tampered[5] ^= 0xFF  # the Request Authenticator
        assert peer.ask(bytes(tampered), HA) == []
        stranger.sendto(disconnect(session_id, HA), (HA, net.coa_port))
        net.settle()
        with pytest.raises(BlockingIOError):
            stranger.recvfrom(65535)
    finally:
        peer.close()
        stranger.close()
    fa = net.nodes["fa1"].agent
    ha = net.nodes["ha"].agent
    assert fa.counters["coa.dropped.bad_authenticator"] == 1
    assert ha.counters["coa.dropped.bad_authenticator"] == 1
    assert ha.counters["coa.dropped.unknown_source"] == 1
    everything_installed(net)


def test_a_duplicate_gets_the_same_answer(net: Network) -> None:
    session_id = register(net)
    peer = Peer(net)
    try:
        request = disconnect(session_id, HA, identifier=42)
        (first,) = peer.ask(request, HA)
        (second,) = peer.ask(request, HA)
        assert first == second
        assert coa.decode_answer(first, request, SECRETS[HA].value) == coa.CoaAnswer(coa.DISCONNECT_ACK, None)
        # a new request (another Identifier) for the same session: it is gone now
        again = disconnect(session_id, HA, identifier=43)
        (third,) = peer.ask(again, HA)
        assert coa.decode_answer(third, again, SECRETS[HA].value) == coa.CoaAnswer(coa.DISCONNECT_NAK, 503)
    finally:
        peer.close()
    assert net.nodes["ha"].agent.counters["coa.duplicates"] == 1
    assert table(net, "ha") == []
    assert table(net, "gw-static") == [] and table(net, "gw-dynamic") == []
    assert table(net, "fa1") != []  # the FA was not told


def test_unanswered_target_is_retried_then_reported(net: Network) -> None:
    session_id = register(net)
    plan = net.home.disconnect(session_id, net.clock)
    net.remove("fa1")
    results = run_exchange(net, plan.requests, timeout=0.2, retries=2)
    assert results[0].answer is None and results[0].attempts == 3 and "no answer" in results[0].error
    assert results[1].acknowledged and results[1].attempts == 1


def test_disconnect_then_delete_reports_and_forgets_the_session(net: Network) -> None:
    session_id = register(net)
    plan = net.home.disconnect(session_id, net.clock)
    assert plan.previous is not None and plan.previous.session_id == session_id
    results = run_exchange(net, plan.requests)
    assert net.home.delete(session_id, net.clock)
    document = coa_client.DisconnectOutcome(plan.previous, results, True).to_json()
    assert document["acknowledged"] is True
    assert [a["answer"] for a in document["agents"]] == ["Disconnect-ACK", "Disconnect-ACK"]
    assert net.store.find_sessions(NAI) == []
    assert not net.home.delete(session_id, net.clock)  # gone already
    no_sas_anywhere(net)


def test_targets_without_a_client_are_reported_not_sent(net: Network) -> None:
    session_id = register(net)
    session = net.store.get_session(session_id)
    fake = CoaTarget("fa", IPv4Address("127.0.0.99"))
    results = coa_client.exchange([(fake, None)], AAA)
    assert results[0].answer is None and "no RADIUS client" in results[0].error and results[0].attempts == 0
    assert session.session_id == session_id


def test_disconnect_or_push_of_no_session_says_so(net: Network) -> None:
    register(net)
    assert net.home.disconnect("no-such-session", net.clock).error == "no session no-such-session"
    assert "does not exist" in net.home.push("no-such-session", net.clock).error


# -- pushing a VPN change (CoA-Request) --------------------------------------------------------------


@pytest.fixture
def static_only(tmp_path: Path) -> Iterator[Network]:
    """The node's VPN has only the static gateway; both gateways run."""
    network = Network(tmp_path, provisioner=functools.partial(provision, gateways=("static",)))
    network.standard()
    network.enable_coa()
    yield network
    network.close()


def add_dynamic_record(net: Network) -> None:
    net.store.add_vpn_record(VpnRecord(NAI, IPv4Network("203.0.113.128/25"), "gw-dynamic", "silver"))


def owners(net: Network, name: str) -> set[str]:
    return {p.owner for p in backend(net, name).paths()}


def test_push_rolls_a_new_dynamic_gateway_out_at_once(static_only: Network) -> None:
    net = static_only
    session_id = register(net)
    assert table(net, "fa1") == [("FA_HA", HA)]
    assert table(net, "gw-dynamic") == []
    add_dynamic_record(net)
    stationary_before = stationary_owner(ha_profile(net))
    plan = pushed(net, session_id)
    assert plan.previous is not None and plan.session is not None
    assert (plan.previous.epoch, plan.session.epoch) == (1, 2)
    assert net.store.get_session(session_id).epoch == 2
    results = run_exchange(net, plan.requests)
    assert [r.answer for r in results] == [coa.CoaAnswer(coa.COA_ACK, None)] * 2, [r.to_json() for r in results]
    # the FA: FA_HA and FA_GW of epoch 2 only; the HA: the new FA-side path and the stationary one
    assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert owners(net, "fa1") == {f"{session_id}#2"}
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    # the push re-keyed the stationary path too: a new owner (its SPIs), the old one gone
    assert owners(net, "ha") == {f"{session_id}#2", stationary_owner(ha_profile(net))}
    assert stationary_owner(ha_profile(net)) != stationary_before
    assert table(net, "gw-dynamic") == [("FA_GW", FA1)]
    assert table(net, "gw-static") == [("HA_GW", HA)]
    fa = net.nodes["fa1"].agent
    assert fa.visitors[NAI].profile.epoch == 2  # type: ignore[attr-defined]
    assert net.nodes["ha"].agent.bindings[NAI].profile.epoch == 2  # type: ignore[attr-defined]
    # traffic: to the dynamic correspondent straight to its gateway, to the static one via the HA
    outbound = inner_packet(HOME_ADDRESS, CN_DYNAMIC, random_payload())
    assert only_at(net, "fa1", outbound, "gw-dynamic") == outbound
    inbound = inner_packet(CN_DYNAMIC, HOME_ADDRESS, random_payload())
    assert only_at(net, "gw-dynamic", inbound, "fa1") == inbound
    to_static = inner_packet(HOME_ADDRESS, CN_STATIC, random_payload())
    assert only_at(net, "fa1", to_static, "ha") == to_static
    # the node's next renewal keeps epoch 2: same keys, nothing reinstalled
    register(net)
    assert net.store.get_session(session_id).epoch == 2
    assert owners(net, "fa1") == {f"{session_id}#2"}
    assert table(net, "gw-dynamic") == [("FA_GW", FA1)]


def test_push_for_an_unknown_session_is_nak_503(static_only: Network) -> None:
    net = static_only
    session_id = register(net)
    add_dynamic_record(net)
    plan = pushed(net, session_id)
    # the agents lose the session (the node deregistered meanwhile, say)
    net.nodes["fa1"].agent.visitors.clear()  # type: ignore[attr-defined]
    net.nodes["ha"].agent.bindings.clear()  # type: ignore[attr-defined]
    results = run_exchange(net, plan.requests)
    assert [r.answer for r in results] == [coa.CoaAnswer(coa.COA_NAK, 503)] * 2
    assert table(net, "gw-dynamic") == []
    assert all(not o.endswith("#2") for name in ("fa1", "ha") for o in owners(net, name))
    assert net.home.push("no-such-session", net.clock).error


def test_tampered_push_is_dropped_and_stale_push_is_nak_404(static_only: Network) -> None:
    net = static_only
    session_id = register(net)
    add_dynamic_record(net)
    plan = pushed(net, session_id)
    peer = Peer(net)
    try:
        for (target, request), address in zip(plan.requests, (FA1, HA), strict=True):
            assert request is not None and str(target.address) == address
            tampered = bytearray(request)
            tampered[-3] ^= 0x40  # inside the pushed profile
            assert peer.ask(bytes(tampered), address) == []
        for name in ("fa1", "ha"):
            assert net.nodes[name].agent.counters["coa.dropped.bad_authenticator"] == 1
        assert table(net, "fa1") == [("FA_HA", HA)] and table(net, "gw-dynamic") == []
        # an epoch that is not newer (the view of epoch 1 again): Invalid-Request
        session = net.store.get_session(session_id)
        fa_view = dataclasses.replace(plan.views["fa"], epoch=1)
        key = SECRETS[FA1].value
        stale = coa.encode_request(coa.COA_REQUEST, 5, key, coa.push_attributes(NAI, fa_view, SECRETS[FA1]))
        (answer,) = peer.ask(stale, FA1)
        assert coa.decode_answer(answer, stale, key) == coa.CoaAnswer(coa.COA_NAK, 404)
        # no profile at all: Invalid-Request too
        bare = coa.encode_request(coa.COA_REQUEST, 6, key, coa.session_attributes(NAI, session.session_id))
        (answer,) = peer.ask(bare, FA1)
        assert coa.decode_answer(answer, bare, key) == coa.CoaAnswer(coa.COA_NAK, 404)
    finally:
        peer.close()
    assert owners(net, "fa1") == {f"{session_id}#1"}


def test_push_that_cannot_be_installed_is_nak_506_and_keeps_the_old_paths(static_only: Network) -> None:
    net = static_only
    session_id = register(net)
    add_dynamic_record(net)
    plan = pushed(net, session_id)
    fa_backend = backend(net, "fa1")
    fa_view = plan.views["fa"]
    # the new FA_GW path's inbound SPI is taken on the FA: its installation fails
    new_gw = next(p for p in fa_view.paths if p.role is PathRole.FA_GW)
    size = len(new_gw.key_in)
    blocker = dataclasses.replace(
        new_gw, peer=IPv4Address("127.0.0.99"), key_in=Secret(os.urandom(size)), key_out=Secret(os.urandom(size))
    )
    fa_backend.install(blocker, "blocker")
    results = run_exchange(net, plan.requests[:1])
    assert results[0].answer == coa.CoaAnswer(coa.COA_NAK, coa.ErrorCause.RESOURCES_UNAVAILABLE)
    assert owners(net, "fa1") == {f"{session_id}#1", "blocker"}
    assert net.nodes["fa1"].agent.visitors[NAI].profile.epoch == 1  # type: ignore[attr-defined]


def test_ha_push_without_gateway_answer_is_nak_506_and_rolled_back(static_only: Network) -> None:
    net = static_only
    session_id = register(net)
    add_dynamic_record(net)
    plan = pushed(net, session_id)
    net.remove("gw-dynamic")
    ha = net.nodes["ha"].agent
    ha.config = dataclasses.replace(ha.config, gateway_timeout=0.3)  # type: ignore[attr-defined]
    results = run_exchange(net, plan.requests[1:])
    assert results[0].answer == coa.CoaAnswer(coa.COA_NAK, coa.ErrorCause.RESOURCES_UNAVAILABLE)
    assert net.nodes["ha"].agent.counters["coa.push.gateway_timeout"] == 1
    assert owners(net, "ha") == {f"{session_id}#1", stationary_owner(ha_profile(net))}
    assert table(net, "ha") == [("FA_HA", FA1), ("HA_GW", GW_STATIC)]
    assert net.nodes["ha"].agent.bindings[NAI].profile.epoch == 1  # type: ignore[attr-defined]
    assert table(net, "gw-static") == [("HA_GW", HA)]
