"""Flow E of docs/design.md section 2, smooth handoff (docs/protocol.md section 5).

After a move the new FA sends the previous FA a Previous-FA Notification; the
previous FA replaces the node's SAs toward the HA and the gateways with a
forwarding path toward the new FA, acknowledges, and removes that path when
its lifetime ends. Tested with the whole system in one process on loopback and
a fake clock (tests/mobility.py), with the home AAA answering the new FA
(flow D) and with the foreign AAA answering it from its cache (flow C), and at
the level of the home AAA's decisions (who is told which keys).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pyrad.packet
import pytest

from aaa_vpn import keys
from aaa_vpn.model import ClientRole, Flavour, KeyMode, Session
from aaa_vpn.roles import home_plan as home_aaa
from aaa_vpn.roles.fa import HANDOFF_SPI, ForeignAgent
from aaa_vpn.roles.ha import mirror
from aaa_vpn.sa.base import SaError
from aaa_vpn.sa.esp import EspError
from aaa_vpn.sa.memory import MemoryBackend
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import (
    BindingAcknowledge,
    BindingStatus,
    ExtensionType,
    GeneralizedAuthSubtype,
    PreviousFaNotification,
)
from aaa_vpn.wire.mip_auth import append_generalized_authentication, verify_authentication
from aaa_vpn.wire.mip_replay import timestamp_identification
from aaa_vpn.wire.mip_vpn import encode_vpn_path, session_extension
from aaa_vpn.wire.profile import PathProfile, PathRole, RequestType, VpnProfile
from aaa_vpn.wire.radius import encode_reply, load_dictionary
from aaa_vpn.wire.radius_profile import decode_profile, encode_profile

from .mobility import (
    CN_DYNAMIC,
    CN_STATIC,
    FA1,
    FA2,
    FA3,
    GW_DYNAMIC,
    HA,
    HOME_ADDRESS,
    MN_SOCKET,
    FakeSocket,
    Network,
    inner_packet,
    random_payload,
)
from .test_home_aaa_role import FA as UNIT_FA
from .test_home_aaa_role import GW_DYNAMIC as UNIT_GW
from .test_home_aaa_role import HA as UNIT_HA
from .test_home_aaa_role import HOME as UNIT_HOME
from .test_home_aaa_role import make_context, new_session

FORWARDING_LIFETIME = 10  # FaConfig.forwarding_lifetime's default
ANY = IPv4Network("0.0.0.0/0")
HOME_NET = IPv4Network(f"{HOME_ADDRESS}/32")
MN = MN_SOCKET


# -- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["home-aaa", "foreign-aaa"])
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Network]:
    """The standard topology; the FAs ask the home AAA directly (the new FA's
    view comes from move_session + view_for) or the foreign AAA (from its
    cache, moved_view: flow C)."""
    network = Network(tmp_path, foreign=request.param)
    network.standard()
    yield network
    network.close()


def backend(net: Network, name: str) -> MemoryBackend:
    node_backend = net.nodes[name].backend
    assert node_backend is not None
    return node_backend


def table(net: Network, name: str) -> list[tuple[str, str]]:
    return sorted((p.path.role.name, str(p.peer)) for p in backend(net, name).paths())


def fa(net: Network, name: str) -> ForeignAgent:
    agent = net.nodes[name].agent
    assert isinstance(agent, ForeignAgent)
    return agent


def register(net: Network, address: str, previous: str | None = None) -> int:
    mn = net.nodes["mn"].agent
    mn.register(net.fa_address(address), net.clock, previous_fa=IPv4Address(previous) if previous else None)  # type: ignore[attr-defined]
    net.settle()
    done = net.nodes["mn"].done()
    assert done, "the mobile node got no answer"
    return done[-1].code


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


def path_at(net: Network, name: str, role: PathRole) -> PathProfile:
    (path,) = [p.path for p in backend(net, name).paths() if p.path.role is role]
    return path


def record_sends(net: Network, name: str) -> list[tuple[int, str]]:
    """(message type, destination) of every datagram ``name`` sends from now on, in order."""
    agent = net.nodes[name].agent
    sent: list[tuple[int, str]] = []
    original = agent.datagrams_to_send

    def recording(now: float) -> list:  # type: ignore[type-arg]
        datagrams = original(now)
        sent.extend((d.data[0], d.address[0]) for d in datagrams)
        return datagrams

    agent.datagrams_to_send = recording  # type: ignore[method-assign]
    return sent


# -- the flow, end to end ---------------------------------------------------------------------------


def test_the_previous_fa_forwards_to_the_new_fa_until_the_lifetime_ends(net: Network) -> None:
    assert register(net, FA1) == 0
    # a packet for the node the HA protected before the move reaches FA1 ...
    in_flight = backend(net, "ha").protect(inner_packet(CN_STATIC, HOME_ADDRESS, random_payload()))
    assert in_flight is not None and str(in_flight[0]) == FA1
    arrived = backend(net, "fa1").unprotect(in_flight[1])
    net.advance(2.0)
    sends = record_sends(net, "fa2")
    assert register(net, FA2, previous=FA1) == 0

    # the node's (last, accepting) reply left FA2 before the notification to FA1 (rule 6)
    replies = [i for i, (kind, to) in enumerate(sends) if (kind, to) == (mip.MessageType.REGISTRATION_REPLY, MN)]
    notifications = [i for i, (kind, to) in enumerate(sends) if (kind, to) == (mip.MessageType.EXPERIMENTAL, FA1)]
    assert replies and notifications == [replies[-1] + 1], sends
    # FA1: only the forwarding path toward FA2 (its SAs toward the HA and the gateway went)
    assert table(net, "fa1") == [("FA_FA", FA2)]
    assert fa(net, "fa1").visitors == {}
    assert fa(net, "fa1").counters["handoff.forwarding"] == 1
    # FA2: the node's paths and the forwarding path's receiving end
    assert table(net, "fa2") == [("FA_FA", FA1), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert fa(net, "fa2").counters["handoff.acknowledged"] == 1
    assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", "127.0.0.21")]
    # the two ends mirror each other; selectors: anything -> the home address
    at_fa1, at_fa2 = path_at(net, "fa1", PathRole.FA_FA), path_at(net, "fa2", PathRole.FA_FA)
    assert at_fa1 == dataclasses.replace(mirror(at_fa2), binding_key=None)
    assert (at_fa1.local_ts, at_fa1.remote_ts) == ((ANY,), (HOME_NET,))
    assert at_fa1.esp_transform == path_at(net, "fa2", PathRole.FA_HA).esp_transform

    # ... and FA1 forwards it: it decrypts at FA2 and nowhere else
    assert only_at(net, "fa1", arrived, "fa2") == arrived
    late = inner_packet(CN_DYNAMIC, HOME_ADDRESS, random_payload())
    assert only_at(net, "fa1", late, "fa2") == late
    # FA1 no longer carries the node's own traffic; FA2 does, never through FA1
    assert backend(net, "fa1").protect(inner_packet(HOME_ADDRESS, CN_STATIC)) is None
    outbound = inner_packet(HOME_ADDRESS, CN_STATIC, random_payload())
    assert only_at(net, "fa2", outbound, "ha") == outbound
    direct = inner_packet(HOME_ADDRESS, CN_DYNAMIC, random_payload())
    assert only_at(net, "fa2", direct, "gw-dynamic") == direct

    # the forwarding lifetime ends: FA1 has no SA at all, FA2 only the node's
    net.advance(FORWARDING_LIFETIME - 1.0)
    assert table(net, "fa1") == [("FA_FA", FA2)]
    net.advance(1.5)
    assert backend(net, "fa1").paths() == []
    assert fa(net, "fa1").forwarding == {}
    assert fa(net, "fa1").counters["handoff.forwarding_expired"] == 1
    assert table(net, "fa2") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    # a renewal at FA2 afterwards does not bring the forwarding path back
    net.advance(2.0)
    assert register(net, FA2) == 0
    assert table(net, "fa2") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert fa(net, "fa2").counters["handoff.notifications_sent"] == 1


def test_the_views_of_both_aaa_servers_agree(net: Network) -> None:
    # The new FA's forwarding path has the SPIs the home AAA stored (derived
    # from the session root key), whichever AAA server gave it.
    assert register(net, FA1) == 0
    net.advance(2.0)
    assert register(net, FA2, previous=FA1) == 0
    (session,) = net.store.find_sessions("mn1@home.example")
    spis = {a.path: a.spi for a in session.spis}
    at_fa2 = path_at(net, "fa2", PathRole.FA_FA)
    label = home_aaa.forwarding_label(IPv4Address(FA1))
    assert (at_fa2.spi_in, at_fa2.spi_out) == (spis[f"{label}@{FA2}"], spis[f"{label}@{FA1}"])
    srk, length = session.session_root_key, at_fa2.esp_transform.keymat_length
    assert at_fa2.key_in == keys.derive_sa_key(srk, label.encode(), IPv4Address(FA1), IPv4Address(FA2), 2, length)
    visitor = fa(net, "fa2").visitors["mn1@home.example"]
    assert visitor.profile.handoff_key == keys.derive_handoff_key(srk, IPv4Address(FA2), 2)
    assert visitor.profile.previous_fa == IPv4Address(FA1)
    assert visitor.profile.previous_fa_handoff_key == keys.derive_handoff_key(srk, IPv4Address(FA1), 1)
    if net.foreign is not None:
        assert net.foreign.counters["handoffs_answered"] == 1


def test_back_and_forth_keys_never_repeat(net: Network) -> None:
    # Every SA direction installed anywhere, on every visit: the sending keys
    # are all different, and none is a handoff key.
    seen: dict[tuple[str, int], bytes] = {}

    def collect() -> None:
        for name, node in net.nodes.items():
            for installed in node.backend.paths() if node.backend is not None else ():
                seen[(name, installed.path.spi_out)] = installed.path.key_out.value

    assert register(net, FA1) == 0
    collect()
    for address, previous in ((FA2, FA1), (FA1, FA2), (FA2, FA1)):
        net.advance(2.0)
        assert register(net, address, previous=previous) == 0
        collect()
    assert len(set(seen.values())) == len(seen)
    (session,) = net.store.find_sessions("mn1@home.example")
    handoff = {
        keys.derive_handoff_key(session.session_root_key, IPv4Address(a), e).value
        for a in (FA1, FA2)
        for e in (1, 2, 3, 4)
    }
    assert not handoff & set(seen.values())
    # forwarding paths of three epochs were installed, each with its own keys
    assert sum(1 for (name, _spi) in seen if name in ("fa1", "fa2")) >= 3 * 2 + 3
    # and at the end: FA2 holds the node, FA1 forwards to it
    assert table(net, "fa1") == [("FA_FA", FA2)]
    assert table(net, "fa2") == [("FA_FA", FA1), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]


def test_an_unreachable_previous_fa_does_not_delay_the_registration(net: Network) -> None:
    assert register(net, FA1) == 0
    net.advance(2.0)
    net.remove("fa1")  # FA1 is gone: nobody answers at its address
    start = net.clock
    assert register(net, FA2, previous=FA1) == 0  # answered without the clock moving
    assert net.clock == start
    assert table(net, "fa2") == [("FA_FA", FA1), ("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    net.advance(7.5)  # 3 attempts, at 0, 1 and 3 s; given up at 7 s (1 + 2 + 4)
    counters = fa(net, "fa2").counters
    assert (counters["handoff.notifications_sent"], counters["handoff.notifications_retransmitted"]) == (1, 2)
    assert counters["handoff.unanswered"] == 1
    # FA2 is consistent: the node's paths, no forwarding end; the rest of the network follows FA2
    assert table(net, "fa2") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", "127.0.0.21")]
    assert table(net, "gw-dynamic") == [("FA_GW", FA2)]
    assert "mn1@home.example" in fa(net, "fa2").visitors
    outbound = inner_packet(HOME_ADDRESS, CN_STATIC, random_payload())
    assert only_at(net, "fa2", outbound, "ha") == outbound

    # it goes on telling FA1 to let the node go (Lifetime 0, a fresh identification
    # each time) while FA2's own registration of the node lasts
    assert counters["handoff.releases_sent"] >= 1
    assert fa(net, "fa2").exchanges() == 1
    visitor = fa(net, "fa2").visitors["mn1@home.example"]
    net.advance(visitor.expires - net.clock + 1.0)
    counters = fa(net, "fa2").counters
    assert counters["handoff.release_unanswered"] == 1
    # backed off to one every 16 s (release_max_interval), never faster
    assert counters["handoff.releases_sent"] <= 4 + (visitor.expires - visitor.registered_at) / 16
    assert fa(net, "fa2").exchanges() == 0


def test_a_previous_fa_that_heard_no_notification_is_told_to_let_the_node_go(net: Network) -> None:
    """Every transmission of the notification is lost (at 0, 1 and 3 s), and the
    first release at 7 s: the next release (8 s) removes FA1's visitor and its
    SAs toward the HA and the gateway without forwarding, and it is
    acknowledged (authenticated) under the handoff key."""
    assert register(net, FA1) == 0
    net.advance(2.0)
    lost_until = net.clock + 7.5
    seen: list[tuple[float, bytes]] = []
    acks: list[tuple[tuple[str, int], bytes]] = []

    def lose(source: tuple[str, int], destination: tuple[str, int], data: bytes) -> bool:
        if (source, destination[0]) == (net.fa_address(FA1), FA2):
            acks.append((destination, data))  # FA1's own answers (not the test's forgery)
        if (source[0], destination[0]) != (FA2, FA1):
            return False
        seen.append((net.clock, data))
        return net.clock < lost_until

    net.drop = lose
    assert register(net, FA2, previous=FA1) == 0
    net.advance(7.4)
    assert "mn1@home.example" in fa(net, "fa1").visitors  # it heard nothing
    assert table(net, "fa1") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert table(net, "fa2") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]  # the receiving end went at 7 s
    # A forged acceptance of the first release (FA1's address, no handoff key) is dropped:
    # the releases go on.
    release = mip.decode_binding_message(seen[3][1])
    assert isinstance(release, PreviousFaNotification) and release.lifetime == 0
    forged = mip.encode_binding_message(
        BindingAcknowledge(BindingStatus.ACCEPTED, 0, release.home_address, IPv4Address(FA2), release.identification)
    )
    forged = append_generalized_authentication(
        forged, GeneralizedAuthSubtype.BINDING, HANDOFF_SPI, Secret(b"not the handoff key, 32 octets.")
    )
    net.socket(FA1, 50434).sendto(forged, net.fa_address(FA2))
    net.settle()
    assert fa(net, "fa2").counters["dropped.bad_handoff_auth"] == 1 and fa(net, "fa2").exchanges() == 1
    net.advance(1.0)
    assert fa(net, "fa1").visitors == {} and table(net, "fa1") == []
    assert fa(net, "fa1").forwarding == {}  # let go, not forwarding
    counters = fa(net, "fa2").counters
    released = (counters["handoff.unanswered"], counters["handoff.releases_sent"], counters["handoff.released"])
    assert released == (1, 2, 1)
    assert fa(net, "fa2").exchanges() == 0
    # what was sent: the notification three times byte for byte, then two releases
    messages = [mip.decode_binding_message(data) for _, data in seen]
    assert [m.lifetime for m in messages] == [FORWARDING_LIFETIME] * 3 + [0, 0]  # type: ignore[attr-defined]
    assert len({data for _, data in seen[:3]}) == 1
    identifications = [m.identification for m in messages]  # type: ignore[attr-defined]
    assert identifications[2] < identifications[3] < identifications[4]
    # the rest of the network follows FA2
    assert table(net, "ha") == [("FA_HA", FA2), ("HA_GW", "127.0.0.21")]
    assert table(net, "gw-dynamic") == [("FA_GW", FA2)]
    # FA1's acknowledgement of the release, delivered twice: the copy matches nothing
    ((destination, ack),) = acks
    net.socket(FA1, 50434).sendto(ack, destination)
    net.settle()
    counters = fa(net, "fa2").counters
    assert (counters["dropped.unmatched_ack"], counters["handoff.released"]) == (1, 1)


def test_a_previous_fa_that_cannot_install_the_forwarding_path_still_lets_the_node_go(
    net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FA1 refuses the forwarding path (161, its backend cannot install it) and
    keeps the visitor: FA2 removes its receiving end and releases FA1's visitor
    at once (Lifetime 0), so FA1 holds no SA toward the HA or the gateway."""
    assert register(net, FA1) == 0
    net.advance(2.0)
    fa1_backend = backend(net, "fa1")
    install = fa1_backend.install

    def no_forwarding(path: PathProfile, owner: str):  # type: ignore[no-untyped-def]
        if path.role is PathRole.FA_FA:
            raise SaError("no room for a forwarding path")
        return install(path, owner)

    monkeypatch.setattr(fa1_backend, "install", no_forwarding)
    assert register(net, FA2, previous=FA1) == 0
    counters = fa(net, "fa2").counters
    assert (counters["handoff.refused.161"], counters["handoff.released"]) == (1, 1)
    assert fa(net, "fa1").visitors == {} and fa(net, "fa1").forwarding == {}
    assert table(net, "fa1") == []
    assert table(net, "fa2") == [("FA_GW", GW_DYNAMIC), ("FA_HA", HA)]
    assert fa(net, "fa2").exchanges() == 0


