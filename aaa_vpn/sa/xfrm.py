"""The ``xfrm`` SA backend: manually keyed ESP tunnel-mode SAs and their policies
in the Linux kernel (the SAD and SPD of RFC 4301 section 4.4), over NETLINK_XFRM
with the project's own client (:mod:`aaa_vpn.sa.netlink`).

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
* **Owners** live in a side table keyed by reqid (SQLite, ``table=`` a file;
  default: in memory, so nothing survives the process). The kernel has no
  place for an owner string (marks, if_ids and indexes change matching). The
  table holds what the kernel does not: owner, install order, priority and the
  path's non-secret fields. It never holds keys: after a restart the keys are
  read back from the kernel's SAD (``GETSA`` dump; the kernel returns them to
  CAP_NET_ADMIN). It also holds SHA-256 digests of every key installed
  (a digest, not the key), so keys are never reinstalled, even after a restart.
  Write-ahead: a row is ``installing`` before the first kernel request and
  ``installed`` after the last; ``delete`` marks rows ``deleting`` first. A row
  left ``installing`` or ``deleting`` (a crash, a failed rollback) is undone
  at the next call. A path whose SA disappeared from the kernel behind the
  backend's back (``ip xfrm state flush``) is removed completely by
  :meth:`XfrmBackend.paths`.
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

Wire layouts (``linux/xfrm.h``, 64-bit Linux: x86_64, aarch64; host byte order
except addresses, SPIs and ports, which are network order). ``xfrm_address_t``
is 16 octets, an IPv4 address in the first 4.

==========================  ====  ===========================================================
struct                      size  fields (offset)
==========================  ====  ===========================================================
xfrm_selector                 56  daddr 0, saddr 16, dport 32, dport_mask 34, sport 36,
                                  sport_mask 38, family 40, prefixlen_d 42, prefixlen_s 43,
                                  proto 44, ifindex 48, user 52
xfrm_id                       24  daddr 0, spi 16, proto 20
xfrm_lifetime_cfg             64  soft/hard byte limit 0/8, soft/hard packet limit 16/24,
                                  soft/hard add expires 32/40, soft/hard use expires 48/56
xfrm_lifetime_cur             32  bytes 0, packets 8, add_time 16, use_time 24
xfrm_stats                    12  replay_window 0, replay 4, integrity_failed 8
xfrm_usersa_info             224  sel 0, id 56, saddr 80, lft 96, curlft 160, stats 192,
                                  seq 204, reqid 208, family 212, mode 214, replay_window 215,
                                  flags 216
xfrm_usersa_id                24  daddr 0, spi 16, family 20, proto 22
xfrm_userspi_info            232  info 0, min 224, max 228
xfrm_userpolicy_info         168  sel 0, lft 56, curlft 120, priority 152, index 156, dir 160,
                                  action 161, flags 162, share 163
xfrm_userpolicy_id            64  sel 0, index 56, dir 60
xfrm_user_tmpl                64  id 0, family 24, saddr 28, reqid 44, mode 48, share 49,
                                  optional 50, aalgos 52, ealgos 56, calgos 60
xfrm_algo                    68+  alg_name[64] 0, alg_key_len (bits) 64, alg_key 68
xfrm_algo_auth / _aead       72+  alg_name[64] 0, alg_key_len 64, trunc/icv len (bits) 68, key 72
xfrm_replay_state_esn        24+  bmp_len 0, oseq 4, seq 8, oseq_hi 12, seq_hi 16,
                                  replay_window 20, bmp[] 24
==========================  ====  ===========================================================

Every ``decode`` here raises only :class:`XfrmDecodeError` on bad input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar, Final, TextIO

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
from aaa_vpn.sa.netlink import (
    NETLINK_XFRM,
    NetlinkDecodeError,
    NetlinkError,
    NetlinkSocket,
    Transport,
    decode_attrs,
    encode_attrs,
    open_transport,
)
from aaa_vpn.secret import Secret
from aaa_vpn.wire import profile as wire_profile
from aaa_vpn.wire.profile import PathProfile

log = logging.getLogger(__name__)

# -- constants (linux/xfrm.h) ----------------------------------------------------

XFRM_MSG_NEWSA: Final = 0x10
XFRM_MSG_DELSA: Final = 0x11
XFRM_MSG_GETSA: Final = 0x12
XFRM_MSG_NEWPOLICY: Final = 0x13
XFRM_MSG_DELPOLICY: Final = 0x14
XFRM_MSG_GETPOLICY: Final = 0x15
XFRM_MSG_ALLOCSPI: Final = 0x16
XFRM_MSG_ACQUIRE: Final = 0x17
XFRM_MSG_EXPIRE: Final = 0x18
XFRM_MSG_UPDPOLICY: Final = 0x19
XFRM_MSG_UPDSA: Final = 0x1A
XFRM_MSG_POLEXPIRE: Final = 0x1B
XFRM_MSG_FLUSHSA: Final = 0x1C
XFRM_MSG_FLUSHPOLICY: Final = 0x1D

MESSAGE_NAMES: Final = {
    XFRM_MSG_NEWSA: "XFRM_MSG_NEWSA",
    XFRM_MSG_DELSA: "XFRM_MSG_DELSA",
    XFRM_MSG_GETSA: "XFRM_MSG_GETSA",
    XFRM_MSG_NEWPOLICY: "XFRM_MSG_NEWPOLICY",
    XFRM_MSG_DELPOLICY: "XFRM_MSG_DELPOLICY",
    XFRM_MSG_GETPOLICY: "XFRM_MSG_GETPOLICY",
    XFRM_MSG_ALLOCSPI: "XFRM_MSG_ALLOCSPI",
    XFRM_MSG_ACQUIRE: "XFRM_MSG_ACQUIRE",
    XFRM_MSG_EXPIRE: "XFRM_MSG_EXPIRE",
    XFRM_MSG_UPDPOLICY: "XFRM_MSG_UPDPOLICY",
    XFRM_MSG_UPDSA: "XFRM_MSG_UPDSA",
    XFRM_MSG_POLEXPIRE: "XFRM_MSG_POLEXPIRE",
    XFRM_MSG_FLUSHSA: "XFRM_MSG_FLUSHSA",
    XFRM_MSG_FLUSHPOLICY: "XFRM_MSG_FLUSHPOLICY",
}

XFRMA_ALG_AUTH: Final = 1
XFRMA_ALG_CRYPT: Final = 2
XFRMA_ALG_COMP: Final = 3
XFRMA_ENCAP: Final = 4
XFRMA_TMPL: Final = 5
XFRMA_SA: Final = 6
XFRMA_POLICY: Final = 7
XFRMA_SEC_CTX: Final = 8
XFRMA_LTIME_VAL: Final = 9
XFRMA_REPLAY_VAL: Final = 10
XFRMA_SRCADDR: Final = 13
XFRMA_POLICY_TYPE: Final = 16
XFRMA_ALG_AEAD: Final = 18
XFRMA_ALG_AUTH_TRUNC: Final = 20
XFRMA_MARK: Final = 21
XFRMA_REPLAY_ESN_VAL: Final = 23
XFRMA_SA_EXTRA_FLAGS: Final = 24
XFRMA_IF_ID: Final = 31

AF_UNSPEC: Final = 0
AF_INET: Final = 2
IPPROTO_ESP: Final = 50

XFRM_MODE_TRANSPORT: Final = 0
XFRM_MODE_TUNNEL: Final = 1

XFRM_POLICY_IN: Final = 0
XFRM_POLICY_OUT: Final = 1
XFRM_POLICY_FWD: Final = 2
DIRECTION_NAMES: Final = {XFRM_POLICY_IN: "in", XFRM_POLICY_OUT: "out", XFRM_POLICY_FWD: "fwd"}

XFRM_POLICY_ALLOW: Final = 0
XFRM_POLICY_BLOCK: Final = 1
XFRM_SHARE_ANY: Final = 0

#: "No limit" for byte and packet lifetimes (``XFRM_INF``).
XFRM_INF: Final = 0xFFFFFFFFFFFFFFFF
#: Template algorithm masks meaning "any algorithm" (what ``ip xfrm`` sends).
ALL_ALGORITHMS: Final = 0xFFFFFFFF

#: Default reqid range of this backend and the priority of a path that overlaps no other.
REQID_BASE: Final = 700_000_000
REQID_COUNT: Final = 1_000_000
PRIORITY_BASE: Final = 500_000
#: Inbound anti-replay window in packets (RFC 4303 section 3.4.3 recommends 64).
REPLAY_WINDOW: Final = 64

ZERO_ADDRESS: Final = bytes(16)


class XfrmDecodeError(NetlinkDecodeError):
    """An XFRM structure or message could not be parsed."""


def xfrm_address(address: IPv4Address) -> bytes:
    """An ``xfrm_address_t``: the IPv4 address in the first 4 octets, zeros after."""
    return address.packed + bytes(12)


def ipv4_of(raw: bytes) -> IPv4Address:
    """The IPv4 address in an ``xfrm_address_t``."""
    return IPv4Address(raw[:4])


def _exact(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise XfrmDecodeError(f"{what} of {len(data)} octets, expected {size}")


def _check_address(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != 16:
        raise ValueError(f"{what} must be a 16-octet xfrm_address_t")


# -- structures --------------------------------------------------------------------

_SELECTOR = struct.Struct("=16s16s2s2s2s2sHBBB3xiI")


@dataclass(frozen=True)
class XfrmSelector:
    """``struct xfrm_selector``: which packets (addresses, prefixes, ports, protocol)."""

    daddr: bytes = ZERO_ADDRESS
    saddr: bytes = ZERO_ADDRESS
    dport: int = 0
    dport_mask: int = 0
    sport: int = 0
    sport_mask: int = 0
    family: int = AF_UNSPEC
    prefixlen_d: int = 0
    prefixlen_s: int = 0
    proto: int = 0
    ifindex: int = 0
    user: int = 0

    SIZE: ClassVar[int] = _SELECTOR.size

    def __post_init__(self) -> None:
        _check_address(self.daddr, "daddr")
        _check_address(self.saddr, "saddr")

    @classmethod
    def ipv4(cls, src: IPv4Network, dst: IPv4Network) -> XfrmSelector:
        """All traffic from ``src`` to ``dst`` (any protocol and port)."""
        return cls(
            daddr=xfrm_address(dst.network_address),
            saddr=xfrm_address(src.network_address),
            family=AF_INET,
            prefixlen_d=dst.prefixlen,
            prefixlen_s=src.prefixlen,
        )

    @property
    def src(self) -> IPv4Network:
        return IPv4Network((ipv4_of(self.saddr), self.prefixlen_s), strict=False)

    @property
    def dst(self) -> IPv4Network:
        return IPv4Network((ipv4_of(self.daddr), self.prefixlen_d), strict=False)

    def encode(self) -> bytes:
        return _SELECTOR.pack(
            self.daddr,
            self.saddr,
            self.dport.to_bytes(2, "big"),
            self.dport_mask.to_bytes(2, "big"),
            self.sport.to_bytes(2, "big"),
            self.sport_mask.to_bytes(2, "big"),
            self.family,
            self.prefixlen_d,
            self.prefixlen_s,
            self.proto,
            self.ifindex,
            self.user,
        )

    @classmethod
    def decode(cls, data: bytes) -> XfrmSelector:
        _exact(data, cls.SIZE, "xfrm_selector")
        d, s, dp, dpm, sp, spm, family, pd, ps, proto, ifindex, user = _SELECTOR.unpack(data)
        return cls(
            d,
            s,
            int.from_bytes(dp, "big"),
            int.from_bytes(dpm, "big"),
            int.from_bytes(sp, "big"),
            int.from_bytes(spm, "big"),
            family,
            pd,
            ps,
            proto,
            ifindex,
            user,
        )


_ID = struct.Struct("=16s4sB3x")


@dataclass(frozen=True)
class XfrmId:
    """``struct xfrm_id``: an SA's identity (destination, SPI, protocol)."""

    daddr: bytes = ZERO_ADDRESS
    spi: int = 0
    proto: int = 0

    SIZE: ClassVar[int] = _ID.size

    def __post_init__(self) -> None:
        _check_address(self.daddr, "daddr")

    def encode(self) -> bytes:
        return _ID.pack(self.daddr, self.spi.to_bytes(4, "big"), self.proto)

    @classmethod
    def decode(cls, data: bytes) -> XfrmId:
        _exact(data, cls.SIZE, "xfrm_id")
        daddr, spi, proto = _ID.unpack(data)
        return cls(daddr, int.from_bytes(spi, "big"), proto)


