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
for a graceful stop; SIGUSR1 logs the counters. SIGHUP reads the file again
and applies what needs no new socket or pool -- the clients and their secrets,
the log level and format, the duplicate cache's time -- between two batches,
so no request is dropped; a changed listen address, port, worker count or
realm is logged as needing a restart, and a file that no longer reads keeps
the running configuration.

Metrics (``--metrics-listen``, docs/metrics.md): one worker serves them from
its own loop; several publish into shared slots and a process of their own
serves the sum, as the home AAA does. systemd notifications: READY=1 when
serving and WATCHDOG=1 from the loop (one worker) or while every worker
publishes (several) -- net/systemd_notify.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aaa_vpn.model import ValidationError
from aaa_vpn.net.home_server import ServerError, _bind, _bind_radsec, metrics_total, server_supervision, supervise
from aaa_vpn.net.metrics_server import (
    PUBLISH_EVERY,
    MetricsError,
    MetricsHttp,
    Publisher,
    WorkerSlots,
    bind_metrics,
    serve_metrics_process,
)
from aaa_vpn.net.radsec import (
    CertificateClients,
    RadsecConnector,
    RadsecListener,
    RadsecServer,
    TlsError,
    TlsFiles,
    client_context,
    server_tls,
)
from aaa_vpn.net.systemd_notify import Notifier, keep_watchdog
from aaa_vpn.roles.foreign_aaa import ACCOUNTING_SOCKET, ProxyClient
from aaa_vpn.service.config import ForeignServerSettings
from aaa_vpn.service.foreign import ForeignService, with_port
from aaa_vpn.service.logging import configure_logging, fields
from aaa_vpn.service.metrics import Snapshot, labels_of
from aaa_vpn.wire.radius import ACCOUNTING_REQUEST

log = logging.getLogger("aaa_vpn.foreign_server")

_BATCH = 256
_HOUSEKEEPING_EVERY = 30.0
_STATS_EVERY = 300.0


def _log_counters(service: ForeignService, message: str) -> None:
    log.info(message, extra=fields(**service.counters()))


