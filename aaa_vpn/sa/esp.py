"""ESP (RFC 4303) in tunnel mode, on ``cryptography``: the packet codec of every
backend that moves packets itself (``memory`` now, ``userspace`` later).

Rules (everything that decides whether a packet is accepted lives here):

* Wire format (RFC 4303 section 2): ``SPI(4) | Sequence Number(4) | IV |
  ciphertext of (inner packet | Padding | Pad Length(1) | Next Header(1)) | ICV``.
  Tunnel mode only; Next Header is 4 (IPv4 in IP, RFC 4303 section 2.6).
* Transforms (RFC 8221 MUSTs, :class:`~aaa_vpn.model.EspTransform`):

  - AES-GCM-16 (RFC 4106), 128/256-bit keys. Keying material = AES key |
    4-octet salt (RFC 4106 section 8.1). Nonce = salt | 8-octet explicit IV;
    the IV is the 64-bit sequence number, which never repeats under one key
    because the counter never wraps (RFC 4106 section 3.1 allows a counter).
    AAD = SPI | Sequence Number (RFC 4106 section 5, no ESN). ICV = 16-octet tag.
  - AES-CBC (RFC 3602), 128/256-bit keys, with HMAC-SHA-256-128 (RFC 4868).
    Keying material = AES key | 32-octet HMAC key. The 16-octet IV is
    unpredictable (RFC 3602 section 3, see :class:`EspSa` for how it is made).
    ICV = first 128 bits of HMAC-SHA-256 over SPI | Sequence Number | IV |
    ciphertext (encrypt-then-MAC, RFC 4303 section 3.3.4).

* Padding (RFC 4303 section 2.4): the shortest padding that makes
  payload + padding + 2 a multiple of 4 (GCM) or of the 16-octet block (CBC),
  with the default monotonic pattern 1, 2, 3, ...; the receiver verifies it.
* Sequence numbers (RFC 4303 section 3.3.3): the first packet is 1; no ESN, so
  after 2**32 - 1 the SA refuses to send (:attr:`EspErrorReason.SEQUENCE_OVERFLOW`)
  instead of wrapping; it must be rekeyed.
* Anti-replay (RFC 4303 section 3.4.3 and appendix A): a sliding window of 64;
  a packet is checked against the window *before* the integrity check, and the
  window moves *only after* the integrity check succeeded, so forged packets
  cannot advance it.
* Every reason a packet is refused is one :class:`EspError` with an
  :class:`EspErrorReason`, which callers count (RFC 4303 section 3.4: these are
  auditable events). Nothing is returned from a packet that fails any check.

Outer IPv4 (RFC 791): :func:`encapsulate` writes the tunnel header (protocol
50, checksum, the path's DSCP, RFC 2474), :func:`decapsulate` checks and strips
one.

Speed: this is the core of a later userspace data plane. Every SA keeps its
cipher objects (an ``AESGCM`` instance; a CBC encryptor and decryptor and a
keyed HMAC that is copied per packet), padding trailers are precomputed, and a
packet costs a handful of concatenations. ``bench/esp_throughput.py`` measures it.
An :class:`EspSa` is not thread-safe: one SA belongs to one worker.
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
from ipaddress import IPv4Address
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aaa_vpn.model import EspTransform
from aaa_vpn.secret import Secret

#: IP protocol number of ESP (RFC 4303 section 2).
IPPROTO_ESP: Final = 50
#: Next Header of a tunnel-mode SA carrying IPv4 (IP in IP, RFC 2003).
IPPROTO_IPIP: Final = 4
#: Next Header of a dummy (traffic-flow-confidentiality) packet, RFC 4303 section 2.6.
IPPROTO_NONE: Final = 59
#: Replay window size (RFC 4303 section 3.4.3: at least 32, 64 recommended as the default).
REPLAY_WINDOW: Final = 64
#: Highest 32-bit sequence number (no ESN).
SEQ_MAX: Final = 0xFFFFFFFF
#: Octets of the ICV of every supported transform (GCM-16 tag; HMAC-SHA-256-128).
ICV_LENGTH: Final = 16
#: Largest IPv4 datagram.
IPV4_MAX: Final = 0xFFFF

_GCM_TRANSFORMS = frozenset({EspTransform.AES_GCM_16_128, EspTransform.AES_GCM_16_256})
_CBC_TRANSFORMS = frozenset({EspTransform.AES_CBC_128_HMAC_SHA256, EspTransform.AES_CBC_256_HMAC_SHA256})
#: The transforms this module implements.
SUPPORTED_TRANSFORMS: Final = _GCM_TRANSFORMS | _CBC_TRANSFORMS

_AES_BLOCK = 16
_GCM_IV = 8  # RFC 4106 section 3.1
_SALT = 4  # RFC 4106 section 4
_HMAC_KEY = 32  # RFC 4868 section 2.1.1: the key is as long as the hash output

_HEADER_GCM = struct.Struct(">IIQ")  # SPI, sequence number, explicit IV (= sequence number)
_HEADER = struct.Struct(">II")  # SPI, sequence number
_IPV4 = struct.Struct(">BBHHHBBH4s4s")  # RFC 791 header without options
_WORDS20 = struct.Struct(">10H")
_U16 = struct.Struct(">H")
_U16x2 = struct.Struct(">HH")

#: Padding octets by length: the default monotonic pattern of RFC 4303 section 2.4.
_PADDING = tuple(bytes(range(1, n + 1)) for n in range(256))


class EspErrorReason(enum.Enum):
    """Why a packet was refused (the ``value`` is the counter name)."""

    MALFORMED = "malformed"  # too short, misaligned, not an IPv4 packet inside
    BAD_OUTER = "bad_outer"  # outer IPv4 header: not ESP, bad checksum, fragment, not for this node
    UNKNOWN_SPI = "unknown_spi"  # no inbound SA with this SPI (RFC 4303 section 3.4.2)
    WRONG_PEER = "wrong_peer"  # SA found, but the outer source is not its peer
    REPLAY = "replay"  # duplicate inside the window (RFC 4303 section 3.4.3)
    TOO_OLD = "too_old"  # left of the window, or sequence number 0
    BAD_ICV = "bad_icv"  # integrity check failed (RFC 4303 section 3.4.4)
    BAD_PADDING = "bad_padding"  # pad length too long or not the 1, 2, 3, ... pattern
    NEXT_HEADER = "next_header"  # not IPv4 (4); 59 is a dummy packet, dropped too
    POLICY = "policy"  # inner addresses outside the SA's selectors (RFC 4301 section 5.2)
    SEQUENCE_OVERFLOW = "sequence_overflow"  # sender: counter exhausted, rekey (RFC 4303 section 3.3.3)
    TOO_BIG = "too_big"  # sender: the outer packet would exceed 65535 octets


class EspError(Exception):
    """A packet was refused; :attr:`reason` says why (for counters), the message adds detail.

    It never carries key material or packet contents."""

    def __init__(self, reason: EspErrorReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


class ReplayWindow:
    """The receiver's sliding anti-replay window (RFC 4303 section 3.4.3, appendix A2).

    Bit ``i`` of the bitmap is set when sequence number ``top - i`` has been
    received. :meth:`check` only looks; :meth:`update` records a packet whose
    integrity has been verified.
    """

    __slots__ = ("_bitmap", "_mask", "size", "top")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if not isinstance(size, int) or size < 32:
            raise ValueError("the replay window is at least 32 packets (RFC 4303 section 3.4.3)")
        self.size = size
        self.top = 0  # highest authenticated sequence number so far
        self._bitmap = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> None:
        """Raise :class:`EspError` if ``seq`` is a replay or left of the window."""
        top = self.top
        if seq > top:
            return
        behind = top - seq
        if seq == 0 or behind >= self.size:
            raise EspError(EspErrorReason.TOO_OLD, f"sequence number {seq} is left of the window (top {top})")
        if (self._bitmap >> behind) & 1:
            raise EspError(EspErrorReason.REPLAY, f"sequence number {seq} was already received")

    def update(self, seq: int) -> None:
        """Record ``seq`` (already checked and authenticated)."""
        top = self.top
        if seq > top:
            shift = seq - top
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self._bitmap |= 1 << (top - seq)


def _keymat(transform: EspTransform, keymat: Secret | bytes) -> bytes:
    raw = keymat.value if isinstance(keymat, Secret) else keymat
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError("keying material must be a Secret or bytes")
    if len(raw) != transform.keymat_length:
        raise ValueError(f"{transform.name} needs {transform.keymat_length} octets of keying material, got {len(raw)}")
    return bytes(raw)


class EspSa:
    """One ESP security association: one direction, one SPI, one key.

    The same class serves both ends: the sender calls :meth:`seal`, the
    receiver :meth:`open`. The sender's state is the sequence counter; the
    receiver's is the replay window.

    AES-CBC IVs: instead of a new cipher object per packet with a fresh random
    IV, one CBC encryptor runs for the life of the SA and every packet starts
    with a fresh random block R, so the first output block, E(R xor previous
    ciphertext block), is sent as the IV and is as unpredictable as a random
    one (the construction of RFC 4346 section 6.2.3.2, option 2b); receivers
    (RFC 3602) see an ordinary random IV. The decryptor likewise runs for the
    life of the SA and is fed IV | ciphertext, dropping the first output block.

    ``initial_seq`` is the last sequence number already sent under this key
    (tests, or a persisted counter): never lower than what was really sent,
    or GCM nonces repeat.
    """

    __slots__ = (
        "_aead",
        "_decryptor",
        "_encryptor",
        "_hmac",
        "_random",
        "_random_pos",
        "_salt",
        "_seq",
        "_spi_bytes",
        "_trailers",
        "_window",
        "align",
        "spi",
        "transform",
    )

    def __init__(
        self,
        spi: int,
        transform: EspTransform,
        keymat: Secret | bytes,
        *,
        replay_window: int = REPLAY_WINDOW,
        initial_seq: int = 0,
    ) -> None:
        if not isinstance(spi, int) or not 256 <= spi <= 0xFFFFFFFF:
            raise ValueError(f"invalid SPI {spi!r}: 256..4294967295 (RFC 4303 section 2.1 reserves 1-255)")
        if transform not in SUPPORTED_TRANSFORMS:
            raise ValueError(f"unsupported ESP transform {transform!r}")
        if not isinstance(initial_seq, int) or not 0 <= initial_seq <= SEQ_MAX:
            raise ValueError(f"invalid initial sequence number {initial_seq!r}")
        raw = _keymat(transform, keymat)
        self.spi = spi
        self.transform = transform
        self._spi_bytes = spi.to_bytes(4, "big")
        self._seq = initial_seq
        self._window = ReplayWindow(replay_window)
        enc_len = transform.encryption_key_length
        if transform in _GCM_TRANSFORMS:
            self._aead: AESGCM | None = AESGCM(raw[:enc_len])
            self._salt = raw[enc_len:]
            self.align = 4  # RFC 4106 section 3.2: GCM needs no block padding
            self._encryptor: CipherContext | None = None
            self._decryptor: CipherContext | None = None
            self._hmac: crypto_hmac.HMAC | None = None
        else:
            self._aead = None
            self._salt = b""
            self.align = _AES_BLOCK  # RFC 3602 section 2.4
            cipher = Cipher(algorithms.AES(raw[:enc_len]), modes.CBC(bytes(_AES_BLOCK)))
            self._encryptor = cipher.encryptor()
            self._decryptor = cipher.decryptor()
            self._hmac = crypto_hmac.HMAC(raw[enc_len:], hashes.SHA256())
        self._random = b""
        self._random_pos = 0
        # Pad Length | Next Header trailers by pad length, for IPv4 inside.
        self._trailers = tuple(_PADDING[n] + bytes((n, IPPROTO_IPIP)) for n in range(self.align))

    def __repr__(self) -> str:
        return f"EspSa(spi=0x{self.spi:08x}, transform={self.transform.name}, seq={self._seq})"

    # -- sender ---------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The last sequence number sent (0 before the first packet)."""
        return self._seq

    @property
    def overhead(self) -> int:
        """ESP octets around an inner packet, without padding: header, IV, trailer, ICV."""
        return 8 + (_GCM_IV if self._aead is not None else _AES_BLOCK) + 2 + ICV_LENGTH

    def seal(self, inner: bytes, next_header: int = IPPROTO_IPIP) -> bytes:
        """Encrypt one inner packet into an ESP payload (what follows the outer IP header).

        Raises :class:`EspError` (``SEQUENCE_OVERFLOW``) when the 32-bit counter
        is exhausted: the SA must be replaced, never wrapped (RFC 4303 section 3.3.3).
        """
        seq = self._seq + 1
        if seq > SEQ_MAX:
            raise EspError(EspErrorReason.SEQUENCE_OVERFLOW, f"SPI 0x{self.spi:08x} sent 2**32-1 packets; rekey")
        pad = (-(len(inner) + 2)) % self.align
        trailer = self._trailers[pad] if next_header == IPPROTO_IPIP else _PADDING[pad] + bytes((pad, next_header))
        self._seq = seq
        aead = self._aead
        if aead is not None:
            header = _HEADER_GCM.pack(self.spi, seq, seq)
            return header + aead.encrypt(self._salt + header[8:], inner + trailer, header[:8])
        assert self._encryptor is not None and self._hmac is not None
        pos = self._random_pos
        if pos == len(self._random):
            self._random = os.urandom(_AES_BLOCK * 256)  # one system call per 256 packets
            pos = 0
        self._random_pos = pos + _AES_BLOCK
        block = self._random[pos : pos + _AES_BLOCK]
        signed = _HEADER.pack(self.spi, seq) + self._encryptor.update(b"".join((block, inner, trailer)))
        mac = self._hmac.copy()
        mac.update(signed)
        return signed + mac.finalize()[:ICV_LENGTH]

    # -- receiver -------------------------------------------------------------

    @property
    def highest_seq(self) -> int:
        """The highest authenticated sequence number received (the window's right edge)."""
        return self._window.top

    def open(self, payload: bytes) -> bytes:
        """Check and decrypt one ESP payload; return the inner IPv4 packet.

        Order (RFC 4303 section 3.4): length and SPI, replay window, integrity,
        window update, padding, next header. Raises :class:`EspError`.
        """
        n = len(payload)
        aead = self._aead
        if aead is not None:
            # header 16 | at least Pad Length + Next Header (4-aligned) | ICV 16
            if n < 16 + 4 + ICV_LENGTH or (n - 16 - ICV_LENGTH) % 4:
                raise EspError(EspErrorReason.MALFORMED, f"ESP payload of {n} octets is not a valid AES-GCM packet")
        elif n < 8 + 2 * _AES_BLOCK + ICV_LENGTH or (n - 8 - ICV_LENGTH) % _AES_BLOCK:
            raise EspError(EspErrorReason.MALFORMED, f"ESP payload of {n} octets is not a valid AES-CBC packet")
        spi, seq = _HEADER.unpack_from(payload)
        if spi != self.spi:
            raise EspError(EspErrorReason.UNKNOWN_SPI, f"SPI 0x{spi:08x} is not this SA's (0x{self.spi:08x})")
        window = self._window
        window.check(seq)
        view = memoryview(payload)
        if aead is not None:
            try:
                plain = aead.decrypt(self._salt + payload[8:16], view[16:], view[:8])
            except InvalidTag:
                raise EspError(EspErrorReason.BAD_ICV, f"SPI 0x{spi:08x} sequence {seq}") from None
            window.update(seq)
        else:
            assert self._decryptor is not None and self._hmac is not None
            mac = self._hmac.copy()
            mac.update(view[: n - ICV_LENGTH])
            if not hmac.compare_digest(mac.finalize()[:ICV_LENGTH], payload[n - ICV_LENGTH :]):
                raise EspError(EspErrorReason.BAD_ICV, f"SPI 0x{spi:08x} sequence {seq}")
            window.update(seq)
            # IV | ciphertext through the long-running decryptor; block 0 is the IV's, dropped.
            plain = self._decryptor.update(view[8 : n - ICV_LENGTH])[_AES_BLOCK:]
        pad = plain[-2]
        end = len(plain) - 2 - pad
        if end < 0 or plain[end:-2] != _PADDING[pad]:
            raise EspError(EspErrorReason.BAD_PADDING, f"SPI 0x{spi:08x} sequence {seq}: pad length {pad}")
        if plain[-1] != IPPROTO_IPIP:
            raise EspError(EspErrorReason.NEXT_HEADER, f"next header {plain[-1]}, only IPv4 (4) is carried")
        return plain[:end]