_LIFETIME_CFG = struct.Struct("=8Q")


@dataclass(frozen=True)
class LifetimeCfg:
    """``struct xfrm_lifetime_cfg``: limits (0 seconds = none; ``XFRM_INF`` octets/packets = none)."""

    soft_byte_limit: int = 0
    hard_byte_limit: int = 0
    soft_packet_limit: int = 0
    hard_packet_limit: int = 0
    soft_add_expires_seconds: int = 0
    hard_add_expires_seconds: int = 0
    soft_use_expires_seconds: int = 0
    hard_use_expires_seconds: int = 0

    SIZE: ClassVar[int] = _LIFETIME_CFG.size

    def encode(self) -> bytes:
        return _LIFETIME_CFG.pack(*dataclasses.astuple(self))

    @classmethod
    def decode(cls, data: bytes) -> LifetimeCfg:
        _exact(data, cls.SIZE, "xfrm_lifetime_cfg")
        return cls(*_LIFETIME_CFG.unpack(data))


#: No limits at all (what ``ip xfrm`` sends by default).
LIFETIME_INFINITE: Final = LifetimeCfg(XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF)

_LIFETIME_CUR = struct.Struct("=4Q")


@dataclass(frozen=True)
class LifetimeCur:
    """``struct xfrm_lifetime_cur``: what has been used (filled in by the kernel)."""

    byte_count: int = 0  # the kernel's ``bytes``
    packets: int = 0
    add_time: int = 0
    use_time: int = 0

    SIZE: ClassVar[int] = _LIFETIME_CUR.size

    def encode(self) -> bytes:
        return _LIFETIME_CUR.pack(self.byte_count, self.packets, self.add_time, self.use_time)

    @classmethod
    def decode(cls, data: bytes) -> LifetimeCur:
        _exact(data, cls.SIZE, "xfrm_lifetime_cur")
        return cls(*_LIFETIME_CUR.unpack(data))