def serve_worker(
    settings: ForeignServerSettings,
    index: int,
    sock: socket.socket | None = None,
    accounting_sock: socket.socket | None = None,
    radsec_sock: socket.socket | None = None,
    slots: WorkerSlots | None = None,
    metrics_sock: socket.socket | None = None,
    notifier: Notifier | None = None,
    reloader: Callable[[], ForeignServerSettings] | None = None,
) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the exit code. ``sock``,
    ``accounting_sock`` and ``radsec_sock`` (with ``radsec_listen``): bound
    already, else here. Its metrics go to ``slots`` (several workers) or are
    served on ``metrics_sock`` (one); ``notifier``: systemd's, for the only worker."""
    loop = asyncio.new_event_loop()
    started = time.time()
    service = ForeignService(settings, loop.time())
    upstream: list[socket.socket] = []
    if sock is None:
        sock = _bind(settings.listen, settings.port, reuse_port=True)
    if radsec_sock is None and settings.radsec_listen is not None:
        radsec_sock = _bind_radsec(settings, reuse_port=True)
    radsec: RadsecListener[ProxyClient] | None = None
    # RadSec home servers (docs/radsec.md): one connector per pool, as each
    # pool has its own UDP socket (its own Identifier space).
    connectors: list[RadsecConnector | None] = []
    try:
        if accounting_sock is None:
            accounting_sock = _bind(settings.listen, settings.accounting_bind_port, reuse_port=True)
        for _pool in service.aaa.pools:
            upstream.append(_bind(settings.upstream_address, 0, reuse_port=False))
    except ServerError:
        for opened in upstream:
            opened.close()
        if accounting_sock is not None:
            accounting_sock.close()
        sock.close()
        loop.close()
        raise
    stop = asyncio.Event()
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None

    front = _diameter_front(settings, service, loop) if index == 0 else None
    if front is not None:
        service.more_counters = front.events

    def flush() -> None:
        nonlocal timer, timer_at
        for datagram in service.outgoing(loop.time()):
            if front is not None and datagram.pool is None and front.claims(datagram.address):
                guarded(partial(front.reply, datagram.address, datagram.data))  # an AMR's answer
                continue
            if datagram.pool is None:
                if radsec is not None and radsec.deliver(datagram.data, datagram.address):
                    continue
                out = sock
            elif datagram.pool == ACCOUNTING_SOCKET:
                if radsec is not None and radsec.deliver(datagram.data, datagram.address):
                    continue
                out = accounting_sock
            else:
                connector = connectors[datagram.pool] if connectors else None
                if connector is not None and connector.send(datagram.data, datagram.address):
                    continue
                out = upstream[datagram.pool]
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
            elif pool == ACCOUNTING_SOCKET:
                guarded(partial(service.receive_accounting, data, peer, loop.time()))
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

    def from_radsec_client(packets: list[bytes], source: tuple[str, int], client: ProxyClient) -> None:
        # Accounting shares the connection (RFC 6614 section 2.1): by code.
        for packet in packets:
            receive = service.receive_accounting if packet[0] == ACCOUNTING_REQUEST else service.receive_from_client
            guarded(partial(receive, packet, source, loop.time(), client))
        flush()

    def from_radsec_server(pool: int, packet: bytes, source: tuple[str, int]) -> None:
        guarded(partial(service.receive_from_upstream, packet, source, pool, loop.time()))
        flush()

    def reload() -> None:
        if reloader is None:
            log.warning("SIGHUP: no configuration file to read again; restart the foreign AAA to change it")
            return
        try:
            new = reloader()
        except Exception as exc:  # noqa: BLE001 - a file that no longer reads keeps the running configuration
            log.error("reload failed: keeping the running configuration", extra=fields(worker=index, error=str(exc)))
            return
        if notifier is not None:  # the only process: systemd hears of it from here
            notifier.reloading()
        for name in service.apply_reload(new):
            log.warning("changed setting needs a restart to take effect", extra=fields(worker=index, setting=name))
        log.info("configuration reloaded", extra=fields(worker=index, clients=len(new.clients)))
        if notifier is not None:
            notifier.ready(f"foreign AAA on {settings.listen}")

    def collect() -> Snapshot:
        snapshot = service.snapshot(loop.time())
        if slots is None:  # the only process: its own gauges
            snapshot.gauges[("aaa_vpn_workers", labels_of(role="foreign"))] = 1
            snapshot.gauges[("aaa_vpn_start_time_seconds", labels_of(role="foreign"))] = started
        return snapshot

    publisher = Publisher(slots, index, collect) if slots is not None else None
    http = MetricsHttp(metrics_sock, collect) if metrics_sock is not None else None

    def publish() -> None:
        assert publisher is not None
        try:
            publisher.publish()
        except Exception:  # a bug in the metrics must never cost the requests
            log.exception("cannot publish the metrics")
        if not stop.is_set():
            loop.call_later(PUBLISH_EVERY, publish)

    async def main() -> None:
        nonlocal radsec
        if radsec_sock is not None:
            radsec = RadsecListener(
                radsec_sock,
                server_tls(settings),
                CertificateClients(lambda: settings.clients, lambda: 0, settings.radsec_client),
                from_radsec_client,
                service.aaa.counters,
                idle_timeout=settings.radsec_idle_timeout,
            )
            await radsec.start()
        for number, pool in enumerate(service.aaa.pools):
            servers = [
                RadsecServer((s.address, s.port), s.tls_name, s.name)
                for s in pool.client.servers
                if s.transport == "radsec"
            ]
            connectors.append(
                RadsecConnector(
                    servers,
                    client_tls(settings),
                    partial(from_radsec_server, number),
                    local_address=settings.upstream_address,
                )
                if servers
                else None
            )
        loop.add_reader(sock.fileno(), drain, sock, None)
        loop.add_reader(accounting_sock.fileno(), drain, accounting_sock, ACCOUNTING_SOCKET)
        for number, pool_sock in enumerate(upstream):
            loop.add_reader(pool_sock.fileno(), drain, pool_sock, number)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: _log_counters(service, "counters"))
        loop.add_signal_handler(signal.SIGHUP, reload)
        if publisher is not None:
            publish()
        if http is not None:
            await http.start()
        host, port = sock.getsockname()
        log.info(
            "worker listening",
            extra=fields(
                worker=index,
                address=f"{host}:{port}",
                accounting=f"{accounting_sock.getsockname()[0]}:{accounting_sock.getsockname()[1]}",
                upstream=",".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in upstream),
                radsec="" if radsec is None else f"{radsec.address[0]}:{radsec.address[1]}",
            ),
        )
        if front is not None:
            front.inject = inject
            await front.listen(settings.diameter_listen)
        task = asyncio.ensure_future(housekeeping())
        if notifier is not None:
            notifier.ready(f"foreign AAA on {host}:{port}")
            keep_watchdog(loop, notifier)
        await stop.wait()
        if notifier is not None:
            notifier.stopping()
        if http is not None:
            await http.close()
        if front is not None:
            await front.close()
            log.info("diameter stopped", extra=fields(**dict(sorted(front.counters.items()))))
        loop.remove_reader(sock.fileno())
        loop.remove_reader(accounting_sock.fileno())
        for pool_sock in upstream:
            loop.remove_reader(pool_sock.fileno())
        if radsec is not None:
            await radsec.close()
        for connector in connectors:
            if connector is not None:
                connector.close()
        await task

    try:
        loop.run_until_complete(main())
    finally:
        _log_counters(service, "worker stopped")
        if publisher is not None:
            publisher.publish()
        if timer is not None:
            timer.cancel()
        loop.close()
        sock.close()
        accounting_sock.close()
        if radsec_sock is not None:
            radsec_sock.close()
        for pool_sock in upstream:
            pool_sock.close()
    return 0


