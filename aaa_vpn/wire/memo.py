"""The renewal memo: answering again what a RADIUS server decided before,
when a request asks exactly the same.

A server that has decided an Access-Request -- here: the home AAA confirming
a renewal that changes nothing (roles/home_aaa.py rule 9) -- may
:meth:`RenewalMemo.remember` the decision: the request's *shape* (every
attribute but the ones that change with each transmission: CHAP-Password,
CHAP-Challenge, Message-Authenticator and Proxy-State), the client's shared
secret, the mobile node's MN-AAA secret, the reply's attributes, and until
when the same request gets the same answer. :meth:`RenewalMemo.answer` then
answers a request of that shape from that source on its own:

1. The packet is an Access-Request whose framing checks out (RFC 2865
   sections 3 and 5; anything else: not answered here).
2. Its shape and source name a memo that is still valid at ``now``, and
   the session mark it was remembered with (if any) has not moved
   (aaa_vpn/store/marks.py: no other process changed the session since).
3. It carries exactly one Message-Authenticator, valid under the client's
   secret (RFC 3579 section 3.2); a client's request without one is answered
   here only if the client does not require it.
4. Its MN-AAA proof checks out: CHAP-Password = Ident || MD5(Ident ||
   MN-AAA secret || CHAP-Challenge) (RFC 1994; docs/mn-aaa-chap.md).
5. The reply is an Access-Accept: Message-Authenticator first, the memo's
   attributes with the lifetime written into each lifetime slot
   (``stored expiry - now``, whole seconds), the request's Proxy-States in
   order at the end, the Response Authenticator last (RFC 2865 section 3,
   RFC 2865 section 5.33, RFC 3579 section 3.2).

Anything else returns None and the caller decides the request the long way
(and drops, rejects or counts it as its rules say): the memo never refuses,
never changes state, and answers nothing the caller would not answer the
same way. A retransmission answered here is answered alike (the lifetime may
be one second less).

The work is in a compiled module (``aaa_vpn.wire._fast``, C, built at
install) when it is there; this module is its specification, its fallback
and its test oracle (tests compare the two byte for byte).
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import struct
from collections.abc import Sequence
from typing import Protocol

from aaa_vpn.wire.radius import (
    ACCESS_ACCEPT,
    ACCESS_REQUEST,
    CHAP_CHALLENGE,
    CHAP_PASSWORD,
    HEADER_LENGTH,
    MAX_PACKET_LENGTH,
    MESSAGE_AUTHENTICATOR_TYPE,
    PROXY_STATE,
)

#: The attribute types that change with every transmission of the same request.
VARYING = frozenset((CHAP_PASSWORD, CHAP_CHALLENGE, MESSAGE_AUTHENTICATOR_TYPE, PROXY_STATE))
_HEADER = struct.Struct("!BBH")
_MA_HEAD = bytes((MESSAGE_AUTHENTICATOR_TYPE, 18))
_ZERO16 = bytes(16)
#: Lifetime slots one memo may hold (the home AAA uses two: Session-Timeout, Aaa-Vpn-Lifetime).
MAX_SLOTS = 8
#: The longest source address text a memo answers for (octets).
MAX_SOURCE = 255


class Memo(Protocol):
    """What both implementations offer."""

    def remember(
        self,
        key: bytes,
        secret: bytes,
        mn_aaa_secret: bytes,
        attributes: bytes,
        lifetime_slots: Sequence[int],
        require_message_authenticator: bool,
        valid_until: float,
        expires: float,
        mark_slot: int = -1,
        mark_stamp: int = 0,
    ) -> None: ...
    def discard(self, key: bytes) -> None: ...
    def clear(self) -> None: ...
    def answer(self, data: bytes, source: str, now: float) -> bytes | None: ...
    def take_answered(self) -> int: ...
    def __len__(self) -> int: ...


def shape(data: bytes, source: str) -> bytes | None:
    """The key a request is remembered by: its source address and its
    attributes but the varying ones, raw and in order; None if the packet is
    not a well-framed Access-Request."""
    if len(data) < HEADER_LENGTH or data[0] != ACCESS_REQUEST:
        return None
    length = (data[2] << 8) | data[3]
    if length < HEADER_LENGTH or length > len(data) or length > MAX_PACKET_LENGTH:
        return None
    out = [source.encode(), b"\x00"]
    position = HEADER_LENGTH
    while position < length:
        if length - position < 2:
            return None
        attribute_length = data[position + 1]
        if attribute_length < 2 or position + attribute_length > length:
            return None
        if data[position] not in VARYING:
            out.append(data[position : position + attribute_length])
        position += attribute_length
    return b"".join(out)


class _Entry:
    __slots__ = (
        "attributes",
        "expires",
        "mark_slot",
        "mark_stamp",
        "mn_aaa_secret",
        "require_ma",
        "secret",
        "slots",
        "valid_until",
    )

    def __init__(
        self,
        secret: bytes,
        mn_aaa_secret: bytes,
        attributes: bytes,
        slots: tuple[int, ...],
        require_ma: bool,
        valid_until: float,
        expires: float,
        mark_slot: int,
        mark_stamp: int,
    ) -> None:
        self.secret = secret
        self.mn_aaa_secret = mn_aaa_secret
        self.attributes = attributes
        self.slots = slots
        self.require_ma = require_ma
        self.valid_until = valid_until
        self.expires = expires
        self.mark_slot = mark_slot
        self.mark_stamp = mark_stamp


class PyRenewalMemo:
    """The memo in Python (module rules 1-5). ``marks`` is the memory of the
    session marks (:attr:`aaa_vpn.store.marks.SessionMarks.buffer`), if
    memos are to be bound to them."""

    def __init__(self, limit: int = 100_000, marks: mmap.mmap | bytearray | None = None) -> None:
        self.limit = limit
        self._marks = memoryview(marks).cast("B").cast("Q") if marks is not None else None
        self._entries: dict[bytes, _Entry] = {}
        self._answered = 0

    def remember(
        self,
        key: bytes,
        secret: bytes,
        mn_aaa_secret: bytes,
        attributes: bytes,
        lifetime_slots: Sequence[int],
        require_message_authenticator: bool,
        valid_until: float,
        expires: float,
        mark_slot: int = -1,
        mark_stamp: int = 0,
    ) -> None:
        """Remember the reply ``attributes`` for requests of shape ``key``;
        ``lifetime_slots`` are the offsets of 4-octet lifetime values in them;
        the memo answers only while mark ``mark_slot`` (unless -1) holds
        ``mark_stamp``."""
        if not -1 <= mark_slot < (len(self._marks) if self._marks is not None else 0):
            raise ValueError("the mark slot is not one of the marks")
        if len(lifetime_slots) > MAX_SLOTS:
            raise ValueError(f"at most {MAX_SLOTS} lifetime slots")
        if any(not 0 <= slot <= len(attributes) - 4 for slot in lifetime_slots):
            raise ValueError("a lifetime slot lies outside the attributes")
        if len(self._entries) >= self.limit and key not in self._entries:
            self._entries.clear()
        self._entries[key] = _Entry(
            secret,
            mn_aaa_secret,
            attributes,
            tuple(lifetime_slots),
            require_message_authenticator,
            valid_until,
            expires,
            mark_slot,
            mark_stamp,
        )

    def discard(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def take_answered(self) -> int:
        """Requests answered since the last call."""
        answered, self._answered = self._answered, 0
        return answered

    def __len__(self) -> int:
        return len(self._entries)

    def answer(self, data: bytes, source: str, now: float) -> bytes | None:
        """The reply to ``data`` from ``source`` (rules 1-5), or None."""
        source_bytes = source.encode()
        if len(data) < HEADER_LENGTH or data[0] != ACCESS_REQUEST or len(source_bytes) > MAX_SOURCE:
            return None
        length = (data[2] << 8) | data[3]
        if length < HEADER_LENGTH or length > len(data) or length > MAX_PACKET_LENGTH:
            return None
        key = [source_bytes, b"\x00"]
        states = []
        ma = -1
        chap_password = chap_challenge = None
        position = HEADER_LENGTH
        while position < length:
            if length - position < 2:
                return None
            kind, size = data[position], data[position + 1]
            if size < 2 or position + size > length:
                return None
            if kind == MESSAGE_AUTHENTICATOR_TYPE:
                if ma >= 0 or size != 18:
                    return None
                ma = position + 2
            elif kind == CHAP_PASSWORD:
                if chap_password is not None:
                    return None
                chap_password = data[position + 2 : position + size]
            elif kind == CHAP_CHALLENGE:
                if chap_challenge is not None:
                    return None
                chap_challenge = data[position + 2 : position + size]
            elif kind == PROXY_STATE:
                states.append(data[position : position + size])
            else:
                key.append(data[position : position + size])
            position += size
        entry = self._entries.get(b"".join(key))
        if entry is None or now >= entry.valid_until:
            return None
        if entry.mark_slot >= 0 and self._marks is not None and self._marks[entry.mark_slot] != entry.mark_stamp:
            return None
        packet = data[:length]
        authenticator = packet[4:HEADER_LENGTH]
        if ma < 0:
            if entry.require_ma:
                return None
        else:
            zeroed = packet[:ma] + _ZERO16 + packet[ma + 16 :]
            if not hmac.compare_digest(hmac.digest(entry.secret, zeroed, "md5"), packet[ma : ma + 16]):
                return None
        if chap_password is None or chap_challenge is None or len(chap_password) != 17 or len(chap_challenge) < 5:
            return None
        expected = hashlib.md5(chap_password[:1] + entry.mn_aaa_secret + chap_challenge).digest()
        if not hmac.compare_digest(expected, chap_password[1:]):
            return None
        left = entry.expires - now
        if not 0 <= left < 2**32:
            return None
        lifetime = int(left)
        body = bytearray(entry.attributes)
        packed = lifetime.to_bytes(4, "big")
        for slot in entry.slots:
            body[slot : slot + 4] = packed
        body += b"".join(states)
        reply_length = HEADER_LENGTH + 18 + len(body)
        if reply_length > MAX_PACKET_LENGTH:
            return None
        head = _HEADER.pack(ACCESS_ACCEPT, data[1], reply_length)
        mac = hmac.digest(entry.secret, head + authenticator + _MA_HEAD + _ZERO16 + body, "md5")
        attributes = _MA_HEAD + mac + bytes(body)
        self._answered += 1
        return head + hashlib.md5(head + authenticator + attributes + entry.secret).digest() + attributes


def renewal_memo(limit: int = 100_000, marks: mmap.mmap | bytearray | None = None) -> Memo:
    """The compiled memo if it was built, else the Python one."""
    try:
        from aaa_vpn.wire import _fast  # type: ignore[attr-defined]
    except ImportError:
        return PyRenewalMemo(limit, marks)
    memo: Memo = _fast.RenewalMemo(limit, marks)
    return memo


def compiled() -> bool:
    """Whether the compiled memo is installed."""
    try:
        from aaa_vpn.wire import _fast  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["VARYING", "Memo", "PyRenewalMemo", "compiled", "renewal_memo", "shape"]
