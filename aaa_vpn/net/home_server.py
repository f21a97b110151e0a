"""``aaa-vpn serve home``: the home AAA's UDP endpoint and its worker processes.

Each worker is one process with its own socket bound with ``SO_REUSEPORT`` to
the same address and port; the kernel spreads datagrams over the workers by
their Request Authenticator (net/reuseport.py), so one busy peer -- a proxy
sending from one port -- keeps every worker busy, and a retransmission, which
repeats its authenticator, reaches the worker that holds it in its duplicate
cache. Each worker runs an asyncio loop that drains
its socket in batches (``loop.add_reader`` + non-blocking ``recvfrom``) rather
than through a datagram transport, which costs a loop iteration per datagram.

The parent process checks the configuration (database, key file, address)
before it forks, supervises the workers -- one as well as many: a worker that
dies (killed by a signal, say) is logged with its exit status and restarted;
workers that keep dying stop the server -- and forwards SIGTERM/SIGINT for a
graceful stop, SIGUSR1 for the counters and SIGHUP for a configuration
reload: the parent reads the configuration again and, if it is valid,
tells the workers, which apply what can change while serving (log level and
format, session lifetime, duplicate cache time, renewal memo) between two
batches, on the sockets they have: no request is dropped. Settings that
need new sockets or another database (listen, ports, workers, database, key
file, metrics address) are logged as needing a restart.

Metrics (``--metrics-listen``, docs/metrics.md): every worker publishes its
figures into its slot of a shared memory block about once a second
(net/metrics_server.py); a process of its own serves their sum over HTTP.
The same slots tell the parent that every worker's loop is alive: it sends
systemd ``READY=1`` once all workers listen and ``WATCHDOG=1`` only while
all of them keep publishing (net/systemd_notify.py).

A worker's event loop never waits on the database longer than
``--db-busy-timeout`` (service/home.py rule 4), and an error while handling a
batch costs that batch's replies, never the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aaa_vpn.model import Client
from aaa_vpn.net.metrics_server import (
    PUBLISH_EVERY,
    MetricsError,
    Publisher,
    WorkerSlots,
    bind_metrics,
    serve_metrics_process,
)
from aaa_vpn.net.radsec import (
    CertificateClients,
    RadsecListener,
    TlsError,
    bind_listener,
    listen_address,
    server_tls,
)
from aaa_vpn.net.reuseport import spread_by_authenticator
from aaa_vpn.net.systemd_notify import Notifier, without_notify_environment
from aaa_vpn.roles.home_aaa import HomeAaaOptions
from aaa_vpn.service.home import HomeService
from aaa_vpn.service.logging import configure_logging, fields
from aaa_vpn.service.metrics import Snapshot, labels_of, record_exchange
from aaa_vpn.store import is_url
from aaa_vpn.store.base import StoreError
from aaa_vpn.store.marks import SessionMarks
from aaa_vpn.wire.radius import ACCOUNTING_REQUEST

log = logging.getLogger("aaa_vpn.server")

_BATCH = 256  # datagrams handled per wake-up before yielding to the loop
_RECV_BUFFER = 4 * 1024 * 1024
_EXPIRE_EVERY = 30.0
_GC_THRESHOLDS = (20_000, 50, 100)  # gc.set_threshold in each worker (serve_worker)
_STATS_EVERY = 300.0
_SESSIONS_EVERY = 10.0  # worker 0 counts the live sessions for the metrics this often
_POLL = 0.2  # the supervisor's wake-ups (reaping, readiness, watchdog)
#: Settings a reload cannot change: they need other sockets, processes or database.
RESTART_ONLY = (
    "listen",
    "port",
    "accounting_port",
    "workers",
    "db_path",
    "key_file",
    "db_busy_timeout",
    "metrics_listen",
)


class ServerError(Exception):
    """The server cannot start: bad configuration, address in use, ..."""


def _bind(address: str, port: int, reuse_port: bool, spread_over: int = 1) -> socket.socket:
    """A UDP socket bound to ``address``:``port``; with ``spread_over`` > 1 (and
    ``reuse_port``) the port's group of sockets is spread request by request
    over that many workers (net/reuseport.py)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        except OSError:
            pass
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(f"cannot listen on {address}:{port}: address already in use") from None
        raise ServerError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    if reuse_port and spread_over > 1:
        try:
            spread_by_authenticator(sock, spread_over)
        except OSError as exc:
            log.warning(
                "the kernel refused SO_ATTACH_REUSEPORT_CBPF: requests are spread over workers by peer, not by request",
                extra=fields(address=f"{address}:{port}", error=exc.strerror or str(exc)),
            )
    sock.setblocking(False)
    return sock