# -- forged and refused notifications ---------------------------------------------------------------


def notification(
    net: Network,
    handoff_key: Secret,
    path: PathProfile,
    *,
    home: str = HOME_ADDRESS,
    care_of: str = FA2,
    session: tuple[str, int] | None = None,
    lifetime: int = FORWARDING_LIFETIME,
) -> bytes:
    auth_key, wrap_key = keys.handoff_subkeys(handoff_key)
    extensions: list[mip.Extension] = []
    if session is not None:
        extensions.append(session_extension(*session))
    extensions.append(encode_vpn_path(path, wrap_key))
    message = PreviousFaNotification(
        lifetime=lifetime,
        home_address=IPv4Address(home),
        care_of_address=IPv4Address(care_of),
        identification=timestamp_identification(net.clock, 7),
        acknowledge=True,
        extensions=tuple(extensions),
    )
    return append_generalized_authentication(
        mip.encode_binding_message(message), GeneralizedAuthSubtype.BINDING, HANDOFF_SPI, auth_key
    )


def forwarding_path(local: str = FA1, peer: str = FA2, key: bytes = b"k") -> PathProfile:
    """An FA-FA path as the previous FA would see it, with made-up keys."""
    transform = home_aaa.DEFAULT_SERVICE.esp_transform
    return PathProfile(
        role=PathRole.FA_FA,
        local=IPv4Address(local),
        peer=IPv4Address(peer),
        local_ts=(ANY,),
        remote_ts=(HOME_NET,),
        key_mode=KeyMode.MANUAL,
        esp_transform=transform,
        spi_in=0x4242,
        spi_out=0x4343,
        key_in=Secret(key * transform.keymat_length),
        key_out=Secret(b"o" * transform.keymat_length),
        lifetime=3600,
    )


