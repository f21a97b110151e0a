"""A small netlink client on the standard library, for NETLINK_XFRM (netlink(7); RFC 3549
describes the protocol, ``linux/netlink.h`` is the authority for the layouts).

pyroute2 0.9.7 has no XFRM API, and a raw ``AF_NETLINK`` socket with a few
structs is shorter than hand-written pyroute2 message classes, so the xfrm
backend (:mod:`aaa_vpn.sa.xfrm`) talks netlink through this module, and its
message codec (:mod:`aaa_vpn.sa.xfrm_codec`) builds on the framing here.

Rules:

* Wire format (host byte order, every message and attribute aligned to 4 octets):
  ``nlmsghdr`` = ``len(u32) | type(u16) | flags(u16) | seq(u32) | pid(u32)``
  followed by the payload; attributes (``nlattr``) are ``len(u16) | type(u16) |
  value`` with ``len`` counting the 4-octet header but not the padding.
* One request at a time on a :class:`NetlinkSocket`. Every request carries
  ``NLM_F_ACK``, so it ends with an ``NLMSG_ERROR`` whose error is 0 (the ack)
  or a negative errno; a dump (``NLM_F_DUMP``, without ``NLM_F_ACK``) ends with
  ``NLMSG_DONE``, whose payload carries the dump's error code.
  Replies whose sequence number is not the current request's are stale (a
  request that timed out) and are skipped.
* Errors say whose fault they are: :class:`NetlinkError` (an ``OSError``) is the
  kernel refusing a request, with its errno and, since the socket enables
  ``NETLINK_EXT_ACK``, the kernel's own explanation (``extack``: the text and the
  offset of the offending attribute in the request). :class:`NetlinkDecodeError`
  means a reply could not be parsed (our bug or the peer's). Every decoder here
  raises only :class:`NetlinkDecodeError` on bad input; a family's codec raises
  its own subclass for its structures (:func:`split_message`, :func:`check_once`
  take it).
* A family message (``XFRM_MSG_*`` and the like) is a fixed part whose length
  is a multiple of 4, then attributes; an attribute a message may carry once
  is refused when it comes twice.
* ``NLMSG_ERROR`` payload: ``error(s32) | the request's nlmsghdr | the request's
  payload`` -- the payload is left out when the kernel sets ``NLM_F_CAPPED``
  (always for a success ack, or when the socket asked for ``NETLINK_CAP_ACK``)
  -- then, with ``NLM_F_ACK_TLVS``, the extack attributes (``NLMSGERR_ATTR_*``).
* A dump whose messages carry ``NLM_F_DUMP_INTR`` was inconsistent (the table
  changed while it was read) and is repeated.
* Network namespaces: :func:`open_transport` opens the socket inside a named
  namespace (``ip netns`` names, ``/run/netns/NAME``) from a short-lived helper
  thread that ``setns``-es itself, so no thread of the caller changes namespace;
  the socket stays bound to the namespace it was created in.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

#: Netlink protocol number of the XFRM (IPsec) family.
NETLINK_XFRM: Final = 6
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4

NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ACK: Final = 0x04
NLM_F_ECHO: Final = 0x08
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH
# Flags of an NLMSG_ERROR message (same bits, another meaning).
NLM_F_CAPPED: Final = 0x100
NLM_F_ACK_TLVS: Final = 0x200

NLMSGERR_ATTR_MSG: Final = 1  # NUL-terminated text
NLMSGERR_ATTR_OFFS: Final = 2  # u32: offset of the offending attribute in the request
NLMSGERR_ATTR_COOKIE: Final = 3

#: Attribute type bits that are flags, not part of the type.
NLA_F_NESTED: Final = 0x8000
NLA_F_NET_BYTEORDER: Final = 0x4000
NLA_TYPE_MASK: Final = 0x3FFF

_CLONE_NEWNET: Final = 0x40000000

NLMSG_HEADER: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid: 16 octets
_NLATTR = struct.Struct("=HH")  # len, type
_S32 = struct.Struct("=i")
#: A host-order 32-bit unsigned integer, the commonest field of netlink structures.
U32: Final = struct.Struct("=I")

#: Receive buffer: the kernel sends dump batches of at most 32 KiB (and one page
#: per message for the xfrm family); a larger buffer never truncates them.
RECV_BUFFER: Final = 1 << 17


def align4(n: int) -> int:
    """``NLMSG_ALIGN`` / ``NLA_ALIGN``: round up to a multiple of 4."""
    return (n + 3) & ~3


class NetlinkDecodeError(ValueError):
    """A netlink message or attribute could not be parsed (malformed lengths, truncation, bad values)."""


class NetlinkError(OSError):
    """The kernel refused a request: ``errno`` plus the kernel's extended ack, if any.

    ``str()`` reads like ``[Errno 93] Protocol not supported (XFRM_MSG_NEWSA;
    kernel: 'Requested type not found')``; it never contains request contents."""

    def __init__(self, error: int, request: str, extack: str | None = None, offset: int | None = None) -> None:
        reason = os.strerror(error) if error > 0 else f"error {error}"
        detail = request
        if extack:
            detail += f"; kernel: {extack!r}"
        if offset is not None:
            detail += f" at offset {offset}"
        super().__init__(error, f"{reason} ({detail})")
        self.request = request
        self.extack = extack
        self.offset = offset

    @property
    def errno_name(self) -> str:
        """``"EPROTONOSUPPORT"`` and the like."""
        return errno_module.errorcode.get(self.errno or 0, str(self.errno))


@dataclass(frozen=True)
class Message:
    """One netlink message: header fields and the raw payload.

    The ``repr`` shows the payload's length only: payloads can carry keys
    (an ``XFRM_MSG_NEWSA``, or the request an error message echoes)."""

    type: int
    flags: int = 0
    seq: int = 0
    pid: int = 0
    payload: bytes = field(default=b"", repr=False)

    def __repr__(self) -> str:
        return (
            f"Message(type={self.type}, flags=0x{self.flags:x}, seq={self.seq}, pid={self.pid}, "
            f"payload=<{len(self.payload)} octets>)"
        )


def encode_message(message: Message) -> bytes:
    """The message with its header, padded to 4 octets."""
    length = NLMSG_HEADER.size + len(message.payload)
    header = NLMSG_HEADER.pack(length, message.type, message.flags, message.seq, message.pid)
    return header + message.payload + bytes(align4(length) - length)


def decode_messages(data: bytes) -> list[Message]:
    """Every message of one datagram. Each ``nlmsg_len`` must fit the data; the
    padding after the last message may be missing."""
    messages: list[Message] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSG_HEADER.size:
            raise NetlinkDecodeError(f"{len(data) - offset} octets left at offset {offset}, less than a header")
        length, type_, flags, seq, pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            raise NetlinkDecodeError(f"nlmsg_len {length} at offset {offset} does not fit {len(data)} octets")
        messages.append(Message(type_, flags, seq, pid, bytes(data[offset + NLMSG_HEADER.size : offset + length])))
        offset += align4(length)
    return messages


def encode_attr(type_: int, value: bytes) -> bytes:
    """One attribute, padded to 4 octets."""
    length = _NLATTR.size + len(value)
    if length > 0xFFFF:
        raise ValueError(f"attribute {type_} of {len(value)} octets is too long for nla_len")
    return _NLATTR.pack(length, type_) + value + bytes(align4(length) - length)


#: One attribute: ``(type, value)``, the type with its flag bits.
Attribute = tuple[int, bytes]
#: Attributes kept raw, in order.
Attributes = tuple[Attribute, ...]


def encode_attrs(attrs: Iterable[Attribute]) -> bytes:
    return b"".join(encode_attr(type_, value) for type_, value in attrs)


def decode_attrs(data: bytes) -> list[Attribute]:
    """``(type, value)`` of every attribute in ``data``, in order; ``type`` keeps
    its flag bits. Each ``nla_len`` must fit; the padding of the last may be missing."""
    attrs: list[Attribute] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _NLATTR.size:
            raise NetlinkDecodeError(f"{len(data) - offset} octets left at offset {offset}, less than an attribute")
        length, type_ = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            raise NetlinkDecodeError(f"nla_len {length} at offset {offset} does not fit {len(data)} octets")
        attrs.append((type_, bytes(data[offset + _NLATTR.size : offset + length])))
        offset += align4(length)
    return attrs


def split_message(
    payload: bytes, size: int, what: str, error: type[NetlinkDecodeError] = NetlinkDecodeError
) -> tuple[bytes, list[Attribute]]:
    """A family message: its fixed part of ``size`` octets (a multiple of 4, so
    ``NLMSG_ALIGN(size)`` is ``size``) and its attributes. ``error`` (the
    family's subclass) when ``payload`` is shorter than the fixed part."""
    if len(payload) < size:
        raise error(f"{what} message of {len(payload)} octets, the fixed part alone is {size}")
    return payload[:size], decode_attrs(payload[size:])


def check_once(seen: set[int], type_: int, error: type[NetlinkDecodeError] = NetlinkDecodeError) -> None:
    """Note attribute ``type_`` in ``seen``; ``error`` if it came before."""
    if type_ in seen:
        raise error(f"attribute {type_} appears twice")
    seen.add(type_)


def check_raw_attributes(other: Attributes, known: Iterable[int]) -> None:
    """Attributes a message keeps raw must be ``bytes`` and none of ``known``
    (the types it has a field of its own for): ValueError, the caller's bug."""
    known_set = set(known)
    for type_, value in other:
        if type_ in known_set:
            raise ValueError(f"attribute {type_} has its own field")
        if not isinstance(value, bytes):
            raise ValueError("attribute values are bytes")


@dataclass(frozen=True)
class Ack:
    """An ``NLMSG_ERROR`` payload (or an ``NLMSG_DONE`` payload of a dump).

    ``error`` is 0 for an ack, else a negative errno. ``request`` is the echoed
    request header (``payload`` empty when capped) -- ``None`` for ``NLMSG_DONE``,
    which echoes nothing. ``extack`` holds the ``NLMSGERR_ATTR_*`` attributes
    other than message and offset, raw."""

    error: int
    request: Message | None = None
    message: str | None = None
    offset: int | None = None
    other: Attributes = ()

    @property
    def flags(self) -> int:
        """The flags the kernel would set on this ``NLMSG_ERROR``."""
        flags = 0
        if self.request is not None and not self.request.payload:
            flags |= NLM_F_CAPPED
        if self.message is not None or self.offset is not None or self.other:
            flags |= NLM_F_ACK_TLVS
        return flags


def encode_ack(ack: Ack) -> bytes:
    """The payload of an ``NLMSG_ERROR`` (``ack.request`` set) or ``NLMSG_DONE`` message.

    An echoed request with payload is written whole (not capped); use
    :attr:`Ack.flags` for the message flags."""
    out = _S32.pack(ack.error)
    if ack.request is not None:
        out += encode_message(ack.request)
    tlvs: list[Attribute] = []
    if ack.message is not None:
        tlvs.append((NLMSGERR_ATTR_MSG, ack.message.encode("utf-8") + b"\x00"))
    if ack.offset is not None:
        tlvs.append((NLMSGERR_ATTR_OFFS, U32.pack(ack.offset)))
    tlvs.extend(ack.other)
    return out + encode_attrs(tlvs)


def decode_ack(payload: bytes, flags: int, *, done: bool = False) -> Ack:
    """Parse an ``NLMSG_ERROR`` payload (or, with ``done``, an ``NLMSG_DONE`` one)."""
    if len(payload) < _S32.size:
        if done and not payload:
            return Ack(0)  # some dumps end with an empty NLMSG_DONE
        raise NetlinkDecodeError(f"ack of {len(payload)} octets has no error code")
    (error,) = _S32.unpack_from(payload)
    if error > 0:
        raise NetlinkDecodeError(f"positive error code {error} in an ack")
    offset = _S32.size
    request: Message | None = None
    if not done:
        if len(payload) - offset < NLMSG_HEADER.size:
            raise NetlinkDecodeError("the ack does not echo the request header")
        length, type_, rflags, seq, pid = NLMSG_HEADER.unpack_from(payload, offset)
        if length < NLMSG_HEADER.size:
            raise NetlinkDecodeError(f"echoed nlmsg_len {length} is shorter than a header")
        if flags & NLM_F_CAPPED:
            end = offset + NLMSG_HEADER.size
            request = Message(type_, rflags, seq, pid, b"")
        else:
            end = offset + length
            if end > len(payload):
                raise NetlinkDecodeError(f"echoed request of {length} octets does not fit the ack")
            request = Message(type_, rflags, seq, pid, bytes(payload[offset + NLMSG_HEADER.size : end]))
        offset = align4(end)
    message: str | None = None
    bad_offset: int | None = None
    other: list[Attribute] = []
    if flags & NLM_F_ACK_TLVS:
        for type_, value in decode_attrs(payload[offset:]):
            if type_ == NLMSGERR_ATTR_MSG and message is None:
                text = value.split(b"\x00", 1)[0]
                try:
                    message = text.decode("utf-8")
                except UnicodeDecodeError:
                    raise NetlinkDecodeError("extack message is not UTF-8") from None
            elif type_ == NLMSGERR_ATTR_OFFS and bad_offset is None:
                if len(value) != U32.size:
                    raise NetlinkDecodeError(f"extack offset of {len(value)} octets")
                (bad_offset,) = U32.unpack(value)
            else:
                other.append((type_, value))
    return Ack(error, request, message, bad_offset, tuple(other))


class Transport(Protocol):
    """What :class:`NetlinkSocket` needs from a socket: whole datagrams in and out.

    Tests inject fakes that answer like the kernel."""

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


class SocketTransport:
    """A real ``AF_NETLINK`` socket, with ``NETLINK_EXT_ACK`` on. Datagrams from a
    sender other than the kernel (port id 0) are dropped."""

    def __init__(self, sock: socket.socket, timeout: float | None = 5.0) -> None:
        self._sock = sock
        sock.settimeout(timeout)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        sock.bind((0, 0))

    def send(self, data: bytes) -> None:
        self._sock.sendto(data, (0, 0))

    def recv(self) -> bytes:
        while True:
            data, (pid, _groups) = self._sock.recvfrom(RECV_BUFFER)
            if pid == 0:
                return data

    def close(self) -> None:
        self._sock.close()


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def netns_path(netns: str) -> str:
    """The file of a network namespace: ``ip netns`` names live in ``/run/netns``."""
    if "/" in netns:
        return netns
    if not netns or netns in (".", ".."):
        raise ValueError(f"invalid network namespace name {netns!r}")
    return os.path.join("/run/netns", netns)


def open_socket(protocol: int, netns: str | None = None) -> socket.socket:
    """A raw netlink socket of ``protocol``, created in ``netns`` (a name or a path) if given."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    path = netns_path(netns)
    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def in_namespace() -> None:
        # This thread joins the namespace and ends; no other thread changes namespace.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=in_namespace, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot open a netlink socket in network namespace {netns}: {exc.strerror}")
        raise exc
    return result[0]


def open_transport(protocol: int = NETLINK_XFRM, netns: str | None = None, timeout: float | None = 5.0) -> Transport:
    """A :class:`SocketTransport` for ``protocol`` in ``netns`` (``None``: the caller's namespace)."""
    return SocketTransport(open_socket(protocol, netns), timeout)


class NetlinkSocket:
    """Requests and dumps over one :class:`Transport`; not thread-safe.

    ``names`` maps message types to names for error messages."""

    def __init__(self, transport: Transport, names: dict[int, str] | None = None) -> None:
        self._transport = transport
        self._names = names or {}
        self._seq = 0
        self.closed = False

    def name(self, type_: int) -> str:
        return self._names.get(type_, f"message type {type_}")

    def _send(self, type_: int, flags: int, payload: bytes) -> int:
        if self.closed:
            raise NetlinkError(errno_module.EBADF, f"{self.name(type_)} on a closed socket")
        self._seq = self._seq + 1 if self._seq < 0xFFFFFFFF else 1
        self._transport.send(encode_message(Message(type_, flags, self._seq, 0, payload)))
        return self._seq

    def request(self, type_: int, payload: bytes, flags: int = 0) -> list[Message]:
        """Send one request (``NLM_F_REQUEST | NLM_F_ACK | flags``) and return the
        replies that came before the ack (e.g. the object a GET asked for).

        Raises :class:`NetlinkError` if the kernel refused it."""
        seq = self._send(type_, NLM_F_REQUEST | NLM_F_ACK | flags, payload)
        replies: list[Message] = []
        while True:
            for message in decode_messages(self._transport.recv()):
                if message.seq != seq or message.type == NLMSG_NOOP:
                    continue
                if message.type == NLMSG_ERROR:
                    ack = decode_ack(message.payload, message.flags)
                    if ack.error:
                        raise NetlinkError(-ack.error, self.name(type_), ack.message, ack.offset)
                    return replies
                if message.type == NLMSG_OVERRUN:
                    raise NetlinkError(errno_module.ENOBUFS, f"{self.name(type_)}: overrun")
                replies.append(message)

    def dump(self, type_: int, payload: bytes = b"", attempts: int = 3) -> list[Message]:
        """Every object of a dump request; repeated when the kernel flags it as interrupted."""
        for _ in range(attempts):
            messages, interrupted = self._dump_once(type_, payload)
            if not interrupted:
                return messages
        raise NetlinkError(errno_module.EAGAIN, f"{self.name(type_)} dump interrupted {attempts} times")

    def _dump_once(self, type_: int, payload: bytes) -> tuple[list[Message], bool]:
        # No NLM_F_ACK: a dump ends with NLMSG_DONE (carrying the error, if any).
        seq = self._send(type_, NLM_F_REQUEST | NLM_F_DUMP, payload)
        messages: list[Message] = []
        interrupted = False
        while True:
            for message in decode_messages(self._transport.recv()):
                if message.seq != seq or message.type == NLMSG_NOOP:
                    continue
                interrupted = interrupted or bool(message.flags & NLM_F_DUMP_INTR)
                if message.type == NLMSG_DONE:
                    ack = decode_ack(message.payload, message.flags, done=True)
                    if ack.error:
                        raise NetlinkError(-ack.error, f"{self.name(type_)} dump", ack.message, ack.offset)
                    return messages, interrupted
                if message.type == NLMSG_ERROR:
                    ack = decode_ack(message.payload, message.flags)
                    if ack.error:
                        raise NetlinkError(-ack.error, f"{self.name(type_)} dump", ack.message, ack.offset)
                    return messages, interrupted  # an ack without NLMSG_DONE: nothing more comes
                if message.type == NLMSG_OVERRUN:
                    raise NetlinkError(errno_module.ENOBUFS, f"{self.name(type_)} dump: overrun")
                messages.append(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._transport.close()
