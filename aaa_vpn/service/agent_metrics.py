"""An agent's metrics (docs/metrics.md): what its datagrams say about
durations, and its live figures, beside the counters its role keeps.

Durations are measured at the agent's sockets, from the datagrams alone:

* ``registration`` (FA, HA): a Registration Request read from a peer until
  the Registration Reply with the same Identification leaves for that peer
  (RFC 5944 sections 3.3, 3.4 and 5.7.1: the Identification is at octets
  16..23 of a request and 12..19 of a reply, and its low-order 32 bits are
  copied from request to reply unchanged: those are matched);
* ``aaa`` (FA, HA): an Access-Request sent to an AAA server until its answer
  (the same Identifier, from that server) is read; a retransmission keeps
  the first send's time;
* ``accounting`` (FA, HA with ``--accounting``): an Accounting-Request sent
  until its Accounting-Response is read, likewise.

At most :data:`_TIMED_LIMIT` are awaited at once; those never answered are
forgotten after a minute. Pure: no sockets, no clock (``now`` is passed in).
"""

from __future__ import annotations

from collections.abc import Mapping

from aaa_vpn.roles.agent import Address
from aaa_vpn.roles.radius_client import RadiusClient
from aaa_vpn.sa.base import SaBackend
from aaa_vpn.service.metrics import Recorder, Snapshot, labels_of

_TIMED_LIMIT = 10_000
_TIMED_FOR = 60.0
_RRQ, _RRP = 1, 3  # RFC 5944 message types
_ACCESS_REQUEST = 1
_AAA_ANSWERS = frozenset((2, 3, 11))  # Access-Accept, -Reject, -Challenge
_ACCOUNTING_REQUEST, _ACCOUNTING_RESPONSE = 4, 5


class AgentMetrics:
    """One agent's figures: call :meth:`received` and :meth:`sent` for each
    datagram, :meth:`snapshot` to read them."""

    def __init__(self, role: str, backend_name: str, started: float) -> None:
        self.recorder = Recorder(role)
        self.backend_name = backend_name
        self.started = started
        self._timed: dict[tuple[str, Address, bytes], tuple[float, str]] = {}

    def received(self, channel: str, data: bytes, source: Address, now: float) -> None:
        if channel == "mip" and len(data) >= 24 and data[0] == _RRQ:
            self._start(("mip", source, data[20:24]), now, "registration")
        elif channel == "radius" and len(data) >= 2 and data[0] in _AAA_ANSWERS:
            self._finish(("radius", source, data[1:2]), now)
        elif channel == "accounting" and len(data) >= 2 and data[0] == _ACCOUNTING_RESPONSE:
            self._finish(("accounting", source, data[1:2]), now)

    def sent(self, channel: str, data: bytes, destination: Address, now: float) -> None:
        if channel == "mip" and len(data) >= 20 and data[0] == _RRP:
            self._finish(("mip", destination, data[16:20]), now)
        elif channel == "radius" and len(data) >= 2 and data[0] == _ACCESS_REQUEST:
            self._start(("radius", destination, data[1:2]), now, "aaa")
        elif channel == "accounting" and len(data) >= 2 and data[0] == _ACCOUNTING_REQUEST:
            self._start(("accounting", destination, data[1:2]), now, "accounting")

    def _start(self, key: tuple[str, Address, bytes], now: float, kind: str) -> None:
        if key in self._timed:
            return  # a retransmission: the first one's time counts
        if len(self._timed) >= _TIMED_LIMIT:
            self.forget(now)
            if len(self._timed) >= _TIMED_LIMIT:
                return
        self._timed[key] = (now, kind)

    def _finish(self, key: tuple[str, Address, bytes], now: float) -> None:
        timed = self._timed.pop(key, None)
        if timed is not None:
            self.recorder.observe("aaa_vpn_request_duration_seconds", max(0.0, now - timed[0]), kind=timed[1])

    def forget(self, now: float) -> None:
        """Drop what was never answered within a minute."""
        for key in [k for k, (when, _kind) in self._timed.items() if now - when > _TIMED_FOR]:
            del self._timed[key]

    def snapshot(
        self,
        counters: Mapping[str, int],
        entries: int,
        backend: SaBackend | None,
        clients: Mapping[str, RadiusClient],
        now: float,
    ) -> Snapshot:
        """The figures now: ``counters`` (the role's and the node's),
        ``entries`` (visitors or bindings), the installed paths, the RADIUS
        clients by the prefix of their counters (``radius_client``, ``accounting_client``)."""
        role = self.recorder.role
        self.forget(now)
        self.recorder.set("aaa_vpn_visitors" if role == "fa" else "aaa_vpn_bindings", entries)
        if backend is not None:
            self.recorder.set("aaa_vpn_sa_paths", len(backend.paths()), backend=self.backend_name)
        merged = dict(counters)
        if clients:
            self.recorder.set("aaa_vpn_pending_requests", sum(c.waiting + c.outstanding for c in clients.values()))
        for prefix, client in clients.items():
            for server in client.servers:
                alive = int(client.is_alive(server.name, now))
                self.recorder.set("aaa_vpn_upstream_server_up", alive, server=server.name)
            merged.update({f"{prefix}.{k}": v for k, v in client.counters.items()})
        snapshot = self.recorder.snapshot(merged)
        snapshot.gauges[("aaa_vpn_workers", labels_of(role=role))] = 1
        snapshot.gauges[("aaa_vpn_start_time_seconds", labels_of(role=role))] = self.started
        return snapshot


__all__ = ["AgentMetrics"]
