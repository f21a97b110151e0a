"""Carrying out what the mobility agents ask for: SA installation and removal,
and the record of what happened. The one event runner of the agents, used by
the daemons (net/agents.py) and by the in-process test harness alike.

An agent emits :class:`~aaa_vpn.roles.agent.InstallPaths` and
:class:`~aaa_vpn.roles.agent.DeletePaths`; :class:`SaExecutor` performs them on
an SA backend and reports installations back. Installation is all or nothing
across the paths of one event: if one path fails, the ones installed before it
are removed again, so no node is ever left with half a registration.

:func:`run_events` drains an agent's events: SA events are carried out (and
their results fed back, which may cause more events), every SA change and
every registration decision (and every full table, as the roles report it:
rate-limited) is logged and handed to the optional ``note``
callback (the daemons' timeline), and the other events are returned in order.

Installs that wait for the peer: on a backend that can run that wait in the
background (:class:`~aaa_vpn.sa.base.StagedBackend`: strongSwan, whose
initiating end waits for the IKE exchange), an agent that has
``paths_started(owner, now)`` (the HA) hears of the start at once and may send
its datagrams meanwhile (the HA's Binding Updates go out while it negotiates
with the new FA, so the gateways' negotiations run at the same time);
:func:`finish_installs` then waits and reports ``paths_installed`` as before.
Every other agent and backend installs in one step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aaa_vpn.roles.agent import DeletePaths, Event, InstallPaths, LimitReached, RegistrationDone
from aaa_vpn.sa.base import InstalledPath, PendingPath, SaBackend, SaError, StagedBackend
from aaa_vpn.service.logging import fields
from aaa_vpn.wire import mip
from aaa_vpn.wire.profile import PathProfile

log = logging.getLogger("aaa_vpn.agents")

#: ``note(kind, now, **values)``: a record of what happened, for a timeline.
Note = Callable[..., None]


class _Agent(Protocol):
    def next_event(self) -> Event | None: ...
    def paths_installed(self, owner: str, error: str | None, now: float) -> None: ...


def path_fields(path: PathProfile) -> dict[str, Any]:
    """What logs and timelines say of a path: never a key."""
    return {
        "role": path.role.name,
        "peer": str(path.peer),
        "spi_in": path.spi_in,
        "spi_out": path.spi_out,
        "esp_transform": path.esp_transform.value,
    }


def reply_code_name(code: int) -> str:
    """``0`` -> ``accepted``, ``67`` -> ``fa mn failed authentication``."""
    try:
        return mip.ReplyCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"code {code}"


def binding_status_name(status: int) -> str:
    """A Binding Acknowledge status by name (``0`` -> ``accepted``)."""
    try:
        return mip.BindingStatus(status).name.lower().replace("_", " ")
    except ValueError:
        return f"status {status}"


@dataclass
class _Begun:
    """An InstallPaths whose paths are begun (:meth:`SaExecutor.begin`)."""

    event: InstallPaths
    before: set[tuple[str, int]]
    pending: list[PendingPath]
    error: str | None = None


class SaExecutor:
    """Performs one node's SA events on its backend."""

    def __init__(self, backend: SaBackend, node: str = "") -> None:
        self.backend = backend
        self.node = node
        self.before_delete: Callable[[str], None] | None = None
        """Called with an owner just before its SAs are removed (accounting reads their counters)."""
        self._begun: list[_Begun] = []

    @property
    def pending(self) -> bool:
        """Whether installs begun with :meth:`begin` wait for :meth:`finish`."""
        return bool(self._begun)

    def begin(self, event: InstallPaths) -> tuple[list[PathProfile], str | None] | None:
        """:meth:`install`, except that on a :class:`~aaa_vpn.sa.base.StagedBackend`
        the paths that wait for their peer are left negotiating in the
        background: None then, and :meth:`finish` gives the result later.
        Otherwise (nothing to wait for, a failure, another backend) the result
        at once, as :meth:`install` gives it."""
        backend = self.backend
        if not isinstance(backend, StagedBackend):
            return self.install(event)
        before = {(p.owner, p.spi_in) for p in backend.paths()}
        begun = _Begun(event, before, [])
        try:
            for path in event.paths:
                started = backend.begin_install(path, event.owner)
                if not isinstance(started, InstalledPath):
                    begun.pending.append(started)
        except SaError as exc:
            begun.error = str(exc)
        if begun.error is not None:
            self._wait(begun)  # what did start ends before it is undone
        if begun.error is not None or not begun.pending:
            return self._end(begun)
        self._begun.append(begun)
        return None

    def finish(self) -> list[tuple[InstallPaths, list[PathProfile], str | None]]:
        """Wait for every install :meth:`begin` left running; per event, as
        :meth:`install` returns it (a failure removes the event's new paths)."""
        results = []
        while self._begun:
            begun = self._begun.pop(0)
            self._wait(begun)
            added, error = self._end(begun)
            results.append((begun.event, added, error))
        return results

    def _wait(self, begun: _Begun) -> None:
        backend = self.backend
        assert isinstance(backend, StagedBackend)
        for pending in begun.pending:
            try:
                backend.finish_install(pending)
            except SaError as exc:
                begun.error = begun.error or str(exc)

    def _end(self, begun: _Begun) -> tuple[list[PathProfile], str | None]:
        event = begun.event
        if begun.error is not None:
            self._undo(event.owner, begun.before, begun.error)
            return [], begun.error
        added = [path for path in event.paths if (event.owner, path.spi_in) not in begun.before]
        for path in added:
            log.info("SA installed", extra=fields(node=self.node, owner=event.owner, **path_fields(path)))
        return added, None

    def _undo(self, owner: str, before: set[tuple[str, int]], error: str) -> None:
        for installed in self.backend.paths():
            if installed.owner == owner and (installed.owner, installed.spi_in) not in before:
                self.backend.delete(owner, installed.peer)
        log.warning("SA installation failed", extra=fields(node=self.node, owner=owner, error=error))

    def install(self, event: InstallPaths) -> tuple[list[PathProfile], str | None]:
        """Install every path of ``event``: the paths that were not there
        before, and None -- or, on failure, remove those just installed and
        return ([], why)."""
        before = {(p.owner, p.spi_in) for p in self.backend.paths()}
        try:
            for path in event.paths:
                self.backend.install(path, event.owner)
        except SaError as exc:
            self._undo(event.owner, before, str(exc))
            return [], str(exc)
        added = [path for path in event.paths if (event.owner, path.spi_in) not in before]
        for path in added:
            log.info("SA installed", extra=fields(node=self.node, owner=event.owner, **path_fields(path)))
        return added, None

    def delete(self, event: DeletePaths) -> list[InstalledPath]:
        """Remove the paths of ``event``; return those removed."""
        doomed = [
            p for p in self.backend.paths() if p.owner == event.owner and (event.peer is None or p.peer == event.peer)
        ]
        if doomed and self.before_delete is not None:
            self.before_delete(event.owner)
        self.backend.delete(event.owner, event.peer)
        for installed in doomed:
            log.info("SA removed", extra=fields(node=self.node, owner=installed.owner, **path_fields(installed.path)))
        return doomed


