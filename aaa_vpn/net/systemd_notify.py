"""systemd's service notification protocol (sd_notify(3)), written directly:
one datagram of ``KEY=VALUE`` lines to the unix socket ``$NOTIFY_SOCKET``.

Rules:

1. Without ``$NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``)
   every call does nothing. A name starting with ``@`` is in the abstract
   namespace (the ``@`` becomes a NUL byte); anything else is a path. Only
   ``AF_UNIX`` datagram sockets are spoken; a failure to send is logged once
   and never stops the daemon.
2. ``READY=1`` once the daemon serves (every worker listening), ``RELOADING=1``
   then ``READY=1`` around a configuration reload, ``STOPPING=1`` when it
   stops, ``STATUS=`` a line for ``systemctl status``.
3. Watchdog: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and
   ``$WATCHDOG_PID``: the process meant); the daemon sends ``WATCHDOG=1`` every
   half of that interval, and only while it is healthy (a server: while every
   worker's loop keeps publishing, net/metrics_server.py rule 4).

Why no library: the protocol is these few lines; python-systemd (the
bindings of libsystemd) needs a C build, and the pure-Python ``sdnotify``
package does not handle the abstract namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from aaa_vpn.service.logging import fields

log = logging.getLogger("aaa_vpn.systemd")


class Notifier:
    """The daemon's side of sd_notify (module rules); ``environ`` for tests."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if name.startswith("@"):
            self.address = "\0" + name[1:]
        elif name.startswith("/"):
            self.address = name
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._failed = False
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification; True if it left."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd", extra=fields(error=str(exc)))
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.ready_sent = True
        self.send("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def keep_watchdog(loop: asyncio.AbstractEventLoop, notifier: Notifier) -> None:
    """A single-process daemon: ``WATCHDOG=1`` from its own event loop every
    half interval, so a loop that stops turning stops the notifications."""
    interval = notifier.watchdog_interval
    if interval is None:
        return

    def beat() -> None:
        notifier.watchdog()
        loop.call_later(interval, beat)

    beat()


def without_notify_environment() -> None:
    """Forget the notification variables (in forked workers: only the main
    process speaks to systemd)."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)


__all__ = ["Notifier", "keep_watchdog", "without_notify_environment"]
