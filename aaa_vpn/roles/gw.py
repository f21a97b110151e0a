"""The correspondent gateway (GW), sans-IO.

Rules (DESIGN.md flows A and B; docs/protocol.md section 3.6):

1. A gateway accepts Binding Updates only from home agents it trusts
   (``home_agents``; empty: any) and only with a valid binding
   authenticator under the HA-GW binding key, which it derives itself from its
   provisioned gateway key and the sender's address
   (:func:`aaa_vpn.keys.derive_binding_key`). Anything else is dropped and
   counted, never answered: an unauthenticated sender gets nothing back.
2. The Identification must be a timestamp newer than the last one accepted
   from that HA for that home address (RFC 5944 section 5.7; status 133).
   Unknown critical vendor extensions give status 140; VPN information that
   does not unwrap, or paths that do not end at this gateway, 160.
3. The paths are installed all or nothing (else 161) under an owner of their
   own, and only then does the old binding of that home address lose its
   paths (make before break). The very same paths again only refresh the
   binding's lifetime. Lifetime 0 removes the binding.
4. The Binding Acknowledge echoes home address, care-of address and
   identification, carries the granted lifetime and is authenticated with the
   same key. A binding expires with its lifetime, and its paths with it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from aaa_vpn import keys
from aaa_vpn.roles.agent import Address, Agent, Channel, DeletePaths, InstallPaths, RegistrationDone
from aaa_vpn.roles.ha import BINDING_SPI
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import BindingAcknowledge, BindingStatus, BindingUpdate, ExtensionType, GeneralizedAuthSubtype
from aaa_vpn.wire.mip_auth import append_generalized_authentication, verify_authentication
from aaa_vpn.wire.mip_replay import check_timestamp
from aaa_vpn.wire.mip_vpn import VpnInformationError, unknown_critical_extensions, vpn_paths
from aaa_vpn.wire.profile import PathProfile


@dataclass(frozen=True)
class GwConfig:
    """How one correspondent gateway runs."""

    address: IPv4Address
    gateway_key: Secret = field(repr=False)
    """The key provisioned for this gateway (``aaa-vpn gateway show --show-secrets``)."""
    home_agents: frozenset[IPv4Address] = frozenset()
    """Home agents whose Binding Updates it accepts; empty: any that authenticates."""
    max_lifetime: int = 1800
    replay_tolerance: float = 7.0


@dataclass
class GwBinding:
    """Where a mobile node's traffic goes from this gateway, and the paths for it."""

    home_address: IPv4Address
    care_of_address: IPv4Address
    home_agent: IPv4Address
    owner: str
    expires: float
    paths: tuple[PathProfile, ...] = field(repr=False)


@dataclass
class _Pending:
    update: BindingUpdate
    source: Address
    auth_key: Secret
    paths: tuple[PathProfile, ...]
    lifetime: int