def client_tls(settings: ForeignServerSettings) -> ssl.SSLContext:
    """The context of the RadSec connections to home servers: the same
    certificate the listener shows (docs/radsec.md)."""
    assert settings.tls_cert is not None and settings.tls_key is not None and settings.tls_ca is not None
    return client_context(TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_ca))


def _diameter_front(settings: ForeignServerSettings, service: ForeignService, loop: asyncio.AbstractEventLoop) -> Any:
    """The Diameter front end (net/foreign_diameter.py), when the file has a ``[diameter]`` table."""
    if settings.diameter_listen is None:
        return None
    from aaa_vpn.net.foreign_diameter import ForeignDiameterFront

    realms = tuple(r.name for r in settings.realms)
    tls = None
    if any(p.tls for realm in settings.diameter_realms for p in realm.peers):
        from aaa_vpn.net.diameter_agent import client_tls as diameter_tls

        tls = diameter_tls(settings.tls_ca, settings.tls_cert, settings.tls_key)
    return ForeignDiameterFront(
        settings.diameter_host or f"aaaf.{settings.diameter_realm}",
        settings.diameter_realm,
        realms,
        settings.clients,
        lambda data, source, now: None,
        plain_is_secure=settings.diameter_plain_is_secure,
        clock=loop.time,
        aaa=service.aaa,
        diameter_realms=settings.diameter_realms,
        timeout=settings.diameter_timeout,
        tls=tls,
    )


