"""The key hierarchy of docs/design.md section 3.

* Per registration the home AAA makes a session root key (SRK): 32 random bytes.
* Every SA key is derived, never reused across paths or directions::

      K = HKDF-SHA256(IKM = SRK, salt = none,
                      info = label || 0x00 || sender || receiver || epoch(4),
                      L = key material length)

  ``sender``/``receiver`` are the 4-byte IPv4 addresses of the two endpoints in
  the direction the SA protects, so the two directions of a path get different
  keys (an AES-GCM key must never be shared by two senders: RFC 4106 section 3.1).
* An IKE pre-shared key for a path uses its own label, with the endpoints in
  ascending order so that both peers derive the same PSK.
* A per-FA handoff key (smooth handoff, flow E) is derived from the SRK and
  the FA's address.
* The HA-GW binding key is derived from the gateway's provisioned key (not the
  SRK) and the HA and gateway addresses.

Pure functions, no clock, no I/O except :func:`new_session_root_key`'s
``os.urandom``. HKDF is RFC 5869 with an all-zero salt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn.secret import Secret

SESSION_ROOT_KEY_LENGTH = 32
IKE_PSK_LENGTH = 32
HANDOFF_KEY_LENGTH = 32

LABEL_ESP = b"aaa-vpn esp"
LABEL_IKE_PSK = b"aaa-vpn ike-psk"
LABEL_FA_HA_AUTH = b"aaa-vpn mip fa-ha"
LABEL_HANDOFF = b"aaa-vpn fa handoff"
LABEL_BINDING = b"aaa-vpn ha-gw binding"
BINDING_KEY_LENGTH = 32


def new_session_root_key() -> Secret:
    """A fresh session root key (32 random bytes)."""
    return Secret(os.urandom(SESSION_ROOT_KEY_LENGTH))


def hkdf_sha256(ikm: bytes, info: bytes, length: int, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869 sections 2.2 and 2.3).

    Written on the standard library's one-shot ``hmac.digest`` because the home
    AAA derives several keys per request and this is several times faster than
    building a ``cryptography`` HKDF object each time; tests check it against
    RFC 5869's test vectors and against ``cryptography``."""
    return _expand(hmac.digest(salt or _ZERO_SALT, ikm, "sha256"), info, length)


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3)."""
    if length <= 64:  # every key here: one or two blocks, unrolled
        first = hmac.digest(prk, info + b"\x01", "sha256")
        if length <= 32:
            return first[:length]
        return (first + hmac.digest(prk, first + info + b"\x02", "sha256"))[:length]
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 output length must be 1..8160")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


_ZERO_SALT = b"\x00" * 32
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
# HKDF-Extract of recent session root keys, as HMAC-SHA256 states keyed with
# the PRK: one registration derives half a dozen keys from one SRK, the
# extract step and the HMAC key schedule are the same for all of them (and a
# state's copy() is several times cheaper than a one-shot hmac.digest here).
_PRK_CACHE: dict[bytes, tuple[Any, Any]] = {}
_PRK_CACHE_SIZE = 256


def _hkdf(srk: Secret, info: bytes, length: int) -> bytes:
    ikm = srk.value
    keyed = _PRK_CACHE.get(ikm)
    if keyed is None:
        if type(srk) is KeyRecorder:
            return srk.record(info, length)
        keyed = _prk_states(ikm)
    inner_state, outer_state = keyed
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 output length must be 1..8160")
    out, block, counter = b"", b"", 1  # HKDF-Expand (RFC 5869 section 2.3)
    while len(out) < length:
        inner = inner_state.copy()
        inner.update(block + info + bytes((counter,)))
        outer = outer_state.copy()
        outer.update(inner.digest())
        block = outer.digest()
        out += block
        counter += 1
    return out[:length]


def _prk_states(ikm: bytes) -> tuple[Any, Any]:
    """HKDF-Extract of ``ikm`` as HMAC-SHA256 inner and outer states, cached."""
    keyed = _PRK_CACHE.get(ikm)
    if keyed is None:
        if len(_PRK_CACHE) >= _PRK_CACHE_SIZE:
            _PRK_CACHE.clear()
        prk = hmac.digest(_ZERO_SALT, ikm, "sha256").ljust(64, b"\x00")  # RFC 2104: the key padded to a block
        keyed = _PRK_CACHE[ikm] = (hashlib.sha256(prk.translate(_IPAD)), hashlib.sha256(prk.translate(_OPAD)))
    return keyed


class KeyRecorder(Secret):
    """A stand-in session root key from which nothing is derived: every
    derivation asked of it is recorded (its HKDF info and length) and answered
    with a placeholder of that length, distinct from every other.

    The home AAA compiles what one shape of view derives once with it
    (roles/home_plan.py, :func:`~aaa_vpn.roles.home_plan.view_template`), then
    derives the same keys from each real root key with :func:`derive_all`."""

    __slots__ = ("derivations", "placeholders")

    def __init__(self, length: int = SESSION_ROOT_KEY_LENGTH) -> None:
        """``length``: the octets of the root key it stands in for."""
        super().__init__(_placeholder(b"root", length))
        self.derivations: list[tuple[bytes, int]] = []
        #: placeholder -> index in :attr:`derivations`
        self.placeholders: dict[bytes, int] = {}

    def record(self, info: bytes, length: int) -> bytes:
        if not 0 < length <= 255 * 32:
            raise ValueError("HKDF-SHA256 output length must be 1..8160")
        value = _placeholder(len(self.derivations).to_bytes(4, "big"), length)
        if value in self.placeholders:  # only for keys of a few octets
            raise ValueError(f"no distinct placeholder of {length} octets")
        self.placeholders[value] = len(self.derivations)
        self.derivations.append((info, length))
        return value


def _placeholder(name: bytes, length: int) -> bytes:
    out, counter = b"", 0
    while len(out) < length:
        out += hashlib.sha256(b"aaa-vpn key placeholder\x00" + name + counter.to_bytes(2, "big")).digest()
        counter += 1
    return out[:length]


def expansions(derivations: Sequence[tuple[bytes, int]]) -> tuple[tuple[bytes, bytes, int], ...]:
    """``derivations`` (HKDF info, length; each at most 64 octets) as
    :func:`derive_all` takes them: the messages of their two HKDF-Expand
    blocks worked out once."""
    if any(not 0 < length <= 64 for _info, length in derivations):
        raise ValueError("derive_all derives keys of 1..64 octets")
    return tuple((info + b"\x01", info + b"\x02", length) for info, length in derivations)


def derive_all(srk: Secret, expanded: Sequence[tuple[bytes, bytes, int]]) -> list[bytes]:
    """The keys named by ``expanded`` (:func:`expansions` of a
    :class:`KeyRecorder`'s derivations), derived from ``srk``: what
    :func:`_hkdf` gives for each, in one loop."""
    inner_state, outer_state = _prk_states(srk.value)
    out = []
    for first, second, length in expanded:
        inner = inner_state.copy()
        inner.update(first)
        outer = outer_state.copy()
        outer.update(inner.digest())
        block = outer.digest()
        if length > 32:
            inner = inner_state.copy()
            inner.update(block + second)
            outer = outer_state.copy()
            outer.update(inner.digest())
            block += outer.digest()
        out.append(block[:length])
    return out


def _info(label: bytes, a: IPv4Address, b: IPv4Address, epoch: int) -> bytes:
    return label + b"\x00" + _ADDRESS_EPOCH.pack(int(a), int(b), epoch)


_ADDRESS_EPOCH = struct.Struct("!III")


def derive_sa_key(
    srk: Secret, label: bytes, sender: IPv4Address, receiver: IPv4Address, epoch: int, length: int
) -> Secret:
    """Key material for the SA that carries traffic from ``sender`` to ``receiver``."""
    return Secret(_hkdf(srk, _info(LABEL_ESP + b" " + label, sender, receiver, epoch), length))


def derive_ike_psk(srk: Secret, label: bytes, a: IPv4Address, b: IPv4Address, epoch: int) -> Secret:
    """The IKEv2 pre-shared key of the path between ``a`` and ``b`` (order-independent)."""
    low, high = (a, b) if int(a) <= int(b) else (b, a)
    return Secret(_hkdf(srk, _info(LABEL_IKE_PSK + b" " + label, low, high, epoch), IKE_PSK_LENGTH))


def derive_fa_ha_key(srk: Secret, fa: IPv4Address, ha: IPv4Address, epoch: int) -> Secret:
    """The Mobile IP FA-HA authentication key (RFC 5944 section 3.5.4) of one registration."""
    return Secret(_hkdf(srk, _info(LABEL_FA_HA_AUTH, fa, ha, epoch), 16))


def derive_handoff_key(srk: Secret, fa: IPv4Address, epoch: int) -> Secret:
    """The per-FA handoff key with which a new FA's Binding Update to ``fa`` is wrapped."""
    return Secret(_hkdf(srk, _info(LABEL_HANDOFF, fa, fa, epoch), HANDOFF_KEY_LENGTH))


def derive_binding_key(gateway_key: Secret, home_agent: IPv4Address, gateway: IPv4Address) -> Secret:
    """The HA-GW pairwise key: the HA authenticates its Binding Updates to the
    gateway with it and wraps (RFC 5649) the keys they carry.

    Derived from the gateway's provisioned key, which only the gateway and the
    home AAA hold; the HA is told the derived key for its own address only, so
    one HA cannot speak for another. Not tied to a session: it is the
    "pairwise key that AAA distributed earlier" of docs/design.md section 3."""
    return Secret(hkdf_sha256(gateway_key.value, _info(LABEL_BINDING, home_agent, gateway, 0), BINDING_KEY_LENGTH))


LABEL_BINDING_AUTH = b"aaa-vpn binding auth"
LABEL_BINDING_WRAP = b"aaa-vpn binding wrap"


def binding_subkeys(binding_key: Secret) -> tuple[Secret, Secret]:
    """(authentication key, key-wrapping key) of an HA-GW binding key: one key,
    one purpose (docs/protocol.md section 3.6). Binding messages are
    authenticated with the first; the VPN keys they carry are wrapped
    (RFC 5649) with the second."""
    return (
        Secret(hkdf_sha256(binding_key.value, LABEL_BINDING_AUTH, 16)),
        Secret(hkdf_sha256(binding_key.value, LABEL_BINDING_WRAP, 32)),
    )


LABEL_SPI = b"aaa-vpn spi"


def derive_spi(srk: Secret, name: str, epoch: int, low: int, high: int) -> int:
    """An SPI in [low, high] derived from the session root key for the SA
    ``name`` (``<path label>@<receiving node>``) in ``epoch``.

    Used when a session moves (flows C and D): the foreign AAA that answers a
    same-domain handoff and the home AAA that learns of it from the HA must
    arrive at the same SPIs without talking to each other. Uniqueness on the
    receiving node is probabilistic (24 bits); a collision fails that
    registration, and the node's next attempt moves to the next epoch."""
    info = LABEL_SPI + b"\x00" + name.encode() + struct.pack("!I", epoch)
    value = int.from_bytes(_hkdf(srk, info, 8), "big")
    return low + value % (high - low + 1)


LABEL_HANDOFF_AUTH = b"aaa-vpn handoff auth"
LABEL_HANDOFF_WRAP = b"aaa-vpn handoff wrap"


def handoff_subkeys(handoff_key: Secret) -> tuple[Secret, Secret]:
    """(authentication key, key-wrapping key) of a per-FA handoff key (flow E):
    the new FA authenticates its Previous-FA Notification with the first and
    wraps (RFC 5649) the forwarding path's keys with the second; the previous
    FA, which holds the same handoff key, derives both itself. Labels of their
    own, so they never equal the subkeys of an HA-GW binding key."""
    return (
        Secret(hkdf_sha256(handoff_key.value, LABEL_HANDOFF_AUTH, 16)),
        Secret(hkdf_sha256(handoff_key.value, LABEL_HANDOFF_WRAP, 32)),
    )
