"""The ``userspace`` SA backend: the project's own ESP data plane (RFC 4303,
tunnel mode) on a TUN device and raw IP sockets, for hosts whose kernel has no
ESP (like the build machine, reference/test-environment.md section 3) or where
the kernel's IPsec is not wanted.

What it is made of (docs/design.md section 5):

* the SAD and SPD of :class:`~aaa_vpn.sa.memory.MemoryBackend` (composed, not
  copied): install/delete rules, owners, :class:`~aaa_vpn.sa.base.SaConflict`,
  :class:`~aaa_vpn.sa.base.SaUnsupported`, keys never reinstalled, the
  outbound lookup newest path first, the inbound checks in RFC 4301 section 5.2
  order, anti-replay and ICV from :mod:`aaa_vpn.sa.esp`;
* a TUN device (:func:`~aaa_vpn.sa.tun.open_tun`) in the node's network
  namespace: the kernel routes the traffic a path protects into it;
* a raw ``IPPROTO_RAW`` socket (``IP_HDRINCL``) that sends the outer packets
  exactly as the codec built them (source = the node, protocol 50, the path's
  DSCP), and a raw ``IPPROTO_ESP`` socket bound to the node's address that
  receives every ESP packet for it (Linux delivers protocol 50 to raw sockets;
  without a kernel ESP handler nothing else consumes it);
* one data-plane thread that moves packets: TUN -> ``protect`` -> rate limit
  -> raw send; raw receive -> ``unprotect`` -> TUN.

Rules:

* **Routing is the outbound SPD's front door.** For every installed path the
  backend adds, for each pair of its selectors, a routing rule
  ``from <local_ts> to <remote_ts> lookup <table>`` (priority ``priority + 1``)
  and, in ``table``, a route ``<remote_ts> dev <tun>``. Rules and routes are
  reference-counted over the paths (a make-before-break replacement to
  another peer with the same selectors keeps them), added before the SAs on
  install (a packet that arrives in between meets no SA and is dropped, never
  sent in clear) and removed after the SAs on delete. Selecting on the source
  too keeps a broad ``remote_ts`` such as ``0.0.0.0/0`` (the forwarding path of
  a smooth handoff) from pulling in the node's own control traffic, or the
  packets it has just decrypted. Locally originated traffic is tunnelled when
  its socket is bound to an address in ``local_ts`` (``ping -I``, or a
  connected socket, whose route is looked up again with the chosen source).
* The raw send socket carries ``SO_MARK`` = ``fwmark``, and a rule
  ``fwmark <fwmark> lookup main`` at ``priority`` (before the path rules) lets
  outer packets bypass the tunnel table, so a path whose selectors cover the
  peer itself (host-to-host) cannot loop its own ESP into the TUN device.
* A packet the TUN device hands over that matches no path is dropped
  (``no_policy``): RFC 4301 section 5.1 DISCARD, since only protected traffic
  is routed here. Nothing is ever sent in clear by this backend.
* **ESP in raw IP only** (protocol 50, RFC 4303); ESP-in-UDP (RFC 3948, port
  4500) is not supported: a path profile carries no encapsulation or port, and
  behind a NAT the peer's translated address would fail the inbound peer check
  (RFC 4301 section 5.2), so NAT traversal needs profile support first. The
  outer packets are never fragmented by this node (raw ``IP_HDRINCL`` sends
  refuse oversized packets: counted as ``send_failed``); the TUN device's MTU
  (default 1400, as strongSwan's libipsec) leaves room for the ESP overhead of
  every transform (at most 77 octets) on a 1500-octet link.
* **QoS** (:mod:`aaa_vpn.sa.qos`): the path's DSCP is written into the outer
  header by the codec; a path with ``rate_kbps > 0`` gets a token bucket that
  polices its outer octets after sealing (the outer packet's destination and
  SPI select the bucket, so no second policy lookup is needed); a dropped
  packet has used a sequence number, which the receiver's window tolerates.
* Every refused packet is counted by reason (:attr:`DataPlaneStats.drops`:
  the codec's :class:`~aaa_vpn.sa.esp.EspErrorReason` values and the data
  plane's own reasons); per SA in :meth:`UserspaceBackend.counters`. Garbage
  never stops the loop.
* ``close`` stops the thread, removes the rules and routes, closes the TUN
  device (it disappears) and forgets the SAs. Nothing survives the process;
  the agents re-install their paths after a restart. Stale rules at this
  backend's priorities (from a crashed predecessor) are removed on start.

**Why one thread, not a process.** The SAD must stay in the agent's process:
install and delete are synchronous, atomic calls of the agent's control
plane, and an :class:`~aaa_vpn.sa.esp.EspSa` holds live sequence counters and
replay windows that must not be copied to another process (two copies of one
outbound SA would repeat GCM nonces). Each agent is already its own process
(``aaa-vpn agent fa|ha|gw``) with its own interpreter lock, so the data-plane
thread competes only with its own agent's control plane, which is idle
between registrations; the thread releases the lock in every system call.
One thread per node runs the packet loop on one core: about what a single
Python loop can do, see ``bench/userspace_esp.py``. Going past one core
would take worker processes each owning a disjoint set of SAs (by SPI) with
the routing and SA ownership split between them; not done here. A lock keeps
the control plane's install/delete and the data plane's packet handling apart.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from aaa_vpn.model import EspTransform
from aaa_vpn.sa.base import InstalledPath, SaConflict, SaError, SaUnsupported, validate_path
from aaa_vpn.sa.esp import IPPROTO_ESP, SUPPORTED_TRANSFORMS, EspError, EspErrorReason
from aaa_vpn.sa.memory import MemoryBackend, SaCounters
from aaa_vpn.sa.qos import DEFAULT_BURST_MS, TokenBucket, burst_octets
from aaa_vpn.sa.routing import PolicyRouting
from aaa_vpn.sa.tun import IpCommand, NetnsError, call_in_netns, check_ifname, open_tun
from aaa_vpn.wire.profile import PathProfile

log = logging.getLogger("aaa_vpn.sa.userspace")

#: Default routing table of the tunnelled prefixes (a number of its own; 4303 for RFC 4303).
DEFAULT_TABLE: Final = 4303
#: Default priority of the bypass rule; the path rules sit at ``priority + 1``.
DEFAULT_PRIORITY: Final = 4303
#: Default mark of the outer packets this backend sends.
DEFAULT_FWMARK: Final = 0x4303
#: Default MTU of the TUN device (strongSwan's libipsec uses 1400 too).
DEFAULT_MTU: Final = 1400
#: Packets taken from one descriptor per wake-up before looking at the others.
BATCH: Final = 64

#: Drop reasons of the data plane itself, besides the codec's.
NO_POLICY: Final = "no_policy"  # from the TUN device, no path's selectors match (discarded)
RATE_LIMITED: Final = "rate_limited"  # the path's token bucket was empty
SEND_FAILED: Final = "send_failed"  # the raw socket refused the outer packet (no route, too big, buffer full)
TUN_WRITE_FAILED: Final = "tun_write_failed"  # the TUN device refused a decrypted packet
READ_FAILED: Final = "read_failed"  # reading the TUN device or the ESP socket failed
INTERNAL: Final = "internal"  # a bug: an unexpected exception while handling one packet
DROP_REASONS: Final = (
    *(reason.value for reason in EspErrorReason),
    NO_POLICY,
    RATE_LIMITED,
    SEND_FAILED,
    TUN_WRITE_FAILED,
    READ_FAILED,
    INTERNAL,
)

_SO_MARK = getattr(socket, "SO_MARK", 36)
_SO_RCVBUFFORCE = 33
_SO_SNDBUFFORCE = 32
_SOCKET_BUFFER = 4 << 20
_READ_SIZE = 0xFFFF


@dataclass(frozen=True)
class PathQosCounters:
    """The rate limiter of one path (only paths with ``rate_kbps > 0`` have one)."""

    owner: str
    peer: IPv4Address
    spi_out: int
    qos: str  # the QoS class name
    rate_kbps: int
    burst: int  # octets
    passed: int  # packets
    dropped: int  # packets
    dropped_octets: int  # outer octets


@dataclass(frozen=True)
class DataPlaneStats:
    """A snapshot of the data plane's packet counters."""

    running: bool
    tun_in: int  # inner packets read from the TUN device
    esp_out: int  # outer packets sent
    esp_in: int  # packets received on the ESP socket
    tun_out: int  # inner packets written to the TUN device
    drops: Mapping[str, int]  # reason -> packets, non-zero reasons only
    qos: tuple[PathQosCounters, ...]