def peek_spi(payload: bytes) -> int:
    """The SPI of an ESP payload, to find its SA (RFC 4303 section 3.4.2)."""
    if len(payload) < 8:
        raise EspError(EspErrorReason.MALFORMED, f"ESP payload of {len(payload)} octets has no header")
    spi: int = _HEADER.unpack_from(payload)[0]
    return spi


# -- outer IPv4 header ----------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 checksum of ``data`` (even length): what goes into a header whose
    checksum field is 0, and 0 over a header whose checksum is intact (RFC 791)."""
    words: tuple[int, ...] = (_WORDS20 if len(data) == 20 else struct.Struct(f">{len(data) // 2}H")).unpack(data)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class OuterHeader:
    """The outer IPv4 header of one tunnel (RFC 791; protocol 50), precomputed.

    Source, destination, DSCP and TTL are fixed per tunnel, so their share of
    the header checksum is summed once; a packet only adds Total Length and
    Identification. ``dscp`` is the path's QoS marking (RFC 2474); ECN is 0
    (not-ECT). DF is clear so the outer packet may be fragmented on the way
    (RFC 4301 section 8.1 lets an implementation choose); callers that may see
    fragmentation pass a counter as ``ident`` (RFC 6864 section 4).
    """

    __slots__ = ("_addresses", "_fixed_sum", "_head", "_tail")

    def __init__(self, src: IPv4Address, dst: IPv4Address, dscp: int = 0, ttl: int = 64) -> None:
        if not 0 <= dscp <= 63:
            raise ValueError(f"invalid DSCP {dscp}: 0..63")
        if not 1 <= ttl <= 255:
            raise ValueError(f"invalid TTL {ttl}: 1..255")
        self._head = bytes((0x45, dscp << 2))
        self._tail = bytes((ttl, IPPROTO_ESP))
        addresses = src.packed + dst.packed
        # version/IHL|TOS, TTL|protocol, and the four address words
        self._fixed_sum = (0x4500 | dscp << 2) + (ttl << 8 | IPPROTO_ESP) + sum(struct.unpack(">4H", addresses))
        self._addresses = addresses

    def wrap(self, esp_payload: bytes, ident: int = 0) -> bytes:
        """The outer packet: header | ``esp_payload``."""
        total = 20 + len(esp_payload)
        if total > IPV4_MAX:
            raise EspError(EspErrorReason.TOO_BIG, f"outer packet of {total} octets")
        ident &= 0xFFFF
        checksum = self._fixed_sum + total + ident
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
        checksum = ~((checksum & 0xFFFF) + (checksum >> 16)) & 0xFFFF
        header = (self._head, _U16x2.pack(total, ident), b"\x00\x00", self._tail, _U16.pack(checksum), self._addresses)
        return b"".join((*header, esp_payload))


def encapsulate(
    outer_src: IPv4Address,
    outer_dst: IPv4Address,
    esp_payload: bytes,
    dscp: int = 0,
    *,
    ttl: int = 64,
    ident: int = 0,
) -> bytes:
    """Prepend an outer IPv4 header ``outer_src -> outer_dst`` (protocol 50) to an
    ESP payload; see :class:`OuterHeader`, which a data path keeps per tunnel."""
    return OuterHeader(outer_src, outer_dst, dscp, ttl).wrap(esp_payload, ident)


class OuterPacket(NamedTuple):
    """A received outer IPv4 packet carrying ESP."""

    src: IPv4Address
    dst: IPv4Address
    dscp: int
    payload: bytes  # the ESP payload (SPI onwards)


def parse_outer(packet: bytes) -> tuple[bytes, bytes, int, bytes]:
    """Check and strip the outer IPv4 header of a received ESP packet:
    ``(source, destination, DSCP, ESP payload)`` with the addresses as 4 octets.

    Refuses (``BAD_OUTER``) anything that is not an unfragmented IPv4 datagram
    of protocol 50 with a correct header checksum; reassembly is the IP layer's
    job (RFC 4303 section 3.4.1). Octets beyond Total Length (link padding) are
    ignored."""
    n = len(packet)
    if n < 20:
        raise EspError(EspErrorReason.BAD_OUTER, f"{n} octets is shorter than an IPv4 header")
    version_ihl, tos, total, _ident, frag, _ttl, proto, _checksum, src, dst = _IPV4.unpack_from(packet)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or total < ihl or total > n:
        raise EspError(EspErrorReason.BAD_OUTER, "not a well-formed IPv4 header")
    if proto != IPPROTO_ESP:
        raise EspError(EspErrorReason.BAD_OUTER, f"protocol {proto}, not ESP (50)")
    if frag & 0x3FFF:
        raise EspError(EspErrorReason.BAD_OUTER, "a fragment; reassemble before ESP processing")
    if internet_checksum(packet[:ihl]) != 0:
        raise EspError(EspErrorReason.BAD_OUTER, "bad IPv4 header checksum")
    return src, dst, tos >> 2, packet[ihl:total]


def decapsulate(packet: bytes) -> OuterPacket:
    """:func:`parse_outer` with typed addresses."""
    src, dst, dscp, payload = parse_outer(packet)
    return OuterPacket(IPv4Address(src), IPv4Address(dst), dscp, payload)
