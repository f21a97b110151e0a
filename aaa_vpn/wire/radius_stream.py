"""RADIUS over a byte stream (RFC 6613 section 2.2 framing, used by RadSec,
RFC 6614): packets follow each other with nothing between them, each one as
long as its header's Length field says.

:class:`StreamReader` cuts a stream into packets. It holds at most one
incomplete packet (never more than :data:`~aaa_vpn.wire.radius.MAX_PACKET_LENGTH`
octets waiting), and a Length outside 20..4096 is a
:class:`StreamFramingError`: the stream cannot be resynchronised after it,
so the connection must be closed (RFC 6613 section 2.6.4: a malformed
packet on a stream closes the connection). Whatever else is wrong inside a
packet is for the RADIUS plumbing to judge, as with a datagram.

Pure: no sockets, no clock.
"""

from __future__ import annotations

from aaa_vpn.wire.radius import HEADER_LENGTH, MAX_PACKET_LENGTH, RadiusDecodeError


class StreamFramingError(RadiusDecodeError):
    """The peer's stream is not a sequence of RADIUS packets: close it."""


class StreamReader:
    """Cuts a byte stream into RADIUS packets by their Length field."""

    __slots__ = ("_buffer", "failed", "packets")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.packets = 0
        """Packets cut so far."""
        self.failed = False
        """A framing error happened: the reader accepts nothing more."""

    @property
    def pending(self) -> int:
        """Octets of an incomplete packet held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The complete packets ``data`` finishes, in order; what remains of
        an incomplete packet is kept for the next call.

        Raises :class:`StreamFramingError` on a Length outside 20..4096 (the
        packets already complete in ``data`` are lost with the connection)."""
        if self.failed:
            raise StreamFramingError("the stream already failed framing")
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 4:
            length = (buffer[offset + 2] << 8) | buffer[offset + 3]
            if not HEADER_LENGTH <= length <= MAX_PACKET_LENGTH:
                code = buffer[offset]
                self.failed = True
                buffer.clear()
                raise StreamFramingError(
                    f"packet {self.packets + len(out) + 1} on the stream (code {code}): Length {length},"
                    f" expected {HEADER_LENGTH}..{MAX_PACKET_LENGTH}"
                )
            if end - offset < length:
                break
            out.append(bytes(buffer[offset : offset + length]))
            offset += length
        if offset:
            del buffer[:offset]
        self.packets += len(out)
        return out


__all__ = ["StreamFramingError", "StreamReader"]