def _open(settings: Any, marks: SessionMarks | None = None) -> HomeService:
    from aaa_vpn.store import open_store

    store = open_store(
        settings.db_path, settings.key_file, busy_timeout_ms=int(settings.db_busy_timeout * 1000), marks=marks
    )
    options = HomeAaaOptions(
        session_lifetime=settings.session_lifetime,
        dup_cache_seconds=settings.dup_cache_seconds,
        renewal_memo=settings.renewal_memo,
    )
    return HomeService(store, options)


def _log_counters(aaa: HomeService, message: str) -> None:
    log.info(message, extra=fields(**{k.replace(".", "_"): v for k, v in sorted(aaa.counters.items())}))


def apply_reload(aaa: HomeService, settings: Any) -> None:
    """What a worker changes on a reload: the settings that need no new
    socket or database (module docstring)."""
    configure_logging(settings.log_level, settings.log_format)
    aaa.role.options = dataclasses.replace(
        aaa.role.options,
        session_lifetime=settings.session_lifetime,
        dup_cache_seconds=settings.dup_cache_seconds,
        renewal_memo=settings.renewal_memo,
    )
    aaa.role.server.duplicates.ttl = settings.dup_cache_seconds


def serve_worker(
    settings: Any,
    index: int,
    sock: socket.socket | None = None,
    marks: SessionMarks | None = None,
    accounting_sock: socket.socket | None = None,
    radsec_sock: socket.socket | None = None,
    slots: WorkerSlots | None = None,
    reloader: Callable[[], Any] | None = None,
) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the exit code. ``sock``,
    ``accounting_sock`` and ``radsec_sock`` (with ``--radsec-listen``): the
    ports, bound already (else bound here); ``slots``: where it publishes its
    metrics; ``reloader``: the settings read again, on SIGHUP."""
    aaa = _open(settings, marks)
    # A first registration allocates a few hundred objects, almost none of
    # them in reference cycles: collect the young generation every 20,000
    # allocations rather than every 700 (about 10 % of a registration's CPU
    # at the default), and leave what start-up made out of every collection.
    gc.set_threshold(*_GC_THRESHOLDS)
    gc.freeze()
    # Several workers share the ports: each request goes to the worker its
    # Request Authenticator picks (net/reuseport.py), so one busy peer uses them all.
    spread = settings.workers or default_worker_count()
    if sock is None:
        sock = _bind(settings.listen, settings.port, reuse_port=True, spread_over=spread)
    if accounting_sock is None:
        accounting_sock = _bind(settings.listen, settings.accounting, reuse_port=True, spread_over=spread)
    if radsec_sock is None and settings.radsec_listen is not None:
        radsec_sock = _bind_radsec(settings, reuse_port=True)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    radsec: RadsecListener[Client] | None = None

    def send(port: socket.socket, replies: list[tuple[bytes, tuple[str, int]]]) -> None:
        # A reply goes to its RadSec connection if its destination is one
        # (a request from it was decided in this batch), else by UDP.
        for reply, destination in replies:
            if radsec is not None and radsec.deliver(reply, destination):
                continue
            try:
                port.sendto(reply, destination)
            except OSError as exc:
                aaa.counters["send_errors"] += 1
                log.warning("sendto failed", extra=fields(destination=destination[0], error=str(exc)))

    def radsec_packets(packets: list[bytes], source: tuple[str, int], client: Client) -> None:
        # One connection's packets: accounting to the accounting server, the
        # rest (Access-Request, Status-Server) to the home AAA, each as a
        # batch, with the client the certificate named.
        now = time.time()
        accounting = [(p, source) for p in packets if p[0] == ACCOUNTING_REQUEST]
        access = [(p, source) for p in packets if p[0] != ACCOUNTING_REQUEST]
        if access:
            send(sock, aaa.handle_batch(access, now, client))
        if accounting:
            send(accounting_sock, aaa.handle_accounting_batch(accounting, now, client))

    counted_sessions = -_SESSIONS_EVERY

    def collect() -> Snapshot:
        nonlocal counted_sessions
        if index == 0 and time.monotonic() - counted_sessions >= _SESSIONS_EVERY:
            counted_sessions = time.monotonic()
            try:
                aaa.metrics.set("aaa_vpn_sessions", aaa.store.count_live_sessions(time.time()))
            except StoreError as exc:
                aaa.counters["store_errors"] += 1
                log.warning("cannot count the live sessions", extra=fields(error=str(exc)))
        return aaa.metrics.snapshot(aaa.counters)

    publisher = Publisher(slots, index, collect) if slots is not None else None

    def publish() -> None:
        if publisher is None:
            return
        try:
            publisher.publish()
        except Exception:  # a bug in the metrics must never cost the requests
            log.exception("cannot publish the metrics")
        if not stop.is_set():
            loop.call_later(PUBLISH_EVERY, publish)

    def reload() -> None:
        if reloader is None:
            return
        try:
            apply_reload(aaa, reloader())
        except Exception as exc:  # noqa: BLE001 - the parent checked it; a file changed since keeps the old one
            log.error("reload failed: keeping the running configuration", extra=fields(worker=index, error=str(exc)))
            return
        log.debug("configuration reloaded", extra=fields(worker=index))

    def readable(
        port: socket.socket,
        handle: Callable[[list[tuple[bytes, tuple[str, int]]], float], list[Any]],
        port_name: str,
    ) -> None:
        # Drain what the socket holds (up to _BATCH datagrams), handle it as one
        # batch -- one database transaction for all it writes -- then send the
        # replies.
        batch: list[tuple[bytes, tuple[str, int]]] = []
        for _ in range(_BATCH):
            try:
                batch.append(port.recvfrom(65535))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier sendto
                log.debug("recvfrom failed", extra=fields(error=str(exc)))
        if not batch:
            return
        started = time.perf_counter()
        try:
            replies = handle(batch, time.time())
        except Exception:  # a bug must cost these requests, never the daemon
            aaa.counters["dropped"] += len(batch)
            aaa.counters["dropped.internal_error"] += len(batch)
            log.exception("internal error handling requests", extra=fields(count=len(batch)))
            return
        send(port, replies)
        record_exchange(aaa.metrics, port_name, batch, replies, time.perf_counter() - started, aaa.client_name)

    async def housekeeping() -> None:
        last_stats = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=_EXPIRE_EVERY)
            except TimeoutError:
                pass
            if index == 0:
                try:
                    aaa.expire(time.time())
                except Exception:
                    log.exception("session expiry failed")
            if time.monotonic() - last_stats >= _STATS_EVERY:
                _log_counters(aaa, "counters")
                last_stats = time.monotonic()

    async def main() -> None:
        nonlocal radsec
        if radsec_sock is not None:
            radsec = RadsecListener(
                radsec_sock,
                server_tls(settings),
                CertificateClients(aaa.current_clients, aaa.provisioning.generation, settings.radsec_client),
                radsec_packets,
                aaa.counters,
                idle_timeout=settings.radsec_idle_timeout,
            )
            await radsec.start()
        loop.add_reader(sock.fileno(), readable, sock, aaa.handle_batch, "auth")
        loop.add_reader(accounting_sock.fileno(), readable, accounting_sock, aaa.handle_accounting_batch, "acct")
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: _log_counters(aaa, "counters"))
        loop.add_signal_handler(signal.SIGHUP, reload)
        publish()  # the first one also tells the supervisor this worker serves
        host, port = sock.getsockname()
        accounting_host, accounting_port = accounting_sock.getsockname()
        log.info(
            "worker listening",
            extra=fields(
                worker=index,
                address=f"{host}:{port}",
                accounting=f"{accounting_host}:{accounting_port}",
                radsec="" if radsec is None else f"{radsec.address[0]}:{radsec.address[1]}",
            ),
        )
        task = asyncio.ensure_future(housekeeping())
        await stop.wait()
        loop.remove_reader(sock.fileno())
        loop.remove_reader(accounting_sock.fileno())
        if radsec is not None:
            await radsec.close()
        await task

    try:
        loop.run_until_complete(main())
    finally:
        _log_counters(aaa, "worker stopped")
        if publisher is not None:
            publisher.publish()
        loop.close()
        sock.close()
        accounting_sock.close()
        if radsec_sock is not None:
            radsec_sock.close()
        aaa.store.close()
    return 0


def _bind_radsec(settings: Any, reuse_port: bool) -> socket.socket:
    """The RadSec listening socket of ``--radsec-listen``; ServerError if it cannot be bound."""
    host, port = listen_address(settings.radsec_listen)
    try:
        return bind_listener(host, port, reuse_port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(f"cannot listen for RadSec on {host}:{port}: address already in use") from None
        raise ServerError(f"cannot listen for RadSec on {host}:{port}: {exc.strerror}") from None


def check_home(settings: Any) -> dict[str, Any]:
    """What ``serve home --check`` reports: the database opens with its key
    file and the metrics address is valid; raises ServerError, MetricsError
    or a store error otherwise. Binds nothing (a running server holds the ports)."""
    aaa = _open(settings)
    try:
        clients = len(aaa.provisioning.clients())
    finally:
        aaa.store.close()
    return {
        "listen": f"{settings.listen}:{settings.port}",
        "accounting": f"{settings.listen}:{settings.accounting}",
        "workers": settings.workers or default_worker_count(),
        "clients": clients,
        "metrics_listen": settings.metrics_listen,
        "log_level": settings.log_level,
        "session_lifetime": settings.session_lifetime,
    }


def default_worker_count() -> int:
    return os.cpu_count() or 1


def run_home_server(settings: Any, reloader: Callable[[], Any] | None = None) -> int:
    """Entry point of ``aaa-vpn serve home``; returns the process exit code.
    ``reloader`` reads the settings again (SIGHUP); None: SIGHUP is ignored."""
    configure_logging(settings.log_level, settings.log_format)
    workers = settings.workers or default_worker_count()
    metrics_sock: socket.socket | None = None
    try:
        # Check everything a worker needs before forking, so that a bad
        # database, key file or address is one clear error, not N.
        aaa = _open(settings)
        clients = len(aaa.provisioning.clients())
        aaa.store.close()
        radsec_probe = None
        if settings.radsec_listen is not None:
            server_tls(settings)  # a missing or bad certificate is one clear error
            radsec_probe = _bind_radsec(settings, reuse_port=workers > 1)
        try:
            probe = _bind(settings.listen, settings.port, reuse_port=workers > 1)
            try:
                accounting_probe = _bind(settings.listen, settings.accounting, reuse_port=workers > 1)
            except ServerError:
                probe.close()
                raise
        except ServerError:
            if radsec_probe is not None:
                radsec_probe.close()
            raise
        if settings.metrics_listen:
            try:
                metrics_sock = bind_metrics(settings.metrics_listen)
            except MetricsError:
                probe.close()
                accounting_probe.close()
                if radsec_probe is not None:
                    radsec_probe.close()
                raise
    except (ServerError, TlsError, MetricsError) as exc:
        log.error(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - store errors, missing key file, corrupt database: one clear line
        log.error("cannot start the home AAA", extra=fields(error=f"{type(exc).__name__}: {exc}"))
        return 1
    if clients == 0:
        log.warning("no RADIUS clients are provisioned: every request will be dropped")
    address = f"{settings.listen}:{probe.getsockname()[1]}"
    log.info(
        "home AAA starting",
        extra=fields(
            address=address,
            accounting=f"{settings.listen}:{accounting_probe.getsockname()[1]}",
            radsec="" if radsec_probe is None else "{}:{}".format(*radsec_probe.getsockname()[:2]),
            workers=workers,
            clients=clients,
            metrics=_sockname(metrics_sock),
        ),
    )
    # On PostgreSQL the node's workers share session marks that a process of
    # their own keeps from every node's announcements (store/postgres.py).
    marks = SessionMarks.shared() if is_url(settings.db_path) else None
    slots = WorkerSlots(workers)
    processes = workers + (marks is not None) + (metrics_sock is not None)
    diameter = getattr(settings, "diameter_listen", None) is not None  # one more process, the last
    supervision = server_supervision(
        settings, slots, f"home AAA on {address}, {workers} worker(s)", reloader, _home_reload_check
    )
    try:
        if workers == 1:
            # One worker serves on the socket bound here (a restarted worker
            # inherits it again): no moment without a listener, and port 0 stays
            # the port reported above.
            try:
                roles = _roles(
                    settings, workers, marks, (probe, accounting_probe, radsec_probe), slots, metrics_sock, reloader
                )
                return supervise(
                    _with_diameter(settings, roles, processes), processes + diameter, "home AAA", supervision
                )
            finally:
                probe.close()
                accounting_probe.close()
                if radsec_probe is not None:
                    radsec_probe.close()
        # Workers must share concrete ports.
        settings = dataclasses.replace(
            settings,
            port=probe.getsockname()[1],
            accounting_port=accounting_probe.getsockname()[1],
            workers=workers,
        )
        if radsec_probe is not None:
            settings = dataclasses.replace(settings, radsec_listen="{}:{}".format(*radsec_probe.getsockname()[:2]))
            radsec_probe.close()
        probe.close()
        accounting_probe.close()
        roles = _roles(settings, workers, marks, None, slots, metrics_sock, reloader)
        return supervise(_with_diameter(settings, roles, processes), processes + diameter, "home AAA", supervision)
    finally:
        if metrics_sock is not None:
            metrics_sock.close()


def _sockname(sock: socket.socket | None) -> str:
    if sock is None:
        return ""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _home_reload_check(current: Any, new: Any) -> None:
    """The parent's part of a reload: its own logging."""
    configure_logging(new.log_level, new.log_format)


