"""``aaa-vpn serve foreign``: the foreign AAA's UDP sockets and worker processes.

A worker owns one listening socket (the FAs' requests, and the replies to
them) and one upstream socket per distinct home-server pool, bound to the
configured ``source_address`` (default: the listen address) on a free port:
the home AAA recognises the AAAF by that address, and a pool's own socket
gives it its own Identifier space. One asyncio loop drains the sockets in
batches (``loop.add_reader`` + non-blocking ``recvfrom``, as the home AAA
does), feeds the sans-IO proxy with the loop's monotonic clock, sends what it
returns and keeps one ``loop.call_at`` timer on
:meth:`~aaa_vpn.roles.foreign_aaa.ForeignAaa.get_timer`.

Workers: one by default, serving in the parent process; the session cache
(flow C) then sees every registration. With ``workers > 1`` each worker is a
forked process with its own ``SO_REUSEPORT`` socket, upstream sockets,
duplicate cache and session cache; the kernel spreads FAs over workers by
source address and port, so one FA's retransmissions always reach the same
worker, but a handoff may reach a worker that did not proxy the session. The
parent checks the configuration and address before it forks, restarts a
worker that dies (and stops when they keep dying) and forwards SIGTERM/SIGINT
for a graceful stop; SIGUSR1 logs the counters.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aaa_vpn.model import ValidationError
from aaa_vpn.net.home_server import ServerError, _bind, supervise
from aaa_vpn.service.config import ForeignServerSettings
from aaa_vpn.service.foreign import ForeignService, with_port
from aaa_vpn.service.logging import configure_logging, fields

log = logging.getLogger("aaa_vpn.foreign_server")

_BATCH = 256
_HOUSEKEEPING_EVERY = 30.0
_STATS_EVERY = 300.0


def _log_counters(service: ForeignService, message: str) -> None:
    log.info(message, extra=fields(**service.counters()))


def serve_worker(settings: ForeignServerSettings, index: int, sock: socket.socket | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the exit code."""
    loop = asyncio.new_event_loop()
    service = ForeignService(settings, loop.time())
    upstream: list[socket.socket] = []
    if sock is None:
        sock = _bind(settings.listen, settings.port, reuse_port=True)
    try:
        for _pool in service.aaa.pools:
            upstream.append(_bind(settings.upstream_address, 0, reuse_port=False))
    except ServerError:
        for opened in upstream:
            opened.close()
        sock.close()
        loop.close()
        raise
    stop = asyncio.Event()
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None

    front = _diameter_front(settings, service, loop) if index == 0 else None

    def flush() -> None:
        nonlocal timer, timer_at
        for datagram in service.outgoing():
            if front is not None and datagram.pool is None and front.claims(datagram.address):
                guarded(partial(front.reply, datagram.address, datagram.data))  # an AMR's answer
                continue
            out = sock if datagram.pool is None else upstream[datagram.pool]
            try:
                out.sendto(datagram.data, datagram.address)
            except OSError as exc:
                service.aaa.counters["send_errors"] += 1
                log.warning("sendto failed", extra=fields(destination=datagram.address[0], error=str(exc)))
        when = service.aaa.get_timer()
        if when == timer_at:
            return
        if timer is not None:
            timer.cancel()
        timer, timer_at = (None, None) if when is None else (loop.call_at(when, on_timer), when)

    def inject(data: bytes, source: tuple[str, int], now: float) -> None:
        # An AMR's Access-Request (net/foreign_diameter.py), as if received from its FA.
        guarded(partial(service.receive_from_client, data, source, now))
        flush()

    def on_timer() -> None:
        nonlocal timer, timer_at
        timer, timer_at = None, None
        guarded(lambda: service.handle_timer(loop.time()))
        flush()

    def guarded(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # a bug must cost this datagram, never the daemon
            service.aaa.counters["dropped"] += 1
            service.aaa.counters["dropped.internal_error"] += 1
            log.exception("internal error")

    def drain(source_sock: socket.socket, pool: int | None) -> None:
        for _ in range(_BATCH):
            try:
                data, address = source_sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier sendto
                log.debug("recvfrom failed", extra=fields(error=str(exc)))
                continue
            peer = (str(address[0]), int(address[1]))
            if pool is None:
                guarded(partial(service.receive_from_client, data, peer, loop.time()))
            else:
                guarded(partial(service.receive_from_upstream, data, peer, pool, loop.time()))
        flush()

    async def housekeeping() -> None:
        last_stats = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=_HOUSEKEEPING_EVERY)
            except TimeoutError:
                pass
            guarded(lambda: service.housekeeping(loop.time()))
            if front is not None:
                guarded(lambda: front.expire(loop.time()))
            if time.monotonic() - last_stats >= _STATS_EVERY:
                _log_counters(service, "counters")
                last_stats = time.monotonic()

    async def main() -> None:
        loop.add_reader(sock.fileno(), drain, sock, None)
        for number, pool_sock in enumerate(upstream):
            loop.add_reader(pool_sock.fileno(), drain, pool_sock, number)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: _log_counters(service, "counters"))
        host, port = sock.getsockname()
        log.info(
            "worker listening",
            extra=fields(
                worker=index,
                address=f"{host}:{port}",
                upstream=",".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in upstream),
            ),
        )
        if front is not None:
            front.inject = inject
            await front.listen(settings.diameter_listen)
        task = asyncio.ensure_future(housekeeping())
        await stop.wait()
        if front is not None:
            await front.transport.close()
            log.info("diameter stopped", extra=fields(**dict(sorted(front.counters.items()))))
        loop.remove_reader(sock.fileno())
        for pool_sock in upstream:
            loop.remove_reader(pool_sock.fileno())
        await task

    try:
        loop.run_until_complete(main())
    finally:
        _log_counters(service, "worker stopped")
        if timer is not None:
            timer.cancel()
        loop.close()
        sock.close()
        for pool_sock in upstream:
            pool_sock.close()
    return 0