def run_events(
    agent: _Agent,
    executor: SaExecutor | None,
    now: float,
    note: Note | None = None,
    code_name: Callable[[int], str] = reply_code_name,
) -> list[Event]:
    """Carry out the agent's SA events (feeding installation results back,
    which may cause more events), log and ``note`` what happened, and return
    the other events, in order. ``code_name`` names a
    :class:`~aaa_vpn.roles.agent.RegistrationDone` code (a gateway's are
    Binding Acknowledge statuses)."""
    node = executor.node if executor is not None else ""
    others: list[Event] = []
    while (event := agent.next_event()) is not None:
        if isinstance(event, InstallPaths):
            added: list[PathProfile]
            error: str | None
            started = getattr(agent, "paths_started", None)
            if executor is None:
                added, error = [], "no SA backend on this node"
            elif started is None:
                added, error = executor.install(event)
            elif (result := executor.begin(event)) is None:
                started(event.owner, now)  # finish_installs reports later
                continue
            else:
                added, error = result
            _installed(agent, event, added, error, now, note)
        elif isinstance(event, DeletePaths):
            removed = executor.delete(event) if executor is not None else []
            if note is not None:
                for installed in removed:
                    note("sa_removed", now, owner=installed.owner, **path_fields(installed.path))
        else:
            if isinstance(event, LimitReached):
                # The role reports a full table at most once a minute (roles/agent.py).
                log.warning(
                    "table full",
                    extra=fields(node=node, table=event.table, limit=event.limit, hits=event.hits),
                )
            if isinstance(event, RegistrationDone):
                log.info(
                    "registration decided",
                    extra=fields(
                        node=node,
                        nai=event.nai,
                        home_address=str(event.home_address),
                        code=event.code,
                        lifetime=event.lifetime,
                        detail=event.detail,
                    ),
                )
                if note is not None:
                    note(
                        "registration",
                        now,
                        nai=event.nai,
                        home_address=str(event.home_address),
                        code=event.code,
                        code_name=code_name(event.code),
                        lifetime=event.lifetime,
                        detail=event.detail,
                    )
            others.append(event)
    return others


def finish_installs(agent: _Agent, executor: SaExecutor, now: float, note: Note | None = None) -> None:
    """Wait for the installs :func:`run_events` left negotiating (an agent with
    ``paths_started(owner, now)`` on a :class:`~aaa_vpn.sa.base.StagedBackend`)
    and report each to the agent (``paths_installed``), which may cause more
    events: run :func:`run_events` again."""
    for event, added, error in executor.finish():
        _installed(agent, event, added, error, now, note)


def _installed(
    agent: _Agent, event: InstallPaths, added: list[PathProfile], error: str | None, now: float, note: Note | None
) -> None:
    if note is not None:
        for path in added:
            note("sa_installed", now, owner=event.owner, **path_fields(path))
        if error is not None:
            note("sa_install_failed", now, owner=event.owner, error=error)
    agent.paths_installed(event.owner, error, now)


__all__ = [
    "SaExecutor",
    "binding_status_name",
    "finish_installs",
    "path_fields",
    "reply_code_name",
    "run_events",
]
