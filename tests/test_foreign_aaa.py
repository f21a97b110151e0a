"""The foreign AAA proxy (``roles/foreign_aaa.py``) against in-memory home AAA
servers (``service.home.HomeService`` on real SQLite stores) on a fake clock, and
its configuration file (``service/foreign.py``, ``aaa-vpn serve foreign --check``).

Addresses: the FA client fa1 is 127.0.0.1 (secret FA_SECRET), a CIDR client
127.0.1.0/24 does not require Message-Authenticator; the AAAF is 127.0.0.3
(its upstream sockets are 127.0.0.3:50000 + pool). Home servers A
(192.0.2.1) and B (192.0.2.2) serve home.example in that order, with
*different* proxy secrets, so a failover only works if the request is sealed
again; C (192.0.2.3) is the DEFAULT pool where configured.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from aaa_vpn.model import Client, ClientRole, Gateway, GatewayMode, Service, User, ValidationError, VpnRecord
from aaa_vpn.roles.foreign_aaa import (
    ACCOUNTING_SOCKET,
    CachedSession,
    Datagram,
    ForeignAaa,
    ForeignAaaOptions,
    ProxyClient,
    Realm,
    SessionCache,
    UpstreamDown,
    UpstreamUp,
    realm_of,
)
from aaa_vpn.roles.home_aaa import HomeAaaOptions
from aaa_vpn.roles.radius_client import ServerConfig
from aaa_vpn.secret import Secret
from aaa_vpn.service.foreign import load_foreign_settings, options_for
from aaa_vpn.service.home import HomeService
from aaa_vpn.store import init_store
from aaa_vpn.store.sqlite import SqliteStore
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.accounting import AcctStatus, encode_accounting_request
from aaa_vpn.wire.profile import VENDOR_ID, PathRole, RejectReason, VpnProfile
from aaa_vpn.wire.radius_profile import AaaVpnAttr
from aaa_vpn.wire.radius_request import (
    Accepted,
    Rejected,
    build_status_server,
    decode_access_reply,
    decode_status_reply,
)

from .radius_client import access_request, split_attributes, vendor_values

REPO = Path(__file__).resolve().parents[1]
FA_SECRET = b"fa1-to-aaaf-secret"
BLOCK_SECRET = b"fa-block-secret"
SECRET_A = b"aaaf-to-home-a-secret"
SECRET_B = b"aaaf-to-home-b-secret"
SECRET_C = b"aaaf-to-home-c-secret"
MN = b"mn1-aaa-secret"
NAI = "mn1@home.example"
FA = ("127.0.0.1", 40001)
AAAF = "127.0.0.3"
SERVER_A = ("192.0.2.1", 1812)
SERVER_B = ("192.0.2.2", 1812)
SERVER_C = ("192.0.2.3", 1812)
T0 = 1000.0

Address = tuple[str, int]


# --- fixtures and helpers ------------------------------------------------------------------


def make_store(path: Path, proxy_secret: bytes) -> SqliteStore:
    path.mkdir()
    store, _created = init_store(path / "vpn.db", path / "vpn.key")
    store.add_client(
        Client(
            "aaaf", IPv4Network(f"{AAAF}/32"), Secret(proxy_secret), ClientRole.FOREIGN_AAA, domain="visited.example"
        )
    )
    mn_ha_key = Secret(bytes(range(16)))
    store.add_user(User(NAI, IPv4Address("127.0.0.2"), Secret(MN), 256, mn_ha_key, IPv4Address("198.51.100.10")))
    prefix = IPv4Network("203.0.113.128/25")
    gateway_key = Secret(bytes(range(32)))
    store.add_gateway(Gateway("gw-dyn", IPv4Address("127.0.0.20"), GatewayMode.DYNAMIC, (prefix,), gateway_key))
    store.add_service(Service("silver"))
    store.add_vpn_record(VpnRecord(NAI, IPv4Network("203.0.113.128/25"), "gw-dyn", "silver"))
    return store


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[Address, SqliteStore]]:
    made = {
        SERVER_A: make_store(tmp_path / "a", SECRET_A),
        SERVER_B: make_store(tmp_path / "b", SECRET_B),
        SERVER_C: make_store(tmp_path / "c", SECRET_C),
    }
    yield made
    for store in made.values():
        store.close()


@pytest.fixture
def homes(stores: dict[Address, SqliteStore]) -> dict[Address, HomeService]:
    return {address: HomeService(store, HomeAaaOptions()) for address, store in stores.items()}


def server(address: Address, secret: bytes, name: str) -> ServerConfig:
    return ServerConfig(address[0], address[1], Secret(secret), name)


CLIENTS = (
    ProxyClient("fa1", IPv4Network("127.0.0.1/32"), Secret(FA_SECRET)),
    ProxyClient("fa-block", IPv4Network("127.0.1.0/24"), Secret(BLOCK_SECRET), require_message_authenticator=False),
)
HOME_REALM = Realm("Home.Example", (server(SERVER_A, SECRET_A, "a"), server(SERVER_B, SECRET_B, "b")))
DEFAULT_REALM = Realm("DEFAULT", (server(SERVER_C, SECRET_C, "c"),))


def proxy(*realms: Realm, **options: object) -> ForeignAaa:
    defaults: dict[str, object] = {"timeout": 1.0, "retries": 2, "dead_time": 30.0, "status_interval": 5.0}
    defaults.update(options)
    return ForeignAaa(
        CLIENTS,
        realms or (HOME_REALM,),
        ForeignAaaOptions(**defaults),  # type: ignore[arg-type]
        now=T0,
        random_bytes=random.Random(7).randbytes,
    )


class Net:
    """The AAAF's datagrams to in-memory home servers and back.

    ``down``: servers that hear nothing; ``hold``: keep upstream replies in
    ``held`` instead of delivering them; ``tamper``: a function applied to
    the next replies of the home servers."""

    def __init__(self, aaaf: ForeignAaa, homes: dict[Address, HomeService]) -> None:
        self.aaaf = aaaf
        self.homes = homes
        self.down: set[Address] = set()
        self.hold = False
        self.held: list[Datagram] = []
        self.tamper: Callable[[bytes], bytes] | None = None
        self.to_clients: list[Datagram] = []
        self.upstream: list[Datagram] = []

    def send(self, data: bytes, now: float, source: Address = FA) -> None:
        self.aaaf.receive_from_client(data, source, now)
        self.pump(now)

    def pump(self, now: float) -> None:
        while out := self.aaaf.datagrams_to_send():
            for datagram in out:
                if datagram.pool is None:
                    self.to_clients.append(datagram)
                    continue
                self.upstream.append(datagram)
                home = self.homes.get(datagram.address)
                if home is None or datagram.address in self.down:
                    continue
                reply = home.handle(datagram.data, (AAAF, 50000 + datagram.pool), now)
                if reply is None:
                    continue
                if self.tamper is not None:
                    reply = self.tamper(reply)
                if self.hold:
                    self.held.append(Datagram(reply, datagram.address, datagram.pool))
                    continue
                self.aaaf.receive_from_upstream(reply, datagram.address, datagram.pool, now)

    def release(self, now: float) -> None:
        held, self.held = self.held, []
        for reply in held:
            self.aaaf.receive_from_upstream(reply.data, reply.address, reply.pool or 0, now)
        self.pump(now)

    def run(self, now: float, replies: int = 1, until: float | None = None) -> float:
        """Drive the fake clock until the clients got ``replies`` replies (or ``until``)."""
        for _ in range(10_000):
            self.pump(now)
            if until is None and len(self.to_clients) >= replies:
                return now
            when = self.aaaf.get_timer()
            if when is None or (until is not None and when > until):
                return now if until is None else until
            now = max(now, when)
            self.aaaf.handle_timer(now)
        raise AssertionError("the proxy never settled")

    def sent_to(self, address: Address) -> list[bytes]:
        return [d.data for d in self.upstream if d.address == address]

    def events(self) -> list[object]:
        out = []
        while (event := self.aaaf.next_event()) is not None:
            out.append(event)
        return out


def fa_request(
    nai: str = NAI,
    mn_secret: bytes = MN,
    secret: bytes = FA_SECRET,
    proxy_states: tuple[bytes, ...] = (),
    message_authenticator: bool = True,
) -> bytes:
    packet = access_request(
        secret,
        nai,
        mn_secret,
        nas_ip="127.0.0.1",
        care_of="127.0.0.1",
        home_agent="127.0.0.2",
        proxy_states=proxy_states,
        message_authenticator=message_authenticator,
    )
    return packet.RequestPacket()  # type: ignore[no-any-return]


def only_reply(net: Net) -> bytes:
    assert len(net.to_clients) == 1, f"expected one reply to the FA, got {len(net.to_clients)}"
    assert net.to_clients[0].address == FA
    return net.to_clients[0].data


def without_ma(attributes: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [(code, value) for code, value in attributes if code != rc.MESSAGE_AUTHENTICATOR_TYPE]


# --- accept, reject, routing ---------------------------------------------------------------


def test_accept_is_relayed_with_the_profile_reencrypted_for_the_fa_and_without_the_root_key(
    homes: dict[Address, HomeService], stores: dict[Address, SqliteStore]
) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    request = fa_request()
    net.send(request, T0)
    reply = only_reply(net)
    # Verified like an FA does: Response Authenticator, Message-Authenticator, Proxy-State.
    result = decode_access_reply(reply, request, FA_SECRET)
    assert isinstance(result, Accepted), result
    assert split_attributes(reply)[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE  # first (BlastRADIUS)
    profile = result.profile
    assert profile.session_root_key is None  # least privilege: the SRK stays in the AAAF
    assert vendor_values(split_attributes(reply), VENDOR_ID, AaaVpnAttr.SESSION_ROOT_KEY) == []
    assert profile.care_of_address == IPv4Address("127.0.0.1")
    assert sorted(p.role for p in profile.paths) == [PathRole.FA_HA, PathRole.FA_GW]
    # The keys are the ones the home AAA issued (the cache holds its view).
    cached = aaaf.lookup(NAI, IPv4Address("127.0.0.1"), T0 + 1)
    assert cached is not None and cached.session_id == profile.session_id
    assert cached.profile.paths == profile.paths and cached.profile.fa_ha_key == profile.fa_ha_key
    (session,) = stores[SERVER_A].find_sessions(NAI)
    assert session.session_id == profile.session_id
    assert cached.session_root_key == session.session_root_key and session.foreign_domain == "visited.example"
    assert cached.client == "fa1" and cached.server == "a" and cached.realm == "home.example"
    # Secrets never show in a repr.
    assert session.session_root_key is not None
    assert session.session_root_key.value.hex() not in repr(cached) and "redacted" in repr(cached)
    # Upstream: a new Identifier/Authenticator, a new Message-Authenticator
    # first, the FA's attributes in order, our Proxy-State last.
    (upstream,) = net.sent_to(SERVER_A)
    assert upstream[4:20] != request[4:20]
    up_attributes = split_attributes(upstream)
    assert up_attributes[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE
    assert without_ma(up_attributes)[:-1] == without_ma(split_attributes(request))
    assert up_attributes[-1][0] == rc.PROXY_STATE and len(up_attributes[-1][1]) == 8
    assert aaaf.counters["accepts"] == 1 and aaaf.counters["sessions_cached"] == 1


def test_reject_is_relayed_with_its_reason_and_nothing_is_cached(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    request = fa_request(mn_secret=b"wrong-mn-secret")
    net.send(request, T0)
    result = decode_access_reply(only_reply(net), request, FA_SECRET)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.AUTHENTICATION_FAILED and "failed authentication" in result.message
    assert len(aaaf.cache) == 0 and aaaf.counters["rejects.relayed"] == 1


def test_unknown_realm_is_rejected_here_without_asking_anyone(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    request = fa_request(nai="mn1@nowhere.example")
    net.send(request, T0)
    result = decode_access_reply(only_reply(net), request, FA_SECRET)
    assert isinstance(result, Rejected)
    assert result.message == "no route to realm 'nowhere.example'" and result.reason is RejectReason.UNKNOWN_USER
    assert net.upstream == [] and aaaf.counters["rejects.no_route"] == 1


def test_realms_match_case_insensitively() -> None:
    assert realm_of("Mn1@HOME.Example") == "home.example" and realm_of("no-realm") == ""
    aaaf = proxy()
    net = Net(aaaf, {})
    net.send(fa_request(nai="mn1@HOME.EXAMPLE"), T0)  # configured as "Home.Example"
    assert len(net.sent_to(SERVER_A)) == 1 and aaaf.counters["rejects.no_route"] == 0


def test_default_realm_catches_the_rest(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy(HOME_REALM, DEFAULT_REALM)
    net = Net(aaaf, homes)
    request = fa_request()  # home.example: its own pool
    net.send(request, T0)
    assert isinstance(decode_access_reply(only_reply(net), request, FA_SECRET), Accepted)
    net.send(fa_request(nai="mn1@elsewhere.example"), T0)
    assert len(net.sent_to(SERVER_C)) == 1 and len(net.sent_to(SERVER_A)) == 1
    assert len(aaaf.pools) == 2


def test_realms_with_the_same_pool_share_one_upstream_client() -> None:
    servers = HOME_REALM.servers
    aaaf = proxy(Realm("home.example", servers), Realm("home2.example", servers), DEFAULT_REALM)
    assert len(aaaf.pools) == 2 and aaaf.pools[0].name == "home.example,home2.example"
    with pytest.raises(ValueError, match="configured twice"):
        proxy(Realm("home.example", servers), Realm("HOME.example", servers))


# --- failover and unreachable homes -------------------------------------------------------


def test_failover_to_the_second_home_server_then_status_server_probes_revive_the_first(
    homes: dict[Address, HomeService], stores: dict[Address, SqliteStore]
) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    net.down.add(SERVER_A)
    request = fa_request()
    net.send(request, T0)
    now = net.run(T0)
    result = decode_access_reply(only_reply(net), request, FA_SECRET)
    assert isinstance(result, Accepted)
    assert len(net.sent_to(SERVER_A)) == 3  # 1 + 2 retransmissions, identical
    assert len(set(net.sent_to(SERVER_A))) == 1
    assert stores[SERVER_B].find_sessions(NAI) and not stores[SERVER_A].find_sessions(NAI)
    assert now == pytest.approx(T0 + 3.0)
    events = net.events()
    assert any(isinstance(e, UpstreamDown) and e.server == "a" for e in events)
    cached = aaaf.lookup(NAI, None, now)
    assert cached is not None and cached.server == "b"
    # A comes back: the next Status-Server probe (every 5 s) revives it.
    net.down.clear()
    net.run(now, until=now + 6.0)
    assert any(isinstance(e, UpstreamUp) and e.server == "a" for e in net.events())
    assert aaaf.upstream_counters()["status_sent"] >= 1


def test_every_home_server_down_gives_a_reject_with_no_resources(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    net.down.update({SERVER_A, SERVER_B})
    request = fa_request()
    net.send(request, T0)
    now = net.run(T0)
    result = decode_access_reply(only_reply(net), request, FA_SECRET)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.NO_RESOURCES and "home.example" in result.message
    assert now == pytest.approx(T0 + 6.0)  # 3 transmissions to A, then 3 to B
    # Both are now dead, and still asked (a dead mark only orders them): the
    # next request is answered when they have not answered it either.
    net.to_clients.clear()
    second = fa_request()
    net.send(second, now + 1)
    later = net.run(now + 1)
    result = decode_access_reply(only_reply(net), second, FA_SECRET)
    assert isinstance(result, Rejected) and result.reason is RejectReason.NO_RESOURCES
    assert later == pytest.approx(now + 1 + 6.0)
    assert aaaf.counters["rejects.no_resources"] == 2 and aaaf.pending == 0


# --- retransmissions and duplicates --------------------------------------------------------


def test_fa_retransmissions_are_absorbed_while_pending_then_answered_byte_identically(
    homes: dict[Address, HomeService], stores: dict[Address, SqliteStore]
) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    net.hold = True
    request = fa_request()
    net.send(request, T0)
    net.send(request, T0 + 0.5)  # the FA retransmits: absorbed, not forwarded again
    assert len(net.sent_to(SERVER_A)) == 1 and net.to_clients == []
    assert aaaf.counters["absorbed"] == 1
    net.hold = False
    net.release(T0 + 0.6)
    reply = only_reply(net)
    assert isinstance(decode_access_reply(reply, request, FA_SECRET), Accepted)
    net.send(request, T0 + 2)  # after the answer: the same octets again, nothing upstream
    assert [d.data for d in net.to_clients] == [reply, reply]
    assert len(net.sent_to(SERVER_A)) == 1 and len(stores[SERVER_A].find_sessions(NAI)) == 1
    assert aaaf.counters["duplicates"] == 1
    # Past the duplicate window the same request is a new one.
    net.send(request, T0 + 20)
    assert len(net.sent_to(SERVER_A)) == 2


def test_the_same_identifier_from_another_port_is_a_new_request(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    request = fa_request()
    net.send(request, T0)
    net.send(request, T0, source=(FA[0], FA[1] + 1))
    assert len(net.sent_to(SERVER_A)) == 2 and len(net.to_clients) == 2


# --- Proxy-State ---------------------------------------------------------------------------


def test_client_proxy_states_are_kept_in_order_and_ours_removed(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    states = (b"fa-state-1", b"\x00\x01")
    request = fa_request(proxy_states=states)
    net.send(request, T0)
    reply = only_reply(net)
    assert isinstance(decode_access_reply(reply, request, FA_SECRET), Accepted)  # checks the echo too
    assert [v for c, v in split_attributes(reply) if c == rc.PROXY_STATE] == list(states)
    assert split_attributes(reply)[-2:] == [(rc.PROXY_STATE, s) for s in states]
    (upstream,) = net.sent_to(SERVER_A)
    up_states = [v for c, v in split_attributes(upstream) if c == rc.PROXY_STATE]
    assert up_states[:2] == list(states) and len(up_states) == 3


def test_a_request_carrying_our_own_proxy_state_is_a_loop_and_dropped(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    net.send(fa_request(), T0)
    ours = split_attributes(net.sent_to(SERVER_A)[0])[-1][1]
    net.send(fa_request(proxy_states=(ours,)), T0)
    assert len(net.to_clients) == 1 and aaaf.counters["dropped.proxy_loop"] == 1


def test_a_tampered_upstream_reply_is_dropped_and_the_genuine_one_relayed(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)

    def flip(reply: bytes) -> bytes:
        net.tamper = None  # only the first
        return reply[:-1] + bytes([reply[-1] ^ 1])

    net.tamper = flip
    request = fa_request()
    net.send(request, T0)
    assert net.to_clients == [] and aaaf.pending == 1
    assert aaaf.upstream_counters()["dropped.bad_reply"] == 1
    net.run(T0)  # the upstream retransmission is answered from A's duplicate cache
    assert isinstance(decode_access_reply(only_reply(net), request, FA_SECRET), Accepted)
    # A reply from somewhere else is not believed either.
    aaaf.receive_from_upstream(b"\x02" + bytes(19), ("192.0.2.99", 1812), 0, T0 + 5)
    assert aaaf.upstream_counters()["dropped.unknown_source"] == 1


# --- what is dropped, Status-Server --------------------------------------------------------


def test_unknown_clients_and_missing_or_wrong_message_authenticators_are_dropped(
    homes: dict[Address, HomeService],
) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    net.send(fa_request(), T0, source=("127.0.0.99", 40000))
    net.send(fa_request(message_authenticator=False), T0)
    net.send(fa_request(secret=b"not-the-fa-secret"), T0)
    net.send(b"\x01\x02\x00", T0)
    assert net.to_clients == [] and net.upstream == []
    assert aaaf.counters["dropped.unknown_client"] == 1
    assert aaaf.counters["dropped.missing_message_authenticator"] == 1
    assert aaaf.counters["dropped.bad_message_authenticator"] == 1
    assert aaaf.counters["dropped.malformed"] == 1
    # A client that does not require it: proxied, with a Message-Authenticator upstream.
    request = fa_request(secret=BLOCK_SECRET, message_authenticator=False)
    net.send(request, T0, source=("127.0.1.7", 40000))
    (upstream,) = net.sent_to(SERVER_A)
    assert split_attributes(upstream)[0][0] == rc.MESSAGE_AUTHENTICATOR_TYPE
    assert isinstance(decode_access_reply(net.to_clients[0].data, request, BLOCK_SECRET), Accepted)


def test_status_server_is_answered_with_the_counters() -> None:
    aaaf = proxy()
    probe = build_status_server(9, os.urandom(16), FA_SECRET, IPv4Address("127.0.0.1"))
    aaaf.receive_from_client(probe, FA, T0 + 42)
    (reply,) = aaaf.datagrams_to_send()
    message = decode_status_reply(reply.data, probe, FA_SECRET)
    assert message.startswith("aaa-vpn foreign AAA up 42s") and "requests 0" in message
    # Without Message-Authenticator: dropped (RFC 5997 section 3).
    bare = struct.pack("!BBH", 12, 10, 20) + os.urandom(16)
    aaaf.receive_from_client(bare, ("127.0.1.7", 4000), T0)
    assert aaaf.datagrams_to_send() == [] and aaaf.counters["dropped.missing_message_authenticator"] == 1


# --- the session cache ---------------------------------------------------------------------


def _profile(session_id: str, care_of: str = "127.0.0.1", lifetime: int = 100) -> VpnProfile:
    return VpnProfile(
        session_id=session_id,
        home_address=IPv4Address("198.51.100.10"),
        home_agent=IPv4Address("127.0.0.2"),
        care_of_address=IPv4Address(care_of),
        lifetime=lifetime,
        epoch=0,
        session_root_key=Secret(b"\x42" * 32),
    )


def _cached(nai: str, session_id: str, now: float = T0, **kwargs: object) -> CachedSession:
    profile = _profile(session_id, **kwargs)  # type: ignore[arg-type]
    return CachedSession(nai, profile, profile.care_of_address, "fa1", "home.example", "a", now, now + profile.lifetime)


def test_cache_lookup_by_nai_and_previous_fa_expires_and_replaces() -> None:
    cache = SessionCache(limit=2)
    cache.put(_cached(NAI, "s1"))
    assert cache.lookup(NAI, IPv4Address("127.0.0.1"), T0 + 1) is not None
    assert cache.lookup("mn1@HOME.example", None, T0 + 1) is not None  # the realm is case-insensitive
    assert cache.lookup(NAI, IPv4Address("127.0.0.9"), T0 + 1) is None  # another FA
    cache.put(_cached(NAI, "s2", care_of="127.0.0.9"))  # a new registration replaces the old
    assert len(cache) == 1 and cache.get("s1", T0) is None
    found = cache.lookup(NAI, IPv4Address("127.0.0.9"), T0 + 1)
    assert found is not None and found.session_id == "s2"
    assert cache.lookup(NAI, None, T0 + 100) is None and len(cache) == 0  # expired with its lifetime
    for n in range(3):
        cache.put(_cached(f"mn{n}@home.example", f"t{n}"))
    assert len(cache) == 2 and cache.evicted == 1 and cache.get("t0", T0) is None
    assert cache.expire(T0 + 1000) == 2 and len(cache) == 0
    assert "\\x42" not in repr(_cached(NAI, "s3")) and "42424242" not in repr(_cached(NAI, "s3"))


def test_cached_sessions_expire_in_the_proxy(homes: dict[Address, HomeService]) -> None:
    aaaf = proxy()
    net = Net(aaaf, homes)
    net.send(fa_request(), T0)
    cached = aaaf.lookup(NAI, None, T0)
    assert cached is not None
    assert aaaf.expire(cached.expires - 1) == 0
    assert aaaf.expire(cached.expires) == 1 and aaaf.lookup(NAI, None, cached.expires) is None


# --- configuration -------------------------------------------------------------------------

GOOD_CONFIG = """\
listen = "127.0.0.3"
port = 18120
log_format = "json"
dup_cache_seconds = 5

