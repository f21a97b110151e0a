"""The ``xfrm`` SA backend: manually keyed ESP tunnel-mode SAs and their policies
in the Linux kernel (the SAD and SPD of RFC 4301 section 4.4), over NETLINK_XFRM
with the project's own client (:mod:`aaa_vpn.sa.netlink`), its messages
encoded by :mod:`aaa_vpn.sa.xfrm_codec`, its owners kept in the side table of
:mod:`aaa_vpn.sa.xfrm_table`.

Rules (what this backend adds to :mod:`aaa_vpn.sa.base`):

* One path = two SAs and ``3 x |local_ts| x |remote_ts|`` policies, installed
  in this order as one transaction: ``XFRM_MSG_NEWSA`` inbound (peer -> node,
  ``spi_in``), ``NEWSA`` outbound (node -> peer, ``spi_out``), then for every
  selector pair the ``out`` policy ``local_ts -> remote_ts`` (RFC 4301 section
  4.4.1) and the ``in`` and ``fwd`` policies ``remote_ts -> local_ts`` (RFC 4301
  section 5.2), each with one ESP tunnel template (``node -> peer`` out,
  ``peer -> node`` in/fwd) and the path's ``reqid``. SAs go in before policies
  so that traffic never meets a policy without its SA (which would make the
  kernel create a larval SA and send an ACQUIRE). On the first refusal
  everything already done is undone, newest first, and the error is raised;
  ``delete`` removes policies first, then the SAs.
* **reqid**: every path gets its own reqid from ``[reqid_base, reqid_base +
  reqid_count)`` (default 700000000 + 0..999999), round robin, skipping any
  reqid this backend uses or finds in the kernel. The reqid binds the
  templates to the path's SAs, and marks kernel objects as this backend's.
* **Priority** (the kernel prefers the *lowest* value): a path gets
  ``priority_base`` (500000), or, when its selectors overlap those of paths
  already installed, one less than the lowest priority among those paths.
  So a later path always wins over an earlier overlapping one (make-before-break
  during a handoff), and priorities only go down while overlapping paths are
  alive. The kernel cannot hold two policies with the *same* selector and
  direction (priority is not part of a policy's identity), so a later path
  with identical selectors takes that policy over (``XFRM_MSG_UPDPOLICY``: its
  template and priority replace the older path's); when it is deleted, the
  policy goes back to the newest remaining path with that selector, or away.
  Caveat: while two paths share an inbound selector, the kernel checks
  decrypted packets against the newer path's template only, so packets still
  in flight from the older peer are dropped by the in/fwd policy check (the
  ``memory`` backend accepts them).
* **Owners** live in a side table keyed by reqid (:mod:`aaa_vpn.sa.xfrm_table`;
  ``table=`` a file, default: in memory, so nothing survives the process): what
  the kernel does not keep -- owner, install order, priority, the path's
  non-secret fields -- and digests of every key installed, never a key, so
  keys are never reinstalled, even after a restart; the keys themselves are
  read back from the kernel's SAD. Write-ahead: a row is ``installing`` before
  the first kernel request and ``installed`` after the last; ``delete`` marks
  rows ``deleting`` first. A row left ``installing`` or ``deleting`` (a crash,
  a failed rollback) is undone at the next call. A path whose SA disappeared
  from the kernel behind the backend's back (``ip xfrm state flush``) is
  removed completely by :meth:`XfrmBackend.paths`.
* Kernel lifetimes are left infinite (byte/packet limits ``XFRM_INF``, no
  time limit): the agents' timers delete paths (base rules), and a hard expiry
  set at install would cut a path that a renewal re-installed unchanged (a no-op
  that cannot move the expiry).
* Inbound SAs get a 64-packet anti-replay window (``XFRMA_REPLAY_ESN_VAL``
  without ESN, as strongSwan does; RFC 4303 section 3.4.3). Single-selector
  paths also get the selector on the SA (the kernel checks a decrypted packet
  against it, RFC 4301 section 5.2). QoS (DSCP, rate) is not applied here: the
  kernel copies the inner DSCP to the outer header; marking and rate limits
  belong to tc/nftables.
* A kernel without ESP refuses ``NEWSA`` (``EPROTONOSUPPORT``, extack
  "Requested type not found"; ``ENOSYS``, "Requested AEAD algorithm not
  found" without GCM): :class:`~aaa_vpn.sa.base.SaUnsupported`, nothing left.
* :meth:`XfrmBackend.allocate_spi` reserves an inbound SPI (``XFRM_MSG_ALLOCSPI``:
  a larval SA that the kernel drops after ``net.core.xfrm_acq_expires``
  seconds, 30 by default); the next install on that SPI replaces the larval SA
  (``XFRM_MSG_UPDSA``) and uses its reqid, whether it succeeds or not.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from aaa_vpn.model import EspTransform
from aaa_vpn.sa import base
from aaa_vpn.sa.base import (
    InstalledPath,
    SaConflict,
    SaError,
    SaUnsupported,
    path_from_public_fields,
    public_fields,
    validate_path,
)
from aaa_vpn.sa.memory import Direction, SaCounters
from aaa_vpn.sa.netlink import (
    NETLINK_XFRM,
    NetlinkDecodeError,
    NetlinkError,
    NetlinkSocket,
    Transport,
    open_transport,
)
from aaa_vpn.sa.xfrm_codec import (
    AF_INET,
    ALGORITHMS,
    DIRECTION_NAMES,
    IPPROTO_ESP,
    LIFETIME_INFINITE,
    MESSAGE_NAMES,
    XFRM_MODE_TUNNEL,
    XFRM_MSG_ALLOCSPI,
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_DELSA,
    XFRM_MSG_GETPOLICY,
    XFRM_MSG_GETSA,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_MSG_UPDPOLICY,
    XFRM_MSG_UPDSA,
    XFRM_POLICY_ALLOW,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
    PolicyIdMessage,
    PolicyMessage,
    ReplayStateEsn,
    SaIdMessage,
    SaMessage,
    SpiMessage,
    UserPolicyId,
    UserPolicyInfo,
    UserSaId,
    UserSaInfo,
    UserSpiInfo,
    UserTmpl,
    XfrmDecodeError,
    XfrmId,
    XfrmSelector,
    sa_algorithms,
    sa_keymat,
    xfrm_address,
)
from aaa_vpn.sa.xfrm_table import DELETING, INSTALLED, INSTALLING, Row, SideTable, key_digest
from aaa_vpn.secret import Secret
from aaa_vpn.wire import profile as wire_profile
from aaa_vpn.wire.profile import PathProfile

log = logging.getLogger(__name__)

#: Default reqid range of this backend and the priority of a path that overlaps no other.
REQID_BASE: Final = 700_000_000
REQID_COUNT: Final = 1_000_000
PRIORITY_BASE: Final = 500_000
#: Inbound anti-replay window in packets (RFC 4303 section 3.4.3 recommends 64).
REPLAY_WINDOW: Final = 64

PolicyKey = tuple[int, IPv4Network, IPv4Network]  # (direction, source selector, destination selector)


@dataclass
class _Entry:
    """A path this backend owns, in whatever state."""

    reqid: int
    ord: int
    owner: str
    path: PathProfile
    priority: int
    state: str
    keys: tuple[PolicyKey, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = policy_keys(self.path)


@dataclass(frozen=True)
class _Reservation:
    reqid: int
    peer: IPv4Address


def policy_keys(path: PathProfile) -> tuple[PolicyKey, ...]:
    """The policies of ``path`` in installation order: every ``out`` (local -> remote),
    then every ``in``, then every ``fwd`` (remote -> local); duplicates dropped."""
    keys: dict[PolicyKey, None] = {}
    for local in path.local_ts:
        for remote in path.remote_ts:
            keys[(XFRM_POLICY_OUT, local, remote)] = None
    for direction in (XFRM_POLICY_IN, XFRM_POLICY_FWD):
        for remote in path.remote_ts:
            for local in path.local_ts:
                keys[(direction, remote, local)] = None
    return tuple(keys)


def _overlap(a: PathProfile, b: PathProfile) -> bool:
    """Whether some policy of ``a`` and some policy of ``b`` (same direction) match a common packet."""
    return any(x.overlaps(y) for x in a.local_ts for y in b.local_ts) and any(
        x.overlaps(y) for x in a.remote_ts for y in b.remote_ts
    )


def _same_path(a: PathProfile, b: PathProfile) -> bool:
    """Equal as far as the kernel and the side table keep them (secrets the kernel never sees aside)."""
    return dataclasses.replace(a, ike_psk=None, binding_key=None) == dataclasses.replace(
        b, ike_psk=None, binding_key=None
    )


def _key_text(key: PolicyKey) -> str:
    direction, src, dst = key
    return f"{src} -> {dst} dir {DIRECTION_NAMES.get(direction, direction)}"


class XfrmBackend:
    """The SAs and policies of one node in the kernel's XFRM tables (see the module rules).

    ``netns``: the network namespace (``ip netns`` name or path) whose kernel
    tables to use; ``transport``: instead, a factory of netlink transports
    (tests inject fakes that answer like the kernel). ``table``: the side table
    file that makes owners survive a restart (default: in memory).
    """

    def __init__(
        self,
        node: IPv4Address,
        netns: str | None = None,
        *,
        transport: Callable[[], Transport] | None = None,
        table: str | os.PathLike[str] | None = None,
        reqid_base: int = REQID_BASE,
        reqid_count: int = REQID_COUNT,
        priority_base: int = PRIORITY_BASE,
        timeout: float = 5.0,
    ) -> None:
        self.node = IPv4Address(node)
        self.netns = netns
        if netns is not None and transport is not None:
            raise ValueError("give a network namespace or a transport factory, not both")
        if struct.calcsize("P") != 8:
            raise SaUnsupported("the XFRM layouts used here are those of 64-bit Linux")
        if not (0 < reqid_base and reqid_count > 0 and reqid_base + reqid_count <= 0x100000000):
            raise ValueError("the reqid range must lie in 1..2**32-1")
        if not 0 < priority_base < 0x100000000:
            raise ValueError("priority_base must lie in 1..2**32-1")
        self._reqid_base = reqid_base
        self._reqid_count = reqid_count
        self._priority_base = priority_base
        self._closed = True
        self._table = SideTable(table, self.node)
        try:
            raw = transport() if transport is not None else open_transport(NETLINK_XFRM, netns, timeout)
        except OSError as exc:
            self._table.close()
            raise SaError(f"cannot open NETLINK_XFRM: {exc}") from None
        self._nl = NetlinkSocket(raw, MESSAGE_NAMES)
        self._closed = False
        self._entries: dict[int, _Entry] = {}  # by reqid, in installation order
        self._reserved: dict[int, _Reservation] = {}  # by SPI
        self._orphans: set[int] = set()  # reqids of our range in the kernel that no row owns
        self._next_reqid = reqid_base
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        where = f", netns={self.netns!r}" if self.netns is not None else ""
        return f"XfrmBackend(node={self.node}{where}, paths={len(self._entries)})"

    # -- SaBackend -----------------------------------------------------------------

    def install(self, path: PathProfile, owner: str) -> InstalledPath:
        """Install ``path`` for ``owner`` in the kernel (see :class:`~aaa_vpn.sa.base.SaBackend`)."""
        self._check_open()
        validate_path(path, self.node)
        if not isinstance(owner, str) or not owner:
            raise SaError("the owner must be a non-empty string")
        if path.esp_transform not in ALGORITHMS:
            raise SaUnsupported(f"{path.esp_transform.name} has no kernel algorithm mapping")
        self._finish_pending()
        for entry in self._entries.values():
            if entry.path.spi_in == path.spi_in:
                if entry.state == INSTALLED and entry.owner == owner and _same_path(entry.path, path):
                    entry.path = path  # the caller's copy carries the secrets the table does not keep
                    return InstalledPath(owner, path)
                raise SaConflict(f"inbound SPI 0x{path.spi_in:08x} is already in use on {self.node}")
        digest_in, digest_out = key_digest(path.key_in.value), key_digest(path.key_out.value)
        if digest_in == digest_out:
            raise SaError("the inbound and outbound SAs of a path must not share keying material")
        if self._table.used((digest_in, digest_out)):
            raise SaError(
                "keying material already used on this node: a new SA would repeat sequence numbers "
                "(AES-GCM nonces, RFC 4106 section 3.1); install the path with fresh keys"
            )
        try:
            reservation = self._check_spis(path)
            reqid = reservation.reqid if reservation is not None else self._new_reqid()
            priority = self._priority_for(path)
        except (OSError, NetlinkDecodeError) as exc:
            raise SaError(f"cannot read the kernel's SAs of {self.node}: {exc}") from exc
        entry = _Entry(reqid, self._table.max_ord() + 1, owner, path, priority, INSTALLING)
        self._table.begin_install(
            Row(reqid, entry.ord, owner, INSTALLING, priority, public_fields(path)), (digest_in, digest_out)
        )
        self._entries[reqid] = entry
        self._reserved.pop(path.spi_in, None)
        step = "inbound SA"
        sa_created = False
        try:
            new_in = XFRM_MSG_UPDSA if reservation is not None else XFRM_MSG_NEWSA
            self._nl.request(new_in, self._sa_message(entry, inbound=True).encode())
            sa_created = True
            step = "outbound SA"
            self._nl.request(XFRM_MSG_NEWSA, self._sa_message(entry, inbound=False).encode())
            for key in entry.keys:
                step = f"policy {_key_text(key)}"
                holder = self._holder(key, entry)
                kind = XFRM_MSG_NEWPOLICY if holder is None else XFRM_MSG_UPDPOLICY
                self._nl.request(kind, self._policy_message(entry, key).encode())
        except (OSError, NetlinkDecodeError) as exc:
            error = self._refusal(exc, path, step)
            problems = self._remove(entry)
            if problems:
                entry.state = DELETING
                self._table.set_state([reqid], DELETING)
                log.error("xfrm: rollback of reqid %d left %s", reqid, "; ".join(problems))
                error = type(error)(f"{error}; the rollback failed and will be retried: {'; '.join(problems)}")
            else:
                try:
                    self._table.forget(reqid, () if sa_created else (digest_in, digest_out))
                    del self._entries[reqid]
                except SaError as table_error:
                    entry.state = DELETING
                    log.error("xfrm: reqid %d rolled back but still in the side table: %s", reqid, table_error)
            raise error from exc
        try:
            self._table.set_state([reqid], INSTALLED)
        except SaError:
            # The kernel has the path but the table cannot say so: take it out again.
            entry.state = DELETING
            if not self._remove(entry):
                self._forget(entry)
            raise
        entry.state = INSTALLED
        log.info(
            "xfrm: installed %s path to %s for %s: spi in 0x%08x out 0x%08x, reqid %d, priority %d",
            path.role.name,
            path.peer,
            owner,
            path.spi_in,
            path.spi_out,
            reqid,
            priority,
        )
        return InstalledPath(owner, path)

    def delete(self, owner: str, peer: IPv4Address | None = None) -> int:
        """Remove ``owner``'s paths (toward ``peer`` only, if given): policies first, then SAs."""
        self._check_open()
        self._finish_pending()
        doomed = [
            e
            for e in self._entries.values()
            if e.state == INSTALLED and e.owner == owner and (peer is None or e.path.peer == peer)
        ]
        if not doomed:
            return 0
        self._table.set_state([e.reqid for e in doomed], DELETING)  # nothing changed if this raises
        for entry in doomed:
            entry.state = DELETING
        failures = []
        for entry in doomed:
            problems = self._remove(entry)
            if problems:
                failures.append(f"reqid {entry.reqid}: {'; '.join(problems)}")
            else:
                self._forget(entry)
        if failures:
            raise SaError(f"could not remove everything of {owner} (retried on the next call): {' | '.join(failures)}")
        return len(doomed)

    def paths(self) -> list[InstalledPath]:
        """The installed paths, in installation order. A path that lost an SA in the
        kernel behind the backend's back is removed completely and not listed."""
        self._check_open()
        self._finish_pending()
        try:
            states = self._dump_states()
        except (OSError, NetlinkDecodeError) as exc:
            raise SaError(f"cannot read the kernel's SAs of {self.node}: {exc}") from exc
        lost = [e for e in self._entries.values() if e.state == INSTALLED and not self._present(e, states)]
        if lost:
            for entry in lost:
                log.warning("xfrm: path reqid %d of %s lost an SA in the kernel: removing it", entry.reqid, entry.owner)
                entry.state = DELETING
            self._table.set_state([e.reqid for e in lost], DELETING)
            self._finish_pending()
        return [InstalledPath(e.owner, e.path) for e in self._entries.values() if e.state == INSTALLED]

    def counters(self, owner: str | None = None) -> list[SaCounters]:
        """Per-SA counters of ``owner``'s installed paths (all, if None), from
        the kernel's ``curlft`` (XFRM_MSG_GETSA): inbound then outbound per
        path, in the shape of the memory backend's; what accounting reads. An
        SA the kernel no longer has counts nothing."""
        self._check_open()
        result: list[SaCounters] = []
        for entry in self._entries.values():
            if entry.state != INSTALLED or (owner is not None and entry.owner != owner):
                continue
            path = entry.path
            for direction, daddr, spi in (
                (Direction.IN, self.node, path.spi_in),
                (Direction.OUT, path.peer, path.spi_out),
            ):
                try:
                    message = self._get_sa(daddr, spi)
                except (OSError, NetlinkDecodeError) as exc:
                    raise SaError(f"cannot read the kernel's SA {spi:#x} of {self.node}: {exc}") from exc
                if message is None:
                    continue
                used = message.info.curlft
                result.append(SaCounters(entry.owner, direction, spi, path.peer, used.packets, used.byte_count, {}))
        return result

    def close(self) -> None:
        """Close the netlink socket and the side table; the kernel keeps every SA and policy."""
        if self._closed:
            return
        self._closed = True
        self._nl.close()
        self._table.close()

    # -- SPI allocation ------------------------------------------------------------

    def allocate_spi(
        self, peer: IPv4Address, spi_min: int = wire_profile.SPI_MIN, spi_max: int = wire_profile.SPI_MAX
    ) -> int:
        """Reserve a free inbound SPI for a path from ``peer`` (``XFRM_MSG_ALLOCSPI``).

        The kernel keeps a larval SA for ``net.core.xfrm_acq_expires`` seconds;
        installing a path with that ``spi_in`` from ``peer`` uses it. The default
        range fits a RADIUS tagged integer (24 bits)."""
        self._check_open()
        peer = IPv4Address(peer)
        if peer == self.node:
            raise SaError("a path's peer cannot be the node itself")
        if not base.SPI_MIN <= spi_min <= spi_max <= base.SPI_MAX:
            raise SaError(f"invalid SPI range 0x{spi_min:x}..0x{spi_max:x} (RFC 4303 section 2.1)")
        reqid = self._new_reqid()
        info = UserSaInfo(
            id=XfrmId(xfrm_address(self.node), 0, IPPROTO_ESP),
            saddr=xfrm_address(peer),
            reqid=reqid,
            family=AF_INET,
            mode=XFRM_MODE_TUNNEL,
        )
        try:
            replies = self._nl.request(XFRM_MSG_ALLOCSPI, SpiMessage(UserSpiInfo(info, spi_min, spi_max)).encode())
            spi = next(SaMessage.decode(m.payload).info.id.spi for m in replies if m.type == XFRM_MSG_NEWSA)
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                raise SaConflict(f"no free SPI in 0x{spi_min:x}..0x{spi_max:x} on {self.node}") from exc
            raise SaError(f"the kernel refused to allocate an SPI: {exc}") from exc
        except (OSError, NetlinkDecodeError, StopIteration) as exc:
            raise SaError(f"no SPI allocated: {exc!r}") from None
        self._reserved[spi] = _Reservation(reqid, peer)
        log.debug("xfrm: reserved inbound SPI 0x%08x from %s (reqid %d)", spi, peer, reqid)
        return spi

    def release_spi(self, spi: int) -> bool:
        """Drop a reservation made by :meth:`allocate_spi` (its larval SA); ``False`` if there was none."""
        self._check_open()
        reservation = self._reserved.pop(spi, None)
        if reservation is None:
            return False
        try:
            sa = self._get_sa(self.node, spi)
            if sa is not None and sa.info.reqid == reservation.reqid:
                self._delete_sa(self.node, spi)
        except (OSError, NetlinkDecodeError) as exc:
            raise SaError(f"could not release SPI 0x{spi:08x}: {exc}") from exc
        return True

    # -- internals -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SaError(f"the xfrm backend of {self.node} is closed")

    def _recover(self) -> None:
        """Load the side table and match it with the kernel (keys come from the SAD)."""
        states = self._dump_states()
        policies = self._nl.dump(XFRM_MSG_GETPOLICY)
        rows = self._table.rows()
        for row in rows:
            entry: _Entry | None = None
            if row.state == INSTALLED:
                entry = self._restore(row, states)
            if entry is None:
                # An interrupted install or delete, or a path that lost an SA: undo the rest.
                entry = self._stub(row)
                entry.state = DELETING
            self._entries[row.reqid] = entry
        undone = [e.reqid for e in self._entries.values() if e.state == DELETING]
        if undone:
            log.warning("xfrm: %d path(s) of %s are incomplete in the kernel: removing them", len(undone), self.node)
            self._table.set_state(undone, DELETING)
        ours = set(self._entries)
        kernel_reqids = {state.info.reqid for state in states.values()}
        for message in policies:
            try:
                kernel_reqids.update(t.reqid for t in PolicyMessage.decode(message.payload).templates)
            except XfrmDecodeError as exc:
                log.warning("xfrm: skipping a policy the kernel dumped: %s", exc)
        self._orphans = {r for r in kernel_reqids if self._in_range(r) and r not in ours}
        if self._orphans:
            log.warning(
                "xfrm: %d reqid(s) of this backend's range are in the kernel of %s without an owner "
                "(a lost side table?); they are left alone",
                len(self._orphans),
                self.node,
            )
        if ours:
            self._next_reqid = max(ours) + 1
        self._finish_pending()

    def _stub(self, row: Row) -> _Entry:
        """An entry for a row whose keys are unknown (only to be removed)."""
        transform = EspTransform(row.record["esp_transform"])
        blank = Secret(bytes(transform.keymat_length))
        return _Entry(
            row.reqid, row.ord, row.owner, path_from_public_fields(row.record, blank, blank), row.priority, row.state
        )

    def _restore(self, row: Row, states: dict[tuple[bytes, int], SaMessage]) -> _Entry | None:
        stub = self._stub(row)
        if not self._present(stub, states):
            return None
        path = stub.path
        keymat_in = sa_keymat(path.esp_transform, states[(xfrm_address(self.node), path.spi_in)])
        keymat_out = sa_keymat(path.esp_transform, states[(xfrm_address(path.peer), path.spi_out)])
        if keymat_in is None or keymat_out is None:
            log.warning("xfrm: the SAs of reqid %d are not the path's transform: removing the path", row.reqid)
            return None
        path = dataclasses.replace(path, key_in=Secret(keymat_in), key_out=Secret(keymat_out))
        return _Entry(row.reqid, row.ord, row.owner, path, row.priority, INSTALLED)

    def _present(self, entry: _Entry, states: dict[tuple[bytes, int], SaMessage]) -> bool:
        inbound = states.get((xfrm_address(self.node), entry.path.spi_in))
        outbound = states.get((xfrm_address(entry.path.peer), entry.path.spi_out))
        return (
            inbound is not None
            and outbound is not None
            and inbound.info.reqid == entry.reqid
            and outbound.info.reqid == entry.reqid
            and (inbound.aead is not None or inbound.crypt is not None)  # not a larval SA
        )

    def _dump_states(self) -> dict[tuple[bytes, int], SaMessage]:
        """The kernel's ESP SAs by (destination, SPI)."""
        states: dict[tuple[bytes, int], SaMessage] = {}
        for message in self._nl.dump(XFRM_MSG_GETSA):
            if message.type != XFRM_MSG_NEWSA:
                continue
            try:
                sa = SaMessage.decode(message.payload)
            except XfrmDecodeError as exc:  # someone else's SA that this codec cannot read
                log.warning("xfrm: skipping an SA the kernel dumped: %s", exc)
                continue
            if sa.info.id.proto == IPPROTO_ESP:
                states[(sa.info.id.daddr, sa.info.id.spi)] = sa
        return states

    def _forget(self, entry: _Entry) -> None:
        """Drop a removed entry; if the table cannot, keep it (its reqid stays taken) to retry later."""
        try:
            self._table.forget(entry.reqid)
        except SaError as exc:
            log.error("xfrm: reqid %d is out of the kernel but still in the side table: %s", entry.reqid, exc)
            entry.state = DELETING
            return
        self._entries.pop(entry.reqid, None)

    def _finish_pending(self) -> None:
        """Undo every entry left ``installing`` or ``deleting``; keep those that still fail."""
        for entry in [e for e in self._entries.values() if e.state != INSTALLED]:
            problems = self._remove(entry)
            if problems:
                log.error("xfrm: reqid %d still not removed: %s", entry.reqid, "; ".join(problems))
            else:
                self._forget(entry)

    def _in_range(self, reqid: int) -> bool:
        return self._reqid_base <= reqid < self._reqid_base + self._reqid_count

    def _new_reqid(self) -> int:
        used = set(self._entries) | {r.reqid for r in self._reserved.values()} | self._orphans
        for _ in range(self._reqid_count):
            reqid = self._next_reqid
            self._next_reqid = reqid + 1 if reqid + 1 < self._reqid_base + self._reqid_count else self._reqid_base
            if reqid not in used:
                return reqid
        raise SaError(f"every reqid of {self._reqid_base}..{self._reqid_base + self._reqid_count - 1} is in use")

    def _priority_for(self, path: PathProfile) -> int:
        overlapping = [e.priority for e in self._entries.values() if e.state == INSTALLED and _overlap(e.path, path)]
        priority = min(overlapping) - 1 if overlapping else self._priority_base
        if priority < 1:
            raise SaError("no policy priority left below the overlapping paths' (delete old paths first)")
        return priority

    def _holder(self, key: PolicyKey, exclude: _Entry) -> _Entry | None:
        """The newest installed entry (other than ``exclude``) with a policy at ``key``."""
        holder: _Entry | None = None
        for entry in self._entries.values():
            if entry is not exclude and entry.state == INSTALLED and key in entry.keys:
                if holder is None or entry.ord > holder.ord:
                    holder = entry
        return holder

    def _check_spis(self, path: PathProfile) -> _Reservation | None:
        """Raise :class:`SaConflict` if the kernel has either SA already; return the
        reservation the inbound SA replaces, if any."""
        reservation = self._reserved.get(path.spi_in)
        inbound = self._get_sa(self.node, path.spi_in)
        if inbound is None:
            if reservation is not None:
                del self._reserved[path.spi_in]  # expired in the kernel
            reservation = None
        else:
            if (
                reservation is None
                or reservation.peer != path.peer
                or inbound.info.reqid != reservation.reqid
                or inbound.aead is not None
                or inbound.crypt is not None
            ):
                raise SaConflict(f"inbound SPI 0x{path.spi_in:08x} is already in use in the kernel of {self.node}")
        if self._get_sa(path.peer, path.spi_out) is not None:
            raise SaConflict(
                f"an outbound SA to {path.peer} with SPI 0x{path.spi_out:08x} already exists on {self.node}"
            )
        return reservation

    def _get_sa(self, daddr: IPv4Address, spi: int) -> SaMessage | None:
        request = SaIdMessage(UserSaId(xfrm_address(daddr), spi, AF_INET, IPPROTO_ESP))
        try:
            replies = self._nl.request(XFRM_MSG_GETSA, request.encode())
        except NetlinkError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT):
                return None
            raise
        for message in replies:
            if message.type == XFRM_MSG_NEWSA:
                return SaMessage.decode(message.payload)
        return None

    def _delete_sa(self, daddr: IPv4Address, spi: int) -> None:
        request = SaIdMessage(UserSaId(xfrm_address(daddr), spi, AF_INET, IPPROTO_ESP))
        try:
            self._nl.request(XFRM_MSG_DELSA, request.encode())
        except NetlinkError as exc:
            if exc.errno not in (errno.ESRCH, errno.ENOENT):
                raise

    def _get_policy(self, key: PolicyKey) -> PolicyMessage | None:
        direction, src, dst = key
        request = PolicyIdMessage(UserPolicyId(XfrmSelector.ipv4(src, dst), 0, direction))
        try:
            replies = self._nl.request(XFRM_MSG_GETPOLICY, request.encode())
        except NetlinkError as exc:
            if exc.errno in (errno.ENOENT, errno.ESRCH):
                return None
            raise
        for message in replies:
            if message.type == XFRM_MSG_NEWPOLICY:
                return PolicyMessage.decode(message.payload)
        return None

    def _delete_policy(self, key: PolicyKey) -> None:
        direction, src, dst = key
        request = PolicyIdMessage(UserPolicyId(XfrmSelector.ipv4(src, dst), 0, direction))
        try:
            self._nl.request(XFRM_MSG_DELPOLICY, request.encode())
        except NetlinkError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH):
                raise

    def _remove(self, entry: _Entry) -> list[str]:
        """Take ``entry`` out of the kernel: each policy that carries its template goes
        back to the newest other installed path with that selector (or away), then
        its SAs (only those with its reqid). Returns what could not be done."""
        problems: list[str] = []
        for key in entry.keys:
            try:
                current = self._get_policy(key)
                if current is None or all(t.reqid != entry.reqid for t in current.templates):
                    continue
                successor = self._holder(key, entry)
                if successor is None:
                    self._delete_policy(key)
                else:
                    self._nl.request(XFRM_MSG_UPDPOLICY, self._policy_message(successor, key).encode())
            except (OSError, NetlinkDecodeError) as exc:
                problems.append(f"policy {_key_text(key)}: {exc}")
        for daddr, spi in ((self.node, entry.path.spi_in), (entry.path.peer, entry.path.spi_out)):
            try:
                sa = self._get_sa(daddr, spi)
                if sa is not None and sa.info.reqid == entry.reqid:
                    self._delete_sa(daddr, spi)
            except (OSError, NetlinkDecodeError) as exc:
                problems.append(f"SA to {daddr} spi 0x{spi:08x}: {exc}")
        return problems

    def _refusal(self, exc: OSError | NetlinkDecodeError, path: PathProfile, step: str) -> SaError:
        """The :class:`SaError` for a failed install step (no key material in it)."""
        if not isinstance(exc, NetlinkError):
            return SaError(f"{step} of the path to {path.peer}: {exc!r}")
        said = f"XFRM: {exc.extack}" if exc.extack else f"XFRM: {exc.strerror}"
        if step.endswith(" SA"):
            if exc.errno == errno.EPROTONOSUPPORT:
                return SaUnsupported(f"kernel without ESP support ({said})")
            if exc.errno == errno.ENOSYS:
                names = ALGORITHMS[path.esp_transform].names
                return SaUnsupported(f"kernel without {names} for {path.esp_transform.name} ({said})")
            if exc.errno == errno.EEXIST:
                return SaConflict(f"the {step} of the path to {path.peer} exists already ({said})")
        elif exc.errno == errno.EEXIST:
            return SaError(f"a {step} exists in the kernel of {self.node} and is not this backend's ({said})")
        return SaError(f"the kernel refused the {step} of the path to {path.peer}: {exc}")

    def _sa_message(self, entry: _Entry, *, inbound: bool) -> SaMessage:
        path = entry.path
        if inbound:
            src, dst, spi, keymat = path.peer, self.node, path.spi_in, path.key_in.value
            selectors = (path.remote_ts, path.local_ts)
        else:
            src, dst, spi, keymat = self.node, path.peer, path.spi_out, path.key_out.value
            selectors = (path.local_ts, path.remote_ts)
        single = len(selectors[0]) == 1 and len(selectors[1]) == 1
        selector = XfrmSelector.ipv4(selectors[0][0], selectors[1][0]) if single else XfrmSelector()
        aead, crypt, auth_trunc = sa_algorithms(path.esp_transform, keymat)
        info = UserSaInfo(
            sel=selector,
            id=XfrmId(xfrm_address(dst), spi, IPPROTO_ESP),
            saddr=xfrm_address(src),
            lft=LIFETIME_INFINITE,
            reqid=entry.reqid,
            family=AF_INET,
            mode=XFRM_MODE_TUNNEL,
        )
        # The ESN attribute carries a window over 32 packets (then replay_window must be 0).
        replay = ReplayStateEsn(bmp=(0,) * (REPLAY_WINDOW // 32), replay_window=REPLAY_WINDOW) if inbound else None
        return SaMessage(info, aead=aead, crypt=crypt, auth_trunc=auth_trunc, replay_esn=replay)

    def _policy_message(self, entry: _Entry, key: PolicyKey) -> PolicyMessage:
        direction, src, dst = key
        path = entry.path
        outbound = direction == XFRM_POLICY_OUT
        tunnel_src, tunnel_dst = (self.node, path.peer) if outbound else (path.peer, self.node)
        template = UserTmpl(
            id=XfrmId(xfrm_address(tunnel_dst), 0, IPPROTO_ESP),
            family=AF_INET,
            saddr=xfrm_address(tunnel_src),
            reqid=entry.reqid,
            mode=XFRM_MODE_TUNNEL,
        )
        info = UserPolicyInfo(
            sel=XfrmSelector.ipv4(src, dst),
            lft=LIFETIME_INFINITE,
            priority=entry.priority,
            dir=direction,
            action=XFRM_POLICY_ALLOW,
        )
        return PolicyMessage(info, (template,))
