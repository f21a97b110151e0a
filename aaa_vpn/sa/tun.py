"""Linux plumbing of the ``userspace`` SA backend: network namespaces, TUN
devices, and the ``ip`` command for routes and routing rules.

* :func:`call_in_netns` runs a function in another network namespace (a named
  one, as ``ip netns add`` creates it under ``/run/netns``) on a short-lived
  helper thread that ``setns(2)``-s itself there; the calling thread never
  moves. File descriptors and sockets made there stay in that namespace after
  the thread is gone, which is how one process can serve several namespaced
  nodes (tests) or one node in a namespace it does not live in.
* :func:`open_tun` creates a TUN device (``IFF_TUN | IFF_NO_PI``: each
  ``read``/``write`` is one bare IPv4 packet, Linux
  ``Documentation/networking/tuntap.rst``), without IPv6, sets its MTU and
  brings it up. The
  device is not persistent: it disappears, with every route through it, when
  the descriptor is closed, so a crashed data plane leaves no device behind.
* :class:`IpCommand` runs iproute2's ``ip`` in a namespace, a batch of
  commands per call (one process, a few milliseconds), with rollback left to
  the caller. iproute2 is used instead of a netlink library because it is on
  every host that has network namespaces and its error messages are readable.

Everything here needs CAP_NET_ADMIN (root in the tests).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

T = TypeVar("T")

#: ``setns(2)`` flag for a network namespace.
CLONE_NEWNET: Final = 0x40000000
#: ``<linux/if_tun.h>``: ``_IOW('T', 202, int)``.
TUNSETIFF: Final = 0x400454CA
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
#: ``<linux/sockios.h>``.
SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
SIOCSIFMTU: Final = 0x8922
IFF_UP: Final = 0x1
#: ``IFNAMSIZ - 1``: the longest interface name.
IFNAME_MAX: Final = 15
#: Where ``ip netns add`` puts its namespaces.
NETNS_RUN_DIR: Final = "/run/netns"

_FAILED_LINE = re.compile(r"Command failed -:(\d+)")
_IFREQ_FLAGS = struct.Struct("16sH")
_IFREQ_INT = struct.Struct("16si")


class NetnsError(OSError):
    """A namespace, device or ``ip`` command could not be set up as asked."""


class IpBatchError(NetnsError):
    """An ``ip -batch`` command failed; :attr:`done` commands before it succeeded
    (``None``: unknown, ``ip`` did not say which line failed)."""

    def __init__(self, message: str, done: int | None) -> None:
        super().__init__(message)
        self.done = done


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def netns_path(netns: str) -> str:
    """The file of the named namespace ``netns``; raises :class:`NetnsError` if there is none."""
    if not netns or "/" in netns or netns in (".", ".."):
        raise NetnsError(f"invalid network namespace name {netns!r}")
    path = os.path.join(NETNS_RUN_DIR, netns)
    if not os.path.exists(path):
        raise NetnsError(f"no network namespace {netns!r} ({path})")
    return path


def call_in_netns(netns: str | None, function: Callable[[], T]) -> T:
    """``function()`` run inside the named network namespace ``netns`` (or here, if ``None``).

    A helper thread enters the namespace, calls ``function`` and ends; its
    result or exception is handed back. Sockets and descriptors it opens keep
    their namespace."""
    if netns is None:
        return function()
    path = netns_path(netns)
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _setns(path)
            result.append(function())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def check_ifname(name: str) -> None:
    """Raise :class:`ValueError` unless ``name`` can be a Linux interface name."""
    # '%' would make TUNSETIFF pick a name of its own ("tun%d"), and the routes would miss it.
    if not name or len(name) > IFNAME_MAX or not name.isascii() or any(c in name for c in "/:% \t\n"):
        raise ValueError(f"invalid interface name {name!r}: 1-{IFNAME_MAX} ASCII characters, no '/', ':', '%' or space")
    if name in (".", ".."):
        raise ValueError(f"invalid interface name {name!r}")


def open_tun(name: str, mtu: int) -> int:
    """Create the TUN device ``name`` in the current namespace, MTU ``mtu``, up;
    return its descriptor (non-blocking, close-on-exec).

    Refuses (:class:`NetnsError`) a name that is already in use: attaching to an
    existing device would share its packets with someone else."""
    check_ifname(name)
    try:
        socket.if_nametoindex(name)
    except OSError:
        pass
    else:
        raise NetnsError(f"an interface named {name!r} already exists")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(name.encode(), IFF_TUN | IFF_NO_PI))
        _disable_ipv6(name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
            fcntl.ioctl(control, SIOCSIFMTU, _IFREQ_INT.pack(name.encode(), mtu))
            flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(control, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name.encode(), 0)))[1]
            fcntl.ioctl(control, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(name.encode(), flags | IFF_UP))
    except OSError:
        os.close(fd)
        raise
    return fd


def _disable_ipv6(name: str) -> None:
    """No IPv6 on an IPv4-only device: the kernel would otherwise send router
    solicitations and MLD reports into it. ``/proc/sys/net`` is the calling
    thread's namespace's."""
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    if os.path.exists(path):
        with open(path, "w") as knob:
            knob.write("1\n")


class IpCommand:
    """iproute2's ``ip`` in one namespace (``ip -n NETNS``), for routes and rules;
    ``options`` go before every command (``("-4",)``)."""

    def __init__(self, netns: str | None = None, *, options: Sequence[str] = (), executable: str | None = None) -> None:
        found = executable or shutil.which("ip")
        if found is None:
            raise NetnsError("iproute2's 'ip' command is not installed")
        self.executable = found
        self.netns = netns
        self.options = tuple(options)

    def __repr__(self) -> str:
        return f"IpCommand(netns={self.netns!r})"

    def _prefix(self) -> list[str]:
        return [self.executable, *self.options] + (["-n", self.netns] if self.netns is not None else [])

    def batch(self, commands: Sequence[Sequence[str]], *, force: bool = False) -> None:
        """Run ``commands`` (each the arguments after ``ip``) in one ``ip -batch`` process.

        Without ``force`` it stops at the first failure and raises
        :class:`IpBatchError` with ``ip``'s message and how many commands had
        succeeded before (so the caller undoes those, and nothing it did not
        make); with ``force`` it runs all of them and ignores failures."""
        if not commands:
            return
        script = "".join(" ".join(command) + "\n" for command in commands)
        argv = self._prefix() + (["-force"] if force else []) + ["-batch", "-"]
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0 and not force:
            message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            failed = _FAILED_LINE.search(done.stderr)  # "Command failed -:3"
            raise IpBatchError(f"ip: {message}", int(failed.group(1)) - 1 if failed else None)

    def output(self, *args: str) -> str:
        """The standard output of one ``ip`` command (for listings)."""
        done = subprocess.run(self._prefix() + list(args), capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise NetnsError(f"ip {' '.join(args)}: {' '.join(done.stderr.split())}")
        return done.stdout
