"""The home AAA's accounting server (RFC 2866), sans-IO: Accounting-Requests
in, records to store out, Accounting-Responses once they are stored.

Rules:

1. The plumbing (roles/radius_server.py) admits a datagram on the
   accounting port: a known client, a well-framed Accounting-Request whose
   Request Authenticator checks out under the client's secret (its
   Message-Authenticator too, when it has one), or a Status-Server (answered
   with an Accounting-Response, RFC 5997 section 3). A retransmission of a
   request already answered gets the same response again and records
   nothing twice; one still being stored is absorbed.
2. A request is decoded into one value (aaa_vpn/wire/accounting.py); one
   that cannot be recorded -- no Acct-Status-Type, no Acct-Session-Id, no
   NAS identity, a malformed counter -- is dropped and counted
   (``dropped.bad_accounting``): RFC 2866 section 4.1 forbids a response to
   a request the server did not record.
3. Every request the batch admitted is recorded in one
   :class:`StoreAccounting` event; the service layer stores them in one
   durable transaction and calls :meth:`AccountingServer.stored`. Only then
   are the Accounting-Responses sent (RFC 2866 section 4.1). If the store
   fails, no response is sent and the NASes retransmit
   (``dropped.store_unavailable``).
4. Responses carry nothing but a Message-Authenticator and the request's
   Proxy-States (RFC 2866 section 4.2; the plumbing seals them).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from aaa_vpn.model import Client
from aaa_vpn.roles.radius_server import Address, Dropped, Incoming, RadiusServer
from aaa_vpn.store.base import AccountingEntry
from aaa_vpn.wire import radius as rc
from aaa_vpn.wire.accounting import AccountingDecodeError, AcctStatus, decode_accounting_request


@dataclass(frozen=True)
class StoreAccounting:
    """Store these entries in one durable transaction, then call
    :meth:`AccountingServer.stored` with ``write_id`` (rule 3)."""

    write_id: int
    entries: tuple[AccountingEntry, ...]


class AccountingServer:
    """Rules 1-4 for the accounting port of one worker."""

    def __init__(
        self,
        clients: Iterable[Client],
        counters: collections.Counter[str] | None = None,
        dup_ttl: float = 10.0,
    ) -> None:
        self.counters: collections.Counter[str] = collections.Counter() if counters is None else counters
        self.server: RadiusServer[Client] = RadiusServer(
            clients,
            codes=(rc.ACCOUNTING_REQUEST, rc.STATUS_SERVER),
            dup_ttl=dup_ttl,
            counters=self._plumbing,
        )
        self._write_ids = itertools.count(1)
        self._batch: list[tuple[Incoming[Client], AccountingEntry]] = []
        self._writes: dict[int, list[tuple[Incoming[Client], AccountingEntry]]] = {}
        self._outbox: list[tuple[bytes, Address]] = []
        self.events: collections.deque[StoreAccounting | Dropped] = collections.deque()

    @property
    def _plumbing(self) -> collections.Counter[str]:
        # The plumbing counts under "accounting." so that a worker's counters
        # tell the two ports apart.
        return Prefixed(self.counters, "accounting.")

    def set_clients(self, clients: Iterable[Client]) -> None:
        self.server.set_clients(clients)

    def receive_datagram(
        self, data: bytes, source: Address, now: float, status_message: str = "", client: Client | None = None
    ) -> None:
        """Rules 1-2 for one datagram; ``client``: a RadSec peer's (roles/radsec.py rule 2)."""
        result = self.server.receive(data, source, now, client)
        self._take_dropped()
        if result is None:
            return
        if isinstance(result, bytes):
            self._outbox.append((result, source))
            return
        if result.code == rc.STATUS_SERVER:
            reply = self.server.status_reply(result, status_message, now)
            self._take_dropped()
            if reply is not None:
                self._outbox.append((reply, source))
            return
        try:
            request = decode_accounting_request(result.packet)
        except AccountingDecodeError as exc:
            self.server.abandon(result, "bad_accounting", str(exc))
            self._take_dropped()
            return
        self.counters["accounting.requests"] += 1
        self.counters[f"accounting.{AcctStatus(request.status).name.lower()}"] += 1
        self._batch.append((result, AccountingEntry(request, now, result.client.name)))

    def end_batch(self) -> None:
        """Rule 3: what the batch admitted becomes one event."""
        if not self._batch:
            return
        write_id = next(self._write_ids)
        self._writes[write_id] = self._batch
        self.events.append(StoreAccounting(write_id, tuple(entry for _incoming, entry in self._batch)))
        self._batch = []

    def stored(self, write_id: int, ok: bool, now: float) -> None:
        """The service layer's answer to a :class:`StoreAccounting` (rule 3)."""
        written = self._writes.pop(write_id, None)
        if written is None:
            return
        for incoming, _entry in written:
            if not ok:
                self.server.abandon(incoming, "store_unavailable", "the accounting store did not answer")
                continue
            reply = self.server.answer(incoming, rc.ACCOUNTING_RESPONSE, (), now)
            if reply is not None:
                self.counters["accounting.recorded"] += 1
                self._outbox.append((reply, incoming.source))
        self._take_dropped()

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def expire(self, now: float) -> None:
        self.server.expire(now)

    def _take_dropped(self) -> None:
        while self.server.dropped:
            self.events.append(self.server.dropped.popleft())


class Prefixed(collections.Counter[str]):
    """A view that adds to ``counters`` under ``prefix`` (the plumbing of a second port)."""

    def __init__(self, counters: collections.Counter[str], prefix: str) -> None:
        super().__init__()
        self._counters = counters
        self._prefix = prefix

    def __getitem__(self, key: str) -> int:
        return self._counters[self._prefix + key]

    def __setitem__(self, key: str, value: int) -> None:
        self._counters[self._prefix + key] = value


__all__ = ["AccountingServer", "Prefixed", "StoreAccounting"]
