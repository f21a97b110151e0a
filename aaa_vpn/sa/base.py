"""The SA backend interface: how the service layer turns a path of a VPN profile
into IPsec security associations on this node, and takes them down again.

Rules (what every backend guarantees):

* The unit is one *path* (:class:`~aaa_vpn.wire.profile.PathProfile`) as seen
  from its ``local`` end, installed with :meth:`SaBackend.install` as one
  transaction: the inbound SA (``spi_in``/``key_in``, peer -> local), the
  outbound SA (``spi_out``/``key_out``, local -> peer) and the outbound policy
  ``local_ts -> remote_ts`` (RFC 4301 section 4.4.1) with its inbound
  counterpart (RFC 4301 section 5.2). Either all of it is in place afterwards
  or, when it raises, nothing of it is.
* Every installed path belongs to an *owner*, an opaque string chosen by the
  caller (:func:`path_owner` builds the usual ``session/role`` form).
  :meth:`SaBackend.delete` removes by owner, optionally only the paths toward
  one peer; that is how a handoff replaces the SA toward the old FA.
* Installing the identical path again under the same owner is a no-op that
  returns the existing entry (a retransmitted Access-Accept must not reset
  sequence counters). Another path with an inbound SPI that is already in use
  on the node raises :class:`SaConflict` (with manual keys the SPI alone
  selects the inbound SA, RFC 4303 section 2.1; with IKE it names the path).
* Tunnel mode only (docs/design.md section 4). Lifetimes are enforced by the agents'
  timers, which call :meth:`SaBackend.delete`; a backend may also expire SAs
  itself (strongSwan does) but never silently keeps one past ``lifetime``.

Errors say whose fault they are: :class:`SaConflict` and :class:`SaUnsupported`
are about this node's state and abilities; :class:`SaError` itself covers the
rest (an invalid path, a backend that is closed or failing).

Backends (``docs/sa-backends.md``): ``memory`` (:mod:`aaa_vpn.sa.memory`),
``strongswan`` (:mod:`aaa_vpn.sa.strongswan`: a charon over VICI; the
profile's SPIs name the path there, the SPIs on the wire are IKE's), ``xfrm``
(:mod:`aaa_vpn.sa.xfrm`: the kernel) and ``userspace``
(:mod:`aaa_vpn.sa.userspace`: the project's own ESP on a TUN device).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aaa_vpn.model import EspTransform, GatewayMode, KeyMode
from aaa_vpn.secret import Secret
from aaa_vpn.wire.profile import PathProfile, PathRole, QosSpec

if TYPE_CHECKING:  # the memory backend defines the counters' shape and imports this module
    from aaa_vpn.sa.memory import SaCounters

#: Lowest SPI an SA may use: 1-255 are reserved by IANA (RFC 4303 section 2.1).
SPI_MIN = 256
SPI_MAX = 0xFFFFFFFF


class SaError(Exception):
    """The backend could not do what was asked; nothing was changed."""


class SaConflict(SaError):
    """The inbound SPI is already in use on this node (by another path or owner)."""


class SaUnsupported(SaError):
    """The backend cannot provide this path, e.g. its ESP transform is not available here."""


@dataclass(frozen=True)
class InstalledPath:
    """One path in place on this node: both SAs and the policy, and who owns them."""

    owner: str
    path: PathProfile

    @property
    def peer(self) -> IPv4Address:
        return self.path.peer

    @property
    def spi_in(self) -> int:
        """The inbound SA's SPI (peer -> local)."""
        return self.path.spi_in

    @property
    def spi_out(self) -> int:
        """The outbound SA's SPI (local -> peer)."""
        return self.path.spi_out


def path_owner(session_id: str, role: PathRole) -> str:
    """The usual owner string of a path: ``"<session id>/<ROLE>"``, e.g. ``"s42/FA_HA"``."""
    return f"{session_id}/{role.name}"


def validate_path(path: PathProfile, node: IPv4Address) -> None:
    """Raise :class:`SaError` unless ``path`` is a well-formed path of ``node``.

    Checks what every backend relies on: the path ends here and not at itself,
    both SPIs are outside the reserved range, the keying material has the
    transform's length (RFC 4106 section 8.1; RFC 3602 + RFC 4868), and there is
    at least one selector on each side."""
    if path.local != node:
        raise SaError(f"path is for {path.local}, not for this node {node}")
    if path.peer == node:
        raise SaError("a path's peer cannot be the node itself")
    for what, spi in (("inbound", path.spi_in), ("outbound", path.spi_out)):
        if not isinstance(spi, int) or not SPI_MIN <= spi <= SPI_MAX:
            raise SaError(f"invalid {what} SPI {spi!r}: {SPI_MIN}..{SPI_MAX} (RFC 4303 section 2.1)")
    need = path.esp_transform.keymat_length
    for what, key in (("inbound", path.key_in), ("outbound", path.key_out)):
        if len(key) != need:
            raise SaError(f"{what} key of {path.esp_transform.name} must be {need} octets, not {len(key)}")
    if not path.local_ts or not path.remote_ts:
        raise SaError("a path needs at least one local and one remote traffic selector")


