"""The bounded reader every wire codec reads with, and the one decode error
they raise.

A :class:`Reader` is a cursor over a window of a received message that
cannot read past the window's end (dnspython's ``restrict_to`` habit): a
length-prefixed field is read through :meth:`Reader.sub`, a reader restricted
to exactly that field, and :meth:`Reader.expect_end` insists that it was
consumed. Every error is a :class:`DecodeError` (or the subclass the codec
chose, e.g. ``MipDecodeError``, ``RadiusDecodeError``) that says what was
being read and at which offset of the message.

Type-length-value fields come in two shapes here:

* RADIUS attributes (RFC 2865 section 5) and vendor sub-attributes (section
  5.26): one octet of Type, one of Length *including* the two header octets.
  :meth:`Reader.attributes` splits a whole window of them.
* Mobile IP extensions (RFC 5944 section 1.8): the short form has one octet
  of Length *excluding* the header, the long form a two-octet Length; their
  codec reads them field by field with :meth:`Reader.u8`/:meth:`Reader.u16`
  and :meth:`Reader.sub`.

Pure: no sockets, no clock.
"""

from __future__ import annotations

from ipaddress import IPv4Address


class DecodeError(ValueError):
    """Bytes received from a peer do not decode (the peer's fault).

    ``offset`` is where in the message the problem was found, when known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message if offset is None else f"{message} (at offset {offset})")
        self.offset = offset


class Reader:
    """A cursor over ``data[start:end]`` that cannot read past ``end``.

    ``error`` is the :class:`DecodeError` subclass raised for anything that
    does not fit; readers made by :meth:`sub` raise the same."""

    __slots__ = ("_data", "_end", "_pos", "error")

    def __init__(
        self, data: bytes, start: int = 0, end: int | None = None, error: type[DecodeError] = DecodeError
    ) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self.error = error

    @property
    def position(self) -> int:
        """The offset of the next octet in the whole message."""
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _need(self, n: int, what: str) -> int:
        if n > self._end - self._pos:
            raise self.error(f"{what}: {n} octets needed, {self._end - self._pos} left", self._pos)
        start = self._pos
        self._pos += n
        return start

    def take(self, n: int, what: str) -> bytes:
        start = self._need(n, what)
        return self._data[start : start + n]

    def u8(self, what: str) -> int:
        return self._data[self._need(1, what)]

    def u16(self, what: str) -> int:
        start = self._need(2, what)
        return int.from_bytes(self._data[start : start + 2], "big")

    def u32(self, what: str) -> int:
        start = self._need(4, what)
        return int.from_bytes(self._data[start : start + 4], "big")

    def u64(self, what: str) -> int:
        start = self._need(8, what)
        return int.from_bytes(self._data[start : start + 8], "big")

    def address(self, what: str) -> IPv4Address:
        return IPv4Address(self.u32(what))

    def rest(self) -> bytes:
        start = self._pos
        self._pos = self._end
        return self._data[start : self._end]

    def sub(self, n: int, what: str) -> Reader:
        """A reader of exactly the next ``n`` octets; this one moves past them."""
        start = self._need(n, what)
        return Reader(self._data, start, start + n, self.error)

    def expect_end(self, what: str) -> None:
        if self._pos != self._end:
            raise self.error(f"{what}: {self._end - self._pos} octets left over", self._pos)

    def attributes(self, what: str) -> list[tuple[int, bytes]]:
        """The rest of the window as RADIUS-style ``(type, value)`` pairs:
        one octet of Type, one octet of Length counting the two header octets
        (RFC 2865 section 5). A Length below 2 or one that runs past the
        window's end is an error naming the attribute and its offset."""
        data, position, end = self._data, self._pos, self._end
        out: list[tuple[int, bytes]] = []
        append = out.append
        while position < end:
            if end - position < 2:
                raise self.error(f"{what}: a truncated attribute header", position)
            length = data[position + 1]
            if length < 2 or position + length > end:
                raise self.error(
                    f"{what}: attribute {data[position]} has length {length}, {end - position} octets are left",
                    position,
                )
            append((data[position], data[position + 2 : position + length]))
            position += length
        self._pos = end
        return out


__all__ = ["DecodeError", "Reader"]