class _Meter:
    """A path's token bucket and what it belongs to."""

    __slots__ = ("bucket", "installed")

    def __init__(self, installed: InstalledPath, bucket: TokenBucket) -> None:
        self.installed = installed
        self.bucket = bucket


class UserspaceBackend:
    """The SAs of one node with an ESP data plane on a TUN device (see the module rules).

    ``node`` is the node's outer address, which must be configured in
    ``netns`` (a named network namespace, or the current one if ``None``).
    ``tun_name`` names the TUN device to create there; it must not exist yet.
    ``table``, ``priority`` and ``fwmark`` must be this backend's alone in the
    namespace. ``transforms`` narrows the supported ESP transforms as in
    :class:`~aaa_vpn.sa.memory.MemoryBackend`. ``burst_ms`` sets the rate
    limiters' bucket depth; ``clock`` is their time source.

    The data plane runs from construction until :meth:`close`. Like every
    backend, the SaBackend methods are for one caller thread.
    """

    def __init__(
        self,
        node: IPv4Address,
        *,
        tun_name: str,
        netns: str | None = None,
        transforms: Iterable[EspTransform] = SUPPORTED_TRANSFORMS,
        mtu: int = DEFAULT_MTU,
        table: int = DEFAULT_TABLE,
        priority: int = DEFAULT_PRIORITY,
        fwmark: int = DEFAULT_FWMARK,
        burst_ms: int = DEFAULT_BURST_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            check_ifname(tun_name)
        except ValueError as exc:
            raise SaError(str(exc)) from None
        if not 576 <= mtu <= 65535 - 100:
            raise SaError(f"invalid TUN MTU {mtu}: 576..65435")
        if not 1 <= table < 0xFFFFFFFF or table in (253, 254, 255):
            raise SaError(f"invalid routing table {table}: not 0, default, main or local")
        if not 1 <= priority < 32765:
            raise SaError(f"invalid rule priority {priority}: 1..32764 (before the main table's rule)")
        if not 1 <= fwmark <= 0xFFFFFFFF:
            raise SaError(f"invalid fwmark {fwmark}")
        self.node = node
        self.tun_name = tun_name
        self.netns = netns
        self.mtu = mtu
        self._transforms = frozenset(transforms)
        self._sad = MemoryBackend(node, self._transforms)
        self._burst_ms = burst_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._meters: dict[bytes, _Meter] = {}  # replaced, never mutated: read by the data plane
        self._drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)  # fixed keys: safe to copy while counted
        self._tun_in = self._esp_out = self._esp_in = self._tun_out = 0
        self._addresses: dict[IPv4Address, tuple[str, int]] = {}  # the data plane's sendto() addresses
        self._closed = False
        self._thread: threading.Thread | None = None
        self._fds: list[int] = []
        self._sockets: list[socket.socket] = []
        try:
            self._routing = PolicyRouting(IpCommand(netns, options=("-4",)), tun_name, table, priority, fwmark)
            self._tun, self._esp_rx, self._esp_tx = call_in_netns(netns, lambda: self._open_io(fwmark))
        except (OSError, ValueError) as exc:
            self._release_io()
            raise SaError(f"cannot start the userspace data plane {tun_name} of {node}: {exc}") from None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds += [self._wake_r, self._wake_w]
        try:
            self._routing.start()
        except NetnsError as exc:
            self._release_io()
            raise SaError(f"cannot set up the routing rules of {tun_name}: {exc}") from None
        self._thread = threading.Thread(target=self._run, name=f"esp-{tun_name}", daemon=True)
        self._thread.start()
        log.info(
            "userspace data plane started",
            extra={"fields": {"node": str(node), "tun": tun_name, "netns": netns or "-", "mtu": mtu}},
        )

    def _open_io(self, fwmark: int) -> tuple[int, socket.socket, socket.socket]:
        """Runs in the node's namespace: the TUN device and both raw sockets."""
        tun = open_tun(self.tun_name, self.mtu)
        self._fds.append(tun)
        rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ESP)
        self._sockets.append(rx)
        tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # implies IP_HDRINCL
        self._sockets.append(tx)
        try:
            rx.bind((str(self.node), 0))  # only ESP addressed to the node; fails if it is not here
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise NetnsError(exc.errno, f"the node address {self.node} is not configured here") from None
            raise
        tx.setsockopt(socket.SOL_SOCKET, _SO_MARK, fwmark)
        for sock, forced, plain in ((rx, _SO_RCVBUFFORCE, socket.SO_RCVBUF), (tx, _SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, forced, _SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)
            sock.setblocking(False)
        return tun, rx, tx

    def _release_io(self) -> None:
        for sock in self._sockets:
            sock.close()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._sockets.clear()
        self._fds.clear()

    def __repr__(self) -> str:
        where = f", netns={self.netns!r}" if self.netns else ""
        state = "closed" if self._closed else f"paths={len(self._sad.paths())}"
        return f"UserspaceBackend(node={self.node}, tun={self.tun_name!r}{where}, {state})"

    def __enter__(self) -> UserspaceBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- SaBackend ---------------------------------------------------------------

    def install(self, path: PathProfile, owner: str) -> InstalledPath:
        """Install ``path`` for ``owner`` and route its selectors into the TUN device, atomically."""
        self._check_open()
        validate_path(path, self.node)
        # The cheap refusals first, so that they cost no routing changes (the
        # memory backend checks them again, with the key-reuse check, below).
        if path.esp_transform not in self._transforms:
            raise SaUnsupported(f"{path.esp_transform.name} is not available on {self.node}")
        for installed in self._sad.paths():
            if installed.spi_in == path.spi_in:
                if installed.owner == owner and installed.path == path:
                    return installed  # idempotent: counters, sequence numbers and routes untouched
                raise SaConflict(f"inbound SPI 0x{path.spi_in:08x} is already in use on {self.node}")
        self._routing.acquire(path)
        try:
            with self._lock:
                installed = self._sad.install(path, owner)
        except BaseException:
            self._routing.release(path)
            raise
        qos = path.qos
        if qos is not None and qos.rate_kbps > 0:
            bucket = TokenBucket(qos.rate_kbps, burst_octets(qos.rate_kbps, self._burst_ms), self._clock)
            meters = dict(self._meters)
            meters[path.peer.packed + path.spi_out.to_bytes(4, "big")] = _Meter(installed, bucket)
            self._meters = meters
        log.info(
            "path installed",
            extra={"fields": {"tun": self.tun_name, "owner": owner, "peer": str(path.peer), "spi_in": path.spi_in}},
        )
        return installed

    def delete(self, owner: str, peer: IPv4Address | None = None) -> int:
        """Remove ``owner``'s paths (toward ``peer`` only, if given), then their routing; return how many."""
        self._check_open()
        doomed = [p for p in self._sad.paths() if p.owner == owner and (peer is None or p.peer == peer)]
        if not doomed:
            return 0
        with self._lock:
            removed = self._sad.delete(owner, peer)
        gone = {p.path.peer.packed + p.spi_out.to_bytes(4, "big") for p in doomed}
        if gone & self._meters.keys():
            self._meters = {key: meter for key, meter in self._meters.items() if key not in gone}
        for installed in doomed:
            self._routing.release(installed.path)
        log.info("paths deleted", extra={"fields": {"tun": self.tun_name, "owner": owner, "count": removed}})
        return removed

    def paths(self) -> list[InstalledPath]:
        """The installed paths, in installation order."""
        self._check_open()
        return self._sad.paths()

    def close(self) -> None:
        """Stop the data plane, remove the routing, delete the TUN device, forget every SA."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            thread.join(timeout=10)
            if thread.is_alive():
                log.error("the data-plane thread did not stop", extra={"fields": {"tun": self.tun_name}})
        try:
            self._routing.stop()
        except NetnsError as exc:
            log.error("could not remove the routing rules", extra={"fields": {"tun": self.tun_name, "error": str(exc)}})
        self._meters = {}
        self._release_io()
        self._sad.close()
        log.info("userspace data plane stopped", extra={"fields": {"tun": self.tun_name}})

    def _check_open(self) -> None:
        if self._closed:
            raise SaError(f"the userspace backend {self.tun_name} of {self.node} is closed")

    # -- counters ----------------------------------------------------------------

    def counters(self, owner: str | None = None) -> list[SaCounters]:
        """Per-SA counters, as :meth:`MemoryBackend.counters <aaa_vpn.sa.memory.MemoryBackend.counters>`."""
        self._check_open()
        with self._lock:
            return self._sad.counters(owner)

    def node_errors(self) -> dict[str, int]:
        """Received packets refused before an SA was found, by reason."""
        self._check_open()
        with self._lock:
            return self._sad.node_errors()

    def stats(self) -> DataPlaneStats:
        """The data plane's packet counters and drops by reason, and each rate limiter's."""
        drops = {reason: count for reason, count in dict(self._drops).items() if count}
        qos = []
        for meter in self._meters.values():
            path, bucket = meter.installed.path, meter.bucket
            qos.append(
                PathQosCounters(
                    owner=meter.installed.owner,
                    peer=path.peer,
                    spi_out=path.spi_out,
                    qos=path.qos.name if path.qos is not None else "",
                    rate_kbps=bucket.rate_kbps,
                    burst=bucket.burst,
                    passed=bucket.passed,
                    dropped=bucket.dropped,
                    dropped_octets=bucket.dropped_octets,
                )
            )
        thread = self._thread
        return DataPlaneStats(
            running=thread is not None and thread.is_alive(),
            tun_in=self._tun_in,
            esp_out=self._esp_out,
            esp_in=self._esp_in,
            tun_out=self._tun_out,
            drops=drops,
            qos=tuple(qos),
        )

    @property
    def thread_id(self) -> int | None:
        """The data-plane thread's native id (for CPU accounting in ``/proc``), while it runs."""
        thread = self._thread
        return thread.native_id if thread is not None and thread.is_alive() else None

    def routing(self) -> tuple[list[tuple[IPv4Network, IPv4Network]], list[IPv4Network]]:
        """What this backend has routed into its device: (rule selector pairs, table routes)."""
        return self._routing.rules(), self._routing.routes()

    # -- data plane ----------------------------------------------------------------

    def _run(self) -> None:
        """The packet loop (the data-plane thread)."""
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._tun, selectors.EVENT_READ, self._outbound)
            selector.register(self._esp_rx, selectors.EVENT_READ, self._inbound)
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            while True:
                for key, _events in selector.select():
                    handler = key.data
                    if handler is None:
                        return
                    handler()
        except Exception:
            # Only a bug gets here (every per-packet failure is caught below);
            # the data plane is down, which stats().running shows.
            log.exception("the data-plane thread failed", extra={"fields": {"tun": self.tun_name}})
        finally:
            selector.close()

    def _internal_error(self, direction: str) -> None:
        drops = self._drops
        drops[INTERNAL] += 1
        if drops[INTERNAL] == 1 or drops[INTERNAL] % 10000 == 0:  # no log flood
            log.exception(
                f"{direction} packet failed", extra={"fields": {"tun": self.tun_name, "count": drops[INTERNAL]}}
            )

    def _outbound(self) -> None:
        """Up to :data:`BATCH` packets from the TUN device: protect, police, send."""
        read, fd = os.read, self._tun
        protect, lock, drops = self._sad.protect, self._lock, self._drops
        sendto = self._esp_tx.sendto
        meters, addresses = self._meters, self._addresses
        for _ in range(BATCH):
            try:
                inner = read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                drops[READ_FAILED] += 1
                return
            self._tun_in += 1
            try:
                with lock:
                    routed = protect(inner)
            except EspError as exc:
                drops[exc.reason.value] += 1
                continue
            except Exception:  # noqa: BLE001 - a bug must cost one packet, not the data plane
                self._internal_error("outbound")
                continue
            if routed is None:
                drops[NO_POLICY] += 1
                continue
            peer, packet = routed
            if meters:
                meter = meters.get(packet[16:24])  # outer destination | SPI
                if meter is not None and not meter.bucket.allow(len(packet)):
                    drops[RATE_LIMITED] += 1
                    continue
            address = addresses.get(peer)
            if address is None:
                address = addresses[peer] = (str(peer), 0)
            # Counted before it leaves, so that whoever sees the packet arrive sees it counted.
            self._esp_out += 1
            try:
                sendto(packet, address)
            except OSError:
                self._esp_out -= 1
                drops[SEND_FAILED] += 1

    def _inbound(self) -> None:
        """Up to :data:`BATCH` packets from the ESP socket: unprotect, hand to the TUN device."""
        recv, write, fd = self._esp_rx.recv, os.write, self._tun
        unprotect, lock, drops = self._sad.unprotect, self._lock, self._drops
        for _ in range(BATCH):
            try:
                packet = recv(_READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                drops[READ_FAILED] += 1
                return
            self._esp_in += 1
            try:
                with lock:
                    inner = unprotect(packet)
            except EspError as exc:
                drops[exc.reason.value] += 1
                continue
            except Exception:  # noqa: BLE001 - a bug must cost one packet, not the data plane
                self._internal_error("inbound")
                continue
            self._tun_out += 1  # before the write, as above
            try:
                write(fd, inner)
            except OSError:
                self._tun_out -= 1
                drops[TUN_WRITE_FAILED] += 1
