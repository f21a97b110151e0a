"""Carrying out what the mobility agents ask for: SA installation and removal.

An agent emits :class:`~aaa_vpn.roles.agent.InstallPaths` and
:class:`~aaa_vpn.roles.agent.DeletePaths`; :class:`SaExecutor` performs them on
an SA backend and reports installations back. Installation is all or nothing
across the paths of one event: if one path fails, the ones installed before it
are removed again, so no node is ever left with half a registration.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aaa_vpn.roles.agent import DeletePaths, Event, InstallPaths, RegistrationDone
from aaa_vpn.sa.base import SaBackend, SaError
from aaa_vpn.service.logging import fields

log = logging.getLogger("aaa_vpn.agents")


class _Agent(Protocol):
    def next_event(self) -> Event | None: ...
    def paths_installed(self, owner: str, error: str | None, now: float) -> None: ...


class SaExecutor:
    """Performs one node's SA events on its backend."""

    def __init__(self, backend: SaBackend, node: str = "") -> None:
        self.backend = backend
        self.node = node

    def install(self, event: InstallPaths) -> str | None:
        """Install every path of ``event``; on failure remove those just
        installed and return why (None on success)."""
        before = {(p.owner, p.spi_in) for p in self.backend.paths()}
        try:
            for path in event.paths:
                self.backend.install(path, event.owner)
        except SaError as exc:
            for installed in self.backend.paths():
                if installed.owner == event.owner and (installed.owner, installed.spi_in) not in before:
                    self.backend.delete(event.owner, installed.peer)
            log.warning("SA installation failed", extra=fields(node=self.node, owner=event.owner, error=str(exc)))
            return str(exc)
        log.info("SAs installed", extra=fields(node=self.node, owner=event.owner, paths=len(event.paths)))
        return None

    def delete(self, event: DeletePaths) -> int:
        removed = self.backend.delete(event.owner, event.peer)
        if removed:
            log.info("SAs removed", extra=fields(node=self.node, owner=event.owner, paths=removed))
        return removed


def run_events(agent: _Agent, executor: SaExecutor | None, now: float) -> list[Event]:
    """Carry out the agent's SA events (feeding installation results back,
    which may cause more events) and return the others, in order."""
    others: list[Event] = []
    while (event := agent.next_event()) is not None:
        if isinstance(event, InstallPaths):
            error = executor.install(event) if executor is not None else "no SA backend on this node"
            agent.paths_installed(event.owner, error, now)
        elif isinstance(event, DeletePaths):
            if executor is not None:
                executor.delete(event)
        else:
            if isinstance(event, RegistrationDone):
                log.info(
                    "registration decided",
                    extra=fields(
                        node=executor.node if executor else "",
                        nai=event.nai,
                        home_address=str(event.home_address),
                        code=event.code,
                        lifetime=event.lifetime,
                        detail=event.detail,
                    ),
                )
            others.append(event)
    return others