@pytest.fixture
def sender(net: Network) -> Iterator[FakeSocket]:
    """An endpoint at FA2's address (the new FA's agent is not on this port)."""
    sock = net.socket(FA2)
    yield sock
    sock.close()


def send(net: Network, sock: FakeSocket, data: bytes, auth_key: Secret | None = None) -> BindingAcknowledge | None:
    """Send ``data`` to FA1; its answer, if any, which must authenticate
    under ``auth_key`` if given (and must not authenticate otherwise)."""
    sock.sendto(data, net.fa_address(FA1))
    net.settle()
    try:
        answer, _ = sock.recvfrom(4096)
    except BlockingIOError:
        return None
    message = mip.decode_message(answer)
    assert isinstance(message, BindingAcknowledge)
    signed = any(isinstance(e, mip.GeneralizedAuthExtension) for e in message.extensions)
    assert signed == (auth_key is not None), message
    if auth_key is not None:
        assert verify_authentication(
            answer, ExtensionType.GENERALIZED_AUTH, auth_key, subtype=GeneralizedAuthSubtype.BINDING, spi=HANDOFF_SPI
        )
    return message


def test_a_forged_notification_changes_nothing(net: Network, sender: FakeSocket) -> None:
    assert register(net, FA1) == 0
    before = [(p.owner, p.spi_in) for p in backend(net, "fa1").paths()]
    visitor = fa(net, "fa1").visitors["mn1@home.example"]
    session = (visitor.session_id, visitor.profile.epoch)
    wrong = Secret(os.urandom(32))
    # wrong key: dropped, counted, never answered
    assert send(net, sender, notification(net, wrong, forwarding_path(), session=session)) is None
    assert fa(net, "fa1").counters["dropped.bad_handoff_auth"] == 1
    assert [(p.owner, p.spi_in) for p in backend(net, "fa1").paths()] == before
    assert "mn1@home.example" in fa(net, "fa1").visitors and fa(net, "fa1").forwarding == {}
    # the node still works through FA1
    outbound = inner_packet(HOME_ADDRESS, CN_STATIC, random_payload())
    assert only_at(net, "fa1", outbound, "ha") == outbound


