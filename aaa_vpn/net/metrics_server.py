"""The ``--metrics-listen`` endpoint: HTTP ``GET /metrics`` in the Prometheus
text format, and the shared memory through which forked workers hand their
figures to it.

Rules:

1. A server with worker processes (``serve home``, ``serve foreign
   --workers N``) creates one :class:`WorkerSlots` block before it forks:
   anonymous shared memory (``mmap(-1)``, inherited by ``fork``), one slot
   per worker. Each worker writes its whole snapshot
   (:class:`~aaa_vpn.service.metrics.Snapshot`, JSON) into its own slot about
   once a second and when it stops (:class:`Publisher`); the endpoint reads
   every slot and serves their sum. A scrape therefore sees every worker,
   each at most about a second old, never one worker at random.
2. A slot is written under a sequence lock (odd while being written); a
   reader retries until it reads the same even number before and after, so
   it never sums a half-written snapshot and never waits on a lock a dead
   worker holds.
3. A worker that is restarted carries on from the counters and histograms
   its predecessor left in the slot, so the node's counters never go
   backwards (gauges start afresh).
4. Each write also stamps the slot with the monotonic time: the supervisor
   tells systemd's watchdog that all is well only while every worker has
   written recently (:meth:`WorkerSlots.all_fresh`).
5. The endpoint is a small asyncio HTTP/1.1 server: one request per
   connection, ``GET /metrics`` (or ``/``) only, a request head of at most
   8 KiB read within 5 seconds; anything else gets 404/405/400 and the
   connection is closed. Bad input never stops it.

Why not prometheus_client's multiprocess mode: the figures are the roles'
own ``Counter`` objects (mirroring each increment into a second library's
counters is a second counting system), its multiprocess mode needs a
directory of files and an environment variable set before the import, and
the text format is a page of code (:func:`~aaa_vpn.service.metrics.render`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import signal
import socket
import struct
import time
from collections.abc import Callable

from aaa_vpn.service.logging import fields
from aaa_vpn.service.metrics import CONTENT_TYPE, Snapshot, merge, render

log = logging.getLogger("aaa_vpn.metrics")

SLOT_SIZE = 4 * 1024 * 1024  # untouched pages of an anonymous mapping cost nothing
_HEADER = struct.Struct("=QdQQ")  # sequence, monotonic time of the write, length, pid
_MAX_HEAD = 8192
_READ_TIMEOUT = 5.0
PUBLISH_EVERY = 1.0


class MetricsError(Exception):
    """The endpoint cannot listen: bad address, address in use."""


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a (host, port) pair."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host:
        raise MetricsError(f"--metrics-listen {value!r}: expected HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        raise MetricsError(f"--metrics-listen {value!r}: the port is not a number") from None
    if not 0 <= port <= 65535:
        raise MetricsError(f"--metrics-listen {value!r}: the port must be 0..65535")
    return host, port


def bind_metrics(value: str) -> socket.socket:
    """The endpoint's listening TCP socket, bound to ``HOST:PORT``."""
    host, port = parse_listen(value)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise MetricsError(f"--metrics-listen {value!r}: {host!r} is not an IP address") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise MetricsError(f"cannot listen for metrics on {value}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


# -- rule 1-4: the workers' slots ------------------------------------------------------------------


class WorkerSlots:
    """Shared memory with one slot per worker (rules 1-4); create before forking."""

    def __init__(self, workers: int, slot_size: int = SLOT_SIZE) -> None:
        self.workers = workers
        self.slot_size = slot_size
        self.memory = mmap.mmap(-1, workers * slot_size)

    def write(self, index: int, payload: bytes, now: float, pid: int) -> bool:
        """Write ``payload`` into slot ``index``; False if it does not fit (kept as it was)."""
        if len(payload) > self.slot_size - _HEADER.size:
            return False
        base = index * self.slot_size
        sequence = _HEADER.unpack_from(self.memory, base)[0]
        if sequence % 2:  # a predecessor died while writing
            sequence += 1
        _HEADER.pack_into(self.memory, base, sequence + 1, now, len(payload), pid)
        self.memory[base + _HEADER.size : base + _HEADER.size + len(payload)] = payload
        _HEADER.pack_into(self.memory, base, sequence + 2, now, len(payload), pid)
        return True

    def read(self, index: int) -> tuple[bytes, float, int] | None:
        """Slot ``index``'s payload, write time and writer pid; None if never written."""
        base = index * self.slot_size
        for _ in range(1000):
            sequence, stamp, length, pid = _HEADER.unpack_from(self.memory, base)
            if sequence == 0:
                return None
            if sequence % 2:
                time.sleep(0.0001)
                continue
            payload = self.memory[base + _HEADER.size : base + _HEADER.size + length]
            if _HEADER.unpack_from(self.memory, base)[0] == sequence:
                return payload, stamp, pid
        return None  # a writer that died mid-write and was not restarted: skip it

    def snapshot(self, index: int) -> Snapshot | None:
        found = self.read(index)
        if found is None:
            return None
        try:
            return Snapshot.from_json(json.loads(found[0]))
        except (ValueError, TypeError, AssertionError):
            return None

    def total(self) -> Snapshot:
        """The sum of every worker's last snapshot (rule 1)."""
        return merge(s for index in range(self.workers) if (s := self.snapshot(index)) is not None)

    def written(self) -> list[float | None]:
        """Each slot's last write time (``time.monotonic()``), None if never written."""
        stamps: list[float | None] = []
        for index in range(self.workers):
            sequence, stamp, _length, _pid = _HEADER.unpack_from(self.memory, index * self.slot_size)
            stamps.append(stamp if sequence else None)
        return stamps

    def all_written(self) -> bool:
        return all(stamp is not None for stamp in self.written())

    def all_fresh(self, within: float, now: float) -> bool:
        """Whether every worker has written within ``within`` seconds (rule 4)."""
        return all(stamp is not None and now - stamp <= within for stamp in self.written())


class Publisher:
    """A worker's side of its slot: what it writes, carrying on from its predecessor (rule 3)."""

    def __init__(self, slots: WorkerSlots, index: int, collect: Callable[[], Snapshot]) -> None:
        self.slots = slots
        self.index = index
        self.collect = collect
        previous = slots.snapshot(index)
        self.base = Snapshot(previous.counters, {}, previous.histograms) if previous is not None else None
        self._too_big = False

    def publish(self) -> None:
        import os

        snapshot = self.collect()
        if self.base is not None:
            snapshot = merge((self.base, snapshot))
        payload = json.dumps(snapshot.to_json(), separators=(",", ":")).encode()
        if not self.slots.write(self.index, payload, time.monotonic(), os.getpid()) and not self._too_big:
            self._too_big = True
            log.error("metrics snapshot too large for its slot", extra=fields(worker=self.index, size=len(payload)))


# -- rule 5: the HTTP endpoint -----------------------------------------------------------------------


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class MetricsHttp:
    """``GET /metrics`` on a bound listening socket, serving ``collect()`` rendered."""

    def __init__(self, sock: socket.socket, collect: Callable[[], Snapshot]) -> None:
        self.sock = sock
        self.collect = collect
        self.server: asyncio.Server | None = None
        self.scrapes = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, sock=self.sock, limit=_MAX_HEAD)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                writer.write(_response("400 Bad Request", b"bad request\n"))
                return
            writer.write(self._answer(head))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:  # a bug costs this scrape, never the server
            log.exception("metrics request failed")
        finally:
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response("400 Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/"):
            return _response("404 Not Found", b"only /metrics is here\n")
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET only\n")
        self.scrapes += 1
        body = render(self.collect()).encode()
        response = _response("200 OK", body, CONTENT_TYPE)
        return response[: len(response) - len(body)] if method == b"HEAD" else response


def serve_metrics_process(sock: socket.socket, collect: Callable[[], Snapshot]) -> int:
    """The life of a server's metrics process (rule 1), until SIGTERM/SIGINT."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        http = MetricsHttp(sock, collect)
        await http.start()
        host, port = sock.getsockname()[:2]
        log.info("metrics endpoint listening", extra=fields(address=f"{host}:{port}"))
        await stop.wait()
        await http.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        sock.close()
    return 0


__all__ = [
    "PUBLISH_EVERY",
    "MetricsError",
    "MetricsHttp",
    "Publisher",
    "WorkerSlots",
    "bind_metrics",
    "parse_listen",
    "serve_metrics_process",
]
