"""Spreading one UDP port's requests over worker processes, request by request.

The home and foreign AAA's workers each bind their own socket to the port with
``SO_REUSEPORT``. Left to itself the kernel picks the worker by a hash of the
datagram's source address and port: one peer that sends from one socket -- a
foreign AAA, a FreeRADIUS proxy, a busy FA -- lands on one worker however
many there are, and the others idle.

:func:`spread_by_authenticator` attaches a classic BPF program to the port's
``SO_REUSEPORT`` group (``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5) that picks the
worker from the datagram itself: the first four octets of the RADIUS Request
Authenticator (octets 4-7 of the UDP payload) modulo the number of workers.
The Request Authenticator is random (RFC 2865 section 3) or a hash of the
request (RFC 2866 section 3, RFC 5176 section 3), and a retransmission repeats
it with the same Identifier, so a retransmitted request still reaches the
worker that holds it in its duplicate cache, while one peer's requests spread
over every worker.

The kernel runs the program with the datagram's UDP payload at offset 0
(``net/core/sock_reuseport.c``, ``run_bpf_filter``); a datagram too short for
the load makes the program return 0 (the first socket), and an index with no
socket behind it -- while a worker restarts -- falls back to the hash. The
program belongs to the group, so every worker may attach it again (the same
program replaces the same program).
"""

from __future__ import annotations

import ctypes
import socket
import struct

# <linux/socket.h>, <linux/filter.h>, <linux/bpf_common.h>
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00
_BPF_RET_A = 0x06 | 0x10
_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }
_PROGRAM = struct.Struct("HP")  # struct sock_fprog { unsigned short len; struct sock_filter *filter; }

AUTHENTICATOR_OFFSET = 4  # RFC 2865 section 3: Code, Identifier, Length, then the Authenticator


def program(workers: int) -> bytes:
    """The classic BPF program (its ``struct sock_filter`` array) that returns
    the first word of the Request Authenticator modulo ``workers``."""
    if not 1 <= workers <= 0xFFFF:
        raise ValueError(f"workers must be 1..65535, not {workers}")
    return b"".join(
        (
            _INSTRUCTION.pack(_BPF_LD_W_ABS, 0, 0, AUTHENTICATOR_OFFSET),
            _INSTRUCTION.pack(_BPF_ALU_MOD_K, 0, 0, workers),
            _INSTRUCTION.pack(_BPF_RET_A, 0, 0, 0),
        )
    )


def worker_index(datagram: bytes, workers: int) -> int:
    """The index :func:`program` picks for ``datagram`` (what the kernel computes)."""
    if len(datagram) < AUTHENTICATOR_OFFSET + 4:
        return 0
    return int.from_bytes(datagram[AUTHENTICATOR_OFFSET : AUTHENTICATOR_OFFSET + 4], "big") % workers


def spread_by_authenticator(sock: socket.socket, workers: int) -> None:
    """Attach the program to the ``SO_REUSEPORT`` group of ``sock`` (bound
    with ``SO_REUSEPORT``); OSError if the kernel refuses it."""
    instructions = program(workers)
    array = ctypes.create_string_buffer(instructions, len(instructions))
    fprog = _PROGRAM.pack(len(instructions) // _INSTRUCTION.size, ctypes.addressof(array))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)  # the kernel copies the array