def test_refused_notifications_are_acknowledged_with_their_status(net: Network, sender: FakeSocket) -> None:
    assert register(net, FA1) == 0
    before = [(p.owner, p.spi_in) for p in backend(net, "fa1").paths()]
    visitor = fa(net, "fa1").visitors["mn1@home.example"]
    key = visitor.profile.handoff_key
    assert key is not None
    session = (visitor.session_id, visitor.profile.epoch)
    auth_key, _ = keys.handoff_subkeys(key)
    cases: list[tuple[dict[str, object], int]] = [
        # no visitor with this home address: nothing to check it with (131, unauthenticated)
        ({"path": forwarding_path(), "home": "198.51.100.99", "session": session}, 131),
        # the path does not end at FA1, or not at the sender, or is not a forwarding path
        ({"path": forwarding_path(local=FA3), "session": session}, 160),
        ({"path": forwarding_path(peer=FA3), "session": session}, 160),
        ({"path": dataclasses.replace(forwarding_path(), role=PathRole.FA_HA), "session": session}, 160),
        # another epoch of the session than the one FA1 holds
        ({"path": forwarding_path(), "session": (session[0], session[1] + 1)}, 129),
        ({"path": forwarding_path()}, 134),  # no session NVSE
    ]
    for arguments, status in cases:
        net.clock += 0.01  # each notification is newer than the last
        signer = None if status == BindingStatus.AUTHENTICATION_FAILED else auth_key
        ack = send(net, sender, notification(net, key, **arguments), signer)  # type: ignore[arg-type]
        assert ack is not None and ack.status == status, (status, ack)
        assert ack.lifetime == 0
    # keys wrapped under another key than the handoff key: 160
    net.clock += 0.01
    auth_only = notification(net, key, forwarding_path(), session=session)
    good_path = encode_vpn_path(forwarding_path(), Secret(os.urandom(32)))
    message = mip.decode_message(auth_only)
    assert isinstance(message, PreviousFaNotification)
    forged = dataclasses.replace(message, extensions=(session_extension(*session), good_path))
    ack = send(
        net,
        sender,
        append_generalized_authentication(
            mip.encode_binding_message(forged), GeneralizedAuthSubtype.BINDING, HANDOFF_SPI, auth_key
        ),
        auth_key,
    )
    assert ack is not None and ack.status == BindingStatus.VPN_INFORMATION_INVALID
    # nothing changed at FA1
    assert [(p.owner, p.spi_in) for p in backend(net, "fa1").paths()] == before
    assert "mn1@home.example" in fa(net, "fa1").visitors and fa(net, "fa1").forwarding == {}


