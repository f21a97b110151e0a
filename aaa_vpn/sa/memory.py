"""The ``memory`` SA backend: an in-process SA database (SAD + SPD, RFC 4301
section 4.4) for one node that really encrypts and decrypts ESP.

It lets tests of the agents assert that the SAs they asked for work: a packet
protected at one end of a path opens at the other end, and nowhere else.

Rules:

* Outbound (RFC 4301 section 5.1): :meth:`MemoryBackend.protect` looks the
  inner packet's source and destination up in the outbound policies, newest
  path first (so make-before-break replacement takes effect at once) except
  that forwarding (FA-FA) paths come after all others (at the new FA they
  only receive: the node's own paths send), requires
  ``src`` in one of the path's ``local_ts`` and ``dst`` in one of its
  ``remote_ts``, seals it with the path's outbound SA and wraps it in an outer
  IPv4 header ``local -> peer`` marked with the path's DSCP. No match: ``None``
  (the caller decides between bypass and discard).
* Inbound (RFC 4301 section 5.2, RFC 4303 section 3.4):
  :meth:`MemoryBackend.unprotect` checks the outer header, finds the SA by SPI
  alone, requires the outer source to be the path's peer and the destination
  this node, opens the ESP payload (replay window, ICV, padding), and checks
  that the inner packet's source is in ``remote_ts`` and its destination in
  ``local_ts``. Any failure raises :class:`~aaa_vpn.sa.esp.EspError` and is
  counted: on the SA when one was found, on the node otherwise.
* A path's keys are used by one SA pair only: keying material that was
  installed once on this node is refused afterwards, even after ``delete``,
  because a new SA would restart the sequence counter (an AES-GCM nonce reuse,
  RFC 4106 section 3.1, and a replay window reset). Keys are derived per epoch
  (docs/design.md section 3), so a legitimate new path always has new keys. Only
  digests of used keys are kept.
* Any key mode is accepted: for an IKEv2 path the profile's ESP keys stand in
  for the keys IKE would have negotiated. Lifetimes are not enforced here; the
  agents' timers delete expired paths.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from aaa_vpn.model import EspTransform
from aaa_vpn.sa.base import InstalledPath, SaConflict, SaError, SaUnsupported, validate_path
from aaa_vpn.sa.esp import (
    SUPPORTED_TRANSFORMS,
    EspError,
    EspErrorReason,
    EspSa,
    OuterHeader,
    parse_outer,
    peek_spi,
)
from aaa_vpn.wire.profile import PathProfile, PathRole


class Direction(enum.Enum):
    """Which way an SA protects traffic, seen from this node."""

    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class SaCounters:
    """A snapshot of one SA's counters (RFC 4303 section 3.4: auditable events)."""

    owner: str
    direction: Direction
    spi: int
    peer: IPv4Address
    packets: int  # inner packets sealed (out) or opened and accepted (in)
    octets: int  # inner octets of those packets
    errors: Mapping[str, int]  # EspErrorReason value -> count


class _Sa:
    """One SA with its counters."""

    __slots__ = ("errors", "esp", "octets", "packets")

    def __init__(self, esp: EspSa) -> None:
        self.esp = esp
        self.packets = 0
        self.octets = 0
        self.errors: Counter[str] = Counter()


_ADDRESSES = struct.Struct(">II")  # source and destination of an IPv4 header, at offset 12
_Selectors = tuple[tuple[int, int], ...]  # (network, netmask) as integers


def _compile(networks: Iterable[IPv4Network]) -> _Selectors:
    return tuple((int(net.network_address), int(net.netmask)) for net in networks)


def _matches(address: int, selectors: _Selectors) -> bool:
    for network, netmask in selectors:
        if address & netmask == network:
            return True
    return False


class _Entry:
    """An installed path: its two SAs and compiled selectors."""

    __slots__ = ("inbound", "installed", "local_ts", "outbound", "outer", "peer", "peer_packed", "remote_ts")

    def __init__(self, installed: InstalledPath, inbound: EspSa, outbound: EspSa) -> None:
        path = installed.path
        self.installed = installed
        self.inbound = _Sa(inbound)
        self.outbound = _Sa(outbound)
        self.peer = path.peer
        self.peer_packed = path.peer.packed
        self.local_ts = _compile(path.local_ts)
        self.remote_ts = _compile(path.remote_ts)
        self.outer = OuterHeader(path.local, path.peer, path.qos.dscp if path.qos is not None else 0)