[upstream]
timeout = 1.5
status_interval = 0

[[clients]]
name = "fa1"
address = "127.0.0.1"
secret = "fa1-to-aaaf-secret"

[[clients]]
name = "fa-block"
address = "127.0.1.0/24"
secret_file = "block.secret"
require_message_authenticator = false

[[realms]]
name = "home.example"
[[realms.servers]]
address = "192.0.2.1"
secret = "aaaf-to-home-a-secret"
[[realms.servers]]
address = "192.0.2.2"
port = 11812
secret = "aaaf-to-home-b-secret"
name = "home-b"
"""


def write_config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "foreign.toml"
    path.write_text(text)
    path.chmod(mode)
    secret = tmp_path / "block.secret"
    secret.write_bytes(BLOCK_SECRET + b"\n")
    secret.chmod(0o600)
    return path


def test_config_file_is_read(tmp_path: Path) -> None:
    settings = load_foreign_settings(write_config(tmp_path, GOOD_CONFIG), port=None, workers=2)
    assert (settings.listen, settings.port, settings.workers, settings.log_format) == ("127.0.0.3", 18120, 2, "json")
    assert settings.timeout == 1.5 and settings.status_interval is None and settings.dup_cache_seconds == 5.0
    assert [c.name for c in settings.clients] == ["fa1", "fa-block"]
    assert settings.clients[1].secret == Secret(BLOCK_SECRET)  # trailing newline stripped
    assert not settings.clients[1].require_message_authenticator
    (realm,) = settings.realms
    assert [s.name for s in realm.servers] == ["192.0.2.1:1812", "home-b"]
    assert settings.upstream_address == "127.0.0.3"
    assert "aaaf-to-home" not in repr(settings)  # secrets never in a repr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t + "\nbogus = 1\n", "bogus is not a known setting"),
        (lambda t: t.replace("port = 18120", 'port = "18120"'), "port has the wrong type (string)"),
        (lambda t: t.replace('address = "127.0.1.0/24"', 'address = "127.0.0.1/32"'), "also the network of client fa1"),
        (lambda t: t.replace("timeout = 1.5", "timeout = 0"), "upstream.timeout: must be > 0"),
        (lambda t: t.replace('secret = "fa1-to-aaaf-secret"', ""), "give exactly one of secret and secret_file"),
        (lambda t: t.replace('address = "192.0.2.1"', 'address = "home.example"'), "is not an IP address"),
        (lambda t: t.replace('name = "home-b"', "name = 5"), "realms[0].servers[1].name has the wrong type"),
        (lambda t: t.replace('secret = "fa1-to-aaaf-secret"', 'secret = "short"'), "at least 8 are required"),
        (lambda t: t + '\n[[realms]]\nname = "HOME.example"\nservers = []\n', "configured twice"),
        (lambda t: t.replace('name = "home.example"', 'name = "home"'), "needs at least two labels"),
        (lambda t: t.replace('address = "127.0.1.0/24"', 'address = "0.0.0.0/0"'), "at most a /8"),
        (lambda t: t.replace('address = "192.0.2.1"', 'address = "255.255.255.255"'), "the limited broadcast"),
        (lambda t: t.replace("[upstream]", "[upstream]\nretries = true"), "retries has the wrong type (boolean)"),
        (lambda t: "listen = [", "is not valid TOML"),
        (lambda t: t.replace('name = "home.example"', 'name = "home.example"\npool = "rr"'), "realms[0].pool: 'rr'"),
        (lambda t: t.replace("[upstream]", "[upstream]\nzombie_period = -1"), "upstream.zombie_period: must be >= 0"),
    ],
)
def test_config_errors_are_one_clear_message(tmp_path: Path, change: Callable[[str], str], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load_foreign_settings(write_config(tmp_path, change(GOOD_CONFIG)))
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)


def test_a_realm_pool_type_and_the_zombie_period_reach_the_upstream_client(tmp_path: Path) -> None:
    text = GOOD_CONFIG.replace('name = "home.example"', 'name = "home.example"\npool = "keyed-balance"')
    settings = load_foreign_settings(
        write_config(tmp_path, text.replace("[upstream]", "[upstream]\nzombie_period = 5"))
    )
    (realm,) = settings.realms
    assert realm.pool_type == "keyed-balance" and settings.zombie_period == 5.0
    aaaf = ForeignAaa(settings.clients, settings.realms, options_for(settings), now=T0)
    (pool,) = aaaf.pools
    assert pool.client.pool_type == "keyed-balance" and pool.client.zombie_period == 5.0


def test_a_config_with_secrets_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD_CONFIG, mode=0o644)
    with pytest.raises(ValidationError, match=r"accessible by group or others \(mode 0644\); fix: chmod 600"):
        load_foreign_settings(path)
    # Without inline secrets the file itself may be public; the secret files may not.
    public = GOOD_CONFIG.replace('secret = "fa1-to-aaaf-secret"', 'secret_file = "block.secret"')
    public = public.replace('secret = "aaaf-to-home-a-secret"', 'secret_file = "block.secret"')
    public = public.replace('secret = "aaaf-to-home-b-secret"', 'secret_file = "block.secret"')
    path = write_config(tmp_path, public, mode=0o644)
    assert len(load_foreign_settings(path).clients) == 2
    (tmp_path / "block.secret").chmod(0o640)
    with pytest.raises(ValidationError, match=r"block\.secret is accessible by group or others \(mode 0640\)"):
        load_foreign_settings(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aaa_vpn.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_cli_check_and_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD_CONFIG)
    ok = run_cli("serve", "foreign", "--config", str(path), "--check")
    assert ok.returncode == 0, ok.stderr
    assert "realm home.example -> 192.0.2.1:1812, home-b" in ok.stdout and "secret" not in ok.stdout
    path.chmod(0o644)
    bad = run_cli("serve", "foreign", "--config", str(path), "--check")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("Error: config file") and f"chmod 600 {path}" in bad.stderr
    missing = run_cli("serve", "foreign", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# --- accounting, proxied home (rule 10) --------------------------------------------------------


class AccountingNet(Net):
    """Accounting datagrams: FA -> AAAF's accounting socket -> the homes' accounting ports (port + 1)."""

    def send_accounting(self, data: bytes, now: float, source: Address = FA) -> None:
        self.aaaf.receive_accounting(data, source, now)
        self.pump(now)

    def pump(self, now: float) -> None:
        while out := self.aaaf.datagrams_to_send():
            for datagram in out:
                if datagram.pool is None or datagram.pool == ACCOUNTING_SOCKET:
                    self.to_clients.append(datagram)
                    continue
                self.upstream.append(datagram)
                auth = (datagram.address[0], datagram.address[1] - 1)
                home = self.homes.get(auth)
                if home is None or auth in self.down:
                    continue
                for reply, _ in home.handle_accounting_batch([(datagram.data, (AAAF, 50000 + datagram.pool))], now):
                    self.aaaf.receive_from_upstream(reply, datagram.address, datagram.pool, now)


def _acct(status: AcctStatus, session: str, *attributes: bytes, nai: str = NAI) -> bytes:
    head = [rc.attribute(1, nai.encode())] if nai else []
    head.append(rc.attribute(4, bytes((127, 0, 0, 1))))
    return encode_accounting_request(7, FA_SECRET, status, session, [*head, *attributes])


def test_accounting_is_proxied_home_and_answered_once_stored(
    homes: dict[Address, HomeService], stores: dict[Address, SqliteStore]
) -> None:
    aaaf = proxy()
    net = AccountingNet(aaaf, homes)
    start = _acct(AcctStatus.START, "acct-1", rc.attribute(55, int(T0).to_bytes(4, "big")))
    net.send_accounting(start, T0)
    (answer,) = net.to_clients
    assert answer.pool == ACCOUNTING_SOCKET and answer.address == FA
    decoded = rc.decode_packet(answer.data)
    assert decoded.code == rc.ACCOUNTING_RESPONSE and decoded.identifier == start[1]
    assert rc.check_response_authenticator(decoded, start[4:20], FA_SECRET)
    (record,) = stores[SERVER_A].list_accounting(nai=NAI)
    assert record.acct_session_id == "acct-1" and record.nas == "127.0.0.1" and record.client == "aaaf"
    (relayed,) = net.sent_to(("192.0.2.1", 1813))
    assert rc.decode_packet(relayed).all(rc.PROXY_STATE), "our Proxy-State travels home"
    # a retransmission of the answered request is answered again, not proxied again
    net.send_accounting(start, T0 + 0.5)
    assert len(net.to_clients) == 2 and net.to_clients[1].data == answer.data
    assert len(net.sent_to(("192.0.2.1", 1813))) == 1
    assert aaaf.counters["accounting.proxied"] == 1 and aaaf.counters["accounting.answered"] == 1


def test_accounting_fails_over_and_no_answer_means_no_response(
    homes: dict[Address, HomeService], stores: dict[Address, SqliteStore]
) -> None:
    aaaf = proxy(zombie_period=0)
    net = AccountingNet(aaaf, homes)
    net.down.add(SERVER_A)
    net.send_accounting(_acct(AcctStatus.START, "acct-2"), T0)
    net.run(T0)
    assert len(net.to_clients) == 1 and stores[SERVER_B].list_accounting(nai=NAI)
    # every server of the realm silent: no Accounting-Response (RFC 2866 section 4.1)
    net.down.add(SERVER_B)
    net.send_accounting(_acct(AcctStatus.STOP, "acct-3"), T0 + 10)
    net.run(T0 + 10, until=T0 + 60)
    assert len(net.to_clients) == 1 and aaaf.counters["accounting.upstream_failed"] == 1
    # a realm nobody serves: dropped and counted, no response
    lonely = proxy(HOME_REALM)
    other = AccountingNet(lonely, homes)
    other.send_accounting(_acct(AcctStatus.START, "acct-4", nai="mn1@elsewhere.example"), T0)
    assert other.to_clients == [] and lonely.counters["accounting.dropped.no_route"] == 1


def test_accounting_on_goes_to_every_pool_and_a_forged_request_changes_nothing(
    homes: dict[Address, HomeService], stores: dict[Address, SqliteStore]
) -> None:
    aaaf = proxy(HOME_REALM, DEFAULT_REALM)
    net = AccountingNet(aaaf, homes)
    net.send_accounting(_acct(AcctStatus.ACCOUNTING_ON, "", nai=""), T0)
    assert len(net.to_clients) == 1
    assert {d.address for d in net.upstream} == {("192.0.2.1", 1813), ("192.0.2.3", 1813)}
    forged = encode_accounting_request(
        9, b"not-the-fa-secret", AcctStatus.START, "acct-5", [rc.attribute(1, NAI.encode())]
    )
    net.send_accounting(forged, T0 + 1)
    assert len(net.to_clients) == 1 and not stores[SERVER_A].list_accounting(nai=NAI)