_STATS = struct.Struct("=3I")


@dataclass(frozen=True)
class XfrmStats:
    """``struct xfrm_stats`` (filled in by the kernel)."""

    replay_window: int = 0
    replay: int = 0
    integrity_failed: int = 0

    SIZE: ClassVar[int] = _STATS.size

    def encode(self) -> bytes:
        return _STATS.pack(self.replay_window, self.replay, self.integrity_failed)

    @classmethod
    def decode(cls, data: bytes) -> XfrmStats:
        _exact(data, cls.SIZE, "xfrm_stats")
        return cls(*_STATS.unpack(data))


_USERSA_INFO = struct.Struct("=56s24s16s64s32s12sIIHBBB7x")


@dataclass(frozen=True)
class UserSaInfo:
    """``struct xfrm_usersa_info``: the fixed part of an SA (NEWSA, UPDSA, GETSA replies)."""

    sel: XfrmSelector = XfrmSelector()
    id: XfrmId = XfrmId()
    saddr: bytes = ZERO_ADDRESS
    lft: LifetimeCfg = LifetimeCfg()
    curlft: LifetimeCur = LifetimeCur()
    stats: XfrmStats = XfrmStats()
    seq: int = 0
    reqid: int = 0
    family: int = AF_UNSPEC
    mode: int = XFRM_MODE_TRANSPORT
    replay_window: int = 0
    flags: int = 0

    SIZE: ClassVar[int] = _USERSA_INFO.size

    def __post_init__(self) -> None:
        _check_address(self.saddr, "saddr")

    def encode(self) -> bytes:
        return _USERSA_INFO.pack(
            self.sel.encode(),
            self.id.encode(),
            self.saddr,
            self.lft.encode(),
            self.curlft.encode(),
            self.stats.encode(),
            self.seq,
            self.reqid,
            self.family,
            self.mode,
            self.replay_window,
            self.flags,
        )

    @classmethod
    def decode(cls, data: bytes) -> UserSaInfo:
        _exact(data, cls.SIZE, "xfrm_usersa_info")
        sel, id_, saddr, lft, curlft, stats, seq, reqid, family, mode, replay_window, flags = _USERSA_INFO.unpack(data)
        return cls(
            XfrmSelector.decode(sel),
            XfrmId.decode(id_),
            saddr,
            LifetimeCfg.decode(lft),
            LifetimeCur.decode(curlft),
            XfrmStats.decode(stats),
            seq,
            reqid,
            family,
            mode,
            replay_window,
            flags,
        )


_USERSA_ID = struct.Struct("=16s4sHBx")