def _key_digest(key: bytes) -> bytes:
    return hashlib.sha256(b"aaa_vpn memory backend key use\x00" + key).digest()


class MemoryBackend:
    """The SAs of one node, kept in memory, with a working ESP data path.

    ``transforms`` narrows what this node supports (to model a peer without
    AES-GCM, for example); installing another transform raises
    :class:`~aaa_vpn.sa.base.SaUnsupported`.
    """

    def __init__(self, node: IPv4Address, transforms: Iterable[EspTransform] = SUPPORTED_TRANSFORMS) -> None:
        self.node = node
        self._node_packed = node.packed
        self._transforms = frozenset(transforms)
        unknown = self._transforms - SUPPORTED_TRANSFORMS
        if unknown:
            raise SaUnsupported(f"no ESP implementation for {sorted(t.name for t in unknown)}")
        self._entries: list[_Entry] = []  # installation order
        self._policies: list[_Entry] = []  # outbound lookup order: newest first, forwarding paths last
        self._inbound: dict[int, _Entry] = {}  # by spi_in
        self._used_keys: set[bytes] = set()
        self._node_errors: Counter[str] = Counter()
        self._ident = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryBackend(node={self.node}, paths={len(self._entries)})"

    # -- SaBackend ---------------------------------------------------------------

    def install(self, path: PathProfile, owner: str) -> InstalledPath:
        """Install ``path`` for ``owner`` (see :class:`~aaa_vpn.sa.base.SaBackend`)."""
        self._check_open()
        validate_path(path, self.node)
        if path.esp_transform not in self._transforms:
            raise SaUnsupported(f"{path.esp_transform.name} is not available on {self.node}")
        existing = self._inbound.get(path.spi_in)
        if existing is not None:
            if existing.installed.owner == owner and existing.installed.path == path:
                return existing.installed
            raise SaConflict(f"inbound SPI 0x{path.spi_in:08x} is already in use on {self.node}")
        key_in, key_out = path.key_in.value, path.key_out.value
        digests = (_key_digest(key_in), _key_digest(key_out))
        if digests[0] == digests[1]:
            raise SaError("the inbound and outbound SAs of a path must not share keying material")
        if digests[0] in self._used_keys or digests[1] in self._used_keys:
            raise SaError(
                "keying material already used on this node: a new SA would repeat sequence numbers "
                "(AES-GCM nonces, RFC 4106 section 3.1); install the path with fresh keys"
            )
        installed = InstalledPath(owner=owner, path=path)
        try:
            inbound = EspSa(path.spi_in, path.esp_transform, key_in)
            outbound = EspSa(path.spi_out, path.esp_transform, key_out)
            entry = _Entry(installed, inbound, outbound)
        except ValueError as exc:
            raise SaError(f"cannot create the SAs: {exc}") from None
        # Commit: nothing below can fail.
        self._used_keys.update(digests)
        self._entries.append(entry)
        if path.role is PathRole.FA_FA:
            # The forwarding path is the least preferred way out (at the new
            # FA it receives; the node's own paths send): after every other.
            self._policies.append(entry)
        else:
            self._policies.insert(0, entry)
        self._inbound[path.spi_in] = entry
        return installed

    def delete(self, owner: str, peer: IPv4Address | None = None) -> int:
        """Remove ``owner``'s paths (toward ``peer`` only, if given); return how many."""
        self._check_open()
        doomed = [e for e in self._entries if e.installed.owner == owner and (peer is None or e.peer == peer)]
        for entry in doomed:
            self._entries.remove(entry)
            self._policies.remove(entry)
            del self._inbound[entry.installed.spi_in]
        return len(doomed)

    def paths(self) -> list[InstalledPath]:
        """The installed paths, in installation order."""
        self._check_open()
        return [entry.installed for entry in self._entries]

    def close(self) -> None:
        """Forget every SA; later calls raise :class:`~aaa_vpn.sa.base.SaError`."""
        self._entries.clear()
        self._policies.clear()
        self._inbound.clear()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise SaError(f"the memory backend of {self.node} is closed")

    # -- data path ---------------------------------------------------------------

    def protect(self, inner: bytes) -> tuple[IPv4Address, bytes] | None:
        """Encrypt an outgoing inner IPv4 packet by the outbound policies.

        Returns ``(outer destination, outer IPv4 packet)``, or ``None`` when no
        path's selectors match. Raises :class:`~aaa_vpn.sa.esp.EspError` for a
        malformed inner packet, an exhausted sequence counter or an outer packet
        over 65535 octets."""
        if self._closed:
            self._check_open()
        if len(inner) < 20 or inner[0] >> 4 != 4:
            self._node_errors[EspErrorReason.MALFORMED.value] += 1
            raise EspError(EspErrorReason.MALFORMED, "the inner packet is not IPv4")
        src, dst = _ADDRESSES.unpack_from(inner, 12)
        for entry in self._policies:
            if _matches(src, entry.local_ts) and _matches(dst, entry.remote_ts):
                break
        else:
            return None
        sa = entry.outbound
        try:
            payload = sa.esp.seal(inner)
            self._ident = ident = (self._ident + 1) & 0xFFFF
            packet = entry.outer.wrap(payload, ident)
        except EspError as exc:
            sa.errors[exc.reason.value] += 1
            raise
        sa.packets += 1
        sa.octets += len(inner)
        return entry.peer, packet

    def unprotect(self, packet: bytes) -> bytes:
        """Check and decrypt a received outer IPv4 packet; return the inner packet.

        Raises :class:`~aaa_vpn.sa.esp.EspError` (and counts it) for anything
        that is not a packet of an installed path from its peer, intact, fresh
        and inside the path's selectors."""
        if self._closed:
            self._check_open()
        try:
            outer_src, outer_dst, _dscp, payload = parse_outer(packet)
            spi = peek_spi(payload)
        except EspError as exc:
            self._node_errors[exc.reason.value] += 1
            raise
        entry = self._inbound.get(spi)
        if entry is None:
            self._node_errors[EspErrorReason.UNKNOWN_SPI.value] += 1
            raise EspError(EspErrorReason.UNKNOWN_SPI, f"no inbound SA 0x{spi:08x} on {self.node}")
        sa = entry.inbound
        try:
            if outer_src != entry.peer_packed:
                raise EspError(
                    EspErrorReason.WRONG_PEER, f"from {IPv4Address(outer_src)}, the SA's peer is {entry.peer}"
                )
            if outer_dst != self._node_packed:
                raise EspError(EspErrorReason.BAD_OUTER, f"addressed to {IPv4Address(outer_dst)}, not to {self.node}")
            inner = sa.esp.open(payload)
            if len(inner) < 20 or inner[0] >> 4 != 4:
                raise EspError(EspErrorReason.MALFORMED, "the inner packet is not IPv4")
            src, dst = _ADDRESSES.unpack_from(inner, 12)
            if not (_matches(src, entry.remote_ts) and _matches(dst, entry.local_ts)):
                raise EspError(
                    EspErrorReason.POLICY,
                    f"inner {IPv4Address(src)} -> {IPv4Address(dst)} is outside the SA's selectors",
                )
        except EspError as exc:
            sa.errors[exc.reason.value] += 1
            raise
        sa.packets += 1
        sa.octets += len(inner)
        return inner

    # -- counters ----------------------------------------------------------------

    def counters(self, owner: str | None = None) -> list[SaCounters]:
        """Snapshots of every installed SA's counters (of ``owner``'s paths only, if given),
        inbound then outbound per path, in installation order."""
        result: list[SaCounters] = []
        for entry in self._entries:
            installed = entry.installed
            if owner is not None and installed.owner != owner:
                continue
            for direction, sa in ((Direction.IN, entry.inbound), (Direction.OUT, entry.outbound)):
                result.append(
                    SaCounters(
                        owner=installed.owner,
                        direction=direction,
                        spi=sa.esp.spi,
                        peer=entry.peer,
                        packets=sa.packets,
                        octets=sa.octets,
                        errors=dict(sa.errors),
                    )
                )
        return result

    def node_errors(self) -> dict[str, int]:
        """Refused packets that matched no SA (bad outer header, unknown SPI, malformed), by reason."""
        return dict(self._node_errors)
