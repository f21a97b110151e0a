"""The home AAA as a Dynamic Authorization client (RFC 5176): the socket side
of ``aaa-vpn session push|disconnect``.

Theory of operation (docs/protocol.md section 6):

1. The decisions are the home AAA role's (roles/home_aaa.py rule 11): a push
   re-keys the session at its next epoch and stores it, then yields one
   CoA-Request per agent with that agent's new view; a disconnect yields one
   Disconnect-Request per agent. Each agent is the RADIUS client of its role
   whose network holds its address, and gets its own request, sealed with its
   client's secret, to its client's ``coa_port``. A target that has no client
   is reported, not sent to. Each request names the session as RFC 5176
   section 3 asks, with the identification attributes that agent sent, and
   a push carries the view in the agent's client's flavour.
2. :func:`exchange` sends every request from one UDP socket, waits up to
   ``timeout`` seconds for the answers and sends the unanswered ones again,
   byte-identical (same Identifier and Authenticator, so an agent that did
   the work already answers from its duplicate cache), ``retries`` times,
   each wait twice the one before (:func:`waits`; RFC 5080 section 2.2.1):
   2, 4 and 8 s by default, 14 s in all, well inside the agents' 30 s
   duplicate cache. Answers that do not verify (:func:`aaa_vpn.wire.coa.decode_answer`:
   the Response Authenticator, and a Message-Authenticator where there is
   one or the client requires one) are ignored (counted in the result).
3. :func:`disconnect_session` then deletes the session (unless asked not to).

:func:`exchange` touches no database, so tests can run it in a thread while
the agents run in the main one.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from typing import Any

from aaa_vpn.model import Session
from aaa_vpn.roles.home_aaa import Authorize, CoaTarget
from aaa_vpn.service.home import HomeService
from aaa_vpn.store.base import Store
from aaa_vpn.wire import coa


class CoaError(Exception):
    """The session cannot be found or changed, or nobody can be told."""


@dataclass
class TargetResult:
    """What one agent answered."""

    target: CoaTarget
    answer: coa.CoaAnswer | None = None
    attempts: int = 0
    error: str = ""
    ignored: int = 0  # datagrams from it that did not verify

    @property
    def acknowledged(self) -> bool:
        return self.answer is not None and self.answer.acknowledged

    def to_json(self) -> dict[str, Any]:
        answer = self.answer
        return {
            "role": self.target.role,
            "address": str(self.target.address),
            "port": self.target.port,
            "client": self.target.client,
            "answer": answer.name if answer is not None else None,
            "acknowledged": self.acknowledged,
            "error_cause": answer.error_cause if answer is not None else None,
            "error_cause_name": (
                coa.error_cause_name(answer.error_cause)
                if answer is not None and answer.error_cause is not None
                else None
            ),
            "attempts": self.attempts,
            "error": self.error,
        }


def waits(timeout: float, retries: int) -> list[float]:
    """Rule 2: how long each of the ``1 + retries`` transmissions waits for its answer."""
    return [timeout * (1 << attempt) for attempt in range(retries + 1)]


def exchange(
    requests: list[tuple[CoaTarget, bytes | None]] | tuple[tuple[CoaTarget, bytes | None], ...],
    source: str = "0.0.0.0",
    timeout: float = 2.0,
    retries: int = 2,
) -> list[TargetResult]:
    """Rule 2: send, wait, resend; one result per request, in order. A
    request of None (no client for the target) is reported as not sent."""
    results = [
        TargetResult(t, error="" if r is not None else "no RADIUS client holds this address") for t, r in requests
    ]
    waiting = {i: r for i, (_t, r) in enumerate(requests) if r is not None}
    if not waiting:
        return results
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((source, 0))
        for wait in waits(timeout, retries):
            for i in waiting:
                target = requests[i][0]
                results[i].attempts += 1
                try:
                    sock.sendto(waiting[i], (str(target.address), target.port))
                except OSError as exc:
                    results[i].error = f"cannot send: {exc.strerror}"
            deadline = time.monotonic() + wait
            while waiting and (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([sock], [], [], left)
                if not readable:
                    break
                try:
                    data, sender = sock.recvfrom(65535)
                except OSError:
                    continue  # e.g. ICMP port unreachable for one target
                for i, request in list(waiting.items()):
                    target = requests[i][0]
                    if (sender[0], sender[1]) != (str(target.address), target.port):
                        continue
                    assert target.secret is not None
                    try:
                        answer = coa.decode_answer(
                            data, request, target.secret.value, target.require_message_authenticator
                        )
                    except coa.CoaDecodeError:
                        answer = None
                    if answer is None:
                        results[i].ignored += 1
                        continue
                    results[i].answer = answer
                    results[i].error = ""
                    del waiting[i]
                    break
            if not waiting:
                break
        for i in waiting:
            if not results[i].error:
                results[i].error = f"no answer after {results[i].attempts} attempts"
    finally:
        sock.close()
    return results


@dataclass
class DisconnectOutcome:
    session: Session
    results: list[TargetResult]
    deleted: bool

    @property
    def acknowledged(self) -> bool:
        return all(r.acknowledged for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session.session_id,
            "nai": self.session.nai,
            "acknowledged": self.acknowledged,
            "deleted": self.deleted,
            "agents": [r.to_json() for r in self.results],
        }


@dataclass
class PushOutcome:
    authorization: Authorize
    results: list[TargetResult]

    @property
    def previous(self) -> Session:
        assert self.authorization.previous is not None
        return self.authorization.previous

    @property
    def session(self) -> Session:
        assert self.authorization.session is not None
        return self.authorization.session

    @property
    def acknowledged(self) -> bool:
        return all(r.acknowledged for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session.session_id,
            "nai": self.session.nai,
            "epoch": self.session.epoch,
            "previous_epoch": self.previous.epoch,
            "acknowledged": self.acknowledged,
            "agents": [r.to_json() for r in self.results],
        }


def targets_for(store: Store, session: Session) -> list[CoaTarget]:
    """The session's FA and HA as Dynamic Authorization targets (rule 1)."""
    return HomeService(store).role.coa_targets(session)


def disconnect_session(
    store: Store,
    session_id: str,
    source: str = "0.0.0.0",
    timeout: float = 2.0,
    retries: int = 2,
    delete: bool = True,
    now: float | None = None,
) -> DisconnectOutcome:
    """Rules 1-3: tell the FA and the HA, then delete the session."""
    service = HomeService(store)
    now = time.time() if now is None else now
    authorization = service.disconnect(session_id, now)
    if authorization.error or authorization.previous is None:
        raise CoaError(authorization.error or f"no session {session_id}")
    results = exchange(authorization.requests, source, timeout, retries)
    deleted = service.delete(session_id, now) if delete else False
    return DisconnectOutcome(authorization.previous, results, deleted)


def push_session(
    store: Store,
    session_id: str,
    source: str = "0.0.0.0",
    timeout: float = 2.0,
    retries: int = 2,
    now: float | None = None,
) -> PushOutcome:
    """Push the user's current VPN to the session's FA and HA (rule 1)."""
    now = time.time() if now is None else now
    authorization = HomeService(store).push(session_id, now)
    if authorization.error:
        raise CoaError(authorization.error)
    return PushOutcome(authorization, exchange(authorization.requests, source, timeout, retries))


__all__ = [
    "CoaError",
    "DisconnectOutcome",
    "PushOutcome",
    "TargetResult",
    "disconnect_session",
    "exchange",
    "push_session",
    "targets_for",
    "waits",
]