class CorrespondentGateway(Agent):
    """One gateway in front of correspondent hosts."""

    def __init__(self, config: GwConfig) -> None:
        super().__init__()
        self.config = config
        self.bindings: dict[IPv4Address, GwBinding] = {}
        self._last: dict[tuple[IPv4Address, IPv4Address], int] = {}
        self._pending: dict[str, _Pending] = {}
        self._binding_timers: dict[IPv4Address, int] = {}

    def receive_datagram(self, channel: Channel, data: bytes, source: Address, now: float) -> None:
        if channel is not Channel.MIP:
            self.counters["dropped.unexpected"] += 1
            return
        try:
            message = mip.decode_message(data)
        except mip.MipDecodeError:
            self.counters["dropped.malformed"] += 1
            return
        if not isinstance(message, BindingUpdate):
            self.counters["dropped.unexpected"] += 1
            return
        self._binding_update(data, message, source, now)

    def paths_installed(self, owner: str, error: str | None, now: float) -> None:
        pending = self._pending.pop(owner, None)
        if pending is None:
            return
        update = pending.update
        if error is not None:
            self._acknowledge(pending.source, pending.auth_key, update, BindingStatus.SA_INSTALL_FAILED, 0, error)
            return
        old = self.bindings.get(update.home_address)
        if old is not None:
            self._emit(DeletePaths(old.owner))
        ha = IPv4Address(pending.source[0])
        binding = GwBinding(
            update.home_address, update.care_of_address, ha, owner, now + pending.lifetime, pending.paths
        )
        self.bindings[update.home_address] = binding
        self._cancel(self._binding_timer(update.home_address))
        self._binding_timers[update.home_address] = self._call_at(
            binding.expires, functools.partial(self._expire, update.home_address)
        )
        self._acknowledge(pending.source, pending.auth_key, update, BindingStatus.ACCEPTED, pending.lifetime, "")

    # -- Binding Update ---------------------------------------------------------------------------
    def _binding_update(self, data: bytes, update: BindingUpdate, source: Address, now: float) -> None:
        self.counters["binding_updates"] += 1
        ha = IPv4Address(source[0])
        if self.config.home_agents and ha not in self.config.home_agents:
            self.counters["dropped.unknown_home_agent"] += 1
            return
        binding_key = keys.derive_binding_key(self.config.gateway_key, ha, self.config.address)
        auth_key, wrap_key = keys.binding_subkeys(binding_key)
        if not verify_authentication(
            data, ExtensionType.GENERALIZED_AUTH, auth_key, subtype=GeneralizedAuthSubtype.BINDING, spi=BINDING_SPI
        ):
            self.counters["dropped.bad_binding_auth"] += 1
            return
        verdict = check_timestamp(
            update.identification, now, self._last.get((ha, update.home_address)), self.config.replay_tolerance
        )
        if not verdict.ok:
            self._acknowledge(source, auth_key, update, BindingStatus.IDENTIFICATION_MISMATCH, 0, verdict.reason)
            return
        self._last[(ha, update.home_address)] = update.identification
        if unknown_critical_extensions(update.extensions):
            self._acknowledge(source, auth_key, update, BindingStatus.UNKNOWN_VPN_INFORMATION, 0, "unknown CVSE")
            return
        if update.lifetime == 0:
            self._remove(update.home_address)
            self._acknowledge(source, auth_key, update, BindingStatus.ACCEPTED, 0, "binding removed")
            return
        try:
            paths = vpn_paths(update.extensions, wrap_key)
        except (VpnInformationError, mip.MipDecodeError) as exc:
            self._acknowledge(source, auth_key, update, BindingStatus.VPN_INFORMATION_INVALID, 0, str(exc))
            return
        if not paths or any(p.local != self.config.address for p in paths):
            self._acknowledge(
                source, auth_key, update, BindingStatus.VPN_INFORMATION_INVALID, 0, "paths do not end here"
            )
            return
        lifetime = min(update.lifetime, self.config.max_lifetime)
        current = self.bindings.get(update.home_address)
        if current is not None and current.paths == paths and current.home_agent == ha:
            # The same paths again (a renewal, or a handoff that did not move
            # this gateway's stationary path): refresh the binding's lifetime.
            current.expires = now + lifetime
            current.care_of_address = update.care_of_address
            self._cancel(self._binding_timer(update.home_address))
            self._binding_timers[update.home_address] = self._call_at(
                current.expires, functools.partial(self._expire, update.home_address)
            )
            self._acknowledge(source, auth_key, update, BindingStatus.ACCEPTED, lifetime, "binding refreshed")
            return
        owner = f"binding:{update.home_address}:{update.identification:016x}"
        self._pending[owner] = _Pending(update, source, auth_key, paths, lifetime)
        self._emit(InstallPaths(owner, paths))

    def _acknowledge(
        self,
        source: Address,
        auth_key: Secret,
        update: BindingUpdate,
        status: BindingStatus,
        lifetime: int,
        detail: str,
    ) -> None:
        ack = BindingAcknowledge(
            status=status,
            lifetime=lifetime,
            home_address=update.home_address,
            care_of_address=update.care_of_address,
            identification=update.identification,
        )
        data = append_generalized_authentication(
            mip.encode_binding_message(ack), GeneralizedAuthSubtype.BINDING, BINDING_SPI, auth_key
        )
        self.counters[f"acknowledged.{int(status)}"] += 1
        self._send(Channel.MIP, data, source)
        self._emit(RegistrationDone("", update.home_address, int(status), lifetime, detail))

    # -- expiry -----------------------------------------------------------------------------------
    def _binding_timer(self, home_address: IPv4Address) -> int | None:
        return self._binding_timers.pop(home_address, None)

    def _expire(self, home_address: IPv4Address, now: float) -> None:
        binding = self.bindings.get(home_address)
        if binding is not None and binding.expires <= now:
            self.counters["bindings_expired"] += 1
            self._remove(home_address)

    def _remove(self, home_address: IPv4Address) -> None:
        binding = self.bindings.pop(home_address, None)
        self._cancel(self._binding_timer(home_address))
        if binding is not None:
            self._emit(DeletePaths(binding.owner))

    def home_addresses(self) -> Iterable[IPv4Address]:
        return self.bindings.keys()
