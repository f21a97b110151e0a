"""ESP (RFC 4303) tunnel mode: wire structure, round trips, tampering, padding,
anti-replay, sequence numbers, and the outer IPv4 header.

The structure tests rebuild every field with ``cryptography`` and the standard
library directly (nonce = salt | IV and AAD = SPI | seq per RFC 4106 section 5;
HMAC-SHA-256-128 over SPI | seq | IV | ciphertext per RFC 4868 / RFC 4303
section 3.3.4), so they do not trust the code under test to agree with itself.
Interop with scapy and tshark is in ``test_esp_interop.py``.
"""

from __future__ import annotations

import hmac
import struct
from ipaddress import IPv4Address

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from aaa_vpn.model import EspTransform
from aaa_vpn.sa.esp import (
    IPPROTO_ESP,
    REPLAY_WINDOW,
    SEQ_MAX,
    EspError,
    EspErrorReason,
    EspSa,
    OuterHeader,
    ReplayWindow,
    decapsulate,
    encapsulate,
    internet_checksum,
    peek_spi,
)
from aaa_vpn.secret import Secret

ALL = list(EspTransform)
GCM = [t for t in ALL if t.is_aead]
CBC = [t for t in ALL if not t.is_aead]
SPI = 0x00001001
SRC = IPv4Address("192.0.2.1")
DST = IPv4Address("192.0.2.2")


def keymat(transform: EspTransform, seed: int = 0) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(transform.keymat_length))


def pair(transform: EspTransform, seed: int = 0) -> tuple[EspSa, EspSa]:
    """A sender and a receiver of the same SA."""
    key = keymat(transform, seed)
    return EspSa(SPI, transform, Secret(key)), EspSa(SPI, transform, key)


def inner_packet(size: int = 100, fill: int = 0xAB) -> bytes:
    """An IPv4/UDP packet of ``size`` octets, 198.51.100.10 -> 203.0.113.5."""
    payload = bytes([fill]) * (size - 28)
    udp = struct.pack(">HHHH", 40000, 9, 8 + len(payload), 0) + payload
    header = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, size, 1, 0, 64, 17, 0, bytes([198, 51, 100, 10]), bytes([203, 0, 113, 5])
    )
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + udp


def hexdiff(what: str, got: bytes, want: bytes) -> str:
    return f"{what}: got {got.hex()} want {want.hex()}"


def gcm_packet(transform: EspTransform, key: bytes, seq: int, iv: bytes, plain: bytes) -> bytes:
    """An ESP payload built by hand with AESGCM (RFC 4106): any plaintext, padding included."""
    k = transform.encryption_key_length
    header = struct.pack(">II", SPI, seq)
    return header + iv + AESGCM(key[:k]).encrypt(key[k:] + iv, plain, header)


def cbc_packet(transform: EspTransform, key: bytes, seq: int, iv: bytes, plain: bytes) -> bytes:
    """An ESP payload built by hand with AES-CBC + HMAC-SHA-256-128 (RFC 3602, RFC 4868)."""
    k = transform.encryption_key_length
    encryptor = Cipher(algorithms.AES(key[:k]), modes.CBC(iv)).encryptor()
    signed = struct.pack(">II", SPI, seq) + iv + encryptor.update(plain) + encryptor.finalize()
    return signed + hmac.digest(key[k:], signed, "sha256")[:16]


def hand_packet(transform: EspTransform, key: bytes, seq: int, plain: bytes) -> bytes:
    if transform.is_aead:
        return gcm_packet(transform, key, seq, seq.to_bytes(8, "big"), plain)
    return cbc_packet(transform, key, seq, bytes(range(16)), plain)


# -- wire structure --------------------------------------------------------------


