"""The sans-IO parts of RadSec: stream framing (wire/radius_stream.py) and
roles/radsec.py's rules -- identity by certificate, the ``radsec`` view of a
client, and the client connection's states -- with a fake clock."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aaa_vpn.model import Client, ClientRole
from aaa_vpn.roles.radsec import (
    MAX_QUEUED,
    RADSEC_SECRET,
    TRANSITIONS,
    CertificateIdentity,
    ClientConnection,
    Close,
    Connect,
    Refused,
    ServerConnection,
    State,
    Write,
    is_radsec,
    match_client,
    parse_pin,
    radsec_view,
)
from aaa_vpn.secret import Secret
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.radius_request import build_status_server
from aaa_vpn.wire.radius_stream import StreamFramingError, StreamReader


def packet(identifier: int, length: int = 20, code: int = rc.ACCESS_REQUEST, fill: int = 0) -> bytes:
    return bytes([code, identifier]) + length.to_bytes(2, "big") + bytes([fill]) * (length - 4)


# -- framing ------------------------------------------------------------------------------------


@given(
    st.lists(st.integers(20, 4096), min_size=1, max_size=8),
    st.lists(st.integers(1, 5000), min_size=1, max_size=20),
)
def test_any_chunking_gives_the_same_packets(lengths: list[int], cuts: list[int]) -> None:
    packets = [packet(i % 256, n, fill=i % 251) for i, n in enumerate(lengths)]
    stream = b"".join(packets)
    reader = StreamReader()
    out: list[bytes] = []
    offset = 0
    for size in itertools.cycle(cuts):
        if offset >= len(stream):
            break
        out += reader.feed(stream[offset : offset + size])
        offset += size
        assert reader.pending < 4096  # at most one incomplete packet is held
    assert out == packets and reader.pending == 0


@pytest.mark.parametrize("length", [0, 4, 19, 4097, 65535])
def test_a_length_outside_20_4096_fails_the_stream(length: int) -> None:
    reader = StreamReader()
    with pytest.raises(StreamFramingError, match=f"Length {length}"):
        reader.feed(packet(1) + bytes([1, 2]) + length.to_bytes(2, "big"))
    assert reader.failed
    with pytest.raises(StreamFramingError):
        reader.feed(packet(3))  # nothing more is read from a failed stream


@given(st.binary(max_size=10_000))
def test_arbitrary_octets_raise_only_the_framing_error(data: bytes) -> None:
    reader = StreamReader()
    try:
        for chunk in (data[:7], data[7:]):
            for found in reader.feed(chunk):
                assert 20 <= len(found) <= 4096 and int.from_bytes(found[2:4], "big") == len(found)
    except StreamFramingError:
        pass


# -- identity (rules 1, 2) ---------------------------------------------------------------------


def client(name: str, network: str, role: ClientRole = ClientRole.FA) -> Client:
    return Client(name, IPv4Network(network), Secret(f"{name}-udp-secret"), role, domain="visited.example")


CLIENTS = [client("fa1", "192.0.2.11/32"), client("fas", "192.0.2.0/24"), client("ha1", "198.51.100.2/32")]
FP = "ab" * 32


def test_a_name_in_the_certificate_names_the_client() -> None:
    assert match_client(CertificateIdentity(FP, ("FA1",)), CLIENTS).name == "fa1"  # case-insensitively


def test_an_address_names_the_client_of_the_longest_prefix() -> None:
    assert match_client(CertificateIdentity(FP, (), (IPv4Address("192.0.2.11"),)), CLIENTS).name == "fa1"
    assert match_client(CertificateIdentity(FP, (), (IPv4Address("192.0.2.99"),)), CLIENTS).name == "fas"


def test_a_pin_wins_and_excludes_everything_else() -> None:
    pins = [parse_pin(f"ha1=SHA256:{':'.join(FP[i : i + 2] for i in range(0, 64, 2)).upper()}")]
    assert pins[0].fingerprint == FP
    assert match_client(CertificateIdentity(FP, ("anything",)), CLIENTS, pins).name == "ha1"
    other = "cd" * 32
    with pytest.raises(Refused) as refused:
        match_client(CertificateIdentity(other, ("ha1",)), CLIENTS, pins)
    assert refused.value.reason == "pin_mismatch"
    with pytest.raises(Refused) as refused:  # nor by its address
        match_client(CertificateIdentity(other, (), (IPv4Address("198.51.100.2"),)), CLIENTS, pins)
    assert refused.value.reason == "unknown_certificate"


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (CertificateIdentity(FP, ("stranger",), (IPv4Address("203.0.113.1"),)), "unknown_certificate"),
        (CertificateIdentity(FP, ("fa1", "ha1")), "ambiguous_certificate"),
        (CertificateIdentity(FP), "unknown_certificate"),
    ],
)
def test_certificates_naming_no_single_client_are_refused(identity: CertificateIdentity, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        match_client(identity, CLIENTS)
    assert refused.value.reason == reason


@pytest.mark.parametrize("text", ["fa1", "=sha256:" + FP, "fa1=sha256:abc", "fa1=md5:" + FP, "fa1=" + "zz" * 32])
def test_bad_pins_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pin(text)


def test_the_radsec_view_changes_only_the_secret() -> None:
    view = radsec_view(CLIENTS[0])
    assert view.secret == RADSEC_SECRET and view.secret.value == b"radsec"
    assert (view.name, view.network, view.role, view.domain) == (
        "fa1",
        CLIENTS[0].network,
        ClientRole.FA,
        "visited.example",
    )
    assert is_radsec(view) and not is_radsec(CLIENTS[0])
    assert CLIENTS[0].secret.value == b"fa1-udp-secret"  # the record itself is untouched
    assert "radsec" not in repr(view)


# -- the server's connection (rule 4) ----------------------------------------------------------


def test_a_server_connection_idles_out_unless_something_arrives() -> None:
    connection = ServerConnection(100.0, idle_timeout=30.0)
    assert connection.deadline() == 130.0 and not connection.idle(129.9)
    assert connection.received(packet(1)[:10], 120.0) == []
    assert connection.deadline() == 150.0 and connection.idle(150.0)


# -- the client's connection (rule 5) ----------------------------------------------------------


def counter_bytes() -> object:
    numbers = itertools.count(1)
    return lambda n: bytes([next(numbers) % 256]) * n


def connection(**kwargs: float | None) -> ClientConnection:
    return ClientConnection("home", random_bytes=counter_bytes(), **kwargs)  # type: ignore[arg-type]


def test_a_packet_opens_the_connection_and_waits_for_the_handshake() -> None:
    c = connection()
    c.send(packet(1), 0.0)
    c.send(packet(2), 0.1)
    assert c.state is State.CONNECTING and c.actions() == [Connect()]
    c.connected(0.5)
    assert c.state is State.OPEN and c.actions() == [Write(packet(1)), Write(packet(2))]
    c.send(packet(3), 0.6)
    assert c.actions() == [Write(packet(3))]


def test_the_queue_is_bounded() -> None:
    c = connection()
    for i in range(MAX_QUEUED + 5):
        c.send(packet(i % 256, fill=i // 256 + 1), 0.0)
    assert c.counters["dropped.queue_full"] == 5


def test_a_retransmission_is_absorbed_on_one_connection_and_written_after_a_reconnect() -> None:
    c = connection()
    c.send(packet(7), 0.0)
    c.connected(0.0)
    c.actions()
    c.send(packet(7), 2.0)  # the RADIUS client's retransmission: identical
    assert c.actions() == [] and c.counters["duplicates_absorbed"] == 1
    assert c.received(packet(7, code=rc.ACCESS_ACCEPT), 2.5) == [packet(7, code=rc.ACCESS_ACCEPT)]
    c.send(packet(7, fill=1), 3.0)  # Identifier 7 again, a new request
    assert c.actions() == [Write(packet(7, fill=1))]
    c.closed(4.0)  # owing the answer to it: a failure
    assert c.state is State.BACKOFF
    c.send(packet(7, fill=1), 4.0 + c.reconnect_delay)
    assert c.actions() == [Connect()]
    c.connected(5.5)
    assert c.actions() == [Write(packet(7, fill=1))]


def test_backoff_drops_then_retries_with_a_doubling_delay() -> None:
    c = connection(reconnect_delay=1.0, reconnect_max=4.0)
    now = 0.0
    delays = []
    for _ in range(4):
        c.send(packet(1), now)
        assert c.actions() == [Connect()]
        c.failed("connection refused", now)
        assert c.state is State.BACKOFF
        delays.append(c.retry_at - now)
        c.send(packet(1), now + 0.1)  # too soon: dropped
        assert c.actions() == []
        now = c.retry_at
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert c.counters["dropped.unreachable"] >= 4
    c.send(packet(1), now)
    c.connected(now)
    c.failed("reset", now)
    assert c.retry_at - now == 1.0  # an open connection reset the delay


def test_the_watchdog_probes_a_quiet_connection_and_consumes_the_answer() -> None:
    c = connection(watchdog_interval=30.0, watchdog_timeout=5.0, idle_timeout=1000.0)
    c.send(packet(1), 0.0)
    c.connected(0.0)
    c.actions()
    c.received(packet(1, code=rc.ACCESS_ACCEPT), 1.0)
    assert c.get_timer() == 31.0
    c.handle_timer(31.0)
    (write,) = c.actions()
    assert isinstance(write, Write) and write.data[0] == rc.STATUS_SERVER
    probe = write.data
    assert rc.verify_message_authenticator(probe, b"radsec")
    answer = rc.encode_reply(rc.ACCESS_ACCEPT, probe[1], probe[4:20], b"radsec", b"")
    assert c.received(answer, 32.0) == []  # kept, never passed to the RADIUS client
    assert c.counters["watchdog_answered"] == 1 and c.state is State.OPEN
    c.handle_timer(62.0)
    (write,) = c.actions()
    c.handle_timer(67.0)  # no answer in watchdog_timeout
    assert c.actions() == [Close("watchdog")] and c.state is State.BACKOFF
    assert c.counters["closed.watchdog"] == 1


def test_the_watchdog_uses_an_identifier_no_request_waits_on() -> None:
    c = ClientConnection("home", random_bytes=lambda n: bytes([5]) * n, watchdog_interval=1.0, idle_timeout=100.0)
    c.send(packet(5), 0.0)
    c.connected(0.0)
    c.actions()
    c.handle_timer(1.0)
    (write,) = c.actions()
    assert isinstance(write, Write) and write.data[1] == 6


def test_a_connection_without_requests_closes_when_idle() -> None:
    c = connection(idle_timeout=60.0, watchdog_interval=None)
    c.send(packet(1), 0.0)
    c.connected(0.0)
    c.actions()
    c.handle_timer(60.0)
    assert c.state is State.OPEN  # the answer is still owed
    c.received(packet(1, code=rc.ACCESS_ACCEPT), 61.0)
    assert c.get_timer() == 60.0
    c.handle_timer(61.0)
    assert c.actions() == [Close("idle")] and c.state is State.CLOSED
    c.send(packet(2), 62.0)  # the next packet opens a new one, at once
    assert c.actions() == [Connect()]


def test_the_peer_closing_a_connection_that_owes_nothing_is_no_failure() -> None:
    c = connection()
    c.send(packet(1), 0.0)
    c.connected(0.0)
    c.received(packet(1, code=rc.ACCESS_ACCEPT), 0.1)
    c.closed(1.0)
    assert c.state is State.CLOSED and c.counters["failures"] == 0


def test_a_malformed_length_from_the_server_closes_the_connection() -> None:
    c = connection()
    c.send(packet(1), 0.0)
    c.connected(0.0)
    c.actions()
    assert c.received(bytes([2, 1, 0, 3]), 0.2) == []
    assert c.actions() == [Close("framing")] and c.state is State.BACKOFF
    assert c.counters["closed.framing"] == 1 and "Length 3" in c.last_error


def test_every_transition_is_in_the_table() -> None:
    assert {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values()) == set(State)
    probe = build_status_server(1, bytes(16), RADSEC_SECRET)
    assert probe[0] == rc.STATUS_SERVER


def test_a_watchdog_answer_needs_its_authenticator_and_a_valid_message_authenticator_if_any() -> None:
    from aaa_vpn.roles.radsec import answers_status

    probe = build_status_server(9, bytes(range(16)), RADSEC_SECRET)
    with_ma = rc.encode_reply(rc.ACCESS_ACCEPT, 9, probe[4:20], b"radsec", b"")
    bare = bytearray(bytes([rc.ACCESS_ACCEPT, 9, 0, 20]) + bytes(16))
    bare[4:20] = rc.response_authenticator(bytes(bare), probe[4:20], b"radsec")
    assert answers_status(with_ma, probe) and answers_status(bytes(bare), probe)  # FreeRADIUS 3.2 sends the bare one
    assert not answers_status(rc.encode_reply(rc.ACCESS_ACCEPT, 9, probe[4:20], b"not-radsec", b""), probe)
    assert not answers_status(rc.encode_reply(rc.ACCESS_REJECT, 9, probe[4:20], b"radsec", b""), probe)
    assert not answers_status(rc.encode_reply(rc.ACCESS_ACCEPT, 8, probe[4:20], b"radsec", b""), probe)
    forged = bytearray(with_ma)
    forged[22] ^= 1  # inside the Message-Authenticator value (first attribute)
    forged[4:20] = rc.response_authenticator(bytes(forged[:4]) + bytes(16) + bytes(forged[20:]), probe[4:20], b"radsec")
    assert not answers_status(bytes(forged), probe)


# -- the asyncio listener and connector in one process --------------------------------------------


def test_a_listener_keeps_at_most_max_connections(tmp_path: object) -> None:
    import asyncio
    import collections
    from pathlib import Path

    from aaa_vpn.net.radsec import (
        CertificateClients,
        RadsecConnector,
        RadsecListener,
        RadsecServer,
        TlsFiles,
        bind_listener,
        client_context,
        server_context,
    )

    from .radsec_pki import Authority

    assert isinstance(tmp_path, Path)
    pki = Authority(tmp_path / "pki")
    server = pki.issue("server", "server", addresses=("127.0.0.1",))
    fa1 = pki.issue("fa1", "fa1")
    clients = [client("fa1", "127.0.0.1/32")]

    async def run() -> tuple[collections.Counter[str], list[list[bytes]]]:
        counters: collections.Counter[str] = collections.Counter()
        sock = bind_listener("127.0.0.1", 0, reuse_port=False)
        listener: RadsecListener[Client]

        def handle(packets: list[bytes], source: tuple[str, int], who: Client) -> None:
            assert who.name == "fa1" and is_radsec(who)
            for p in packets:
                listener.deliver(rc.encode_reply(rc.ACCESS_ACCEPT, p[1], p[4:20], b"radsec", b""), source)

        listener = RadsecListener(
            sock,
            server_context(TlsFiles(server.cert, server.key, pki.cert)),
            CertificateClients(lambda: clients, lambda: 0),
            handle,
            counters,
            max_connections=1,
        )
        await listener.start()
        arrived: list[list[bytes]] = [[], []]
        connectors = [
            RadsecConnector(
                [RadsecServer(listener.address)],
                client_context(TlsFiles(fa1.cert, fa1.key, pki.cert)),
                lambda packet, _a, n=n: arrived[n].append(packet),
                watchdog_interval=None,
            )
            for n in range(2)
        ]
        try:
            for n, connector in enumerate(connectors):
                connector.send(build_status_server(n, bytes([n]) * 16, RADSEC_SECRET), listener.address)
                for _ in range(100):
                    if arrived[n] or counters["radsec.refused.too_many"]:
                        break
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        finally:
            for connector in connectors:
                connector.close()
            await listener.close()
            sock.close()
        return counters, arrived

    counters, arrived = asyncio.run(run())
    assert [len(a) for a in arrived] == [1, 0], (counters, arrived)
    assert counters["radsec.refused.too_many"] == 1 and counters["radsec.connections"] == 1, counters