def test_a_retransmitted_notification_is_answered_again(net: Network, sender: FakeSocket) -> None:
    assert register(net, FA1) == 0
    visitor = fa(net, "fa1").visitors["mn1@home.example"]
    key = visitor.profile.handoff_key
    assert key is not None
    data = notification(net, key, forwarding_path(), session=(visitor.session_id, visitor.profile.epoch))
    auth_key, _ = keys.handoff_subkeys(key)
    first = send(net, sender, data, auth_key)
    assert first is not None and (first.status, first.lifetime) == (0, FORWARDING_LIFETIME)
    assert table(net, "fa1") == [("FA_FA", FA2)]
    again = send(net, sender, data, auth_key)
    assert again is not None and (again.status, again.lifetime) == (0, FORWARDING_LIFETIME)
    assert fa(net, "fa1").counters["handoff.duplicates"] == 1
    assert table(net, "fa1") == [("FA_FA", FA2)]
    net.advance(FORWARDING_LIFETIME + 0.5)
    assert table(net, "fa1") == []


# -- who is told what: the home AAA's views ---------------------------------------------------------


def views(key_mode: KeyMode = KeyMode.MANUAL) -> tuple[VpnProfile, VpnProfile, VpnProfile, Session]:
    """(old FA's proxy view, the foreign AAA's moved view, the home AAA's view after the move, moved session)."""
    ctx = make_context(key_mode=key_mode)
    session, paths = new_session(ctx)
    old = home_aaa.view_for(
        session, paths, ClientRole.FOREIGN_AAA, RequestType.FA_REGISTRATION, UNIT_FA, ctx.user, 3600
    )
    new_fa = IPv4Address("192.0.2.99")
    by_aaaf = home_aaa.moved_view(old, new_fa, session.epoch + 1, 3000)
    new_paths = home_aaa.plan_paths(ctx, UNIT_HOME, UNIT_HA, new_fa)
    moved = home_aaa.move_session(session, new_paths, new_fa, 1000.0, 3600, os.urandom)
    by_aaah = home_aaa.view_for(moved, new_paths, ClientRole.FA, RequestType.FA_REGISTRATION, new_fa, ctx.user, 3000)
    return old, by_aaaf, by_aaah, moved