@pytest.mark.parametrize("transform", GCM, ids=lambda t: t.name)
def test_gcm_wire_structure(transform: EspTransform) -> None:
    key = keymat(transform)
    tx, _ = pair(transform)
    inner = inner_packet(101)  # 101 + 2 -> 1 octet of padding to reach a multiple of 4
    for seq in (1, 2):
        wire = tx.seal(inner)
        # SPI(4) | seq(4) | IV(8) | ciphertext(101 + 1 + 2) | ICV(16)
        assert len(wire) == 8 + 8 + 104 + 16, f"length {len(wire)}"
        assert wire[:4] == SPI.to_bytes(4, "big"), hexdiff("SPI", wire[:4], SPI.to_bytes(4, "big"))
        assert wire[4:8] == seq.to_bytes(4, "big"), hexdiff("sequence number", wire[4:8], seq.to_bytes(4, "big"))
        # RFC 4106 section 3.1: the explicit IV is a counter, here the sequence number.
        assert wire[8:16] == seq.to_bytes(8, "big"), hexdiff("IV", wire[8:16], seq.to_bytes(8, "big"))
        k = transform.encryption_key_length
        nonce = key[k:] + wire[8:16]  # RFC 4106 section 4: salt | IV
        plain = AESGCM(key[:k]).decrypt(nonce, wire[16:], wire[:8])  # RFC 4106 section 5: AAD = SPI | seq
        want = inner + b"\x01" + b"\x01\x04"  # padding 01, Pad Length 1, Next Header 4
        assert plain == want, hexdiff("plaintext trailer", plain[-8:], want[-8:])


@pytest.mark.parametrize("transform", CBC, ids=lambda t: t.name)
def test_cbc_wire_structure(transform: EspTransform) -> None:
    key = keymat(transform)
    k = transform.encryption_key_length
    tx, _ = pair(transform)
    inner = inner_packet(100)  # 100 + 2 -> 10 octets of padding to reach a multiple of 16
    ivs = set()
    for seq in (1, 2, 3):
        wire = tx.seal(inner)
        # SPI(4) | seq(4) | IV(16) | ciphertext(112) | ICV(16)
        assert len(wire) == 8 + 16 + 112 + 16, f"length {len(wire)}"
        assert wire[:8] == struct.pack(">II", SPI, seq), hexdiff("SPI|seq", wire[:8], struct.pack(">II", SPI, seq))
        icv = hmac.digest(key[k:], wire[:-16], "sha256")[:16]  # RFC 4868 section 2.3: first 128 bits
        assert wire[-16:] == icv, hexdiff("ICV", wire[-16:], icv)
        iv = wire[8:24]
        ivs.add(iv)
        decryptor = Cipher(algorithms.AES(key[:k]), modes.CBC(iv)).decryptor()
        plain = decryptor.update(wire[24:-16]) + decryptor.finalize()
        want = inner + bytes(range(1, 11)) + b"\x0a\x04"
        assert plain == want, hexdiff("plaintext trailer", plain[-14:], want[-14:])
    assert len(ivs) == 3, "every packet has its own IV (RFC 3602 section 3)"


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize("size", range(20, 20 + 17))
def test_padding_is_minimal_and_monotonic(transform: EspTransform, size: int) -> None:
    tx, rx = pair(transform)
    inner = inner_packet(max(size, 28))[:size]
    wire = tx.seal(inner)
    block = 4 if transform.is_aead else 16
    iv = 8 if transform.is_aead else 16
    ciphertext = len(wire) - 8 - iv - 16
    assert ciphertext % block == 0
    assert ciphertext - len(inner) - 2 < block, "RFC 4303 section 2.4: no more padding than alignment needs"
    assert rx.open(wire) == inner


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_overhead(transform: EspTransform) -> None:
    tx, _ = pair(transform)
    assert len(tx.seal(bytes(1406))) == 1406 + tx.overhead  # 1406 + 2 needs no padding


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
@settings(max_examples=60, deadline=None)
@given(packets=st.lists(st.binary(min_size=0, max_size=2000), min_size=1, max_size=5))
def test_round_trip(transform: EspTransform, packets: list[bytes]) -> None:
    tx, rx = pair(transform)
    for number, inner in enumerate(packets, start=1):
        wire = tx.seal(inner)
        assert peek_spi(wire) == SPI
        assert rx.open(wire) == inner
        assert tx.seq == number and rx.highest_seq == number


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_secret_and_bytes_keys_agree(transform: EspTransform) -> None:
    key = keymat(transform, 7)
    assert EspSa(SPI, transform, key).open(EspSa(SPI, transform, Secret(key)).seal(b"abc")) == b"abc"


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_other_key_or_spi_refused(transform: EspTransform) -> None:
    tx, _ = pair(transform)
    wire = tx.seal(inner_packet())
    with pytest.raises(EspError) as info:
        EspSa(SPI, transform, keymat(transform, 1)).open(wire)
    assert info.value.reason is EspErrorReason.BAD_ICV
    with pytest.raises(EspError) as info:
        EspSa(SPI + 1, transform, keymat(transform)).open(wire)
    assert info.value.reason is EspErrorReason.UNKNOWN_SPI


