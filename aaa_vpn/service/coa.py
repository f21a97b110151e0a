"""The home AAA as a Dynamic Authorization client (RFC 5176): ending a
session with Disconnect-Requests (``aaa-vpn session disconnect``).

Theory of operation (docs/protocol.md section 6):

1. :func:`disconnect_targets` reads the session and finds whom to tell: the
   FA is the RADIUS client of role ``fa`` whose network holds the session's
   care-of address, the HA the client of role ``ha`` whose network holds its
   home agent (longest prefix wins). Each gets its own request, with its
   client's secret, to its client's ``coa_port``. A target that has no client
   is reported, not sent to.
2. :func:`exchange` sends every request from one UDP socket, waits up to
   ``timeout`` seconds for the answers and sends the unanswered ones again,
   byte-identical (same Identifier and Authenticator, so an agent that did
   the work already answers from its duplicate cache), ``retries`` times.
   Answers that do not verify are ignored (counted in the result).
3. The caller then deletes the session from the database
   (:func:`disconnect_session` does all three).

:func:`exchange` touches no database, so tests can run it in a thread while
the agents run in the main one.
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn.model import Client, ClientRole, Session
from aaa_vpn.secret import Secret
from aaa_vpn.store.base import NotFound, Store
from aaa_vpn.wire import coa


class CoaError(Exception):
    """The session cannot be found, or nobody can be told."""


@dataclass(frozen=True)
class CoaTarget:
    """One agent to send a request to."""

    role: str  # "fa" or "ha"
    address: IPv4Address
    client: str = ""  # its RADIUS client's name ('' when there is none)
    port: int = coa.COA_PORT
    secret: Secret | None = field(default=None, repr=False)


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


def client_for(clients: list[Client], address: IPv4Address, role: ClientRole) -> Client | None:
    """The client of ``role`` whose network holds ``address`` (longest prefix)."""
    matching = [c for c in clients if c.role is role and address in c.network]
    return max(matching, key=lambda c: c.network.prefixlen) if matching else None


def targets_for(store: Store, session: Session) -> list[CoaTarget]:
    """The session's FA and HA (rule 1)."""
    clients = store.list_clients()
    targets = []
    for role, address in (("fa", session.care_of_address), ("ha", session.home_agent)):
        client = client_for(clients, address, ClientRole(role))
        if client is None:
            targets.append(CoaTarget(role, address))
        else:
            targets.append(CoaTarget(role, address, client.name, client.coa_port, client.secret))
    return targets


def disconnect_targets(store: Store, session_id: str) -> tuple[Session, list[CoaTarget]]:
    """The session and its targets; CoaError if there is no such session."""
    try:
        session = store.get_session(session_id)
    except NotFound:
        raise CoaError(f"no session {session_id}") from None
    return session, targets_for(store, session)


def disconnect_request(target: CoaTarget, session: Session, identifier: int) -> bytes:
    assert target.secret is not None
    return coa.encode_request(
        coa.DISCONNECT_REQUEST,
        identifier,
        target.secret.value,
        coa.session_attributes(session.nai, session.session_id),
    )


def exchange(
    requests: list[tuple[CoaTarget, bytes | None]],
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
        for _attempt in range(retries + 1):
            for i in waiting:
                target = requests[i][0]
                results[i].attempts += 1
                try:
                    sock.sendto(waiting[i], (str(target.address), target.port))
                except OSError as exc:
                    results[i].error = f"cannot send: {exc.strerror}"
            deadline = time.monotonic() + timeout
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
                        answer = coa.decode_answer(data, request, target.secret.value)
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


def new_identifier() -> int:
    return os.urandom(1)[0]


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


def disconnect_session(
    store: Store,
    session_id: str,
    source: str = "0.0.0.0",
    timeout: float = 2.0,
    retries: int = 2,
    delete: bool = True,
) -> DisconnectOutcome:
    """Rules 1-3: tell the FA and the HA, then delete the session."""
    session, targets = disconnect_targets(store, session_id)
    requests = [
        (t, disconnect_request(t, session, new_identifier()) if t.secret is not None else None) for t in targets
    ]
    results = exchange(requests, source, timeout, retries)
    deleted = False
    if delete:
        try:
            store.delete_session(session.session_id)
            deleted = True
        except NotFound:
            pass
    return DisconnectOutcome(session, results, deleted)


__all__ = [
    "CoaError",
    "CoaTarget",
    "DisconnectOutcome",
    "TargetResult",
    "client_for",
    "disconnect_request",
    "disconnect_session",
    "disconnect_targets",
    "exchange",
    "targets_for",
]