@pytest.mark.parametrize("key_mode", list(KeyMode))
def test_the_foreign_aaa_and_the_home_aaa_give_the_new_fa_the_same_view(key_mode: KeyMode) -> None:
    old, by_aaaf, by_aaah, _moved = views(key_mode)
    assert dataclasses.replace(by_aaaf, session_root_key=None) == by_aaah
    srk = old.session_root_key
    assert srk is not None
    new_fa = by_aaah.care_of_address
    assert by_aaah.handoff_key == keys.derive_handoff_key(srk, new_fa, 2)
    assert (by_aaah.previous_fa, by_aaah.previous_fa_handoff_key) == (UNIT_FA, old.handoff_key)
    (forward,) = [p for p in by_aaah.paths if p.role is PathRole.FA_FA]
    assert (forward.local, forward.peer) == (new_fa, UNIT_FA)
    assert (forward.local_ts, forward.remote_ts) == ((IPv4Network(f"{UNIT_HOME}/32"),), (ANY,))
    assert (forward.ike_psk is not None) == (key_mode is KeyMode.IKEV2)
    # and through RADIUS: what the new FA decodes is exactly that
    ra = bytes(range(16))
    attributes = encode_profile(by_aaah, Flavour.AAA_VPN, b"secret", ra)
    assert decode_profile(attributes, b"secret", ra) == by_aaah


