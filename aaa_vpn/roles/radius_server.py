"""The server side of RADIUS that the home and the foreign AAA share, sans-IO:
who may ask, what is believed, what is a retransmission, and how a reply is
sealed.

Rules (RFC 2865, RFC 3579, RFC 5080 section 2.2.2, RFC 5997):

1. Clients (RFC 2865 section 3): the source address picks the client, by
   exact address or CIDR block, the longest prefix winning (what FreeRADIUS
   does with overlapping ``client`` sections). An unknown source is dropped.
2. Framing: a datagram that is not a RADIUS packet -- shorter than its
   header, a Length outside 20..4096 or beyond the datagram, an attribute
   whose Length runs past the packet -- is dropped. Octets beyond Length are
   padding (RFC 2865 section 3). Only the codes the owner serves are handled
   (Access-Request and Status-Server on an authentication port,
   Accounting-Request and Status-Server on an accounting port); any other is
   dropped.
3. Duplicates (RFC 5080 section 2.2.2): a request with the same source
   address and port, Identifier and Request Authenticator as one answered
   within ``dup_ttl`` seconds gets the byte-identical reply again and changes
   nothing; one that arrives while the first is still being decided is
   absorbed (the answer goes out once). At most ``dup_limit`` answers are
   kept, the oldest forgotten first. Status-Server is not subject to
   duplicate detection (RFC 5997 section 3).
4. Message-Authenticator (RFC 3579 section 3.2, RFC 5080 section 2.2.2,
   BlastRADIUS): a wrong one, a repeated one or one of the wrong length is a
   silent drop; a missing one is a silent drop for Status-Server and for
   clients that require it (the default) in Access-Requests. An
   Accounting-Request must carry the Request Authenticator RFC 2866 section 3
   defines (an MD5 over the packet and the secret: dropped otherwise), and
   its Message-Authenticator, which it need not carry, is computed with that
   field zeroed. A wrong shared secret shows up here.
5. Replies are sealed by :meth:`RadiusServer.answer`: Message-Authenticator
   first (not in an Accounting-Response to an Accounting-Request: RFC 2866
   section 4.2 has none, and FreeRADIUS computes one differently), the
   owner's attributes, then the request's Proxy-State attributes,
   in order, at the end (RFC 2865 section 5.33); the Response Authenticator
   last. A reply that cannot fit 4096 octets (a request full of Proxy-State)
   is not sent: that one request is dropped and counted, nothing else is
   affected.
6. Status-Server (RFC 5997 section 3) is answered with an Access-Accept (an
   Accounting-Response on an accounting port) whose Reply-Message the owner
   writes (:meth:`RadiusServer.status_reply`).

Every drop is counted (``dropped``, ``dropped.<reason>``) and reported as a
:class:`Dropped` event for the service layer to log (rate-limited there).
Pure: no sockets, no clock (``now`` is passed in).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_address
from typing import Generic, Protocol, TypeVar

from aaa_vpn.secret import Secret
from aaa_vpn.wire import radius as rc

Address = tuple[str, int]
#: A request's identity for duplicate detection: (source address, source
#: port, Identifier, Request Authenticator), RFC 5080 section 2.2.2.
Key = tuple[str, int, int, bytes]

DEFAULT_DUP_TTL = 10.0
DEFAULT_DUP_LIMIT = 200_000
_LOOKUP_CACHE_LIMIT = 65536


class ServedClient(Protocol):
    """What the plumbing needs to know of a RADIUS client."""

    @property
    def name(self) -> str: ...
    @property
    def network(self) -> IPv4Network: ...
    @property
    def secret(self) -> Secret: ...
    @property
    def require_message_authenticator(self) -> bool: ...


C = TypeVar("C", bound=ServedClient)


class ClientTable(Generic[C]):
    """Clients looked up by address, longest prefix first (rule 1); lookups
    are cached."""

    def __init__(self, clients: Iterable[C]) -> None:
        self._clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)
        self._cache: dict[str, C | None] = {}

    def lookup(self, address: str) -> C | None:
        """The client ``address`` belongs to, or None (unknown, or not IPv4)."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        found = None
        try:
            ip = ip_address(address)
        except ValueError:
            ip = None
        if ip is not None and ip.version == 4:
            found = next((c for c in self._clients if ip in c.network), None)
        if len(self._cache) > _LOOKUP_CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = found
        return found

    def __len__(self) -> int:
        return len(self._clients)