def public_fields(path: PathProfile) -> dict[str, Any]:
    """``path``'s non-secret fields as JSON values: what a backend's side table
    keeps on disk (the keys, the PSK and the binding key never; whether there
    is a binding key, yes)."""
    return {
        "role": path.role.name,
        "local": str(path.local),
        "peer": str(path.peer),
        "local_ts": [str(n) for n in path.local_ts],
        "remote_ts": [str(n) for n in path.remote_ts],
        "key_mode": path.key_mode.value,
        "esp_transform": path.esp_transform.value,
        "spi_in": path.spi_in,
        "spi_out": path.spi_out,
        "lifetime": path.lifetime,
        "ike_proposal": path.ike_proposal,
        "qos": None
        if path.qos is None
        else {"name": path.qos.name, "dscp": path.qos.dscp, "rate_kbps": path.qos.rate_kbps},
        "gateway_mode": None if path.gateway_mode is None else path.gateway_mode.value,
        "binding_key": path.binding_key is not None,
    }


#: Stands in for a secret a backend does not keep (after a restart).
PLACEHOLDER = Secret(b"")


def path_from_public_fields(
    fields: Mapping[str, Any], key_in: Secret = PLACEHOLDER, key_out: Secret = PLACEHOLDER
) -> PathProfile:
    """The path :func:`public_fields` described, with ``key_in``/``key_out``
    (e.g. read back from the kernel) and placeholders for the PSK and the
    binding key where it had them. KeyError, ValueError if the fields are bad."""
    qos = fields["qos"]
    return PathProfile(
        role=PathRole[fields["role"]],
        local=IPv4Address(fields["local"]),
        peer=IPv4Address(fields["peer"]),
        local_ts=tuple(IPv4Network(n) for n in fields["local_ts"]),
        remote_ts=tuple(IPv4Network(n) for n in fields["remote_ts"]),
        key_mode=KeyMode(fields["key_mode"]),
        esp_transform=EspTransform(fields["esp_transform"]),
        spi_in=int(fields["spi_in"]),
        spi_out=int(fields["spi_out"]),
        key_in=key_in,
        key_out=key_out,
        lifetime=int(fields["lifetime"]),
        ike_proposal=fields["ike_proposal"],
        ike_psk=PLACEHOLDER if fields["key_mode"] == KeyMode.IKEV2.value else None,
        qos=None if qos is None else QosSpec(qos["name"], int(qos["dscp"]), int(qos["rate_kbps"])),
        gateway_mode=None if fields["gateway_mode"] is None else GatewayMode(fields["gateway_mode"]),
        binding_key=PLACEHOLDER if fields["binding_key"] else None,
    )


@runtime_checkable
class SaBackend(Protocol):
    """Where a node's SAs go. One instance per node; not thread-safe."""

    def install(self, path: PathProfile, owner: str) -> InstalledPath:
        """Install both directions of ``path`` and its policy, atomically.

        Raises :class:`SaConflict` if ``path.spi_in`` is in use here,
        :class:`SaUnsupported` if the transform is not available, :class:`SaError`
        for anything else; in every case nothing is left installed."""
        ...

    def delete(self, owner: str, peer: IPv4Address | None = None) -> int:
        """Remove the paths of ``owner`` (only those toward ``peer`` if given);
        return how many were removed (0 is not an error)."""
        ...

    def paths(self) -> list[InstalledPath]:
        """What is installed now, in installation order."""
        ...

    def counters(self, owner: str | None = None) -> list[SaCounters]:
        """Per-SA packet and octet counts of ``owner``'s paths (all, if None),
        inbound then outbound per path: what accounting reports
        (docs/accounting.md). An SA gone from the store counts nothing."""
        ...

    def close(self) -> None:
        """Release the backend's resources; afterwards every other call raises :class:`SaError`.

        Installed SAs outlive ``close`` where the backend's store does (kernel,
        charon), so that a restarted agent finds them with :meth:`paths`; the
        memory backend forgets them."""
        ...


@runtime_checkable
class PendingPath(Protocol):
    """A path whose installation a :class:`StagedBackend` has begun and not finished."""

    owner: str
    path: PathProfile


@runtime_checkable
class StagedBackend(Protocol):
    """A backend whose installs wait for the peer (an IKE exchange) and can run
    that wait in the background: :meth:`begin_install` returns at once, either
    the installed path (nothing to wait for) or a :class:`PendingPath` that
    :meth:`finish_install` completes (or raises for, with nothing left, as
    :meth:`SaBackend.install` would). The caller may do other work in between
    (an HA tells its gateways while it negotiates with the FA), but calls
    nothing else of the backend for the same owner."""

    def begin_install(self, path: PathProfile, owner: str) -> InstalledPath | PendingPath: ...

    def finish_install(self, pending: Any) -> InstalledPath: ...