def test_nobody_else_learns_the_handoff_data() -> None:
    ctx = make_context()
    session, paths = new_session(ctx)
    new_fa = IPv4Address("192.0.2.99")
    new_paths = home_aaa.plan_paths(ctx, UNIT_HOME, UNIT_HA, new_fa)
    moved = home_aaa.move_session(session, new_paths, new_fa, 1000.0, 3600, os.urandom)
    for role, request, node in (
        (ClientRole.HA, RequestType.HA_REGISTRATION, UNIT_HA),
        (ClientRole.GW, RequestType.GW_BINDING, UNIT_GW),
    ):
        view = home_aaa.view_for(moved, new_paths, role, request, node, ctx.user, 3000)
        assert (view.handoff_key, view.previous_fa, view.previous_fa_handoff_key) == (None, None, None), role
        assert all(p.role is not PathRole.FA_FA for p in view.paths), role
    # the first FA's view: its own handoff key, nothing about anybody else
    first = home_aaa.view_for(session, paths, ClientRole.FA, RequestType.FA_REGISTRATION, UNIT_FA, ctx.user, 3600)
    assert first.handoff_key == keys.derive_handoff_key(session.session_root_key, UNIT_FA, 1)
    assert (first.previous_fa, first.previous_fa_handoff_key) == (None, None)
    assert all(p.role is not PathRole.FA_FA for p in first.paths)


