"""net/reuseport.py on this kernel: one peer's requests spread over every
socket of an ``SO_REUSEPORT`` group, each retransmission to the socket that
received the first copy, as :func:`worker_index` computes."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from aaa_vpn.net.reuseport import program, spread_by_authenticator, worker_index

WORKERS = 3


@pytest.fixture
def group() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(WORKERS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", sockets[0].getsockname()[1] if len(sockets) > 1 else 0))
            spread_by_authenticator(sock, WORKERS)
            sock.setblocking(False)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def received(sockets: list[socket.socket], expected: int) -> list[tuple[int, bytes]]:
    """(socket index, datagram) of everything the group received."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 5
    while len(got) < expected and time.monotonic() < deadline:
        for index, sock in enumerate(sockets):
            while True:
                try:
                    got.append((index, sock.recv(4096)))
                except BlockingIOError:
                    break
        time.sleep(0.01)
    return got


def test_one_peer_reaches_every_socket_and_retransmissions_the_same(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    requests = [bytes((1, i, 0, 20)) + os.urandom(16) for i in range(120)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:  # one source address and port
        for request in requests:
            peer.sendto(request, ("127.0.0.1", port))
        for request in requests[:40]:  # retransmissions: the same datagram again
            peer.sendto(request, ("127.0.0.1", port))
        got = received(group, 160)
    assert len(got) == 160
    where: dict[bytes, set[int]] = {}
    for index, datagram in got:
        where.setdefault(datagram, set()).add(index)
    assert all(len(sockets) == 1 for sockets in where.values()), "a retransmission reached another socket"
    per_socket = [sum(1 for index, _ in got if index == k) for k in range(WORKERS)]
    assert all(count > 0 for count in per_socket), per_socket  # P(an empty socket) ~ 3 x (2/3)^160
    # The kernel's choice is the program's: the same index, the same socket.
    by_index: dict[int, set[int]] = {}
    for datagram, sockets in where.items():
        by_index.setdefault(worker_index(datagram, WORKERS), set()).update(sockets)
    assert sorted(by_index) == list(range(WORKERS))
    assert sorted(next(iter(s)) for s in by_index.values()) == list(range(WORKERS))
    assert all(len(s) == 1 for s in by_index.values()), by_index


def test_a_datagram_too_short_for_the_load_goes_to_the_first_socket(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        full = bytes((1, 0, 0, 20)) + bytes(16)  # authenticator word 0: index 0
        peer.sendto(full, ("127.0.0.1", port))
        peer.sendto(b"\x01\x02\x00", ("127.0.0.1", port))
        got = received(group, 2)
    assert worker_index(full, WORKERS) == worker_index(b"\x01\x02\x00", WORKERS) == 0
    assert len({index for index, _ in got}) == 1, got


def test_program_bounds() -> None:
    assert len(program(2)) == 3 * 8
    for bad in (0, -1, 65536):
        with pytest.raises(ValueError, match="workers"):
            program(bad)