def _diameter_front(settings: ForeignServerSettings, service: ForeignService, loop: asyncio.AbstractEventLoop) -> Any:
    """The Diameter front end (net/foreign_diameter.py), when the file has a ``[diameter]`` table."""
    if settings.diameter_listen is None:
        return None
    from aaa_vpn.net.foreign_diameter import ForeignDiameterFront

    realms = tuple(r.name for r in settings.realms)
    return ForeignDiameterFront(
        settings.diameter_host or f"aaaf.{settings.diameter_realm}",
        settings.diameter_realm,
        realms,
        settings.clients,
        lambda data, source, now: None,
        plain_is_secure=settings.diameter_plain_is_secure,
        clock=loop.time,
    )


def run_foreign_server(settings: ForeignServerSettings) -> int:
    """Entry point of ``aaa-vpn serve foreign``; returns the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        # Check what a worker needs before forking: one clear error, not N.
        check = ForeignService(settings, 0.0)
        probe = _bind(settings.listen, settings.port, reuse_port=settings.workers > 1)
        try:
            _bind(settings.upstream_address, 0, reuse_port=False).close()
        except ServerError as exc:
            probe.close()
            raise ServerError(f"upstream source address: {exc}") from None
    except (ServerError, ValidationError) as exc:
        log.error(str(exc))
        return 1
    log.info(
        "foreign AAA starting",
        extra=fields(
            address=f"{settings.listen}:{probe.getsockname()[1]}",
            workers=settings.workers,
            clients=len(settings.clients),
            realms=",".join(r.name for r in settings.realms),
            pools=len(check.aaa.pools),
        ),
    )
    if settings.workers == 1:
        return serve_worker(settings, 0, sock=probe)
    if settings.port == 0:
        settings = with_port(settings, probe.getsockname()[1])  # workers share one concrete port
    probe.close()
    return _supervise(settings)


def _supervise(settings: ForeignServerSettings) -> int:
    return supervise(partial(serve_worker, settings), settings.workers, "foreign AAA")


__all__ = ["run_foreign_server", "serve_worker"]