def metrics_total(slots: WorkerSlots, role: str, started: float) -> Callable[[], Snapshot]:
    """What a server's metrics process serves: its workers' sum, and the server's own gauges."""

    def collect() -> Snapshot:
        total = slots.total()
        total.gauges[("aaa_vpn_workers", labels_of(role=role))] = slots.workers
        total.gauges[("aaa_vpn_start_time_seconds", labels_of(role=role))] = started
        return total

    return collect


def _with_diameter(settings: Any, roles: Callable[[int], int], index: int) -> Callable[[int], int]:
    """Process ``index`` (the one after the others) serves Diameter (net/diameter_server.py)
    when ``--diameter-listen`` is given."""
    if getattr(settings, "diameter_listen", None) is None:
        return roles

    def run(i: int) -> int:
        if i != index:
            return roles(i)
        from aaa_vpn.net.diameter_server import options_from_settings, serve_diameter

        return serve_diameter(_open(settings), options_from_settings(settings))

    return run


def _roles(
    settings: Any,
    workers: int,
    marks: SessionMarks | None,
    sockets: tuple[socket.socket, socket.socket, socket.socket | None] | None,
    slots: WorkerSlots,
    metrics_sock: socket.socket | None,
    reloader: Callable[[], Any] | None,
) -> Callable[[int], int]:
    """What forked process ``index`` does: serve (0 .. workers-1), on the
    bound ``sockets`` (authentication, accounting) if given; keep the
    session marks (next index, PostgreSQL only); serve the metrics (last,
    with --metrics-listen)."""
    started = time.time()

    def run(index: int) -> int:
        if index < workers:
            sock, accounting, radsec = sockets if sockets is not None else (None, None, None)
            return serve_worker(
                settings,
                index,
                sock=sock,
                marks=marks,
                accounting_sock=accounting,
                radsec_sock=radsec,
                slots=slots,
                reloader=reloader,
            )
        if marks is not None and index == workers:
            return listen_for_changes(settings.db_path, marks)
        assert metrics_sock is not None
        return serve_metrics_process(metrics_sock, metrics_total(slots, "home", started))

    return run


