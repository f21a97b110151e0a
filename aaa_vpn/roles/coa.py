"""The agents' side of Dynamic Authorization (RFC 5176), sans-IO: which
Disconnect-/CoA-Requests an FA or HA believes, and the duplicate cache.

Rules (docs/protocol.md section 6):

1. A request is accepted only from the address of one of the agent's AAA
   servers (or an extra CoA peer configured), checked with that server's
   shared secret. Anything else -- unknown source, malformed, wrong Request
   Authenticator or Message-Authenticator (a wrong secret shows up there) --
   is dropped silently and counted (``coa.dropped.<reason>``).
2. A retransmission (same source address and port, Identifier and Request
   Authenticator; RFC 5080 section 2.2.2) within ``ttl`` seconds gets the
   byte-identical earlier answer and changes nothing; one that arrives while
   the first is still being carried out is ignored (the answer goes out when
   the work is done).
3. The role decides (FA: rules of :mod:`aaa_vpn.roles.fa`; HA: of
   :mod:`aaa_vpn.roles.ha`) and answers through :meth:`CoaResponder.answer`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from aaa_vpn.roles.agent import Address
from aaa_vpn.roles.radius_server import DuplicateCache, Key
from aaa_vpn.secret import Secret
from aaa_vpn.wire import coa

#: How long an answer is remembered for retransmissions (seconds).
DUPLICATE_TTL = 30.0


@dataclass(frozen=True)
class CoaPeer:
    """Who may send an agent Disconnect-/CoA-Requests, with which secret."""

    address: IPv4Address
    secret: Secret = field(repr=False)


@dataclass
class Received:
    """A request that passed rule 1: the role decides and then answers."""

    request: coa.CoaRequest
    source: Address
    secret: Secret = field(repr=False)
    key: Key


class CoaResponder:
    """Rules 1 and 2 for one agent."""

    def __init__(self, peers: Iterable[CoaPeer], counters: collections.Counter[str], ttl: float = DUPLICATE_TTL):
        self.peers = {str(p.address): p.secret for p in peers}
        self.counters = counters
        self.answers = DuplicateCache(ttl, limit=10_000)

    def receive(self, data: bytes, source: Address, now: float) -> Received | bytes | None:
        """A request to decide, a cached answer to send again, or None (dropped)."""
        secret = self.peers.get(source[0])
        if secret is None:
            self._drop("unknown_source")
            return None
        if len(data) < 20:
            self._drop("malformed")
            return None
        key: Key = (source[0], source[1], data[1], bytes(data[4:20]))
        self.answers.expire(now)
        cached = self.answers.get(key, now)
        if cached is not None:
            self.counters["coa.duplicates"] += 1
            return cached or None  # b"" while the first is still being carried out
        try:
            request = coa.decode_request(data, secret.value)
        except coa.CoaDecodeError:
            self._drop("malformed")
            return None
        if request is None:
            self._drop("bad_authenticator")
            return None
        self.counters[f"coa.received.{request.name}"] += 1
        self.answers.begin(key, now)
        return Received(request, source, secret, key)

    def answer(self, received: Received, ack: bool, now: float, error_cause: int | None = None) -> bytes:
        """Encode the answer, remember it for retransmissions and return it."""
        data = coa.encode_answer(received.request, ack, received.secret.value, None if ack else error_cause)
        self.answers.finish(received.key, data, now)
        name = coa.CODE_NAMES[data[0]]
        self.counters[f"coa.sent.{name}"] += 1
        if not ack and error_cause is not None:
            self.counters[f"coa.error_cause.{error_cause}"] += 1
        return data

    def _drop(self, reason: str) -> None:
        self.counters["coa.dropped"] += 1
        self.counters[f"coa.dropped.{reason}"] += 1


__all__ = ["DUPLICATE_TTL", "CoaPeer", "CoaResponder", "Received"]
