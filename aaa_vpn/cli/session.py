"""The ``session`` group: the AAA sessions the home server keeps.

``list``, ``show`` and ``delete`` are record commands (:mod:`aaa_vpn.cli.crud`);
``push`` and ``disconnect`` reach the session's FA and HA through
:mod:`aaa_vpn.net.coa_client` (RFC 5176), each call in one place (:func:`_push`, :func:`_disconnect`,
:func:`_agents`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from aaa_vpn.cli.common import (
    App,
    InvalidInput,
    StoreFailure,
    audit,
    emit,
    example,
    exit_with,
    pass_app,
    with_options,
)
from aaa_vpn.cli.crud import Field, Key, Kind, kind_group
from aaa_vpn.model import Session
from aaa_vpn.store import SqlStore
from aaa_vpn.store.transfer import JsonObject, session_to_json

if TYPE_CHECKING:
    from aaa_vpn.net.coa_client import DisconnectOutcome, PushOutcome


# -- the calls into aaa_vpn.net.coa_client (imported on use: it pulls in the RADIUS codecs) ------

T = TypeVar("T")


def _sent(source: str, send: Callable[[], T]) -> T:
    """``send()`` a request from ``source`` to a session's agents; its failures as CLI errors."""
    from aaa_vpn.net.coa_client import CoaError

    try:
        ipaddress.IPv4Address(source)
    except ValueError:
        raise InvalidInput(f"--source: {source!r} is not an IPv4 address") from None
    try:
        return send()
    except CoaError as exc:
        raise StoreFailure(str(exc)) from None
    except OSError as exc:
        raise StoreFailure(f"cannot send from {source}: {exc.strerror}") from None


def _push(app: App, session_id: str, source: str, timeout: float, retries: int) -> PushOutcome:
    from aaa_vpn.net import coa_client as coa_service

    return _sent(
        source,
        lambda: coa_service.push_session(app.store(), session_id, source=source, timeout=timeout, retries=retries),
    )


def _disconnect(app: App, session_id: str, source: str, timeout: float, retries: int, keep: bool) -> DisconnectOutcome:
    from aaa_vpn.net import coa_client as coa_service

    return _sent(
        source,
        lambda: coa_service.disconnect_session(
            app.store(), session_id, source=source, timeout=timeout, retries=retries, delete=not keep
        ),
    )


def _agents(store: SqlStore, session: Session, with_secrets: bool) -> JsonObject:
    """The agents a disconnect would go to."""
    from aaa_vpn.net import coa_client as coa_service  # the RADIUS codecs, only when needed

    return {
        "agents": [
            {
                "role": t.role,
                "address": str(t.address),
                "client": t.client or None,
                "coa_port": t.port if t.client else None,
            }
            for t in coa_service.targets_for(store, session)
        ]
    }


# -- the commands ----------------------------------------------------------------------------------


def _report(app: App, outcome: PushOutcome | DisconnectOutcome, last: str) -> None:
    """What each agent answered, then ``last``; exit status 1 unless both acknowledged."""
    from aaa_vpn.wire import coa

    lines = []
    for result in outcome.results:
        target = result.target
        where = f"{target.role.upper()} {target.address}:{target.port}"
        if result.answer is None:
            lines.append(f"{where}: {result.error}")
        else:
            cause = result.answer.error_cause
            extra = f" ({cause} {coa.error_cause_name(cause)})" if cause is not None else ""
            lines.append(f"{where}: {result.answer.name}{extra}")
    lines.append(last)
    emit(app, outcome.to_json(), "\n".join(lines))
    exit_with(0 if outcome.acknowledged else 1)


def _audit_outcome(app: App, action: str, session_id: str, outcome: PushOutcome | DisconnectOutcome) -> None:
    """The push or disconnect in the audit log, with what each agent answered."""
    detail = {
        "acknowledged": outcome.acknowledged,
        "agents": [r.answer.name if r.answer is not None else None for r in outcome.results],
    }
    audit(app.store(), f"sessions.{action}", session_id, detail)


#: The argument and options of a request to a session's agents.
_SENDING = with_options(
    [
        click.argument("session_id"),
        click.option(
            "--source",
            metavar="ADDR",
            default="0.0.0.0",
            show_default=True,
            help="Send from this address: the agents accept requests only from their AAA server's address.",
        ),
        click.option(
            "--timeout", type=click.FloatRange(min=0.01), default=2.0, show_default=True, help="Seconds per attempt."
        ),
        click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Retransmissions."),
    ]
)


SESSION = Kind(
    group="session",
    help="AAA sessions the home server keeps (runtime state).",
    label="session",
    titles=("session", "sessions"),
    record=Session,
    key=Key("session_id", "SESSION_ID"),
    store="session",
    table="sessions",
    list_records=lambda store, nai: store.list_sessions() if nai is None else store.find_sessions(nai),
    to_json=session_to_json,
    shown_secrets=("session root key",),
    list_filter=Field("nai", "--user", metavar="NAI", help="Only this user's sessions."),
    show_extra=_agents,
    commands=("list", "show", "delete"),
    sample="5f1c...",
    examples={"group": ("aaa-vpn session list --user mn1@home.example", "aaa-vpn session push 5f1c...")},
    docs={
        "list": "List sessions.",
        "show": "Show one session, with the agents a disconnect would go to.",
        "delete": "Delete a session (the node must register again).",
    },
)

session = kind_group(SESSION)


@session.command(
    "disconnect",
    epilog=example(
        "aaa-vpn session disconnect 5f1c... --source 192.0.2.1",
        "aaa-vpn --json session disconnect 5f1c... --timeout 1 --retries 3",
    ),
)
@_SENDING
@click.option("--keep", is_flag=True, help="Keep the session in the database (only tell the agents).")
@pass_app
def session_disconnect(app: App, session_id: str, source: str, timeout: float, retries: int, keep: bool) -> None:
    """End a session: a Disconnect-Request (RFC 5176) to its FA and its HA,
    which remove its SAs everywhere; then the session is deleted.

    Exit status 0 only if both acknowledged."""
    outcome = _disconnect(app, session_id, source, timeout, retries, keep)
    _audit_outcome(app, "disconnect", session_id, outcome)
    _report(app, outcome, f"session {session_id} " + ("deleted" if outcome.deleted else "kept"))


@session.command(
    "push",
    epilog=example(
        "aaa-vpn session push 5f1c... --source 192.0.2.1",
        "aaa-vpn --json session push 5f1c... --timeout 1 --retries 3",
    ),
)
@_SENDING
@pass_app
def session_push(app: App, session_id: str, source: str, timeout: float, retries: int) -> None:
    """Push the user's current VPN to a live session at once: the session
    moves to its next epoch (same FA) with new keys for every path (so this
    also re-keys a session), and its FA and HA each get a CoA-Request
    (RFC 5176) with their new view, install it and answer.

    Exit status 0 only if both answered CoA-ACK."""
    outcome = _push(app, session_id, source, timeout, retries)
    _audit_outcome(app, "push", session_id, outcome)
    _report(app, outcome, f"session {session_id} epoch {outcome.previous.epoch} -> {outcome.session.epoch}")
