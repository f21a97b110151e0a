"""Reply encoding, Message-Authenticator checks, the client table and the
duplicate cache of the home AAA server."""

from __future__ import annotations

import hashlib
import hmac
import struct
from ipaddress import IPv4Network

import pyrad.packet
from hypothesis import given
from hypothesis import strategies as st

from aaa_vpn.model import Client, ClientRole
from aaa_vpn.roles.radius_server import ClientTable, DuplicateCache
from aaa_vpn.secret import Secret
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.radius import load_dictionary

SECRET = b"testing123-secret"


def _request() -> pyrad.packet.AuthPacket:
    request = pyrad.packet.AuthPacket(id=7, secret=SECRET, dict=load_dictionary(), User_Name="mn1@home.example")
    request.add_message_authenticator()
    request[rc.PROXY_STATE] = [b"\x01\x02"]
    return request


def test_reply_has_message_authenticator_first_and_verifies_in_pyrad() -> None:
    request = _request()
    raw_request = request.RequestPacket()
    attributes = rc.attribute(rc.REPLY_MESSAGE, b"hello") + rc.attribute(rc.PROXY_STATE, b"\x01\x02")
    reply = rc.encode_reply(rc.ACCESS_ACCEPT, 7, request.authenticator, SECRET, attributes)
    # header: code 2, same identifier, length field = datagram length
    assert reply[0] == 2 and reply[1] == 7 and struct.unpack("!H", reply[2:4])[0] == len(reply)
    # RFC 3579 section 3.2 / BlastRADIUS: Message-Authenticator is the first attribute
    assert reply[20:22] == b"\x50\x12"
    decoded = pyrad.packet.Packet(packet=reply, dict=load_dictionary(), secret=SECRET)
    assert request.VerifyReply(decoded, rawreply=reply, enforce_ma=True)
    assert decoded.verify_message_authenticator(
        original_authenticator=request.authenticator, original_code=pyrad.packet.AccessRequest
    )
    assert raw_request[0] == 1


def test_response_authenticator_is_rfc2865_section_3() -> None:
    request_authenticator = bytes(range(16))
    reply = rc.encode_reply(rc.ACCESS_REJECT, 1, request_authenticator, SECRET, b"")
    expected = hashlib.md5(reply[:4] + request_authenticator + reply[20:] + SECRET).digest()
    assert reply[4:20] == expected
    ma = hmac.new(SECRET, reply[:4] + request_authenticator + b"\x50\x12" + bytes(16), "md5").digest()
    assert reply[22:38] == ma


def test_reply_over_4096_octets_is_refused() -> None:
    big = rc.attribute(rc.REPLY_MESSAGE, b"x" * 253) * 16
    try:
        rc.encode_reply(rc.ACCESS_ACCEPT, 1, bytes(16), SECRET, big)
    except rc.ReplyTooLarge as exc:
        assert "4096" in str(exc)
    else:
        raise AssertionError("a 4.1 kB reply was encoded")


def test_request_message_authenticator_check() -> None:
    raw = _request().RequestPacket()
    assert rc.check_request_message_authenticator(raw, SECRET) is True
    assert rc.check_request_message_authenticator(raw, b"wrong-secret") is False
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    assert rc.check_request_message_authenticator(tampered, SECRET) is False
    plain = pyrad.packet.AuthPacket(id=1, secret=SECRET, dict=load_dictionary(), User_Name="x@y").RequestPacket()
    assert rc.check_request_message_authenticator(plain, SECRET) is None


@given(st.binary(max_size=300))
def test_message_authenticator_check_never_raises(tail: bytes) -> None:
    packet = struct.pack("!BBH", 1, 1, 20 + len(tail)) + bytes(16) + tail
    assert rc.check_request_message_authenticator(packet, SECRET) in (None, False, True)


def _client(name: str, network: str) -> Client:
    return Client(name, IPv4Network(network), Secret(b"secret-" + name.encode()), ClientRole.FA)


def test_client_table_longest_prefix_wins() -> None:
    table = ClientTable(
        [_client("wide", "192.0.2.0/24"), _client("exact", "192.0.2.7/32"), _client("mid", "192.0.2.0/28")]
    )
    assert table.lookup("192.0.2.7").name == "exact"  # type: ignore[union-attr]
    assert table.lookup("192.0.2.3").name == "mid"  # type: ignore[union-attr]
    assert table.lookup("192.0.2.200").name == "wide"  # type: ignore[union-attr]
    assert table.lookup("198.51.100.1") is None
    assert table.lookup("::1") is None and table.lookup("not-an-ip") is None


def test_duplicate_cache_returns_the_same_reply_until_it_expires() -> None:
    cache = DuplicateCache(ttl=10)
    key = ("127.0.0.1", 4000, 9, bytes(16))
    cache.begin(key, now=99.0)
    assert cache.get(key, now=99.5) == b""  # in flight: a retransmission is absorbed
    cache.finish(key, b"reply-1", now=100.0)
    assert cache.get(key, now=105.0) == b"reply-1"
    assert cache.get(("127.0.0.1", 4001, 9, bytes(16)), now=105.0) is None  # other port: other request
    assert cache.get(key, now=110.5) is None
    cache.finish(("127.0.0.1", 4000, 10, bytes(16)), b"reply-2", now=111.0)
    assert len(cache) == 1  # the expired entry was purged
    cache.forget(("127.0.0.1", 4000, 10, bytes(16)))
    assert len(cache) == 0


def test_duplicate_cache_is_bounded() -> None:
    cache = DuplicateCache(ttl=100, limit=3)
    for i in range(10):
        cache.finish(("127.0.0.1", i, 1, bytes(16)), b"r", now=float(i))
    assert len(cache) == 3