def run_foreign_server(
    settings: ForeignServerSettings, reloader: Callable[[], ForeignServerSettings] | None = None
) -> int:
    """Entry point of ``aaa-vpn serve foreign``; returns the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    metrics_sock: socket.socket | None = None
    try:
        # Check what a worker needs before forking: one clear error, not N.
        check = ForeignService(settings, 0.0)
        radsec_probe = None
        if settings.radsec_listen is not None:
            server_tls(settings)  # a missing or bad certificate is one clear error
        if any(s.transport == "radsec" for realm in settings.realms for s in realm.servers):
            client_tls(settings)
        if settings.radsec_listen is not None:
            radsec_probe = _bind_radsec(settings, reuse_port=settings.workers > 1)
        probe = _bind(settings.listen, settings.port, reuse_port=settings.workers > 1)
        try:
            accounting_probe = _bind(settings.listen, settings.accounting_bind_port, reuse_port=settings.workers > 1)
        except ServerError as exc:
            probe.close()
            raise ServerError(f"accounting port: {exc}") from None
        try:
            _bind(settings.upstream_address, 0, reuse_port=False).close()
        except ServerError as exc:
            probe.close()
            accounting_probe.close()
            raise ServerError(f"upstream source address: {exc}") from None
        if settings.metrics_listen:
            try:
                metrics_sock = bind_metrics(settings.metrics_listen)
            except MetricsError:
                probe.close()
                accounting_probe.close()
                if radsec_probe is not None:
                    radsec_probe.close()
                raise
    except (ServerError, ValidationError, TlsError, MetricsError) as exc:
        log.error(str(exc))
        return 1
    log.info(
        "foreign AAA starting",
        extra=fields(
            address=f"{settings.listen}:{probe.getsockname()[1]}",
            accounting=f"{settings.listen}:{accounting_probe.getsockname()[1]}",
            workers=settings.workers,
            clients=len(settings.clients),
            realms=",".join(r.name for r in settings.realms),
            diameter_realms=",".join(r.name for r in settings.diameter_realms),
            pools=len(check.aaa.pools),
            radsec="" if radsec_probe is None else "{}:{}".format(*radsec_probe.getsockname()[:2]),
            metrics="" if metrics_sock is None else "{}:{}".format(*metrics_sock.getsockname()[:2]),
        ),
    )
    try:
        if settings.workers == 1:
            if metrics_sock is not None:
                log.info(
                    "metrics endpoint listening", extra=fields(address="{}:{}".format(*metrics_sock.getsockname()[:2]))
                )
            return serve_worker(
                settings,
                0,
                sock=probe,
                accounting_sock=accounting_probe,
                radsec_sock=radsec_probe,
                metrics_sock=metrics_sock,
                notifier=Notifier(),
                reloader=reloader,
            )
        address = f"{settings.listen}:{probe.getsockname()[1]}"
        # workers share one concrete port for each
        settings = dataclasses.replace(
            with_port(settings, probe.getsockname()[1]), accounting_port=accounting_probe.getsockname()[1]
        )
        if radsec_probe is not None:
            settings = dataclasses.replace(settings, radsec_listen="{}:{}".format(*radsec_probe.getsockname()[:2]))
            radsec_probe.close()
        probe.close()
        accounting_probe.close()
        return _supervise(settings, metrics_sock, f"foreign AAA on {address}, {settings.workers} workers", reloader)
    finally:
        if metrics_sock is not None:
            metrics_sock.close()


def _supervise(
    settings: ForeignServerSettings,
    metrics_sock: socket.socket | None,
    status: str,
    reloader: Callable[[], ForeignServerSettings] | None = None,
) -> int:
    """Several workers (and, with metrics, the process that serves their sum)."""
    slots = WorkerSlots(settings.workers)
    started = time.time()

    def run(index: int) -> int:
        if index < settings.workers:
            return serve_worker(settings, index, slots=slots, reloader=_concrete(settings, reloader))
        assert metrics_sock is not None
        return serve_metrics_process(metrics_sock, metrics_total(slots, "foreign", started))

    processes = settings.workers + (metrics_sock is not None)
    supervision = server_supervision(
        settings,
        slots,
        status,
        _concrete(settings, reloader),
        lambda _old, new: configure_logging(new.log_level, new.log_format),
    )
    return supervise(run, processes, "foreign AAA", supervision)


def _concrete(
    settings: ForeignServerSettings, reloader: Callable[[], ForeignServerSettings] | None
) -> Callable[[], ForeignServerSettings] | None:
    """The file read again, with the ports the workers share (port 0 became a
    concrete port at start: the file's 0 is no change)."""
    if reloader is None:
        return None

    def read() -> ForeignServerSettings:
        return dataclasses.replace(reloader(), port=settings.port, accounting_port=settings.accounting_port)

    return read


__all__ = ["run_foreign_server", "serve_worker"]