class DuplicateCache:
    """Answers by request :data:`Key` (rule 3). An entry is either in flight
    (no answer yet: retransmissions are absorbed) or answered (its reply is
    sent again). Entries expire ``ttl`` seconds after they were last set; at
    most ``limit`` are kept."""

    _IN_FLIGHT = b""

    def __init__(self, ttl: float = DEFAULT_DUP_TTL, limit: int = DEFAULT_DUP_LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: collections.OrderedDict[Key, tuple[float, bytes]] = collections.OrderedDict()

    def get(self, key: Key, now: float) -> bytes | None:
        """The reply to send again, ``b""`` while the request is in flight,
        or None if the request is new."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < now:
            return None
        return entry[1]

    def begin(self, key: Key, now: float) -> None:
        """The request is being decided: absorb its retransmissions."""
        self._put(key, self._IN_FLIGHT, now)

    def finish(self, key: Key, reply: bytes, now: float) -> None:
        """The request was answered with ``reply``."""
        self._put(key, reply, now)

    def forget(self, key: Key) -> None:
        """The request was not answered: a retransmission is a new request."""
        self._entries.pop(key, None)

    def _put(self, key: Key, value: bytes, now: float) -> None:
        entries = self._entries
        if self.ttl <= 0:
            return
        entries[key] = (now + self.ttl, value)
        entries.move_to_end(key)
        # Entries are set in time order with one ttl: the expired ones are first.
        while entries:
            first_key, (expires, _first) = next(iter(entries.items()))
            if expires >= now and len(entries) <= self.limit:
                break
            del entries[first_key]

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            first_key, (expires, _value) = next(iter(entries.items()))
            if expires >= now:
                break
            del entries[first_key]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Dropped:
    """A datagram was dropped (rules 1-5)."""

    reason: str
    """Counter name suffix: ``unknown_client``, ``malformed``,
    ``bad_message_authenticator``, ``reply_too_large``..."""
    source: Address
    """Who sent it."""
    detail: str
    """What was wrong (never a secret)."""


class Incoming(Generic[C]):
    """A request that passed rules 1-4, to be decided by the owner."""

    __slots__ = ("client", "key", "packet", "source")

    def __init__(self, key: Key, source: Address, client: C, packet: rc.Packet) -> None:
        self.key = key
        self.source = source
        self.client = client
        self.packet = packet

    @property
    def code(self) -> int:
        return self.packet.code

    @property
    def identifier(self) -> int:
        return self.packet.identifier

    @property
    def authenticator(self) -> bytes:
        """The Request Authenticator: it keys the salt encryption of the reply."""
        return self.packet.authenticator

    def __repr__(self) -> str:
        return f"Incoming({self.packet!r} from {self.source[0]}:{self.source[1]}, client {self.client.name})"


class RadiusServer(Generic[C]):
    """Rules 1-6 for one server socket."""

    def __init__(
        self,
        clients: Iterable[C],
        *,
        codes: Iterable[int] = (rc.ACCESS_REQUEST, rc.STATUS_SERVER),
        dup_ttl: float = DEFAULT_DUP_TTL,
        dup_limit: int = DEFAULT_DUP_LIMIT,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        self.clients: ClientTable[C] = ClientTable(clients)
        self.codes = frozenset(codes)
        self.duplicates = DuplicateCache(dup_ttl, dup_limit)
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters
        self.dropped: collections.deque[Dropped] = collections.deque(maxlen=1024)

    def set_clients(self, clients: Iterable[C]) -> None:
        """Provisioning changed: serve these clients from now on."""
        self.clients = ClientTable(clients)

    def receive(self, data: bytes, source: Address, now: float, client: C | None = None) -> Incoming[C] | bytes | None:
        """Rules 1-4. Returns a request to decide, a reply to send again (a
        retransmission of an answered request), or None (dropped or absorbed).
        ``client``: the client already known by other means (a RadSec peer's
        certificate, roles/radsec.py), instead of rule 1's address lookup."""
        self.counters["received"] += 1
        if client is None:
            client = self.clients.lookup(source[0])
        if client is None:
            self.drop("unknown_client", source, "not a configured client")
            return None
        try:
            packet = rc.decode_packet(data)
        except rc.RadiusDecodeError as exc:
            self.drop("malformed", source, str(exc)[:160])
            return None
        code = packet.code
        if code not in self.codes:
            self.drop("unsupported_code", source, rc.code_name(code))
            return None
        key: Key = (source[0], source[1], packet.identifier, packet.authenticator)
        status = code == rc.STATUS_SERVER
        if not status:
            cached = self.duplicates.get(key, now)
            if cached is not None:
                # A retransmission: absorbed while the original is being
                # decided, answered again once it was.
                self.counters["duplicates" if cached else "absorbed"] += 1
                return cached or None
        hashed = code == rc.ACCOUNTING_REQUEST
        if hashed and not rc.check_hashed_request(packet, client.secret.value):
            self.drop("bad_request_authenticator", source, f"client {client.name}")
            return None
        ma = rc.check_message_authenticator(packet, client.secret.value, rc.ZERO_AUTHENTICATOR if hashed else None)
        if ma is False:
            self.drop("bad_message_authenticator", source, f"client {client.name}")
            return None
        if ma is None and (status or (client.require_message_authenticator and not hashed)):
            self.drop("missing_message_authenticator", source, f"client {client.name}")
            return None
        if not status:
            self.duplicates.begin(key, now)
        return Incoming(key, source, client, packet)

    def answer(self, incoming: Incoming[C], code: int, attributes: Sequence[bytes], now: float) -> bytes | None:
        """Rule 5: seal the reply to ``incoming`` and remember it for its
        retransmissions; None (dropped, counted) if it cannot fit 4096 octets."""
        proxy_states = incoming.packet.proxy_states()
        body = b"".join(attributes) + proxy_states
        try:
            reply = rc.encode_reply(
                code,
                incoming.identifier,
                incoming.authenticator,
                incoming.client.secret.value,
                body,
                message_authenticator=code != rc.ACCOUNTING_RESPONSE or incoming.code == rc.STATUS_SERVER,
            )
        except rc.ReplyTooLarge as exc:
            self.abandon(incoming, "reply_too_large", str(exc))
            return None
        if incoming.code != rc.STATUS_SERVER:
            self.duplicates.finish(incoming.key, reply, now)
        return reply

    def status_reply(self, incoming: Incoming[C], message: str, now: float) -> bytes | None:
        """Rule 6: the Access-Accept (Accounting-Response on an accounting
        port) answering a Status-Server."""
        self.counters["status_server"] += 1
        code = rc.ACCOUNTING_RESPONSE if rc.ACCOUNTING_REQUEST in self.codes else rc.ACCESS_ACCEPT
        return self.answer(incoming, code, [rc.attribute(rc.REPLY_MESSAGE, message.encode()[:253])], now)

    def abandon(self, incoming: Incoming[C], reason: str, detail: str = "") -> None:
        """Drop a request that was being decided (counted): its
        retransmission will be decided anew."""
        self.duplicates.forget(incoming.key)
        self.drop(reason, incoming.source, detail or f"client {incoming.client.name}")

    def drop(self, reason: str, source: Address, detail: str) -> None:
        self.counters["dropped"] += 1
        self.counters[f"dropped.{reason}"] += 1
        self.dropped.append(Dropped(reason, source, detail))

    def expire(self, now: float) -> None:
        """Housekeeping: forget answers older than the duplicate window."""
        self.duplicates.expire(now)


__all__ = [
    "Address",
    "ClientTable",
    "Dropped",
    "DuplicateCache",
    "Incoming",
    "Key",
    "RadiusServer",
    "ServedClient",
]