@dataclass(frozen=True)
class UserSaId:
    """``struct xfrm_usersa_id``: which SA (GETSA, DELSA)."""

    daddr: bytes = ZERO_ADDRESS
    spi: int = 0
    family: int = AF_UNSPEC
    proto: int = 0

    SIZE: ClassVar[int] = _USERSA_ID.size

    def __post_init__(self) -> None:
        _check_address(self.daddr, "daddr")

    def encode(self) -> bytes:
        return _USERSA_ID.pack(self.daddr, self.spi.to_bytes(4, "big"), self.family, self.proto)

    @classmethod
    def decode(cls, data: bytes) -> UserSaId:
        _exact(data, cls.SIZE, "xfrm_usersa_id")
        daddr, spi, family, proto = _USERSA_ID.unpack(data)
        return cls(daddr, int.from_bytes(spi, "big"), family, proto)


_USERSPI_TAIL = struct.Struct("=II")


@dataclass(frozen=True)
class UserSpiInfo:
    """``struct xfrm_userspi_info``: an ALLOCSPI request (the larval SA and the SPI range)."""

    info: UserSaInfo = UserSaInfo()
    min: int = 0
    max: int = 0

    SIZE: ClassVar[int] = UserSaInfo.SIZE + _USERSPI_TAIL.size

    def encode(self) -> bytes:
        return self.info.encode() + _USERSPI_TAIL.pack(self.min, self.max)

    @classmethod
    def decode(cls, data: bytes) -> UserSpiInfo:
        _exact(data, cls.SIZE, "xfrm_userspi_info")
        low, high = _USERSPI_TAIL.unpack_from(data, UserSaInfo.SIZE)
        return cls(UserSaInfo.decode(data[: UserSaInfo.SIZE]), low, high)


_USERPOLICY_INFO = struct.Struct("=56s64s32sIIBBBB4x")


@dataclass(frozen=True)
class UserPolicyInfo:
    """``struct xfrm_userpolicy_info``: the fixed part of a policy (NEWPOLICY, UPDPOLICY, replies)."""

    sel: XfrmSelector = XfrmSelector()
    lft: LifetimeCfg = LifetimeCfg()
    curlft: LifetimeCur = LifetimeCur()
    priority: int = 0
    index: int = 0
    dir: int = XFRM_POLICY_IN
    action: int = XFRM_POLICY_ALLOW
    flags: int = 0
    share: int = XFRM_SHARE_ANY

    SIZE: ClassVar[int] = _USERPOLICY_INFO.size

    def encode(self) -> bytes:
        return _USERPOLICY_INFO.pack(
            self.sel.encode(),
            self.lft.encode(),
            self.curlft.encode(),
            self.priority,
            self.index,
            self.dir,
            self.action,
            self.flags,
            self.share,
        )

    @classmethod
    def decode(cls, data: bytes) -> UserPolicyInfo:
        _exact(data, cls.SIZE, "xfrm_userpolicy_info")
        sel, lft, curlft, priority, index, dir_, action, flags, share = _USERPOLICY_INFO.unpack(data)
        return cls(
            XfrmSelector.decode(sel),
            LifetimeCfg.decode(lft),
            LifetimeCur.decode(curlft),
            priority,
            index,
            dir_,
            action,
            flags,
            share,
        )


_USERPOLICY_ID = struct.Struct("=56sIB3x")


@dataclass(frozen=True)
class UserPolicyId:
    """``struct xfrm_userpolicy_id``: which policy (by selector and direction, or by index)."""

    sel: XfrmSelector = XfrmSelector()
    index: int = 0
    dir: int = XFRM_POLICY_IN

    SIZE: ClassVar[int] = _USERPOLICY_ID.size

    def encode(self) -> bytes:
        return _USERPOLICY_ID.pack(self.sel.encode(), self.index, self.dir)

    @classmethod
    def decode(cls, data: bytes) -> UserPolicyId:
        _exact(data, cls.SIZE, "xfrm_userpolicy_id")
        sel, index, dir_ = _USERPOLICY_ID.unpack(data)
        return cls(XfrmSelector.decode(sel), index, dir_)


_USER_TMPL = struct.Struct("=24sH2x16sIBBBxIII")


@dataclass(frozen=True)
class UserTmpl:
    """``struct xfrm_user_tmpl``: which SA a policy needs (one ``XFRMA_TMPL`` array element)."""

    id: XfrmId = XfrmId()
    family: int = AF_UNSPEC
    saddr: bytes = ZERO_ADDRESS
    reqid: int = 0
    mode: int = XFRM_MODE_TRANSPORT
    share: int = XFRM_SHARE_ANY
    optional: int = 0
    aalgos: int = ALL_ALGORITHMS
    ealgos: int = ALL_ALGORITHMS
    calgos: int = ALL_ALGORITHMS

    SIZE: ClassVar[int] = _USER_TMPL.size

    def __post_init__(self) -> None:
        _check_address(self.saddr, "saddr")

    def encode(self) -> bytes:
        return _USER_TMPL.pack(
            self.id.encode(),
            self.family,
            self.saddr,
            self.reqid,
            self.mode,
            self.share,
            self.optional,
            self.aalgos,
            self.ealgos,
            self.calgos,
        )

    @classmethod
    def decode(cls, data: bytes) -> UserTmpl:
        _exact(data, cls.SIZE, "xfrm_user_tmpl")
        id_, family, saddr, reqid, mode, share, optional, aalgos, ealgos, calgos = _USER_TMPL.unpack(data)
        return cls(XfrmId.decode(id_), family, saddr, reqid, mode, share, optional, aalgos, ealgos, calgos)


_ALG_NAME = struct.Struct("=64s")
_U32 = struct.Struct("=I")
_U32x2 = struct.Struct("=II")


def _encode_name(name: str) -> bytes:
    raw = name.encode("ascii")
    return _ALG_NAME.pack(raw)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isascii() or "\x00" in name or len(name) > 63:
        raise ValueError("an algorithm name is 1-63 ASCII characters without NUL")


