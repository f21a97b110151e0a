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

Pushing a VPN change (CoA-Request, :func:`push_session`):

4. :func:`prepare_push` reads the live session and the user's current
   provisioning, moves the session to the next epoch at the same care-of
   address (``home_aaa.move_session`` with the plan of the current VPN
   records, so a changed VPN rolls out; the session keeps its expiry; every
   path is re-keyed, the stationary HA <-> GW paths included),
   stores it in place of itself, and builds one CoA-Request per agent
   carrying User-Name and that agent's view (``home_aaa.view_for``) in the
   aaa-vpn flavour, salt encryption keyed with 16 zero octets
   (:func:`aaa_vpn.wire.coa.push_attributes`).
5. :func:`exchange` sends them (rule 2); the push succeeded only if both
   answered CoA-ACK. A NAK leaves the session in the database at the new
   epoch: the node's next registration (or another push) brings the agents
   there.

:func:`exchange` touches no database, so tests can run it in a thread while
the agents run in the main one.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from aaa_vpn.model import Client, ClientRole, Session
from aaa_vpn.roles import home_aaa
from aaa_vpn.secret import Secret
from aaa_vpn.store.base import NotFound, SpiConflict, Store
from aaa_vpn.wire import coa
from aaa_vpn.wire.profile import RequestType, VpnProfile
from aaa_vpn.wire.radius_profile import ProfileError


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


def user_context(store: Store, nai: str) -> home_aaa.UserContext:
    """The user's provisioning as the home AAA plans paths from it."""
    try:
        user = store.get_user(nai)
    except NotFound:
        raise CoaError(f"no user {nai}") from None
    records = tuple(store.list_vpn_records(nai))
    return home_aaa.UserContext(
        user=user,
        records=records,
        gateways={r.gateway: store.get_gateway(r.gateway) for r in records},
        services={r.service: store.get_service(r.service) for r in records},
        qos={r.qos: store.get_qos(r.qos) for r in records if r.qos},
    )


#: How many epochs a push tries when a derived SPI is taken (docs/protocol.md section 4).
_SPI_ATTEMPTS = 3


@dataclass
class PushPlan:
    """A session moved to its next epoch and the CoA-Requests that push it."""

    previous: Session
    session: Session
    views: dict[str, VpnProfile] = field(repr=False)  # by role: "fa", "ha"
    requests: list[tuple[CoaTarget, bytes | None]] = field(repr=False)


def prepare_push(
    store: Store,
    session_id: str,
    now: float | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> PushPlan:
    """Rule 4: move and store the session, build the requests. CoaError if
    there is no live session or its view cannot be sent."""
    now = time.time() if now is None else now
    try:
        session = store.get_session(session_id)
    except NotFound:
        raise CoaError(f"no session {session_id}") from None
    if session.expires <= now:
        raise CoaError(f"session {session_id} has expired")
    ctx = user_context(store, session.nai)
    if not ctx.user.enabled:
        raise CoaError(f"user {session.nai} is disabled: disconnect the session instead")
    care_of, ha = session.care_of_address, session.home_agent
    paths = home_aaa.plan_paths(ctx, session.home_address, ha, care_of)
    lifetime = max(1, int(session.expires - now))
    for attempt in range(_SPI_ATTEMPTS):
        # rekey: every path gets new keys and SPIs, the stationary ones too
        # (home_aaa rule 8), so a push is also how an operator re-keys a session.
        moved = home_aaa.move_session(
            session, paths, care_of, now, lifetime, random_bytes, epoch=session.epoch + 1 + attempt, rekey=True
        )
        try:
            store.put_session(moved, replaces=[session.session_id])
            break
        except SpiConflict:
            continue
    else:
        raise CoaError("a derived SPI is taken in every epoch tried: push again")
    views = {
        "fa": home_aaa.view_for(moved, paths, ClientRole.FA, RequestType.FA_REGISTRATION, care_of, ctx.user, lifetime),
        "ha": home_aaa.view_for(moved, paths, ClientRole.HA, RequestType.HA_REGISTRATION, ha, ctx.user, lifetime),
    }
    requests: list[tuple[CoaTarget, bytes | None]] = []
    for target in targets_for(store, moved):
        if target.secret is None:
            requests.append((target, None))
            continue
        try:
            attributes = coa.push_attributes(moved.nai, views[target.role], target.secret)
        except ProfileError as exc:
            raise CoaError(f"the {target.role.upper()}'s view does not fit in a CoA-Request: {exc}") from None
        request = coa.encode_request(coa.COA_REQUEST, new_identifier(), target.secret.value, attributes)
        requests.append((target, request))
    return PushPlan(session, moved, views, requests)


@dataclass
class PushOutcome:
    plan: PushPlan
    results: list[TargetResult]

    @property
    def acknowledged(self) -> bool:
        return all(r.acknowledged for r in self.results)

    def to_json(self) -> dict[str, Any]:
        session = self.plan.session
        return {
            "session": session.session_id,
            "nai": session.nai,
            "epoch": session.epoch,
            "previous_epoch": self.plan.previous.epoch,
            "acknowledged": self.acknowledged,
            "agents": [r.to_json() for r in self.results],
        }


def push_session(
    store: Store,
    session_id: str,
    source: str = "0.0.0.0",
    timeout: float = 2.0,
    retries: int = 2,
    now: float | None = None,
) -> PushOutcome:
    """Rules 4 and 5: push the user's current VPN to the session's FA and HA."""
    plan = prepare_push(store, session_id, now)
    return PushOutcome(plan, exchange(plan.requests, source, timeout, retries))


__all__ = [
    "CoaError",
    "CoaTarget",
    "DisconnectOutcome",
    "PushOutcome",
    "PushPlan",
    "TargetResult",
    "client_for",
    "disconnect_request",
    "disconnect_session",
    "disconnect_targets",
    "exchange",
    "prepare_push",
    "push_session",
    "targets_for",
    "user_context",
]
