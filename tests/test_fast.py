"""The compiled hot path (aaa_vpn/wire/_fast.c) against its Python
specification: MD5 and HMAC-MD5 against the RFC vectors and hashlib, the
RFC 2868 salt encryption and the profile rendering against the RADIUS kit,
and the renewal memo against :class:`aaa_vpn.wire.memo.PyRenewalMemo`,
byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from types import ModuleType

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.wire import memo as memo_module
from aaa_vpn.wire import radius
from aaa_vpn.wire.memo import PyRenewalMemo, shape


def _fast_module() -> ModuleType:
    try:
        from aaa_vpn.wire import _fast  # type: ignore[attr-defined]
    except ImportError:
        message = "aaa_vpn.wire._fast is not built (scripts/setup.sh compiles it; needs gcc and python3-dev)"
        if os.environ.get("AAA_VPN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"AAA_VPN_REQUIRE_TOOLS=1 but {message}")
        pytest.skip(message)
    module: ModuleType = _fast
    return module


@pytest.fixture(scope="module")
def fast() -> ModuleType:
    return _fast_module()


def test_the_server_uses_the_compiled_memo_when_it_is_built(fast: ModuleType) -> None:
    assert memo_module.compiled()
    assert isinstance(memo_module.renewal_memo(), fast.RenewalMemo)


# -- MD5 (RFC 1321 appendix A.5) and HMAC-MD5 (RFC 2202 section 2) ----------------------------------

MD5_VECTORS = [
    (b"", "d41d8cd98f00b204e9800998ecf8427e"),
    (b"a", "0cc175b9c0f1b6a831c399e269772661"),
    (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
    (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
    (b"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "d174ab98d277d9f5a5611c2c9f419d9f",
    ),
    (b"1234567890" * 8, "57edf4a22be3c955ac49da2e2107b67a"),
]

HMAC_VECTORS = [
    (b"\x0b" * 16, b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
    (b"Jefe", b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
    (b"\xaa" * 16, b"\xdd" * 50, "56be34521d144c88dbb8c733f0e8b3f6"),
    (bytes(range(1, 26)), b"\xcd" * 50, "697eaf0aca3a3aea3a75164746ffaa79"),
    (b"\x0c" * 16, b"Test With Truncation", "56461ef2342edc00f9bab995690efd4c"),
    (b"\xaa" * 80, b"Test Using Larger Than Block-Size Key - Hash Key First", "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"),
    (
        b"\xaa" * 80,
        b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data",
        "6f630fad67cda0ee1fb1f562db3aa53e",
    ),
]


@pytest.mark.parametrize(("data", "expected"), MD5_VECTORS)
def test_md5_vectors(fast: ModuleType, data: bytes, expected: str) -> None:
    assert fast.md5(data).hex() == expected


@pytest.mark.parametrize(("key", "data", "expected"), HMAC_VECTORS)
def test_hmac_md5_vectors(fast: ModuleType, key: bytes, data: bytes, expected: str) -> None:
    assert fast.hmac_md5(key, data).hex() == expected


# Lengths around the 56- and 64-octet padding boundaries are where MD5s go wrong.
_DATA = st.one_of(st.binary(max_size=300), st.binary(min_size=50, max_size=140))


@given(data=_DATA)
def test_md5_is_hashlibs(fast: ModuleType, data: bytes) -> None:
    assert fast.md5(data) == hashlib.md5(data).digest()


@given(key=st.binary(max_size=150), data=_DATA)
def test_hmac_md5_is_hmacs(fast: ModuleType, key: bytes, data: bytes) -> None:
    assert fast.hmac_md5(key, data) == hmac.digest(key, data, "md5")


# -- RFC 2868 salt encryption and the profile rendering ------------------------------------------------


@given(
    value=st.binary(max_size=radius.MAX_SALT_PLAINTEXT),
    secret=st.binary(min_size=1, max_size=80),
    authenticator=st.binary(min_size=16, max_size=16),
    salt=st.integers(0x8000, 0xFFFF),
)
def test_salt_encrypt_is_the_kits(
    fast: ModuleType, value: bytes, secret: bytes, authenticator: bytes, salt: int
) -> None:
    expected = radius.salt_encrypt(value, secret, authenticator, salt.to_bytes(2, "big"))
    assert fast.salt_encrypt(value, secret, authenticator, salt) == expected
    assert radius.salt_decrypt(expected, secret, authenticator) == value


def test_salt_encrypt_refuses_what_the_kit_refuses(fast: ModuleType) -> None:
    with pytest.raises(ValueError):
        fast.salt_encrypt(bytes(240), b"s", bytes(16), 0x8000)
    with pytest.raises(ValueError):
        fast.salt_encrypt(b"k", b"s", bytes(16), 0x7FFF)  # most significant bit clear
    with pytest.raises(ValueError):
        fast.salt_encrypt(b"k", b"s", bytes(15), 0x8000)


def test_render_refuses_malformed_parts(fast: ModuleType) -> None:
    with pytest.raises(TypeError):
        fast.render(((3, b"", b""),), 0, b"s", bytes(16), 0)
    with pytest.raises(TypeError):
        fast.render(((0, "text", b""),), 0, b"s", bytes(16), 0)
    with pytest.raises(ValueError):
        fast.render(((2, b"\x1a", bytes(240)),), 0, b"s", bytes(16), 0)
    with pytest.raises(ValueError):
        fast.render((), 2**32, b"s", bytes(16), 0)


# -- the renewal memo -------------------------------------------------------------------------------

_OTHER_TYPES = st.sampled_from([1, 4, 5, 26, 30, 31, 32, 44, 61, 87])


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, object]:
    attributes = draw(st.lists(st.tuples(_OTHER_TYPES, st.binary(max_size=40)), max_size=6))
    return {
        "identifier": draw(st.integers(0, 255)),
        "authenticator": draw(st.binary(min_size=16, max_size=16)),
        "attributes": attributes,
        "ident": draw(st.integers(0, 255)),
        "challenge": draw(st.binary(min_size=5, max_size=32)),
        "states": draw(st.lists(st.binary(max_size=20), max_size=4)),
        "with_ma": draw(st.booleans()),
        "order": draw(st.randoms(use_true_random=False)),
    }


def _packet(request: dict[str, object], secret: bytes, mn_aaa_secret: bytes) -> bytes:
    ident = bytes((request["ident"],))  # type: ignore[arg-type]
    challenge: bytes = request["challenge"]  # type: ignore[assignment]
    proof = ident + hashlib.md5(ident + mn_aaa_secret + challenge).digest()
    parts = [radius.attribute(t, v) for t, v in request["attributes"]]  # type: ignore[attr-defined]
    parts += [radius.attribute(radius.CHAP_PASSWORD, proof), radius.attribute(radius.CHAP_CHALLENGE, challenge)]
    request["order"].shuffle(parts)  # type: ignore[attr-defined]
    # Proxy-States keep their order among themselves (the reply copies them in order).
    parts += [radius.attribute(radius.PROXY_STATE, s) for s in request["states"]]  # type: ignore[attr-defined]
    body = b"".join(parts)
    authenticator: bytes = request["authenticator"]  # type: ignore[assignment]
    identifier: int = request["identifier"]  # type: ignore[assignment]
    if request["with_ma"]:
        return radius.seal_request(radius.ACCESS_REQUEST, identifier, authenticator, secret, body)
    return struct.pack("!BBH", radius.ACCESS_REQUEST, identifier, 20 + len(body)) + authenticator + body


def _mutations(packet: bytes, draw: st.DrawFn) -> list[bytes]:
    position = draw(st.integers(0, len(packet) - 1))
    flipped = bytearray(packet)
    flipped[position] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(packet) - 1))
    return [bytes(flipped), packet[:cut], packet + draw(st.binary(max_size=8)), b"\x01" + packet[1:4]]


@settings(max_examples=300)
@given(
    request=_requests(),
    secret=st.binary(min_size=1, max_size=40),
    mn_aaa_secret=st.binary(max_size=40),
    reply_attributes=st.lists(st.tuples(_OTHER_TYPES, st.binary(max_size=40)), max_size=5),
    two_slots=st.booleans(),
    bound=st.booleans(),
    require_ma=st.booleans(),
    valid_for=st.one_of(st.floats(1, 60), st.floats(-5, 60)),
    expires_in=st.one_of(st.floats(1, 7200), st.floats(-5, 2**33)),
    elapsed=st.one_of(st.floats(0, 1), st.floats(0, 120), st.sampled_from([float("nan"), float("inf"), -float("inf")])),
    data=st.data(),
)
def test_the_compiled_memo_answers_as_the_python_one(
    fast: ModuleType,
    request: dict[str, object],
    secret: bytes,
    mn_aaa_secret: bytes,
    reply_attributes: list[tuple[int, bytes]],
    two_slots: bool,
    bound: bool,
    require_ma: bool,
    valid_for: float,
    expires_in: float,
    elapsed: float,
    data: st.DataObject,
) -> None:
    now0 = 1_000_000.0
    packet = _packet(request, secret, mn_aaa_secret)
    assume(len(packet) <= radius.MAX_PACKET_LENGTH)
    source = "192.0.2.7"
    key = shape(packet, source)
    assert key is not None
    # Session-Timeout first, then the rest; a lifetime slot in Session-Timeout and maybe in a VSA at the end.
    reply = radius.attribute(27, bytes(4)) + b"".join(radius.attribute(t, v) for t, v in reply_attributes)
    slots = [2]
    if two_slots:
        reply += radius.vendor_attribute(radius.VENDOR_ID, 4, bytes(4))
        slots.append(len(reply) - 4)
    marks = SessionMarks.private()
    compiled, python = fast.RenewalMemo(marks=marks.buffer), PyRenewalMemo(marks=marks.buffer)
    mark = (SessionMarks.slot("mn@example.net"), marks.stamp("mn@example.net")) if bound else (-1, 0)
    for memo in (compiled, python):
        memo.remember(key, secret, mn_aaa_secret, reply, slots, require_ma, now0 + valid_for, now0 + expires_in, *mark)
    now = now0 + elapsed
    answer = compiled.answer(packet, source, now)
    assert answer == python.answer(packet, source, now)
    event("answered" if answer is not None else "not answered")
    left = (now0 + expires_in) - now  # as the memos compute it
    if request["with_ma"] or not require_ma:
        if now < now0 + valid_for and 0 <= left < 2**32:
            # A genuine request inside the memo's validity is answered, correctly signed.
            assert answer is not None
            decoded = radius.decode_packet(answer)
            authenticator: bytes = request["authenticator"]  # type: ignore[assignment]
            assert decoded.code == radius.ACCESS_ACCEPT and decoded.identifier == request["identifier"]
            assert radius.check_response_authenticator(decoded, authenticator, secret)
            assert radius.check_message_authenticator(decoded, secret, authenticator) is True
            body = answer[38:]
            for slot in slots:
                assert int.from_bytes(body[slot : slot + 4], "big") == int(left)
            states = b"".join(radius.attribute(radius.PROXY_STATE, s) for s in request["states"])  # type: ignore[attr-defined]
            assert body.endswith(states) and len(body) == len(reply) + len(states)
    else:
        assert answer is None
    # Another source, a forged or damaged packet: both answer alike (mostly: not at all).
    assert compiled.answer(packet, "192.0.2.8", now) == python.answer(packet, "192.0.2.8", now) is None
    for damaged in _mutations(packet, data.draw):
        assert compiled.answer(damaged, source, now) == python.answer(damaged, source, now)
    assert compiled.take_answered() == python.take_answered()
    # Another process changes the session: a bound memo answers no more, an unbound one as before.
    marks.mark("mn@example.net")
    again = compiled.answer(packet, source, now)
    assert again == python.answer(packet, source, now)
    assert again is None if bound else again == answer
    for memo in (compiled, python):
        memo.discard(key)
        assert len(memo) == 0 and memo.answer(packet, source, now) is None


def test_the_memos_refuse_the_same_entries(fast: ModuleType) -> None:
    for memo in (fast.RenewalMemo(), PyRenewalMemo()):
        with pytest.raises(ValueError):
            memo.remember(b"k", b"s", b"m", bytes(8), [0], False, 1.0, 2.0, 0, 0)  # a mark, but no marks
        with pytest.raises(ValueError):
            memo.remember(b"k", b"s", b"m", bytes(8), [5], False, 1.0, 2.0)  # slot past the end
        with pytest.raises(ValueError):
            memo.remember(b"k", b"s", b"m", bytes(40), list(range(9)), False, 1.0, 2.0)  # too many slots
        assert len(memo) == 0
    marks = SessionMarks.private().buffer
    for memo in (fast.RenewalMemo(marks=marks), PyRenewalMemo(marks=marks)):
        with pytest.raises(ValueError):
            memo.remember(b"k", b"s", b"m", bytes(8), [0], False, 1.0, 2.0, len(marks) // 8, 0)
    with pytest.raises(ValueError):
        fast.RenewalMemo(marks=bytearray(12))  # not 8-octet words


def test_the_memos_are_bounded_alike(fast: ModuleType) -> None:
    for memo in (fast.RenewalMemo(3), PyRenewalMemo(3)):
        for n in range(3):
            memo.remember(bytes((n,)), b"s", b"m", bytes(8), [0], False, 1.0, 2.0)
        memo.remember(b"\x01", b"s", b"m", bytes(8), [0], False, 1.0, 2.0)  # known: replaced
        assert len(memo) == 3
        memo.remember(b"\x09", b"s", b"m", bytes(8), [0], False, 1.0, 2.0)  # full: start again
        assert len(memo) == 1
        memo.clear()
        assert len(memo) == 0
