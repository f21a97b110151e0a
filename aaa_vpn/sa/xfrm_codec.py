"""The NETLINK_XFRM message codec: the ``linux/xfrm.h`` constants, structures
and messages that the xfrm SA backend (:mod:`aaa_vpn.sa.xfrm`) sends and
reads, and how an :class:`~aaa_vpn.model.EspTransform` is named in the kernel.
Pure: no socket, no state; the netlink framing is :mod:`aaa_vpn.sa.netlink`'s.

Every message is a fixed part (one of the structures below) followed by
netlink attributes; the attributes a message has a field for are decoded
(each at most once), any other is kept raw, in order, and encoded back as
it came.

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

Every ``decode`` here raises only :class:`~aaa_vpn.sa.netlink.NetlinkDecodeError`
on bad input: :class:`XfrmDecodeError` (a subclass) for an XFRM structure or
message, the netlink layer's own for the attributes' framing.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar, Final

from aaa_vpn.model import EspTransform
from aaa_vpn.sa.netlink import (
    U32,
    Attribute,
    Attributes,
    NetlinkDecodeError,
    check_once,
    check_raw_attributes,
    encode_attrs,
    split_message,
)
from aaa_vpn.secret import Secret

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
        return _encode_name(self.name) + U32.pack(len(self.key) * 8) + self.key.value

    @classmethod
    def decode(cls, data: bytes) -> XfrmAlgo:
        if len(data) < 68:
            raise XfrmDecodeError(f"xfrm_algo of {len(data)} octets")
        (bits,) = U32.unpack_from(data, 64)
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
    other: Attributes = ()

    def __post_init__(self) -> None:
        check_raw_attributes(self.other, _SA_ATTRS)

    def encode(self) -> bytes:
        attrs: list[Attribute] = []
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
        fixed, attrs = split_message(payload, UserSaInfo.SIZE, "SA", XfrmDecodeError)
        values: dict[str, Any] = {}
        other: list[Attribute] = []
        seen: set[int] = set()
        for type_, value in attrs:
            if type_ == XFRMA_ALG_AEAD:
                check_once(seen, type_, XfrmDecodeError)
                values["aead"] = XfrmAlgoAead.decode(value)
            elif type_ == XFRMA_ALG_CRYPT:
                check_once(seen, type_, XfrmDecodeError)
                values["crypt"] = XfrmAlgo.decode(value)
            elif type_ == XFRMA_ALG_AUTH:
                check_once(seen, type_, XfrmDecodeError)
                values["auth"] = XfrmAlgo.decode(value)
            elif type_ == XFRMA_ALG_AUTH_TRUNC:
                check_once(seen, type_, XfrmDecodeError)
                values["auth_trunc"] = XfrmAlgoAuth.decode(value)
            elif type_ == XFRMA_REPLAY_ESN_VAL:
                check_once(seen, type_, XfrmDecodeError)
                values["replay_esn"] = ReplayStateEsn.decode(value)
            else:
                other.append((type_, value))
        return cls(UserSaInfo.decode(fixed), other=tuple(other), **values)


@dataclass(frozen=True)
class SaIdMessage:
    """GETSA / DELSA: ``xfrm_usersa_id`` and, optionally, ``XFRMA_SRCADDR``."""

    id: UserSaId
    srcaddr: bytes | None = None
    other: Attributes = ()

    def __post_init__(self) -> None:
        if self.srcaddr is not None:
            _check_address(self.srcaddr, "srcaddr")
        check_raw_attributes(self.other, (XFRMA_SRCADDR,))

    def encode(self) -> bytes:
        attrs = [(XFRMA_SRCADDR, self.srcaddr)] if self.srcaddr is not None else []
        return self.id.encode() + encode_attrs([*attrs, *self.other])

    @classmethod
    def decode(cls, payload: bytes) -> SaIdMessage:
        fixed, attrs = split_message(payload, UserSaId.SIZE, "SA id", XfrmDecodeError)
        srcaddr: bytes | None = None
        other: list[Attribute] = []
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
    other: Attributes = ()

    def __post_init__(self) -> None:
        check_raw_attributes(self.other, ())

    def encode(self) -> bytes:
        return self.info.encode() + encode_attrs(self.other)

    @classmethod
    def decode(cls, payload: bytes) -> SpiMessage:
        fixed, attrs = split_message(payload, UserSpiInfo.SIZE, "ALLOCSPI", XfrmDecodeError)
        return cls(UserSpiInfo.decode(fixed), tuple(attrs))


@dataclass(frozen=True)
class PolicyMessage:
    """A policy as NEWPOLICY/UPDPOLICY carry it and GETPOLICY answers it:
    ``xfrm_userpolicy_info`` plus its templates (``XFRMA_TMPL``)."""

    info: UserPolicyInfo
    templates: tuple[UserTmpl, ...] = ()
    other: Attributes = ()

    def __post_init__(self) -> None:
        check_raw_attributes(self.other, (XFRMA_TMPL,))

    def encode(self) -> bytes:
        attrs: list[Attribute] = []
        if self.templates:
            attrs.append((XFRMA_TMPL, b"".join(t.encode() for t in self.templates)))
        attrs.extend(self.other)
        return self.info.encode() + encode_attrs(attrs)

    @classmethod
    def decode(cls, payload: bytes) -> PolicyMessage:
        fixed, attrs = split_message(payload, UserPolicyInfo.SIZE, "policy", XfrmDecodeError)
        templates: tuple[UserTmpl, ...] = ()
        other: list[Attribute] = []
        seen: set[int] = set()
        for type_, value in attrs:
            if type_ == XFRMA_TMPL:
                check_once(seen, type_, XfrmDecodeError)
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
    other: Attributes = ()

    def __post_init__(self) -> None:
        check_raw_attributes(self.other, ())

    def encode(self) -> bytes:
        return self.id.encode() + encode_attrs(self.other)

    @classmethod
    def decode(cls, payload: bytes) -> PolicyIdMessage:
        fixed, attrs = split_message(payload, UserPolicyId.SIZE, "policy id", XfrmDecodeError)
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
