"""The agents' RADIUS client: requests and reply verification
(``wire/radius_request.py``) and the sans-IO client (``roles/radius_client.py``)
against in-memory home AAA servers (``service.home.HomeService`` over real SQLite
stores) on a fake clock.

Addresses: the FA client is 127.0.0.1, the HA client 127.0.0.2 (as the stores
provision them); server A is 192.0.2.1:1812, server B 192.0.2.2:1812. A and B
have separate stores with *different* FA secrets, so a request that fails over
from A to B only works if it is sealed again with B's secret.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import random
import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pyrad.packet
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaa_vpn.model import Client, ClientRole, Flavour, User
from aaa_vpn.roles.home_aaa import HomeAaaOptions
from aaa_vpn.roles.home_plan import mn_aaa_chap_attributes
from aaa_vpn.roles.radius_client import (
    Event,
    RadiusClient,
    RequestAccepted,
    RequestFailed,
    RequestRejected,
    ServerConfig,
    ServerDown,
    ServerUp,
    ServerZombie,
    retransmission_waits,
    server_time,
)
from aaa_vpn.secret import Secret
from aaa_vpn.service.home import HomeService
from aaa_vpn.store import init_store
from aaa_vpn.store.sqlite import SqliteStore
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.profile import VENDOR_ID, PathRole, RejectReason, RequestType
from aaa_vpn.wire.radius import encode_reply, load_dictionary
from aaa_vpn.wire.radius_request import (
    ACCESS_ACCEPT,
    ACCESS_CHALLENGE,
    STATUS_SERVER,
    Accepted,
    AccessRequest,
    ProfileReplyError,
    Rejected,
    ReplyError,
    RequestError,
    build_status_server,
    decode_access_reply,
    decode_status_reply,
    encode_access_request,
)

from .radius_client import PRECEDING

SECRET_A = b"server-a-fa-secret"
SECRET_B = b"server-b-fa-secret"
HA_SECRET = b"ha1-shared-secret"
MN = b"mn1-aaa-secret"
NAI = "mn1@home.example"
FA = IPv4Address("127.0.0.1")
HA = IPv4Address("127.0.0.2")
FA_SOURCE = ("127.0.0.1", 40001)
HA_SOURCE = ("127.0.0.2", 40002)
SERVER_A = ("192.0.2.1", 1812)
SERVER_B = ("192.0.2.2", 1812)
CHALLENGE = bytes.fromhex("0102030405060708")
T0 = 1000.0

Address = tuple[str, int]


# --- fixtures and helpers ------------------------------------------------------------------


def make_store(path: Path, fa_secret: bytes, flavour: Flavour = Flavour.AAA_VPN) -> SqliteStore:
    path.mkdir()
    store, _created = init_store(path / "vpn.db", path / "vpn.key")
    store.add_client(Client("fa1", IPv4Network("127.0.0.1/32"), Secret(fa_secret), ClientRole.FA, flavour=flavour))
    store.add_client(Client("ha1", IPv4Network("127.0.0.2/32"), Secret(HA_SECRET), ClientRole.HA))
    store.add_user(User(NAI, HA, Secret(MN), 256, Secret(bytes(range(16))), home_address=IPv4Address("198.51.100.10")))
    return store


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[Address, SqliteStore]]:
    made = {SERVER_A: make_store(tmp_path / "a", SECRET_A), SERVER_B: make_store(tmp_path / "b", SECRET_B)}
    yield made
    for store in made.values():
        store.close()


@pytest.fixture
def servers(stores: dict[Address, SqliteStore]) -> dict[Address, HomeService]:
    return {address: HomeService(store, HomeAaaOptions()) for address, store in stores.items()}


def fa_info(mn_secret: bytes = MN, **changes: object) -> AccessRequest:
    chap_password, chap_challenge = mn_aaa_chap_attributes(CHALLENGE, PRECEDING, Secret(mn_secret))
    fields: dict[str, object] = {
        "nai": NAI,
        "chap_password": chap_password,
        "chap_challenge": chap_challenge,
        "nas_ip_address": FA,
        "request_type": RequestType.FA_REGISTRATION,
        "care_of_address": FA,
        "home_agent": HA,
    }
    fields.update(changes)
    return AccessRequest(**fields)  # type: ignore[arg-type]


def ha_info() -> AccessRequest:
    return fa_info(nas_ip_address=HA, request_type=RequestType.HA_REGISTRATION, home_agent=None)


def config(address: Address, secret: bytes, name: str) -> ServerConfig:
    return ServerConfig(address[0], address[1], Secret(secret), name)


def seeded(seed: int = 1) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def fa_client(**options: object) -> RadiusClient:
    defaults: dict[str, object] = {
        "timeout": 1.0,
        "retries": 2,
        "dead_time": 30.0,
        "status_interval": 5.0,
        "zombie_period": 0.0,
    }
    defaults.update(options)
    return RadiusClient(
        [config(SERVER_A, SECRET_A, "a"), config(SERVER_B, SECRET_B, "b")],
        random_bytes=seeded(),
        **defaults,  # type: ignore[arg-type]
    )


class Link:
    """The client's datagrams to in-memory servers and their replies back.

    ``down``: servers that hear nothing; ``lose_replies[server]``: replies of
    that server to lose (the server still handles the request)."""

    def __init__(self, client: RadiusClient, servers: dict[Address, HomeService], source: Address = FA_SOURCE) -> None:
        self.client = client
        self.servers = servers
        self.source = source
        self.sent: list[tuple[bytes, Address]] = []
        self.down: set[Address] = set()
        self.lose_replies: collections.Counter[Address] = collections.Counter()
        self.events: list[Event] = []

    def pump(self, now: float) -> None:
        for data, destination in self.client.datagrams_to_send(now):
            self.sent.append((data, destination))
            server = self.servers.get(destination)
            if server is None or destination in self.down:
                continue
            reply = server.handle(data, self.source, now)
            if reply is None:
                continue
            if self.lose_replies[destination]:
                self.lose_replies[destination] -= 1
                continue
            self.client.receive_datagram(reply, destination, now)
        while (event := self.client.next_event()) is not None:
            self.events.append(event)

    def run(self, now: float, finished: int = 1, until: float | None = None) -> float:
        """Drive the fake clock until ``finished`` requests ended (or ``until``); return the time."""
        for _ in range(10_000):
            self.pump(now)
            if len(self.outcomes()) >= finished and until is None:
                return now
            when = self.client.get_timer()
            if when is None or (until is not None and when > until):
                return now if until is None else until
            now = max(now, when)
            self.client.handle_timer(now)
        raise AssertionError("the client never settled")

    def outcomes(self) -> list[Event]:
        return [e for e in self.events if isinstance(e, (RequestAccepted, RequestRejected, RequestFailed))]

    def to(self, destination: Address) -> list[bytes]:
        return [data for data, where in self.sent if where == destination]


def split(packet: bytes) -> list[tuple[int, bytes]]:
    out, position = [], 20
    while position < len(packet):
        out.append((packet[position], packet[position + 2 : position + packet[position + 1]]))
        position += packet[position + 1]
    return out


def reply_without_ma(code: int, request: bytes, secret: bytes, attributes: bytes) -> bytes:
    """A reply with a correct Response Authenticator but no Message-Authenticator."""
    head = struct.pack("!BBH", code, request[1], 20 + len(attributes))
    return head + hashlib.md5(head + request[4:20] + attributes + secret).digest() + attributes


def reseal(reply: bytes, request: bytes, secret: bytes, attributes: list[bytes], code: int | None = None) -> bytes:
    """``reply`` with other attributes (Message-Authenticator first, both
    authenticators correct): what a server with the secret could send."""
    return encode_reply(code or reply[0], reply[1], request[4:20], secret, attributes)


def attributes_after_ma(reply: bytes) -> list[bytes]:
    return [bytes((t, len(v) + 2)) + v for t, v in split(reply)[1:]]


def genuine(
    server: HomeService, info: AccessRequest, secret: bytes, source: Address = FA_SOURCE
) -> tuple[bytes, bytes]:
    request = encode_access_request(info, 42, random.Random(7).randbytes(16), secret)
    reply = server.handle(request, source, T0)
    assert reply is not None, "the home AAA dropped a request built by encode_access_request"
    return request, reply


# --- requests ------------------------------------------------------------------------------


def test_request_has_message_authenticator_first_and_every_field() -> None:
    info = fa_info(session_id="s-1", previous_fa=IPv4Address("127.0.0.9"), proxy_states=(b"ps1", b"ps2"))
    authenticator = bytes(range(16))
    raw = encode_access_request(info, 7, authenticator, SECRET_A)
    assert raw[:4] == struct.pack("!BBH", 1, 7, len(raw)) and raw[4:20] == authenticator
    types = [t for t, _ in split(raw)]
    assert types == [80, 1, 4, 3, 60, 26, 26, 26, 26, 26, 33, 33], types
    # RFC 3579 section 3.2: HMAC-MD5(secret, packet with the M-A value zeroed).
    zeroed = raw[:22] + bytes(16) + raw[38:]
    assert raw[22:38].hex() == hmac.new(SECRET_A, zeroed, "md5").hexdigest()
    # independent decoders: the home AAA's own check and pyrad
    assert rc.check_request_message_authenticator(raw, SECRET_A) is True
    packet = pyrad.packet.AuthPacket(packet=raw, secret=SECRET_A, dict=load_dictionary())
    assert packet.verify_message_authenticator()
    assert packet["User-Name"] == [NAI]
    assert packet["NAS-IP-Address"] == ["127.0.0.1"]
    assert packet["Aaa-Vpn-Request-Type"] == ["FA-Registration"]
    assert packet["Aaa-Vpn-Care-Of-Address"] == ["127.0.0.1"]
    assert packet["Aaa-Vpn-Home-Agent"] == ["127.0.0.2"]
    assert packet["Aaa-Vpn-Session-Id"] == ["s-1"]
    assert packet["Aaa-Vpn-Previous-FA"] == ["127.0.0.9"]
    assert packet["Proxy-State"] == [b"ps1", b"ps2"]
    assert packet[3] == [info.chap_password] and packet[60] == [info.chap_challenge]


def test_status_server_is_signed() -> None:
    raw = build_status_server(3, bytes(16), SECRET_A, IPv4Address("127.0.0.1"))
    assert raw[0] == STATUS_SERVER and split(raw)[0][0] == 80
    assert rc.check_request_message_authenticator(raw, SECRET_A) is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"chap_password": b"\x01" * 16}, "CHAP-Password is 16 octets"),
        ({"chap_challenge": b"abc"}, "CHAP-Challenge is 3 octets"),
        ({"nai": ""}, "User-Name"),
        ({"nai": "x" * 254}, "User-Name"),
        ({"nas_ip_address": "127.0.0.1"}, "IPv4Address"),
        ({"proxy_states": (b"",)}, "Proxy-State"),
        ({"extra": (b"\x50\x12" + bytes(16),)}, "the codec's"),
        ({"extra": (b"\x21\x03x",)}, "the codec's"),
        ({"extra": (b"\x12\x09abc",)}, "Length octet"),
        ({"session_id": ""}, "Session-Id"),
    ],
)
def test_impossible_requests_are_the_callers_error(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        fa_info(**changes)  # type: ignore[arg-type]


def test_a_request_without_nas_ip_address_or_nas_identifier_cannot_be_encoded() -> None:
    # RFC 2865 section 4.1; a received one still decodes (the server decides)
    with pytest.raises(RequestError, match="NAS-IP-Address or a NAS-Identifier"):
        encode_access_request(fa_info(nas_ip_address=None), 1, bytes(16), SECRET_A)


def test_nas_identifier_in_extra_replaces_nas_ip_and_size_is_checked() -> None:
    info = fa_info(nas_ip_address=None, extra=(b"\x20\x05fa1",))
    raw = encode_access_request(info, 1, bytes(16), SECRET_A)
    assert (32, b"fa1") in split(raw)
    big = fa_info(extra=tuple(b"\x12\xff" + b"m" * 253 for _ in range(16)))
    with pytest.raises(RequestError, match="4096"):
        encode_access_request(big, 1, bytes(16), SECRET_A)


# --- replies -------------------------------------------------------------------------------


def test_fa_and_ha_replies_decode_into_mirrored_profiles(servers: dict[Address, HomeService]) -> None:
    server = servers[SERVER_A]
    request, reply = genuine(server, fa_info(), SECRET_A)
    fa = decode_access_reply(reply, request, SECRET_A)
    assert isinstance(fa, Accepted), fa
    assert fa.profile.care_of_address == FA and fa.profile.session_root_key is None
    assert fa.attributes == reply[20:]
    request, reply = genuine(server, ha_info(), HA_SECRET, HA_SOURCE)
    ha = decode_access_reply(reply, request, Secret(HA_SECRET))
    assert isinstance(ha, Accepted), ha
    assert ha.profile.session_id == fa.profile.session_id and ha.profile.session_root_key is not None
    at_fa = next(p for p in fa.profile.paths if p.role is PathRole.FA_HA)
    at_ha = next(p for p in ha.profile.paths if p.role is PathRole.FA_HA)
    assert (at_ha.local, at_ha.peer) == (at_fa.peer, at_fa.local)
    assert at_ha.key_in == at_fa.key_out and at_ha.spi_in == at_fa.spi_out


def test_reject_carries_reason_and_message(servers: dict[Address, HomeService]) -> None:
    request, reply = genuine(servers[SERVER_A], fa_info(mn_secret=b"not-the-secret"), SECRET_A)
    result = decode_access_reply(reply, request, SECRET_A)
    assert result == Rejected(RejectReason.AUTHENTICATION_FAILED, "mobile node failed authentication")


def test_proxy_state_round_trip_and_challenge_as_reject(servers: dict[Address, HomeService]) -> None:
    states = (b"\x00first", b"second")
    request, reply = genuine(servers[SERVER_A], fa_info(proxy_states=states), SECRET_A)
    assert isinstance(decode_access_reply(reply, request, SECRET_A), Accepted)
    challenge = reseal(
        reply,
        request,
        SECRET_A,
        [b"\x12\x06more", *(b"\x21" + bytes((len(s) + 2,)) + s for s in states)],
        ACCESS_CHALLENGE,
    )
    result = decode_access_reply(challenge, request, SECRET_A)
    assert isinstance(result, Rejected) and result.reason is None and "Access-Challenge" in result.message


def test_status_reply_is_verified(servers: dict[Address, HomeService]) -> None:
    request = build_status_server(9, bytes(range(16)), SECRET_A)
    reply = servers[SERVER_A].handle(request, FA_SOURCE, T0)
    assert reply is not None
    assert "aaa-vpn home AAA" in decode_status_reply(reply, request, SECRET_A)
    with pytest.raises(ReplyError, match="Response Authenticator"):
        decode_status_reply(reply, request, SECRET_B)


def _tampered(request: bytes, reply: bytes) -> dict[str, tuple[bytes, str]]:
    rest = attributes_after_ma(reply)
    flipped = bytearray(reply)
    flipped[10] ^= 0x01
    wrong_ma = bytearray(reseal(reply, request, SECRET_A, rest))
    wrong_ma[22] ^= 0x80  # then fix the Response Authenticator, as if a secret holder sent it
    wrong_ma[4:20] = hashlib.md5(bytes(wrong_ma[:4]) + request[4:20] + bytes(wrong_ma[20:]) + SECRET_A).digest()
    return {
        "response authenticator": (bytes(flipped), "Response Authenticator"),
        "missing message-authenticator": (
            reply_without_ma(reply[0], request, SECRET_A, b"".join(rest)),
            "without Message-Authenticator",
        ),
        "wrong message-authenticator": (bytes(wrong_ma), "Message-Authenticator is wrong"),
        "unexpected proxy-state": (reseal(reply, request, SECRET_A, [*rest, b"\x21\x06evil"]), "Proxy-State"),
        "identifier": (reply[:1] + bytes((reply[1] ^ 1,)) + reply[2:], "Identifier"),
        "code": (bytes((4,)) + reply[1:], "does not answer"),
        "truncated": (reply[:-3], "exceeds"),
        "short": (reply[:19], "shorter"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "response authenticator",
        "missing message-authenticator",
        "wrong message-authenticator",
        "unexpected proxy-state",
        "identifier",
        "code",
        "truncated",
        "short",
    ],
)
def test_tampered_replies_are_refused(servers: dict[Address, HomeService], case: str) -> None:
    request, reply = genuine(servers[SERVER_A], fa_info(), SECRET_A)
    bad, message = _tampered(request, reply)[case]
    with pytest.raises(ReplyError, match=message):
        decode_access_reply(bad, request, SECRET_A)


def test_missing_proxy_state_and_wrong_secret_are_refused(servers: dict[Address, HomeService]) -> None:
    request, reply = genuine(servers[SERVER_A], fa_info(proxy_states=(b"mine",)), SECRET_A)
    stripped = reseal(reply, request, SECRET_A, [a for a in attributes_after_ma(reply) if a[0] != 33])
    with pytest.raises(ReplyError, match="Proxy-State"):
        decode_access_reply(stripped, request, SECRET_A)
    with pytest.raises(ReplyError, match="Response Authenticator"):
        decode_access_reply(reply, request, SECRET_B)


def test_authentic_accept_without_a_profile_is_a_profile_error(servers: dict[Address, HomeService]) -> None:
    request, reply = genuine(servers[SERVER_A], fa_info(), SECRET_A)
    empty = reseal(reply, request, SECRET_A, [b"\x12\x04ok"], ACCESS_ACCEPT)
    with pytest.raises(ProfileReplyError, match="does not decode"):
        decode_access_reply(empty, request, SECRET_A)


_REQUEST = encode_access_request(fa_info(), 42, bytes(range(16)), SECRET_A)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_raises_only_reply_error(data: bytes) -> None:
    for candidate in (data, _REQUEST[:1] + bytes((2, 42)) + data[3:]):
        try:
            decode_access_reply(candidate, _REQUEST, SECRET_A)
        except ReplyError:
            pass


_REPLY = encode_reply(ACCESS_ACCEPT, 42, _REQUEST[4:20], SECRET_A, [b"\x12\x04ok"])


@settings(max_examples=300)
@given(st.integers(0, len(_REPLY) - 1), st.integers(1, 255))
def test_any_changed_octet_of_a_reply_is_detected(position: int, xor: int) -> None:
    bad = bytearray(_REPLY)
    bad[position] ^= xor
    with pytest.raises(ReplyError):
        decode_access_reply(bytes(bad), _REQUEST, SECRET_A)


# --- the sans-IO client ----------------------------------------------------------------------


def test_fa_then_ha_register_through_the_client(servers: dict[Address, HomeService]) -> None:
    fa = fa_client()
    link = Link(fa, servers)
    fa.request(fa_info(), T0, tag="rrq-1")
    link.run(T0)
    [accepted] = link.outcomes()
    assert isinstance(accepted, RequestAccepted) and accepted.tag == "rrq-1" and accepted.server == "a"
    assert len(link.sent) == 1 and fa.counters["accepts"] == 1
    ha = RadiusClient([config(SERVER_A, HA_SECRET, "a")], random_bytes=seeded(2))
    ha_link = Link(ha, servers, HA_SOURCE)
    ha.request(ha_info(), T0 + 0.1, tag="ha")
    ha_link.run(T0 + 0.1)
    [mirrored] = ha_link.outcomes()
    assert isinstance(mirrored, RequestAccepted), mirrored
    assert mirrored.profile.session_id == accepted.profile.session_id
    assert mirrored.profile.mn_ha_spi == 256
    assert fa.get_timer() is None and ha.get_timer() is None


def test_reject_reaches_the_agent(servers: dict[Address, HomeService]) -> None:
    client = fa_client()
    link = Link(client, servers)
    client.request(fa_info(mn_secret=b"wrong-mn-secret"), T0, tag=1)
    link.run(T0)
    [rejected] = link.outcomes()
    assert rejected == RequestRejected(1, RejectReason.AUTHENTICATION_FAILED, "mobile node failed authentication", "a")


def test_retransmissions_are_byte_identical_and_answered_from_the_duplicate_cache(
    servers: dict[Address, HomeService],
) -> None:
    client = fa_client()
    link = Link(client, servers)
    link.lose_replies[SERVER_A] = 2
    client.request(fa_info(), T0, tag="t")
    done = link.run(T0)
    sent = link.to(SERVER_A)
    assert len(sent) == 3 and sent[0] == sent[1] == sent[2], [s.hex() for s in sent]
    assert done == T0 + 2.0  # two timeouts of 1 s
    assert isinstance(link.outcomes()[0], RequestAccepted)
    a = servers[SERVER_A]
    assert a.counters["sessions_created"] == 1 and a.counters["duplicates"] == 2
    assert client.counters["retransmissions"] == 2 and client.counters["failovers"] == 0


def test_failover_reseals_for_the_next_server_and_marks_the_first_dead(servers: dict[Address, HomeService]) -> None:
    client = fa_client()
    link = Link(client, servers)
    link.down.add(SERVER_A)
    client.request(fa_info(), T0, tag="t")
    done = link.run(T0)
    to_a, to_b = link.to(SERVER_A), link.to(SERVER_B)
    assert len(to_a) == 3 and len(set(to_a)) == 1  # 1 + retries, identical
    assert len(to_b) == 1
    assert to_b[0][4:20] != to_a[0][4:20], "a new Request Authenticator for the new server"
    assert rc.check_request_message_authenticator(to_b[0], SECRET_B) is True
    assert done == T0 + 3.0
    down = [e for e in link.events if isinstance(e, ServerDown)]
    assert down == [ServerDown("a", T0 + 3.0 + 30.0)]
    accepted = link.outcomes()[0]
    assert isinstance(accepted, RequestAccepted) and accepted.server == "b"
    assert not client.is_alive("a", done) and client.is_alive("b", done)
    # the next request goes straight to B
    client.request(fa_info(), done + 0.5, tag="u")
    link.run(done + 0.5, finished=2)
    assert len(link.to(SERVER_A)) == 3 and len(link.to(SERVER_B)) == 2


def test_dead_server_is_probed_with_status_server_and_revived_by_an_answer(
    servers: dict[Address, HomeService],
) -> None:
    client = fa_client()
    link = Link(client, servers)
    link.down.add(SERVER_A)
    client.request(fa_info(), T0, tag="t")
    dead_at = link.run(T0)
    # first probe one status_interval after A was marked dead; A still down
    link.run(dead_at, until=dead_at + 5.0)
    probes = [p for p in link.to(SERVER_A) if p[0] == STATUS_SERVER]
    assert len(probes) == 1
    assert rc.check_request_message_authenticator(probes[0], SECRET_A) is True
    assert not client.is_alive("a", dead_at + 5.0)
    # A comes back: the next probe's answer revives it before dead_time ends
    link.down.clear()
    link.run(dead_at + 5.0, until=dead_at + 10.0)
    assert ServerUp("a", "answered") in link.events
    assert client.is_alive("a", dead_at + 10.0)
    assert client.counters["status_sent"] == 2 and client.counters["status_replies"] == 1
    assert client.counters["status_timeouts"] == 1
    assert client.get_timer() is None  # no more probes
    client.request(fa_info(), dead_at + 10.0, tag="back")
    link.run(dead_at + 10.0, finished=2)
    assert link.outcomes()[1].server == "a"  # type: ignore[attr-defined]


def test_dead_time_elapsing_puts_the_server_back_without_probes(servers: dict[Address, HomeService]) -> None:
    client = fa_client(status_interval=None, dead_time=20.0)
    link = Link(client, servers)
    link.down.add(SERVER_A)
    client.request(fa_info(), T0, tag="t")
    dead_at = link.run(T0)
    assert client.get_timer() == dead_at + 20.0
    link.down.clear()
    link.run(dead_at, until=dead_at + 20.0)
    assert ServerUp("a", "dead time elapsed") in link.events
    assert not any(p[0] == STATUS_SERVER for p in link.to(SERVER_A))
    client.request(fa_info(), dead_at + 21.0, tag="again")
    link.run(dead_at + 21.0, finished=2)
    assert link.outcomes()[1].server == "a"  # type: ignore[attr-defined]


def test_no_server_answers_and_then_every_server_is_dead(servers: dict[Address, HomeService]) -> None:
    client = fa_client()
    link = Link(client, servers)
    link.down.update((SERVER_A, SERVER_B))
    client.request(fa_info(), T0, tag="t")
    done = link.run(T0)
    assert done == T0 + 6.0
    [failed] = link.outcomes()
    assert failed == RequestFailed("t", "no reply from a, b", ("a", "b"))
    # both dead: a dead mark only orders the servers, it never refuses a request
    # (rule 3): the next one is still tried, a first (its dead time ends first)
    sent = len(link.sent)
    client.request(fa_info(), done + 1.0, tag="u")
    link.run(done + 1.0, finished=2)
    assert link.outcomes()[1] == RequestFailed("u", "no reply from a, b", ("a", "b"))
    requests = [where for data, where in link.sent[sent:] if data[0] == rc.ACCESS_REQUEST]
    assert requests == [SERVER_A] * 3 + [SERVER_B] * 3
    assert client.counters["sent_to_dead"] == 2


def test_a_lone_server_that_missed_a_request_is_asked_the_next_time(servers: dict[Address, HomeService]) -> None:
    """Under loss every transmission of one request can be lost; the server is
    marked dead, yet the next request goes to it at once (there is no other)
    and succeeds -- it is not refused until a probe or the dead time revives it."""
    client = RadiusClient([config(SERVER_A, SECRET_A, "a")], status_interval=None, random_bytes=seeded())
    link = Link(client, servers)
    link.down.add(SERVER_A)
    client.request(fa_info(), T0, tag="lost")
    done = link.run(T0)
    assert link.outcomes() == [RequestFailed("lost", "no reply from a", ("a",))]
    assert not client.is_alive("a", done)
    link.down.clear()
    client.request(fa_info(), done + 0.1, tag="next")
    link.run(done + 0.1, finished=2)
    assert isinstance(link.outcomes()[1], RequestAccepted) and client.is_alive("a", done + 0.2)


def test_retransmissions_back_off_up_to_the_longest_wait(servers: dict[Address, HomeService]) -> None:
    """Rule 1 with the defaults (RFC 5080 section 2.2.1's IRT, MRT and MRC):
    the identical datagram at 0, 0.25, 0.75, 1.75, 2.75 ... 6.75 s, the server
    given up at 7.75 s."""
    assert retransmission_waits(0.25, 8, 1.0) == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert server_time() == 7.75 and server_time(2.0, 2, 1.0) == 6.0  # a timeout above the cap: fixed
    client = RadiusClient([config(SERVER_A, SECRET_A, "a")], status_interval=None, random_bytes=seeded())
    sent: list[tuple[float, bytes]] = []
    now = T0
    client.request(fa_info(), now, tag="t")
    events: list[Event] = []
    while not any(isinstance(e, RequestFailed) for e in events):
        sent += [(now - T0, data) for data, _where in client.datagrams_to_send(now)]
        when = client.get_timer()
        assert when is not None
        now = when
        client.handle_timer(now)
        while (event := client.next_event()) is not None:
            events.append(event)
    assert [when for when, _data in sent] == [0.0, 0.25, 0.75, 1.75, 2.75, 3.75, 4.75, 5.75, 6.75]
    assert len({data for _when, data in sent}) == 1, "every retransmission is the identical datagram"
    assert now - T0 == 7.75


def test_the_257th_outstanding_request_waits_for_a_free_identifier(servers: dict[Address, HomeService]) -> None:
    client = RadiusClient([config(SERVER_A, SECRET_A, "a")], timeout=1.0, retries=0, random_bytes=seeded())
    for n in range(257):
        client.request(fa_info(), T0, tag=n)
    first = client.datagrams_to_send(T0)
    assert len(first) == 256 and len({data[1] for data, _ in first}) == 256
    assert client.waiting == 1 and client.outstanding == 256
    # one reply frees one Identifier, which the waiting request then takes
    data, _ = first[10]
    reply = servers[SERVER_A].handle(data, FA_SOURCE, T0)
    assert reply is not None
    client.receive_datagram(reply, SERVER_A, T0 + 0.1)
    event = client.next_event()
    assert isinstance(event, RequestAccepted) and event.tag == 10
    [(late, _)] = client.datagrams_to_send(T0 + 0.1)
    assert late[1] == data[1] and client.waiting == 0
    # nobody answers the rest: every request fails clearly, none is lost
    client.handle_timer(T0 + 1.0)
    client.handle_timer(T0 + 1.1)
    events = []
    while (e := client.next_event()) is not None:
        events.append(e)
    failed = [e for e in events if isinstance(e, RequestFailed)]
    assert sorted(e.tag for e in failed) == sorted(set(range(257)) - {10})  # type: ignore[type-var]
    assert client.outstanding == 0 and client.waiting == 0


def test_tampered_and_stray_replies_are_dropped_and_counted(servers: dict[Address, HomeService]) -> None:
    client = RadiusClient([config(SERVER_A, SECRET_A, "a")], random_bytes=seeded())
    client.request(fa_info(), T0, tag="t")
    [(request, _)] = client.datagrams_to_send(T0)
    reply = servers[SERVER_A].handle(request, FA_SOURCE, T0)
    assert reply is not None
    tampered = _tampered(request, reply)
    for case in ("response authenticator", "missing message-authenticator", "wrong message-authenticator"):
        client.receive_datagram(tampered[case][0], SERVER_A, T0)
    client.receive_datagram(tampered["unexpected proxy-state"][0], SERVER_A, T0)
    client.receive_datagram(reply, ("192.0.2.99", 1812), T0)  # right bytes, wrong source
    client.receive_datagram(reply, (SERVER_A[0], 1813), T0)  # right host, wrong port
    client.receive_datagram(tampered["short"][0], SERVER_A, T0)
    client.receive_datagram(tampered["identifier"][0], SERVER_A, T0)
    assert client.next_event() is None
    c = client.counters
    assert c["dropped.bad_reply"] == 4 and c["dropped.unknown_source"] == 2
    assert c["dropped.malformed"] == 1 and c["dropped.unmatched"] == 1 and c["dropped"] == 8
    assert "Proxy-State" not in client.last_drop and client.last_drop  # the latest: unmatched Identifier
    # the genuine reply still counts, exactly once
    client.receive_datagram(reply, SERVER_A, T0 + 0.2)
    assert isinstance(client.next_event(), RequestAccepted)
    client.receive_datagram(reply, SERVER_A, T0 + 0.3)  # a late duplicate
    assert client.next_event() is None and c["dropped.unmatched"] == 2
    assert client.get_timer() is None


def test_authentic_but_undecodable_accept_fails_at_once(tmp_path: Path) -> None:
    store = make_store(tmp_path / "rfc", SECRET_A, Flavour.RFC2868)
    try:
        servers = {SERVER_A: HomeService(store, HomeAaaOptions())}
        client = RadiusClient([config(SERVER_A, SECRET_A, "a")], random_bytes=seeded())
        link = Link(client, servers)
        client.request(fa_info(), T0, tag="t")
        link.run(T0)
        [failed] = link.outcomes()
        assert isinstance(failed, RequestFailed) and "does not decode" in failed.reason
        assert client.counters["undecodable"] == 1 and len(link.sent) == 1
        assert client.get_timer() is None
    finally:
        store.close()


def test_request_errors_surface_at_once_and_queue_nothing() -> None:
    client = fa_client()
    with pytest.raises(RequestError):
        client.request(fa_info(extra=tuple(b"\x12\xff" + b"m" * 253 for _ in range(16))), T0)
    assert client.datagrams_to_send(T0) == [] and client.waiting == 0 and client.get_timer() is None


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="IP address literal"):
        ServerConfig("localhost", 1812, Secret(b"x" * 16))
    with pytest.raises(ValueError, match="configured twice"):
        RadiusClient([config(SERVER_A, SECRET_A, "a"), config(SERVER_A, SECRET_B, "b")])
    with pytest.raises(ValueError, match="at least one server"):
        RadiusClient([])
    assert ServerConfig("::ffff:7f00:1", 1812, Secret(b"s" * 16)).name == "::ffff:7f00:1:1812"
    assert "redacted" in repr(config(SERVER_A, SECRET_A, "a"))


def test_vendor_reject_reason_unknown_number_is_none(servers: dict[Address, HomeService]) -> None:
    request, reply = genuine(servers[SERVER_A], fa_info(), SECRET_A)
    unknown = struct.pack("!BBIBBI", 26, 12, VENDOR_ID, 14, 6, 99)
    rejected = reseal(reply, request, SECRET_A, [b"\x12\x05no!", unknown], 3)
    assert decode_access_reply(rejected, request, SECRET_A) == Rejected(None, "no!")


# --- pools: FreeRADIUS's pool types, zombie and dead servers (rules 4, 4a) ------------------


def test_a_server_that_times_out_is_a_zombie_no_new_requests_then_dead_after_its_zombie_period(
    servers: dict[Address, HomeService],
) -> None:
    client = fa_client(zombie_period=20.0, status_interval=5.0)
    link = Link(client, servers)
    link.down.add(SERVER_A)
    client.request(fa_info(), T0, tag="first")
    now = link.run(T0)
    assert now == T0 + 3.0 and isinstance(link.outcomes()[0], RequestAccepted)
    assert [e for e in link.events if isinstance(e, ServerZombie)] == [ServerZombie("a", T0 + 23.0)]
    assert client.state("a", now) == "zombie" and not client.is_alive("a", now)
    # While B is live, a zombie gets no new request, only probes.
    sent_to_a = len(link.to(SERVER_A))
    client.request(fa_info(), now + 1.0, tag="second")
    link.run(now + 1.0, finished=2)
    assert len(link.to(SERVER_A)) == sent_to_a
    assert link.outcomes()[1].server == "b"  # type: ignore[attr-defined]
    # Its zombie period passes unanswered: dead, for dead_time.
    link.run(now + 1.0, until=T0 + 24.0)
    probes = [p for p in link.to(SERVER_A)[sent_to_a:] if p[0] == 12]
    assert len(probes) == 3  # T0+8, 13, 18: every status_interval while a zombie
    assert [e for e in link.events if isinstance(e, ServerDown)] == [ServerDown("a", T0 + 23.0 + 30.0)]
    assert client.state("a", T0 + 24.0) == "dead"
    status = {s["name"]: s for s in client.pool_status(T0 + 24.0)}
    assert status["a"]["state"] == "dead" and status["a"]["marked_zombie"] == 1 and status["a"]["marked_dead"] == 1
    assert status["b"]["state"] == "alive" and status["b"]["accepts"] == 2
    assert "secret" not in repr(client.pool_status(T0 + 24.0)).lower()


def test_a_zombie_that_answers_a_probe_is_live_again_and_fail_over_prefers_it(
    servers: dict[Address, HomeService],
) -> None:
    client = fa_client(zombie_period=20.0, status_interval=5.0)
    link = Link(client, servers)
    link.down.add(SERVER_A)
    client.request(fa_info(), T0, tag="first")
    now = link.run(T0)
    link.down.clear()
    link.run(now, until=T0 + 9.0)  # the probe at T0+8 is answered
    assert [e for e in link.events if isinstance(e, ServerUp)] == [ServerUp("a", "answered")]
    assert client.state("a", T0 + 9.0) == "alive"
    assert not [e for e in link.events if isinstance(e, ServerDown)]
    client.request(fa_info(), T0 + 9.0, tag="second")
    link.run(T0 + 9.0, finished=2)
    assert link.outcomes()[1].server == "a"  # type: ignore[attr-defined]


def test_load_balance_spreads_requests_in_flight_over_the_live_servers(servers: dict[Address, HomeService]) -> None:
    client = fa_client(pool_type="load-balance")
    for n in range(10):
        client.request(fa_info(), T0, tag=n)
    out = client.datagrams_to_send(T0)
    per_server = collections.Counter(destination for _, destination in out)
    assert per_server == {SERVER_A: 5, SERVER_B: 5}
    # Fail-over sends them all to the first.
    first = fa_client()
    for n in range(10):
        first.request(fa_info(), T0, tag=n)
    assert {destination for _, destination in first.datagrams_to_send(T0)} == {SERVER_A}


def test_keyed_balance_keeps_one_user_on_one_server_and_spreads_users(servers: dict[Address, HomeService]) -> None:
    client = fa_client(pool_type="keyed-balance")
    chosen: dict[str, set[Address]] = collections.defaultdict(set)
    for n in range(40):
        nai = f"user{n % 20}@home.example"
        client.request(fa_info(nai=nai), T0, tag=n)
        for _, destination in client.datagrams_to_send(T0):
            chosen[nai].add(destination)
    assert all(len(destinations) == 1 for destinations in chosen.values())
    assert {next(iter(d)) for d in chosen.values()} == {SERVER_A, SERVER_B}


def test_client_balance_hashes_the_client_and_fails_over_from_its_server(servers: dict[Address, HomeService]) -> None:
    client = fa_client(pool_type="client-balance")
    chosen: dict[str, set[Address]] = collections.defaultdict(set)
    for n in range(64):
        source = f"10.0.{n % 16}.1"
        client.request_attributes(b"", T0, tag=n, client=source.encode())
        for _, destination in client.datagrams_to_send(T0):
            chosen[source].add(destination)
    assert all(len(d) == 1 for d in chosen.values())
    assert {next(iter(d)) for d in chosen.values()} == {SERVER_A, SERVER_B}
    # A client whose server is down is carried by the other one.
    on_b = next(source for source, d in chosen.items() if d == {SERVER_B})
    pool = fa_client(pool_type="client-balance")
    link = Link(pool, servers)
    link.down.add(SERVER_B)
    pool.request_attributes(b"", T0, tag="x", client=on_b.encode())
    link.run(T0)
    assert len(link.to(SERVER_B)) == 3 and len(link.to(SERVER_A)) == 1


def test_an_unknown_pool_type_or_a_negative_zombie_period_is_refused() -> None:
    with pytest.raises(ValueError, match="pool type 'round-robin'"):
        RadiusClient([config(SERVER_A, SECRET_A, "a")], pool_type="round-robin")
    with pytest.raises(ValueError, match="zombie_period"):
        RadiusClient([config(SERVER_A, SECRET_A, "a")], zombie_period=-1)
