"""The correspondent gateway (GW), sans-IO.

Rules (docs/design.md flows A and B; docs/protocol.md section 3.6):

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
   own and become the binding of that home address. The binding they
   replace keeps its paths for ``hold_replaced`` seconds (make before break,
   until the HA's registration is through): a Binding Update that carries
   the new binding's paths again (the HA's confirmation once it accepted the
   registration, or any later refresh) removes them, and one that carries
   the replaced binding's paths (the HA's restoration when the registration
   failed after this gateway acknowledged) puts the replaced binding back as
   it was -- its SAs never left, so no key is installed twice -- and removes
   the new one's. The very same paths again only refresh the binding's
   lifetime. Every update names the HA's session and epoch (the
   session NVSE, docs/protocol.md section 3.8a); the binding keeps the label
   of the last update it took. Lifetime 0 (a withdrawal) removes the binding
   only if it is the one the withdrawal is about: from the same HA, of the
   same session and of an epoch no later than the withdrawal's; any other
   binding of the home address stays, and the withdrawal is acknowledged
   all the same (status 0, nothing removed).
4. The Binding Acknowledge (sent when the update's A flag asks for one)
   echoes home address, care-of address and identification, carries the
   granted lifetime and is authenticated with the same key. A retransmitted
   update (same HA, home address and identification as the last one
   answered) gets the same acknowledgement again and changes nothing; one
   that arrives while its paths are being installed is answered once they
   are. Paths whose installation ends after a newer update from the same HA
   was taken (a restoration, a withdrawal) are removed again and answered
   133: the HA no longer wants them.
5. Lifetimes (flow G; docs/protocol.md section 3.10). When a binding's
   remaining lifetime falls to ``refresh_threshold`` of the lifetime granted,
   the gateway sends the binding's HA a Binding Request authenticated like a
   Binding Update, with a timestamp Identification strictly greater than any
   it sent before, and repeats it ``refresh_retries`` times before the
   lifetime ends, each interval twice the one before (the last repeat goes
   out before half of that window is left). Any Binding Update for the home address (rules 1
   to 3) renews the binding and stops the requests. An update that moves the
   expiry by no more than a second (the HA's own binding ends there too) is
   not asked about again. A binding that nothing renews expires, and its
   paths with it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn import keys
from aaa_vpn.roles.agent import Address, Agent, Channel, DeletePaths, InstallPaths, RegistrationDone, backoff
from aaa_vpn.roles.ha import BINDING_SPI
from aaa_vpn.secret import Secret
from aaa_vpn.wire import mip
from aaa_vpn.wire.mip import (
    BindingAcknowledge,
    BindingRequest,
    BindingStatus,
    BindingUpdate,
    ExtensionType,
    GeneralizedAuthSubtype,
)
from aaa_vpn.wire.mip_auth import append_generalized_authentication, verify_authentication
from aaa_vpn.wire.mip_replay import check_timestamp, timestamp_identification
from aaa_vpn.wire.mip_vpn import VpnInformationError, session_of, unknown_critical_extensions, vpn_paths
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
    refresh_threshold: float = 0.2
    """Ask the HA to refresh a binding when its remaining lifetime falls to
    this fraction of the lifetime granted (0 < x < 1)."""
    refresh_retries: int = 3
    """Binding Requests repeated after the first, evenly spaced before expiry."""
    hold_replaced: float = 10.0
    """Seconds a replaced binding keeps its paths while the HA may still
    restore it (rule 3): longer than an HA's gateway timeout and the
    retransmissions of its restoration (docs/protocol.md section 3.11)."""

    def __post_init__(self) -> None:
        if not 0 < self.refresh_threshold < 1:
            raise ValueError(f"refresh threshold {self.refresh_threshold!r} must be between 0 and 1 (exclusive)")
        if self.refresh_retries < 0:
            raise ValueError(f"refresh retries {self.refresh_retries!r} must be >= 0")


#: A renewal that moves the expiry by no more than this (seconds) did not
#: extend the binding: the HA's binding ends there too, so asking again is useless.
RENEWAL_SLACK = 1.0


@dataclass
class GwBinding:
    """Where a mobile node's traffic goes from this gateway, and the paths for it."""

    home_address: IPv4Address
    care_of_address: IPv4Address
    home_agent: IPv4Address
    owner: str
    expires: float
    paths: tuple[PathProfile, ...] = field(repr=False)
    lifetime: int = 0
    """The lifetime granted by the last Binding Update (seconds)."""
    home_agent_port: int = 434
    """The UDP port the HA's Binding Updates come from: Binding Requests go there."""
    requests_sent: int = 0
    """Binding Requests sent for the current expiry."""
    asked_for: float | None = None
    """The expiry the first of those requests was about (None: not asked yet)."""
    session: tuple[str, int] | None = None
    """(session id, epoch) of the last Binding Update taken (None: it named none)."""
    replaced: GwBinding | None = None
    """The binding this one replaced, its paths still installed while the HA
    may restore it (rule 3)."""