def listen_for_changes(url: str, marks: SessionMarks) -> int:
    """The life of a PostgreSQL node's listener process, until SIGTERM/SIGINT."""
    from aaa_vpn.store.postgres import SessionListener

    stop = False

    def stopping(*_args: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    SessionListener(url, marks).run(lambda: stop)
    return 0


@dataclass
class Supervision:
    """What the supervisor does besides reaping and restarting (all optional)."""

    tick: Callable[[], None] | None = None
    """Called about every :data:`_POLL` seconds: readiness, watchdog."""
    reload: Callable[[], bool] | None = None
    """On SIGHUP: check the configuration again; True: tell the workers (SIGHUP)."""
    stopping: Callable[[], None] | None = None
    """On SIGTERM/SIGINT."""


def server_supervision(
    settings: Any,
    slots: WorkerSlots,
    status: str,
    reloader: Callable[[], Any] | None,
    reloaded: Callable[[Any, Any], None],
) -> Supervision:
    """systemd readiness and watchdog from the workers' slots, and the
    parent's side of a reload (shared by the home and the foreign AAA)."""
    notifier = Notifier()
    current = [settings]
    stale_logged = [False]
    next_watchdog = [0.0]

    def tick() -> None:
        now = time.monotonic()
        if not notifier.ready_sent and slots.all_written():
            notifier.ready(status)
            log.info("serving", extra=fields(workers=slots.workers))
        interval = notifier.watchdog_interval
        if interval is None or not notifier.ready_sent or now < next_watchdog[0]:
            return
        if slots.all_fresh(max(5 * PUBLISH_EVERY, interval), now):
            notifier.watchdog()
            next_watchdog[0] = now + interval
            stale_logged[0] = False
        elif not stale_logged[0]:
            stale_logged[0] = True
            late = [i for i, stamp in enumerate(slots.written()) if stamp is None or now - stamp > 5 * PUBLISH_EVERY]
            log.warning("a worker is not responding: no watchdog notification", extra=fields(workers=late))

    def reload() -> bool:
        assert reloader is not None
        serving = notifier.ready_sent  # a reload during start-up must not announce READY early
        if serving:
            notifier.reloading()
        try:
            new = reloader()
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop a running server
            log.error("configuration reload failed: keeping the running configuration", extra=fields(error=str(exc)))
            if serving:
                notifier.ready(status)
            return False
        fixed = [name for name in RESTART_ONLY if getattr(new, name, None) != getattr(current[0], name, None)]
        reloaded(current[0], new)
        if fixed:
            log.warning("changed settings need a restart to take effect", extra=fields(settings=",".join(fixed)))
        log.info("configuration reloaded")
        current[0] = new
        if serving:
            notifier.ready(status)
        return True

    return Supervision(tick=tick, reload=reload if reloader is not None else None, stopping=notifier.stopping)


def supervise(serve: Callable[[int], int], workers: int, what: str, supervision: Supervision | None = None) -> int:
    """Run ``serve(index)`` in ``workers`` forked processes until SIGTERM or
    SIGINT (forwarded to them); SIGUSR1 is forwarded too, and SIGHUP when
    ``supervision.reload`` accepts the new configuration. A worker that dies
    is restarted after half a second; more than five deaths within a minute
    stop the whole server with exit code 1. Shared by the home and the
    foreign AAA."""
    supervision = supervision or Supervision()
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    crashes: list[float] = []

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until its loop handles it
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # likewise
            without_notify_environment()  # only the supervisor speaks to systemd
            code = 1
            try:
                code = serve(index)
            except ServerError as exc:
                log.error(str(exc))
            except BaseException:
                log.exception("worker failed", extra=fields(worker=index))
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    def send(signum: int) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum == signal.SIGUSR1:
            send(signal.SIGUSR1)  # each worker logs its counters
            return
        if not stopping and supervision.stopping is not None:
            supervision.stopping()
        stopping = True
        send(signal.SIGTERM)

    def hangup(_signum: int, _frame: object) -> None:
        if stopping:
            return
        if supervision.reload is None:
            log.warning("SIGHUP: the configuration cannot be reloaded; restart to change it")
        elif supervision.reload():
            send(signal.SIGHUP)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, forward)
    signal.signal(signal.SIGHUP, hangup)
    for index in range(workers):
        spawn(index)
    exit_code = 0
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:
            if supervision.tick is not None and not stopping:
                try:
                    supervision.tick()
                except Exception:  # the supervisor must outlive a bug in its extras
                    log.exception("supervisor tick failed")
            time.sleep(_POLL)
            continue
        if pid not in children:
            continue
        index = children.pop(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        log.error(f"worker exited ({how}): restarting it", extra=fields(worker=index, pid=pid, code=code))
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < 60] + [now]
        if len(crashes) > 5:
            log.error(f"workers keep failing: stopping the {what}")
            exit_code = 1
            forward(signal.SIGTERM, None)
            continue
        time.sleep(0.5)
        spawn(index)
    log.info(f"{what} stopped")
    return exit_code


if __name__ == "__main__":  # pragma: no cover - debugging aid
    sys.exit("use: aaa-vpn serve home")