# -- tampering ---------------------------------------------------------------------


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_is_refused(transform: EspTransform, data: st.DataObject) -> None:
    tx, rx = pair(transform)
    wire = tx.seal(data.draw(st.binary(min_size=0, max_size=300), label="inner"))
    index = data.draw(st.integers(0, len(wire) - 1), label="index")
    bit = data.draw(st.integers(0, 7), label="bit")
    tampered = bytearray(wire)
    tampered[index] ^= 1 << bit
    with pytest.raises(EspError) as info:
        rx.open(bytes(tampered))
    # SPI octets -> not this SA; sequence octets -> ICV (or left of the window); the rest -> ICV.
    assert info.value.reason in {EspErrorReason.BAD_ICV, EspErrorReason.UNKNOWN_SPI, EspErrorReason.TOO_OLD}
    assert rx.highest_seq == 0, "a refused packet must not move the replay window"
    assert rx.open(wire) is not None  # the genuine packet still opens


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize("cut", [1, 15, 16, 17])
def test_truncated_or_extended_is_refused(transform: EspTransform, cut: int) -> None:
    tx, rx = pair(transform)
    wire = tx.seal(inner_packet())
    for bad in (wire[:-cut], wire + bytes(cut), wire[:8]):
        with pytest.raises(EspError) as info:
            rx.open(bad)
        assert info.value.reason in {EspErrorReason.MALFORMED, EspErrorReason.BAD_ICV}


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_esp_error(transform: EspTransform, junk: bytes) -> None:
    _, rx = pair(transform)
    with pytest.raises(EspError):
        rx.open(SPI.to_bytes(4, "big") + junk)
    with pytest.raises(EspError):
        decapsulate(junk)


# -- padding and next header checks (packets built by hand with valid ICVs) -------


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_hand_built_packet_with_long_padding_opens(transform: EspTransform) -> None:
    # RFC 4303 section 2.4: up to 255 octets of padding are legal (traffic-flow confidentiality).
    inner = inner_packet(28)
    pad = 18 if transform.is_aead else 34  # 28 + 18 + 2 = 48, 28 + 34 + 2 = 64
    plain = inner + bytes(range(1, pad + 1)) + bytes([pad, 4])
    _, rx = pair(transform)
    assert rx.open(hand_packet(transform, keymat(transform), 1, plain)) == inner


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("trailer", "reason"),
    [
        (bytes([1, 3, 2, 4]), EspErrorReason.BAD_PADDING),  # not 1, 2
        (bytes([0, 0, 2, 4]), EspErrorReason.BAD_PADDING),  # zeros
        (bytes([1, 2, 200, 4]), EspErrorReason.BAD_PADDING),  # longer than the packet
        (bytes([1, 2, 2, 59]), EspErrorReason.NEXT_HEADER),  # dummy packet (RFC 4303 section 2.6)
        (bytes([1, 2, 2, 41]), EspErrorReason.NEXT_HEADER),  # IPv6: not carried
    ],
)
def test_bad_trailer_is_refused(transform: EspTransform, trailer: bytes, reason: EspErrorReason) -> None:
    inner = inner_packet(28) if transform.is_aead else inner_packet(44)  # 28 + 4 = 32, 44 + 4 = 48
    _, rx = pair(transform)
    with pytest.raises(EspError) as info:
        rx.open(hand_packet(transform, keymat(transform), 1, inner + trailer))
    assert info.value.reason is reason
    # RFC 4303 section 3.4.3: the packet passed the integrity check, so the window moved.
    assert rx.highest_seq == 1