@dataclass
class _Pending:
    update: BindingUpdate
    source: Address
    auth_key: Secret
    paths: tuple[PathProfile, ...]
    lifetime: int
    session: tuple[str, int] | None = None


class CorrespondentGateway(Agent):
    """One gateway in front of correspondent hosts."""

    def __init__(self, config: GwConfig, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        self.config = config
        self.random_bytes = random_bytes
        self.bindings: dict[IPv4Address, GwBinding] = {}
        self._last: dict[tuple[IPv4Address, IPv4Address], int] = {}
        self._pending: dict[str, _Pending] = {}
        # (HA, home address) -> (identification, acknowledgement) of the last update answered
        self._answers: dict[tuple[IPv4Address, IPv4Address], tuple[int, bytes]] = {}
        # per home address: the expiry timer and the next Binding Request's timer
        self._binding_timers: dict[IPv4Address, int] = {}
        self._refresh_timers: dict[IPv4Address, int] = {}
        self._hold_timers: dict[IPv4Address, int] = {}
        self._last_sent = 0

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
            # A Binding Request is the gateway's own message, never answered here.
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
        ha = IPv4Address(pending.source[0])
        if self._last.get((ha, update.home_address), 0) > update.identification:
            # The HA sent a newer update (a restoration, a withdrawal) while
            # these paths were being installed: it no longer wants them.
            self.counters["superseded"] += 1
            self._emit(DeletePaths(owner))
            self._acknowledge(
                pending.source, pending.auth_key, update, BindingStatus.IDENTIFICATION_MISMATCH, 0, "superseded"
            )
            return
        old = self.bindings.get(update.home_address)
        binding = GwBinding(
            update.home_address,
            update.care_of_address,
            ha,
            owner,
            now + pending.lifetime,
            pending.paths,
            lifetime=pending.lifetime,
            home_agent_port=pending.source[1],
            session=pending.session,
        )
        if old is not None:
            # Rule 3: the old binding's paths stay while the HA may restore it.
            self._release(old)
            binding.replaced = old
            self._cancel(self._hold_timers.pop(update.home_address, None))
            self._hold_timers[update.home_address] = self._call_at(
                now + self.config.hold_replaced, functools.partial(self._hold_over, update.home_address, old)
            )
        self.bindings[update.home_address] = binding
        self._schedule(binding, now)
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
        answered = self._answers.get((ha, update.home_address))
        if answered is not None and answered[0] == update.identification:
            # A retransmission of the update answered last: the same answer, nothing else.
            self.counters["duplicates"] += 1
            if update.acknowledge:
                self._send(Channel.MIP, answered[1], source)
            return
        if any(
            (IPv4Address(p.source[0]), p.update.home_address, p.update.identification)
            == (ha, update.home_address, update.identification)
            for p in self._pending.values()
        ):
            self.counters["duplicates"] += 1  # its paths are being installed: answered then
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
        try:
            session = session_of(update.extensions)
        except mip.MipDecodeError as exc:
            self._acknowledge(source, auth_key, update, BindingStatus.POORLY_FORMED, 0, str(exc))
            return
        if update.lifetime == 0:
            current = self.bindings.get(update.home_address)
            if current is not None and not _withdraws(current, ha, session):
                # Rule 3: a withdrawal removes only the binding it is about.
                self.counters["withdrawals_of_another_binding"] += 1
                self._acknowledge(source, auth_key, update, BindingStatus.ACCEPTED, 0, "not this binding: kept")
                return
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
            # The same paths again (a renewal, an answer to a Binding Request,
            # a handoff that did not move this gateway's stationary path, or
            # the HA confirming a registration): refresh the binding's
            # lifetime; the binding it replaced is not needed any more.
            asked = current.requests_sent > 0
            self._renew(current, update, source, session, lifetime, now)
            if current.replaced is not None:
                self.counters["replaced_released"] += 1
                self._release(current)
            if asked:
                self.counters["bindings_refreshed"] += 1
            self._acknowledge(source, auth_key, update, BindingStatus.ACCEPTED, lifetime, "binding refreshed")
            return
        held = current.replaced if current is not None else None
        if current is not None and held is not None and held.paths == paths and held.home_agent == ha:
            # Rule 3: the HA restores the binding this one replaced (the
            # registration that replaced it failed): its paths never left.
            self._emit(DeletePaths(current.owner))
            current.replaced = None
            self._cancel(self._hold_timers.pop(update.home_address, None))
            self.bindings[update.home_address] = held
            self._renew(held, update, source, session, lifetime, now)
            self.counters["bindings_restored"] += 1
            self._acknowledge(source, auth_key, update, BindingStatus.ACCEPTED, lifetime, "binding restored")
            return
        owner = f"binding:{update.home_address}:{update.identification:016x}"
        self._pending[owner] = _Pending(update, source, auth_key, paths, lifetime, session)
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
        self._answers[(IPv4Address(source[0]), update.home_address)] = (update.identification, data)
        if update.acknowledge:
            self.counters[f"acknowledged.{int(status)}"] += 1
            self._send(Channel.MIP, data, source)
        self._emit(RegistrationDone("", update.home_address, int(status), lifetime, detail))

    def _renew(
        self,
        binding: GwBinding,
        update: BindingUpdate,
        source: Address,
        session: tuple[str, int] | None,
        lifetime: int,
        now: float,
    ) -> None:
        binding.expires = now + lifetime
        binding.lifetime = lifetime
        binding.care_of_address = update.care_of_address
        binding.home_agent_port = source[1]
        binding.session = session
        self._schedule(binding, now)

    def _release(self, binding: GwBinding) -> None:
        """Rule 3: the binding ``binding`` replaced loses its paths now."""
        held, binding.replaced = binding.replaced, None
        if held is not None:
            self._cancel(self._hold_timers.pop(binding.home_address, None))
            self._emit(DeletePaths(held.owner))

    def _hold_over(self, home_address: IPv4Address, held: GwBinding, now: float) -> None:
        self._hold_timers.pop(home_address, None)
        current = self.bindings.get(home_address)
        if current is not None and current.replaced is held:
            self.counters["replaced_expired"] += 1
            self._release(current)

    # -- lifetimes: Binding Requests and expiry --------------------------------------------------
    def _schedule(self, binding: GwBinding, now: float) -> None:
        """(Re)arm a binding's timers after a Binding Update set its expiry."""
        home_address = binding.home_address
        self._cancel(self._binding_timers.pop(home_address, None))
        self._cancel(self._refresh_timers.pop(home_address, None))
        self._binding_timers[home_address] = self._call_at(
            binding.expires, functools.partial(self._expire, home_address)
        )
        binding.requests_sent = 0
        if binding.asked_for is not None and binding.expires <= binding.asked_for + RENEWAL_SLACK:
            # The HA answered, but its binding ends when ours does: only a new
            # registration (which brings its own Binding Update) extends it.
            return
        binding.asked_for = None
        self._refresh_timers[home_address] = self._call_at(
            binding.expires - self._window(binding), functools.partial(self._refresh, home_address)
        )

    def _window(self, binding: GwBinding) -> float:
        """Seconds before expiry in which the gateway asks for a refresh."""
        return binding.lifetime * self.config.refresh_threshold

    def _refresh(self, home_address: IPv4Address, now: float) -> None:
        self._refresh_timers.pop(home_address, None)
        binding = self.bindings.get(home_address)
        if binding is None or binding.expires <= now:
            return
        if binding.asked_for is None:
            binding.asked_for = binding.expires
        binding.requests_sent += 1
        self._send_binding_request(binding, now)
        if binding.requests_sent <= self.config.refresh_retries:
            # Backoff: intervals of t, 2t, 4t ... with t = window / 2^(retries + 1),
            # so the last repeat leaves at least half the window for an answer.
            first = self._window(binding) / 2 ** (self.config.refresh_retries + 1)
            interval = backoff(first, binding.requests_sent)
            if now + interval < binding.expires:
                self._refresh_timers[home_address] = self._call_at(
                    now + interval, functools.partial(self._refresh, home_address)
                )

    def _identification(self, now: float) -> int:
        """A timestamp Identification (RFC 5944 section 5.7), strictly greater
        than any this gateway sent before: the HA refuses one that is not newer."""
        identification = max(
            timestamp_identification(now, int.from_bytes(self.random_bytes(2), "big") & 0xFFF), self._last_sent + 1
        )
        self._last_sent = identification
        return identification

    def _send_binding_request(self, binding: GwBinding, now: float) -> None:
        binding_key = keys.derive_binding_key(self.config.gateway_key, binding.home_agent, self.config.address)
        auth_key, _ = keys.binding_subkeys(binding_key)
        request = BindingRequest(binding.home_address, self._identification(now))
        data = append_generalized_authentication(
            mip.encode_binding_message(request), GeneralizedAuthSubtype.BINDING, BINDING_SPI, auth_key
        )
        self.counters["binding_requests"] += 1
        self._send(Channel.MIP, data, (str(binding.home_agent), binding.home_agent_port))

    def _expire(self, home_address: IPv4Address, now: float) -> None:
        binding = self.bindings.get(home_address)
        if binding is not None and binding.expires <= now:
            self.counters["bindings_expired"] += 1
            self._remove(home_address)

    def _remove(self, home_address: IPv4Address) -> None:
        binding = self.bindings.pop(home_address, None)
        self._cancel(self._binding_timers.pop(home_address, None))
        self._cancel(self._refresh_timers.pop(home_address, None))
        if binding is not None:
            self._release(binding)
            self._emit(DeletePaths(binding.owner))
            self._answers.pop((binding.home_agent, home_address), None)

    # -- restart (docs/agents.md, "Restart") ------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        return {
            "bindings": [
                {
                    "home_address": str(b.home_address),
                    "care_of_address": str(b.care_of_address),
                    "home_agent": str(b.home_agent),
                    "owner": b.owner,
                    "expires": b.expires,
                    "lifetime": b.lifetime,
                    "home_agent_port": b.home_agent_port,
                    "session": list(b.session) if b.session is not None else None,
                    "paths": b.paths,
                }
                for b in self.bindings.values()
            ],
            "last": [[str(ha), str(home), i] for (ha, home), i in self._last.items()],
            "last_sent": self._last_sent,
        }

    def restore_state(self, state: dict[str, Any], now: float) -> None:
        for ha, home, identification in state.get("last", []):
            self._last[(IPv4Address(ha), IPv4Address(home))] = int(identification)
        self._last_sent = max(self._last_sent, int(state.get("last_sent", 0)))
        for entry in state.get("bindings", []):
            if entry["expires"] <= now:
                continue
            binding = GwBinding(
                home_address=IPv4Address(entry["home_address"]),
                care_of_address=IPv4Address(entry["care_of_address"]),
                home_agent=IPv4Address(entry["home_agent"]),
                owner=entry["owner"],
                expires=entry["expires"],
                paths=tuple(entry["paths"]),
                lifetime=int(entry["lifetime"]),
                home_agent_port=int(entry["home_agent_port"]),
                session=(str(entry["session"][0]), int(entry["session"][1])) if entry.get("session") else None,
            )
            self.bindings[binding.home_address] = binding
            self._schedule(binding, now)

    def owners(self) -> set[str]:
        # A replaced binding's paths are not kept across a restart (its hold ends).
        return {b.owner for b in self.bindings.values()}

    def exchanges(self) -> int:
        # a replaced binding waits for the HA's confirmation or restoration
        return len(self._pending) + sum(b.replaced is not None for b in self.bindings.values())

    def held_owners(self) -> set[str]:
        """The owners of replaced bindings whose paths are still installed (rule 3)."""
        return {b.replaced.owner for b in self.bindings.values() if b.replaced is not None}

    def forget_unbacked(self, installed: set[str], now: float) -> None:
        for home in [h for h, b in self.bindings.items() if b.owner not in installed]:
            self.counters["restart.bindings_without_sas"] += 1
            self._remove(home)

    def home_addresses(self) -> Iterable[IPv4Address]:
        return self.bindings.keys()


def _withdraws(binding: GwBinding, ha: IPv4Address, session: tuple[str, int] | None) -> bool:
    """Rule 3: whether a withdrawal from ``ha`` naming ``session`` (session id,
    epoch) is about ``binding``. Unlabelled withdrawals or bindings: yes."""
    if binding.home_agent != ha:
        return False
    if session is None or binding.session is None:
        return True
    return binding.session[0] == session[0] and binding.session[1] <= session[1]