def test_the_forwarding_path_follows_only_the_last_move() -> None:
    ctx = make_context()
    session, _ = new_session(ctx)
    fa2, fa3 = IPv4Address("192.0.2.99"), IPv4Address("192.0.2.98")
    at_fa2 = home_aaa.move_session(session, home_aaa.plan_paths(ctx, UNIT_HOME, UNIT_HA, fa2), fa2, 1, 3600, os.urandom)
    fa3_paths = home_aaa.plan_paths(ctx, UNIT_HOME, UNIT_HA, fa3)
    at_fa3 = home_aaa.move_session(at_fa2, fa3_paths, fa3, 2, 3600, os.urandom)
    forwarding = sorted(a.path for a in at_fa3.spis if a.path.startswith(home_aaa.FORWARDING_LABEL_PREFIX))
    assert forwarding == sorted([f"fa-fa:{fa2}@{fa2}", f"fa-fa:{fa2}@{fa3}"])
    # a renewal keeps the table as it is (so it stays a renewal) ...
    assert home_aaa.allocate_spis(fa3_paths, (fa3, UNIT_HA), at_fa3.spis, os.urandom) == at_fa3.spis
    # ... and a VPN change at the same FA (next epoch) has no previous FA
    updated = home_aaa.move_session(at_fa3, fa3_paths, fa3, 3, 3600, os.urandom)
    assert not [a for a in updated.spis if a.path.startswith(home_aaa.FORWARDING_LABEL_PREFIX)]
    view = home_aaa.view_for(updated, fa3_paths, ClientRole.FA, RequestType.FA_REGISTRATION, fa3, ctx.user, 1)
    assert view.previous_fa is None and all(p.role is not PathRole.FA_FA for p in view.paths)
    # the foreign AAA, moving a view that already has a forwarding path, drops it
    proxy = home_aaa.view_for(at_fa3, fa3_paths, ClientRole.FOREIGN_AAA, RequestType.FA_REGISTRATION, fa3, ctx.user, 1)
    again = home_aaa.moved_view(proxy, UNIT_FA, at_fa3.epoch + 1, 1)
    assert [(p.local, p.peer) for p in again.paths if p.role is PathRole.FA_FA] == [(UNIT_FA, fa3)]


def test_forwarding_keys_are_not_other_keys() -> None:
    _old, _by_aaaf, view, moved = views(KeyMode.IKEV2)
    srk = moved.session_root_key
    (forward,) = [p for p in view.paths if p.role is PathRole.FA_FA]
    others = {k.value for p in view.paths if p is not forward for k in (p.key_in, p.key_out, p.ike_psk) if k}
    mine = {k.value for k in (forward.key_in, forward.key_out, forward.ike_psk) if k}
    assert len(mine) == 3 and not mine & others
    handoff = {view.handoff_key, view.previous_fa_handoff_key}
    assert None not in handoff
    handoff_values = {k.value for k in handoff if k is not None}
    subkeys = {k.value for h in handoff if h is not None for k in keys.handoff_subkeys(h)}
    assert not (mine | others) & (handoff_values | subkeys)
    assert srk.value not in mine | handoff_values | subkeys
    # the handoff subkeys are not an HA-GW binding key's subkeys of the same bytes
    some = Secret(bytes(range(32)))
    assert not {k.value for k in keys.handoff_subkeys(some)} & {k.value for k in keys.binding_subkeys(some)}


def test_pyrad_reads_the_new_attributes_with_the_dictionary() -> None:
    _old, _by_aaaf, view, _moved = views()
    ra = bytes(range(16))
    reply = encode_reply(2, 1, ra, b"secret", encode_profile(view, Flavour.AAA_VPN, b"secret", ra))
    packet = pyrad.packet.AuthPacket(packet=reply, secret=b"secret", dict=load_dictionary())
    packet.request_authenticator = ra
    assert packet["Aaa-Vpn-Previous-FA"] == [str(UNIT_FA)]
    assert view.handoff_key is not None and view.previous_fa_handoff_key is not None
    assert packet["Aaa-Vpn-Handoff-Key"] == [view.handoff_key.value]
    assert packet["Aaa-Vpn-Previous-FA-Handoff-Key"] == [view.previous_fa_handoff_key.value]
    tag = 1 + [p.role for p in view.paths].index(PathRole.FA_FA)
    assert packet[f"Aaa-Vpn-Path-Role:{tag}"] == ["FA-FA"]