# -- anti-replay (RFC 4303 section 3.4.3) --------------------------------------------


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_replay_window(transform: EspTransform) -> None:
    tx, rx = pair(transform)
    sent = {n: tx.seal(inner_packet(40, n & 0xFF)) for n in range(1, 201)}
    assert rx.open(sent[100]) == inner_packet(40, 100)
    with pytest.raises(EspError) as info:  # duplicate
        rx.open(sent[100])
    assert info.value.reason is EspErrorReason.REPLAY
    # out of order inside the window: 100 - 63 = 37 is the oldest still accepted
    for n in (99, 50, 37, 98):
        assert rx.open(sent[n]) == inner_packet(40, n)
    for n in (99, 37):
        with pytest.raises(EspError) as info:
            rx.open(sent[n])
        assert info.value.reason is EspErrorReason.REPLAY
    with pytest.raises(EspError) as info:  # too old
        rx.open(sent[36])
    assert info.value.reason is EspErrorReason.TOO_OLD
    # a jump forward slides the window; 120 is now too old, 121 and 180 are fine
    assert rx.open(sent[184]) == inner_packet(40, 184)
    with pytest.raises(EspError) as info:
        rx.open(sent[120])
    assert info.value.reason is EspErrorReason.TOO_OLD
    assert rx.open(sent[121]) == inner_packet(40, 121)
    assert rx.open(sent[180]) == inner_packet(40, 180)
    with pytest.raises(EspError) as info:
        rx.open(sent[184])
    assert info.value.reason is EspErrorReason.REPLAY
    assert rx.highest_seq == 184


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_replay_checked_before_icv_and_window_moved_only_after(transform: EspTransform) -> None:
    tx, rx = pair(transform)
    first = tx.seal(b"one")
    assert rx.open(first) == b"one"
    # A forged packet far ahead must not move the window.
    forged = bytearray(tx.seal(b"two"))
    forged[4:8] = (1000).to_bytes(4, "big")
    with pytest.raises(EspError) as info:
        rx.open(bytes(forged))
    assert info.value.reason is EspErrorReason.BAD_ICV
    assert rx.highest_seq == 1
    # A replay with a broken ICV is refused as a replay: the cheap check comes first.
    broken = bytearray(first)
    broken[-1] ^= 1
    with pytest.raises(EspError) as info:
        rx.open(bytes(broken))
    assert info.value.reason is EspErrorReason.REPLAY


def test_sequence_number_zero_is_never_accepted() -> None:
    transform = EspTransform.AES_GCM_16_128
    _, rx = pair(transform)
    with pytest.raises(EspError) as info:
        rx.open(hand_packet(transform, keymat(transform), 0, b"x" * 2 + b"\x00\x04"))
    assert info.value.reason is EspErrorReason.TOO_OLD


@settings(max_examples=200, deadline=None)
@given(seqs=st.lists(st.integers(1, 300), max_size=60))
def test_replay_window_model(seqs: list[int]) -> None:
    """Against a set-based model of RFC 4303 section 3.4.3."""
    window = ReplayWindow()
    seen: set[int] = set()
    top = 0
    for seq in seqs:
        accepted = seq not in seen and seq > top - REPLAY_WINDOW
        try:
            window.check(seq)
        except EspError:
            assert not accepted, f"{seq} refused; top {top}"
        else:
            assert accepted, f"{seq} accepted; top {top}, seen {sorted(seen)[-5:]}"
            window.update(seq)
            seen.add(seq)
            top = max(top, seq)


def test_replay_window_size_at_least_32() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(16)


# -- sequence number overflow (RFC 4303 section 3.3.3) -------------------------------


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_sequence_number_never_wraps(transform: EspTransform) -> None:
    key = keymat(transform)
    tx = EspSa(SPI, transform, key, initial_seq=SEQ_MAX - 1)
    wire = tx.seal(b"last")
    assert wire[4:8] == b"\xff\xff\xff\xff"
    for _ in range(2):
        with pytest.raises(EspError) as info:
            tx.seal(b"one too many")
        assert info.value.reason is EspErrorReason.SEQUENCE_OVERFLOW
    assert tx.seq == SEQ_MAX
    rx = EspSa(SPI, transform, key)
    assert rx.open(wire) == b"last"


# -- construction ------------------------------------------------------------------


@pytest.mark.parametrize("transform", ALL, ids=lambda t: t.name)
def test_wrong_keymat_length_refused(transform: EspTransform) -> None:
    for length in (transform.keymat_length - 1, transform.keymat_length + 1, 0):
        with pytest.raises(ValueError, match="keying material"):
            EspSa(SPI, transform, bytes(length))