def _decode_name(data: bytes) -> str:
    raw = data[:64].split(b"\x00", 1)
    if len(raw) == 1:
        raise XfrmDecodeError("algorithm name is not NUL-terminated")
    try:
        return raw[0].decode("ascii")
    except UnicodeDecodeError:
        raise XfrmDecodeError("algorithm name is not ASCII") from None


def _decode_key(data: bytes, offset: int, bits: int, what: str) -> Secret:
    if bits % 8:
        raise XfrmDecodeError(f"{what} key of {bits} bits is not whole octets")
    _exact(data, offset + bits // 8, what)
    return Secret(data[offset:])


@dataclass(frozen=True)
class XfrmAlgo:
    """``struct xfrm_algo`` (``XFRMA_ALG_CRYPT``, ``XFRMA_ALG_AUTH``): name and key; the key stays redacted."""

    name: str
    key: Secret

    def __post_init__(self) -> None:
        _check_name(self.name)

    def encode(self) -> bytes:
        return _encode_name(self.name) + _U32.pack(len(self.key) * 8) + self.key.value

    @classmethod
    def decode(cls, data: bytes) -> XfrmAlgo:
        if len(data) < 68:
            raise XfrmDecodeError(f"xfrm_algo of {len(data)} octets")
        (bits,) = _U32.unpack_from(data, 64)
        return cls(_decode_name(data), _decode_key(data, 68, bits, "xfrm_algo"))


@dataclass(frozen=True)
class XfrmAlgoAuth:
    """``struct xfrm_algo_auth`` (``XFRMA_ALG_AUTH_TRUNC``): name, key, ICV length in bits."""

    name: str
    key: Secret
    trunc_len: int

    def __post_init__(self) -> None:
        _check_name(self.name)

    def encode(self) -> bytes:
        return _encode_name(self.name) + _U32x2.pack(len(self.key) * 8, self.trunc_len) + self.key.value

    @classmethod
    def decode(cls, data: bytes) -> XfrmAlgoAuth:
        if len(data) < 72:
            raise XfrmDecodeError(f"xfrm_algo_auth of {len(data)} octets")
        bits, trunc = _U32x2.unpack_from(data, 64)
        return cls(_decode_name(data), _decode_key(data, 72, bits, "xfrm_algo_auth"), trunc)


@dataclass(frozen=True)
class XfrmAlgoAead:
    """``struct xfrm_algo_aead`` (``XFRMA_ALG_AEAD``): name, key (with the salt), ICV length in bits."""

    name: str
    key: Secret
    icv_len: int

    def __post_init__(self) -> None:
        _check_name(self.name)

    def encode(self) -> bytes:
        return _encode_name(self.name) + _U32x2.pack(len(self.key) * 8, self.icv_len) + self.key.value

    @classmethod
    def decode(cls, data: bytes) -> XfrmAlgoAead:
        if len(data) < 72:
            raise XfrmDecodeError(f"xfrm_algo_aead of {len(data)} octets")
        bits, icv = _U32x2.unpack_from(data, 64)
        return cls(_decode_name(data), _decode_key(data, 72, bits, "xfrm_algo_aead"), icv)


_REPLAY_ESN = struct.Struct("=6I")


@dataclass(frozen=True)
class ReplayStateEsn:
    """``struct xfrm_replay_state_esn`` (``XFRMA_REPLAY_ESN_VAL``): the replay window
    state; ``bmp_len`` is ``len(bmp)`` (32-bit words)."""

    bmp: tuple[int, ...] = ()
    oseq: int = 0
    seq: int = 0
    oseq_hi: int = 0
    seq_hi: int = 0
    replay_window: int = 0

    def encode(self) -> bytes:
        head = _REPLAY_ESN.pack(len(self.bmp), self.oseq, self.seq, self.oseq_hi, self.seq_hi, self.replay_window)
        return head + struct.pack(f"={len(self.bmp)}I", *self.bmp)

    @classmethod
    def decode(cls, data: bytes) -> ReplayStateEsn:
        if len(data) < _REPLAY_ESN.size:
            raise XfrmDecodeError(f"xfrm_replay_state_esn of {len(data)} octets")
        bmp_len, oseq, seq, oseq_hi, seq_hi, window = _REPLAY_ESN.unpack_from(data)
        _exact(data, _REPLAY_ESN.size + 4 * bmp_len, "xfrm_replay_state_esn")
        bmp = struct.unpack_from(f"={bmp_len}I", data, _REPLAY_ESN.size)
        return cls(tuple(bmp), oseq, seq, oseq_hi, seq_hi, window)


# -- messages (fixed part + attributes) ---------------------------------------------

Attrs = tuple[tuple[int, bytes], ...]


def _split(payload: bytes, size: int, what: str) -> tuple[bytes, list[tuple[int, bytes]]]:
    if len(payload) < size:
        raise XfrmDecodeError(f"{what} message of {len(payload)} octets, the fixed part alone is {size}")
    # NLMSG_ALIGN(size): every fixed part here is a multiple of 4 already.
    return payload[:size], decode_attrs(payload[size:])


def _check_other(other: Attrs, known: Iterable[int]) -> None:
    known_set = set(known)
    for type_, value in other:
        if type_ in known_set:
            raise ValueError(f"attribute {type_} has its own field")
        if not isinstance(value, bytes):
            raise ValueError("attribute values are bytes")


def _once(seen: set[int], type_: int) -> None:
    if type_ in seen:
        raise XfrmDecodeError(f"attribute {type_} appears twice")
    seen.add(type_)


_SA_ATTRS = (XFRMA_ALG_AEAD, XFRMA_ALG_CRYPT, XFRMA_ALG_AUTH, XFRMA_ALG_AUTH_TRUNC, XFRMA_REPLAY_ESN_VAL)


@dataclass(frozen=True)
class SaMessage:
    """An SA as NEWSA/UPDSA carry it and GETSA/ALLOCSPI answer it: ``xfrm_usersa_info``
    plus algorithm and replay attributes; other attributes are kept raw, in order."""

    info: UserSaInfo
    aead: XfrmAlgoAead | None = None
    crypt: XfrmAlgo | None = None
    auth: XfrmAlgo | None = None
    auth_trunc: XfrmAlgoAuth | None = None
    replay_esn: ReplayStateEsn | None = None
    other: Attrs = ()

    def __post_init__(self) -> None:
        _check_other(self.other, _SA_ATTRS)

    def encode(self) -> bytes:
        attrs: list[tuple[int, bytes]] = []
        if self.aead is not None:
            attrs.append((XFRMA_ALG_AEAD, self.aead.encode()))
        if self.crypt is not None:
            attrs.append((XFRMA_ALG_CRYPT, self.crypt.encode()))
        if self.auth is not None:
            attrs.append((XFRMA_ALG_AUTH, self.auth.encode()))
        if self.auth_trunc is not None:
            attrs.append((XFRMA_ALG_AUTH_TRUNC, self.auth_trunc.encode()))
        if self.replay_esn is not None:
            attrs.append((XFRMA_REPLAY_ESN_VAL, self.replay_esn.encode()))
        attrs.extend(self.other)
        return self.info.encode() + encode_attrs(attrs)

    @classmethod
    def decode(cls, payload: bytes) -> SaMessage:
        fixed, attrs = _split(payload, UserSaInfo.SIZE, "SA")
        values: dict[str, Any] = {}
        other: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        for type_, value in attrs:
            if type_ == XFRMA_ALG_AEAD:
                _once(seen, type_)
                values["aead"] = XfrmAlgoAead.decode(value)
            elif type_ == XFRMA_ALG_CRYPT:
                _once(seen, type_)
                values["crypt"] = XfrmAlgo.decode(value)
            elif type_ == XFRMA_ALG_AUTH:
                _once(seen, type_)
                values["auth"] = XfrmAlgo.decode(value)
            elif type_ == XFRMA_ALG_AUTH_TRUNC:
                _once(seen, type_)
                values["auth_trunc"] = XfrmAlgoAuth.decode(value)
            elif type_ == XFRMA_REPLAY_ESN_VAL:
                _once(seen, type_)
                values["replay_esn"] = ReplayStateEsn.decode(value)
            else:
                other.append((type_, value))
        return cls(UserSaInfo.decode(fixed), other=tuple(other), **values)


@dataclass(frozen=True)
class SaIdMessage:
    """GETSA / DELSA: ``xfrm_usersa_id`` and, optionally, ``XFRMA_SRCADDR``."""

    id: UserSaId
    srcaddr: bytes | None = None
    other: Attrs = ()

    def __post_init__(self) -> None:
        if self.srcaddr is not None:
            _check_address(self.srcaddr, "srcaddr")
        _check_other(self.other, (XFRMA_SRCADDR,))

    def encode(self) -> bytes:
        attrs = [(XFRMA_SRCADDR, self.srcaddr)] if self.srcaddr is not None else []
        return self.id.encode() + encode_attrs([*attrs, *self.other])

    @classmethod
    def decode(cls, payload: bytes) -> SaIdMessage:
        fixed, attrs = _split(payload, UserSaId.SIZE, "SA id")
        srcaddr: bytes | None = None
        other: list[tuple[int, bytes]] = []
        for type_, value in attrs:
            if type_ == XFRMA_SRCADDR:
                if srcaddr is not None:
                    raise XfrmDecodeError("XFRMA_SRCADDR appears twice")
                _exact(value, 16, "XFRMA_SRCADDR")
                srcaddr = value
            else:
                other.append((type_, value))
        return cls(UserSaId.decode(fixed), srcaddr, tuple(other))


@dataclass(frozen=True)
class SpiMessage:
    """ALLOCSPI: ``xfrm_userspi_info`` and raw attributes (mark, if_id)."""

    info: UserSpiInfo
    other: Attrs = ()

    def __post_init__(self) -> None:
        _check_other(self.other, ())

    def encode(self) -> bytes:
        return self.info.encode() + encode_attrs(self.other)

    @classmethod
    def decode(cls, payload: bytes) -> SpiMessage:
        fixed, attrs = _split(payload, UserSpiInfo.SIZE, "ALLOCSPI")
        return cls(UserSpiInfo.decode(fixed), tuple(attrs))


@dataclass(frozen=True)
class PolicyMessage:
    """A policy as NEWPOLICY/UPDPOLICY carry it and GETPOLICY answers it:
    ``xfrm_userpolicy_info`` plus its templates (``XFRMA_TMPL``)."""

    info: UserPolicyInfo
    templates: tuple[UserTmpl, ...] = ()
    other: Attrs = ()

    def __post_init__(self) -> None:
        _check_other(self.other, (XFRMA_TMPL,))

    def encode(self) -> bytes:
        attrs: list[tuple[int, bytes]] = []
        if self.templates:
            attrs.append((XFRMA_TMPL, b"".join(t.encode() for t in self.templates)))
        attrs.extend(self.other)
        return self.info.encode() + encode_attrs(attrs)

    @classmethod
    def decode(cls, payload: bytes) -> PolicyMessage:
        fixed, attrs = _split(payload, UserPolicyInfo.SIZE, "policy")
        templates: tuple[UserTmpl, ...] = ()
        other: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        for type_, value in attrs:
            if type_ == XFRMA_TMPL:
                _once(seen, type_)
                if len(value) % UserTmpl.SIZE:
                    raise XfrmDecodeError(f"XFRMA_TMPL of {len(value)} octets is not whole templates")
                templates = tuple(
                    UserTmpl.decode(value[i : i + UserTmpl.SIZE]) for i in range(0, len(value), UserTmpl.SIZE)
                )
            else:
                other.append((type_, value))
        return cls(UserPolicyInfo.decode(fixed), templates, tuple(other))


@dataclass(frozen=True)
class PolicyIdMessage:
    """GETPOLICY / DELPOLICY: ``xfrm_userpolicy_id`` and raw attributes."""

    id: UserPolicyId
    other: Attrs = ()

    def __post_init__(self) -> None:
        _check_other(self.other, ())

    def encode(self) -> bytes:
        return self.id.encode() + encode_attrs(self.other)

    @classmethod
    def decode(cls, payload: bytes) -> PolicyIdMessage:
        fixed, attrs = _split(payload, UserPolicyId.SIZE, "policy id")
        return cls(UserPolicyId.decode(fixed), tuple(attrs))


# -- ESP transforms ------------------------------------------------------------------


@dataclass(frozen=True)
class KernelAlgorithms:
    """How an :class:`~aaa_vpn.model.EspTransform` is named in the kernel (crypto API names)."""

    aead: str | None = None  # RFC 4106: key = AES key | 4-octet salt
    icv_bits: int = 128
    crypt: str | None = None
    auth: str | None = None  # truncated to icv_bits (RFC 4868 section 2.3: 128 for SHA-256)

    @property
    def names(self) -> str:
        return self.aead if self.aead is not None else f"{self.crypt} + {self.auth}"


#: RFC 4106 AES-GCM with a 16-octet ICV; RFC 3602 AES-CBC with RFC 4868 HMAC-SHA-256-128.
ALGORITHMS: Final = {
    EspTransform.AES_GCM_16_128: KernelAlgorithms(aead="rfc4106(gcm(aes))"),
    EspTransform.AES_GCM_16_256: KernelAlgorithms(aead="rfc4106(gcm(aes))"),
    EspTransform.AES_CBC_128_HMAC_SHA256: KernelAlgorithms(crypt="cbc(aes)", auth="hmac(sha256)"),
    EspTransform.AES_CBC_256_HMAC_SHA256: KernelAlgorithms(crypt="cbc(aes)", auth="hmac(sha256)"),
}


def sa_algorithms(
    transform: EspTransform, keymat: bytes
) -> tuple[XfrmAlgoAead | None, XfrmAlgo | None, XfrmAlgoAuth | None]:
    """``(aead, crypt, auth_trunc)`` attributes for ``keymat`` (the path's key of one direction)."""
    algorithms = ALGORITHMS[transform]
    if algorithms.aead is not None:
        return XfrmAlgoAead(algorithms.aead, Secret(keymat), algorithms.icv_bits), None, None
    assert algorithms.crypt is not None and algorithms.auth is not None
    split = transform.encryption_key_length
    return (
        None,
        XfrmAlgo(algorithms.crypt, Secret(keymat[:split])),
        XfrmAlgoAuth(algorithms.auth, Secret(keymat[split:]), algorithms.icv_bits),
    )


def sa_keymat(transform: EspTransform, sa: SaMessage) -> bytes | None:
    """The keying material of ``sa`` if it is ``transform`` as this backend installs it, else ``None``."""
    algorithms = ALGORITHMS[transform]
    if algorithms.aead is not None:
        if sa.aead is None or sa.aead.name != algorithms.aead or sa.aead.icv_len != algorithms.icv_bits:
            return None
        keymat = sa.aead.key.value
    else:
        trunc = sa.auth_trunc
        if sa.crypt is None or sa.crypt.name != algorithms.crypt or trunc is None or trunc.name != algorithms.auth:
            return None
        if trunc.trunc_len != algorithms.icv_bits:
            return None
        keymat = sa.crypt.key.value + trunc.key.value
    return keymat if len(keymat) == transform.keymat_length else None


# -- the side table --------------------------------------------------------------------

_INSTALLING: Final = "installing"
_INSTALLED: Final = "installed"
_DELETING: Final = "deleting"
_TABLE_VERSION: Final = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS paths (
    reqid INTEGER PRIMARY KEY,
    ord INTEGER NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('installing', 'installed', 'deleting')),
    priority INTEGER NOT NULL,
    path TEXT NOT NULL  -- JSON: the path without any key material
);
CREATE TABLE IF NOT EXISTS used_keys (digest BLOB PRIMARY KEY);
"""


def key_digest(key: bytes) -> bytes:
    """What the side table keeps of a key: a domain-separated SHA-256 digest, never the key."""
    return hashlib.sha256(b"aaa_vpn xfrm backend key use\x00" + key).digest()


@dataclass
class _Row:
    reqid: int
    ord: int
    owner: str
    state: str
    priority: int
    record: dict[str, Any]


class _SideTable:
    """Owners, order, priorities and non-secret path fields by reqid, plus digests of used keys.

    A file (SQLite, WAL, ``synchronous=FULL``) guarded by an exclusive ``flock``
    on ``<file>.lock`` so that two backends cannot share it; ``None``: in memory."""

    def __init__(self, location: str | os.PathLike[str] | None, node: IPv4Address) -> None:
        self._lock: TextIO | None = None
        self.location = None if location is None else os.fspath(location)
        if self.location is not None:
            lock = open(self.location + ".lock", "a")  # held until close()
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                raise SaError(f"the xfrm side table {self.location} is in use by another backend") from None
            self._lock = lock
        try:
            self._db = sqlite3.connect(self.location or ":memory:", isolation_level=None)
            if self.location is not None:
                os.chmod(self.location, 0o600)  # owners and SPIs: nobody else's business
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", [("version", _TABLE_VERSION), ("node", str(node))]
                )
            elif meta.get("version") != _TABLE_VERSION or meta.get("node") != str(node):
                raise SaError(
                    f"the xfrm side table {self.location} is for node {meta.get('node')} "
                    f"(version {meta.get('version')}), not {node}"
                )
        except sqlite3.Error as exc:
            self.close()
            raise SaError(f"cannot open the xfrm side table {self.location}: {exc}") from None
        except SaError:
            self.close()
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SaError(f"the xfrm side table {self.location or '(memory)'} failed: {exc}") from None

    def rows(self) -> list[_Row]:
        with self._transaction() as db:
            rows = db.execute("SELECT reqid, ord, owner, state, priority, path FROM paths ORDER BY ord").fetchall()
        return [_Row(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def max_ord(self) -> int:
        with self._transaction() as db:
            (value,) = db.execute("SELECT COALESCE(MAX(ord), 0) FROM paths").fetchone()
        return int(value)

    def used(self, digests: Iterable[bytes]) -> bool:
        with self._transaction() as db:
            for digest in digests:
                if db.execute("SELECT 1 FROM used_keys WHERE digest = ?", (digest,)).fetchone():
                    return True
        return False

    def begin_install(self, row: _Row, digests: Iterable[bytes]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO paths (reqid, ord, owner, state, priority, path) VALUES (?, ?, ?, ?, ?, ?)",
                (row.reqid, row.ord, row.owner, row.state, row.priority, json.dumps(row.record, sort_keys=True)),
            )
            db.executemany("INSERT OR IGNORE INTO used_keys (digest) VALUES (?)", [(d,) for d in digests])

    def set_state(self, reqids: Iterable[int], state: str) -> None:
        with self._transaction() as db:
            db.executemany("UPDATE paths SET state = ? WHERE reqid = ?", [(state, r) for r in reqids])

    def forget(self, reqid: int, digests: Iterable[bytes] = ()) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM paths WHERE reqid = ?", (reqid,))
            db.executemany("DELETE FROM used_keys WHERE digest = ?", [(d,) for d in digests])

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


# -- the backend -----------------------------------------------------------------------

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
        self._table = _SideTable(table, self.node)
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
                if entry.state == _INSTALLED and entry.owner == owner and _same_path(entry.path, path):
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
        entry = _Entry(reqid, self._table.max_ord() + 1, owner, path, priority, _INSTALLING)
        self._table.begin_install(
            _Row(reqid, entry.ord, owner, _INSTALLING, priority, public_fields(path)), (digest_in, digest_out)
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
                entry.state = _DELETING
                self._table.set_state([reqid], _DELETING)
                log.error("xfrm: rollback of reqid %d left %s", reqid, "; ".join(problems))
                error = type(error)(f"{error}; the rollback failed and will be retried: {'; '.join(problems)}")
            else:
                try:
                    self._table.forget(reqid, () if sa_created else (digest_in, digest_out))
                    del self._entries[reqid]
                except SaError as table_error:
                    entry.state = _DELETING
                    log.error("xfrm: reqid %d rolled back but still in the side table: %s", reqid, table_error)
            raise error from exc
        try:
            self._table.set_state([reqid], _INSTALLED)
        except SaError:
            # The kernel has the path but the table cannot say so: take it out again.
            entry.state = _DELETING
            if not self._remove(entry):
                self._forget(entry)
            raise
        entry.state = _INSTALLED
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
            if e.state == _INSTALLED and e.owner == owner and (peer is None or e.path.peer == peer)
        ]
        if not doomed:
            return 0
        self._table.set_state([e.reqid for e in doomed], _DELETING)  # nothing changed if this raises
        for entry in doomed:
            entry.state = _DELETING
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
        lost = [e for e in self._entries.values() if e.state == _INSTALLED and not self._present(e, states)]
        if lost:
            for entry in lost:
                log.warning("xfrm: path reqid %d of %s lost an SA in the kernel: removing it", entry.reqid, entry.owner)
                entry.state = _DELETING
            self._table.set_state([e.reqid for e in lost], _DELETING)
            self._finish_pending()
        return [InstalledPath(e.owner, e.path) for e in self._entries.values() if e.state == _INSTALLED]

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
            if row.state == _INSTALLED:
                entry = self._restore(row, states)
            if entry is None:
                # An interrupted install or delete, or a path that lost an SA: undo the rest.
                entry = self._stub(row)
                entry.state = _DELETING
            self._entries[row.reqid] = entry
        undone = [e.reqid for e in self._entries.values() if e.state == _DELETING]
        if undone:
            log.warning("xfrm: %d path(s) of %s are incomplete in the kernel: removing them", len(undone), self.node)
            self._table.set_state(undone, _DELETING)
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

    def _stub(self, row: _Row) -> _Entry:
        """An entry for a row whose keys are unknown (only to be removed)."""
        transform = EspTransform(row.record["esp_transform"])
        blank = Secret(bytes(transform.keymat_length))
        return _Entry(
            row.reqid, row.ord, row.owner, path_from_public_fields(row.record, blank, blank), row.priority, row.state
        )

    def _restore(self, row: _Row, states: dict[tuple[bytes, int], SaMessage]) -> _Entry | None:
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
        return _Entry(row.reqid, row.ord, row.owner, path, row.priority, _INSTALLED)

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
            entry.state = _DELETING
            return
        self._entries.pop(entry.reqid, None)

    def _finish_pending(self) -> None:
        """Undo every entry left ``installing`` or ``deleting``; keep those that still fail."""
        for entry in [e for e in self._entries.values() if e.state != _INSTALLED]:
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
        overlapping = [e.priority for e in self._entries.values() if e.state == _INSTALLED and _overlap(e.path, path)]
        priority = min(overlapping) - 1 if overlapping else self._priority_base
        if priority < 1:
            raise SaError("no policy priority left below the overlapping paths' (delete old paths first)")
        return priority

    def _holder(self, key: PolicyKey, exclude: _Entry) -> _Entry | None:
        """The newest installed entry (other than ``exclude``) with a policy at ``key``."""
        holder: _Entry | None = None
        for entry in self._entries.values():
            if entry is not exclude and entry.state == _INSTALLED and key in entry.keys:
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