@pytest.mark.parametrize("spi", [0, 1, 255, 2**32])
def test_reserved_spi_refused(spi: int) -> None:
    with pytest.raises(ValueError, match="SPI"):
        EspSa(spi, EspTransform.AES_GCM_16_128, bytes(20))


def test_repr_shows_no_key() -> None:
    key = bytes.fromhex("aa" * 20)
    text = repr(EspSa(SPI, EspTransform.AES_GCM_16_128, key))
    assert "aaaa" not in text and "0x00001001" in text


# -- outer IPv4 header ---------------------------------------------------------------


def test_encapsulate_header_fields() -> None:
    payload = bytes(range(40))
    packet = encapsulate(SRC, DST, payload, dscp=46, ident=0x1234)
    version_ihl, tos, total, ident, frag, ttl, proto, _checksum = struct.unpack(">BBHHHBBH", packet[:12])
    assert (version_ihl, tos, total, ident, frag, ttl, proto) == (0x45, 46 << 2, 60, 0x1234, 0, 64, IPPROTO_ESP)
    assert packet[12:16] == SRC.packed and packet[16:20] == DST.packed
    assert internet_checksum(packet[:20]) == 0, f"header {packet[:20].hex()} does not sum to 0xffff"
    assert packet[20:] == payload
    outer = decapsulate(packet)
    assert (outer.src, outer.dst, outer.dscp, outer.payload) == (SRC, DST, 46, payload)


@settings(max_examples=200, deadline=None)
@given(
    src=st.integers(0, 2**32 - 1),
    dst=st.integers(0, 2**32 - 1),
    dscp=st.integers(0, 63),
    ttl=st.integers(1, 255),
    ident=st.integers(0, 2**16 - 1),
    size=st.integers(0, 65515),
)
def test_outer_header_checksum(src: int, dst: int, dscp: int, ttl: int, ident: int, size: int) -> None:
    # The precomputed checksum of OuterHeader against RFC 1071 over the finished header.
    header = OuterHeader(IPv4Address(src), IPv4Address(dst), dscp, ttl).wrap(bytes(size), ident)[:20]
    assert internet_checksum(header) == 0, header.hex()
    assert struct.unpack(">HH", header[2:6]) == (20 + size, ident)
    assert header[1] == dscp << 2 and header[8] == ttl


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement: 220d)
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_decapsulate_ignores_link_padding() -> None:
    packet = encapsulate(SRC, DST, b"\x00\x00\x10\x01" + bytes(40))
    assert decapsulate(packet + bytes(6)).payload == packet[20:]


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, 0x65), (0, 0x44), (9, 17), (6, 0x20), (7, 0x01), (2, 0xFF), (10, None)],
    ids=["version-6", "ihl-4", "udp-not-esp", "more-fragments", "fragment-offset", "total-length", "checksum"],
)
def test_decapsulate_refuses(offset: int, value: int | None) -> None:
    packet = bytearray(encapsulate(SRC, DST, bytes(48)))
    if value is None:
        packet[offset] ^= 0xFF
    else:  # change one field, keep the checksum right so that field is what is refused
        packet[offset] = value
        packet[10:12] = b"\x00\x00"
        packet[10:12] = internet_checksum(bytes(packet[:20])).to_bytes(2, "big")
    with pytest.raises(EspError) as info:
        decapsulate(bytes(packet))
    assert info.value.reason is EspErrorReason.BAD_OUTER


def test_encapsulate_limits() -> None:
    with pytest.raises(ValueError):
        encapsulate(SRC, DST, b"", dscp=64)
    with pytest.raises(EspError) as info:
        encapsulate(SRC, DST, bytes(65516))
    assert info.value.reason is EspErrorReason.TOO_BIG
    assert len(encapsulate(SRC, DST, bytes(65515))) == 65535


def test_error_messages_carry_no_key() -> None:
    key = bytes.fromhex("5a" * 20)
    tx = EspSa(SPI, EspTransform.AES_GCM_16_128, key)
    wire = bytearray(tx.seal(b"x"))
    wire[-1] ^= 1
    with pytest.raises(EspError) as info:
        EspSa(SPI, EspTransform.AES_GCM_16_128, key).open(bytes(wire))
    assert "5a5a" not in str(info.value) and "ZZ" not in str(info.value)
