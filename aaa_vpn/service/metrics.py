"""Prometheus metrics: every metric family declared once, each process's
figures, their sum over forked workers, and the text exposition format.

Rules:

1. Every family is declared in :data:`FAMILIES` (name, type, help, labels);
   docs/metrics.md lists the same names (a test compares them). Names follow
   the Prometheus conventions: the ``aaa_vpn_`` prefix, ``_total`` for
   counters, ``_seconds`` for durations, base units.
2. The roles already count what they do (``collections.Counter`` objects
   whose keys are the names the log and the Status-Server text show). Those
   counters are exported as they are (``aaa_vpn_role_events_total``, one
   series per counter name) and the named families that the operator wants
   on a dashboard (handoffs, re-keys, retransmissions, drops by reason, ...)
   are *derived* from them by :data:`DERIVED`: nothing is counted twice.
3. What the roles do not count -- requests and replies by code and client,
   durations, the live figures (gauges) -- is recorded by the network and
   service layers in a :class:`Recorder`, one per process.
4. A process's figures are a :class:`Snapshot` (plain data). A server with
   several worker processes sums its workers' snapshots
   (:func:`merge`): counters and histograms add up, and so do gauges (each
   worker reports its own share, e.g. its cached sessions; a figure that
   belongs to the whole node, such as the live sessions of the database, is
   reported by worker 0 only). How the snapshots travel between processes is
   :mod:`aaa_vpn.net.metrics_server`'s business.
5. Label values are the names the operator provisioned (clients, pools,
   servers), reply codes, reasons and outcomes: never a secret, never a user
   name, never an unbounded value.

Synchronous, no I/O: the network layer serves :func:`render`'s text.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aaa_vpn.wire.radius import code_name

#: The exposition format's content type (text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Histogram buckets for request and database durations, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    """One metric family (rule 1)."""

    name: str
    type: str
    """``counter``, ``gauge`` or ``histogram``."""
    help: str
    labels: tuple[str, ...] = ()


def _families(*items: Family) -> dict[str, Family]:
    return {item.name: item for item in items}


FAMILIES: dict[str, Family] = _families(
    Family(
        "aaa_vpn_role_events_total",
        "counter",
        "The role's own counters, one series per counter name (the names of the log and the Status-Server text);"
        " names nest (dropped is the sum of dropped.*): do not sum over event.",
        ("role", "event"),
    ),
    Family(
        "aaa_vpn_radius_requests_total",
        "counter",
        "RADIUS requests received, by port (auth, acct), code and client (unknown: no provisioned client).",
        ("role", "port", "code", "client"),
    ),
    Family(
        "aaa_vpn_radius_replies_total",
        "counter",
        "RADIUS replies sent, by port, code and client.",
        ("role", "port", "code", "client"),
    ),
    Family(
        "aaa_vpn_radius_decisions_total",
        "counter",
        "Access-Requests decided, by client, outcome (created, renewed, moved, rejected, ...) and reject reason.",
        ("role", "client", "outcome", "reason"),
    ),
    Family(
        "aaa_vpn_radius_dropped_total",
        "counter",
        "Requests dropped without a reply, by reason.",
        ("role", "reason"),
    ),
    Family(
        "aaa_vpn_request_duration_seconds",
        "histogram",
        "Seconds from a request's arrival to its reply's departure, by request kind.",
        ("role", "kind"),
    ),
    Family(
        "aaa_vpn_handoffs_total",
        "counter",
        "Moves of a mobile node to another foreign agent that this node handled.",
        ("role",),
    ),
    Family(
        "aaa_vpn_rekeys_total",
        "counter",
        "Sessions given new keys (a re-keying registration, or a VPN change pushed by CoA).",
        ("role",),
    ),
    Family(
        "aaa_vpn_retransmissions_total",
        "counter",
        "Retransmissions: sent by this node (direction=sent) or received and answered again (direction=received).",
        ("role", "direction"),
    ),
    Family(
        "aaa_vpn_db_duration_seconds",
        "histogram",
        "Seconds the database took, by operation.",
        ("role", "operation"),
    ),
    Family(
        "aaa_vpn_db_errors_total",
        "counter",
        "Database operations that failed (busy past the timeout, connection lost, ...).",
        ("role",),
    ),
    Family(
        "aaa_vpn_sessions",
        "gauge",
        "Live sessions: in the database (home AAA) or in the session cache (foreign AAA).",
        ("role",),
    ),
    Family("aaa_vpn_visitors", "gauge", "The foreign agent's visitors.", ("role",)),
    Family("aaa_vpn_bindings", "gauge", "The home agent's or gateway's mobility bindings.", ("role",)),
    Family("aaa_vpn_sa_paths", "gauge", "Installed SA paths, by SA backend.", ("role", "backend")),
    Family(
        "aaa_vpn_pending_requests",
        "gauge",
        "Requests waiting for an upstream AAA server's answer.",
        ("role",),
    ),
    Family(
        "aaa_vpn_upstream_server_up",
        "gauge",
        "1 if an AAA server of a pool is in use, 0 while it is marked dead.",
        ("role", "server"),
    ),
    Family("aaa_vpn_workers", "gauge", "Worker processes whose figures this endpoint sums.", ("role",)),
    Family(
        "aaa_vpn_start_time_seconds",
        "gauge",
        "When the server (its oldest process) started, in seconds since the epoch.",
        ("role",),
    ),
)


@dataclass(frozen=True)
class Derived:
    """A family fed from the role's counters (rule 2): counter ``key`` (or,
    with ``prefix``, every ``prefix.X`` as the series ``label=X``)."""

    family: str
    key: str = ""
    labels: Labels = ()
    prefix: str = ""
    label: str = ""


#: Rule 2, per role: which role counters feed which named families.
DERIVED: dict[str, tuple[Derived, ...]] = {
    "home": (
        Derived("aaa_vpn_radius_dropped_total", prefix="dropped", label="reason"),
        Derived("aaa_vpn_handoffs_total", "sessions_moved"),
        Derived("aaa_vpn_rekeys_total", "sessions_rekeyed"),
        Derived("aaa_vpn_rekeys_total", "sessions_pushed"),
        Derived("aaa_vpn_retransmissions_total", "duplicates", (("direction", "received"),)),
        Derived("aaa_vpn_db_errors_total", "store_errors"),
    ),
    "foreign": (
        Derived("aaa_vpn_radius_dropped_total", prefix="dropped", label="reason"),
        Derived("aaa_vpn_handoffs_total", "handoffs_answered"),
        Derived("aaa_vpn_retransmissions_total", "duplicates", (("direction", "received"),)),
        Derived("aaa_vpn_retransmissions_total", "upstream.retransmissions", (("direction", "sent"),)),
    ),
    "fa": (
        Derived("aaa_vpn_radius_dropped_total", prefix="dropped", label="reason"),
        Derived("aaa_vpn_retransmissions_total", "duplicates", (("direction", "received"),)),
        Derived("aaa_vpn_rekeys_total", "coa.pushed"),
        Derived("aaa_vpn_retransmissions_total", "relays_retransmitted", (("direction", "sent"),)),
        Derived("aaa_vpn_retransmissions_total", "radius_client.retransmissions", (("direction", "sent"),)),
    ),
    "ha": (
        Derived("aaa_vpn_radius_dropped_total", prefix="dropped", label="reason"),
        Derived("aaa_vpn_handoffs_total", "handoffs"),
        Derived("aaa_vpn_rekeys_total", "coa.pushed"),
        Derived("aaa_vpn_retransmissions_total", "duplicates", (("direction", "received"),)),
        Derived("aaa_vpn_retransmissions_total", "binding_updates_retransmitted", (("direction", "sent"),)),
        Derived("aaa_vpn_retransmissions_total", "radius_client.retransmissions", (("direction", "sent"),)),
    ),
    "gw": (
        Derived("aaa_vpn_radius_dropped_total", prefix="dropped", label="reason"),
        Derived("aaa_vpn_retransmissions_total", "duplicates", (("direction", "received"),)),
    ),
}


def labels_of(**values: str) -> Labels:
    """Label pairs in a stable order."""
    return tuple(sorted((k, str(v)) for k, v in values.items()))


@dataclass
class Histogram:
    """Cumulative-on-output histogram: per-bucket counts, their sum and count."""

    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)  # the last: +Inf

    def observe(self, value: float, times: int = 1) -> None:
        """``times`` observations of ``value``."""
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.sum += value * times
        self.count += times

    def add(self, other: Histogram) -> None:
        if other.buckets != self.buckets:
            raise ValueError("histograms with different buckets cannot be added")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum
        self.count += other.count


@dataclass
class Snapshot:
    """One process's (or the sum of several processes') figures, as plain data."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    histograms: dict[tuple[str, Labels], Histogram] = field(default_factory=dict)

    def to_json(self) -> dict[str, list[list[object]]]:
        return {
            "counters": [[name, [list(p) for p in labels], value] for (name, labels), value in self.counters.items()],
            "gauges": [[name, [list(p) for p in labels], value] for (name, labels), value in self.gauges.items()],
            "histograms": [
                [name, [list(p) for p in labels], list(h.buckets), h.counts, h.sum, h.count]
                for (name, labels), h in self.histograms.items()
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[Sequence[object]]]) -> Snapshot:
        def key(name: object, labels: object) -> tuple[str, Labels]:
            assert isinstance(labels, list)
            return str(name), tuple((str(k), str(v)) for k, v in labels)

        snapshot = cls()
        for name, labels, value in data.get("counters", ()):
            snapshot.counters[key(name, labels)] = float(value)  # type: ignore[arg-type]
        for name, labels, value in data.get("gauges", ()):
            snapshot.gauges[key(name, labels)] = float(value)  # type: ignore[arg-type]
        for name, labels, buckets, counts, total, count in data.get("histograms", ()):
            snapshot.histograms[key(name, labels)] = Histogram(
                tuple(float(b) for b in buckets),  # type: ignore[attr-defined]
                [int(c) for c in counts],  # type: ignore[attr-defined]
                float(total),  # type: ignore[arg-type]
                int(count),  # type: ignore[call-overload]
            )
        return snapshot


class Recorder:
    """One process's figures beyond the role's counters (rule 3), and how the
    role's counters are read (rule 2). ``role`` is the ``role`` label of
    every series (``home``, ``foreign``, ``fa``, ``ha``, ``gw``)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.counts: collections.Counter[tuple[str, Labels]] = collections.Counter()
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], Histogram] = {}

    def inc(self, family: str, amount: int = 1, **labels: str) -> None:
        self.counts[(family, labels_of(role=self.role, **labels))] += amount

    def observe(self, family: str, value: float, times: int = 1, **labels: str) -> None:
        key = (family, labels_of(role=self.role, **labels))
        histogram = self.histograms.get(key)
        if histogram is None:
            histogram = self.histograms[key] = Histogram()
        histogram.observe(value, times)

    def set(self, family: str, value: float, **labels: str) -> None:
        self.gauges[(family, labels_of(role=self.role, **labels))] = value

    def snapshot(self, role_counters: Mapping[str, int]) -> Snapshot:
        """This process's figures now, with the role's counters (rule 2)."""
        counters: dict[tuple[str, Labels], float] = dict(self.counts)
        for event, value in role_counters.items():
            counters[("aaa_vpn_role_events_total", labels_of(role=self.role, event=event))] = value
        for derived in DERIVED.get(self.role, ()):
            if derived.prefix:
                start = derived.prefix + "."
                for event, value in role_counters.items():
                    if event.startswith(start):
                        labels = labels_of(role=self.role, **{derived.label: event[len(start) :]})
                        key = (derived.family, labels)
                        counters[key] = counters.get(key, 0) + value
                continue
            key = (derived.family, labels_of(role=self.role, **dict(derived.labels)))
            counters[key] = counters.get(key, 0) + role_counters.get(derived.key, 0)
        histograms = {key: Histogram(h.buckets, list(h.counts), h.sum, h.count) for key, h in self.histograms.items()}
        return Snapshot(counters, dict(self.gauges), histograms)


def record_exchange(
    recorder: Recorder,
    port: str,
    requests: Sequence[tuple[bytes, tuple[str, int]]],
    replies: Sequence[tuple[bytes, tuple[str, int]]],
    seconds: float,
    client_name: Callable[[str], str],
) -> None:
    """Count a batch of RADIUS datagrams received on ``port`` (``auth``,
    ``acct``) and the replies sent for it ``seconds`` later: by code and
    client, and each reply's duration by the kind of its request."""
    # Counted per batch first: one labelled series update per (code, client), not per datagram.
    received: collections.Counter[tuple[int, str]] = collections.Counter()
    sent: collections.Counter[tuple[int, str]] = collections.Counter()
    answered: collections.Counter[int] = collections.Counter()
    kinds: dict[tuple[tuple[str, int], int], int] = {}
    for data, source in requests:
        code = data[0] if data else -1
        received[(code, client_name(source[0]))] += 1
        if len(data) > 1:
            kinds[(source, data[1])] = code
    for reply, destination in replies:
        sent[(reply[0] if reply else -1, client_name(destination[0]))] += 1
        kind = kinds.get((destination, reply[1])) if len(reply) > 1 else None
        if kind is not None:
            answered[kind] += 1
    for family, counts in (("aaa_vpn_radius_requests_total", received), ("aaa_vpn_radius_replies_total", sent)):
        for (code, client), count in counts.items():
            recorder.inc(family, count, port=port, code=_code_label(code), client=client)
    for code, count in answered.items():
        recorder.observe("aaa_vpn_request_duration_seconds", seconds, count, kind=_code_label(code))


def _code_label(code: int) -> str:
    return "empty" if code < 0 else code_name(code)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """The sum of several processes' snapshots (rule 4)."""
    total = Snapshot()
    for snapshot in snapshots:
        for key, value in snapshot.counters.items():
            total.counters[key] = total.counters.get(key, 0) + value
        for key, value in snapshot.gauges.items():
            total.gauges[key] = total.gauges.get(key, 0) + value
        for key, histogram in snapshot.histograms.items():
            mine = total.histograms.get(key)
            if mine is None:
                total.histograms[key] = Histogram(
                    histogram.buckets, list(histogram.counts), histogram.sum, histogram.count
                )
            else:
                mine.add(histogram)
    return total


# -- the text exposition format ---------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _series(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{text}}} {_number(value)}"


def render(snapshot: Snapshot) -> str:
    """``snapshot`` in the Prometheus text format 0.0.4, families in
    :data:`FAMILIES` order, series sorted; only families with series."""
    by_family: dict[str, list[str]] = collections.defaultdict(list)
    for source in (snapshot.counters, snapshot.gauges):
        for (name, labels), value in sorted(source.items()):
            by_family[name].append(_series(name, labels, value))
    for (name, labels), histogram in sorted(snapshot.histograms.items()):
        cumulative = 0
        for bound, count in zip((*histogram.buckets, math.inf), histogram.counts, strict=True):
            cumulative += count
            by_family[name].append(_series(f"{name}_bucket", (*labels, ("le", _number(bound))), cumulative))
        by_family[name].append(_series(f"{name}_sum", labels, histogram.sum))
        by_family[name].append(_series(f"{name}_count", labels, histogram.count))
    lines: list[str] = []
    for name, family in FAMILIES.items():
        series = by_family.pop(name, None)
        if not series:
            continue
        lines.append(f"# HELP {name} {_escape(family.help)}")
        lines.append(f"# TYPE {name} {family.type}")
        lines.extend(series)
    if by_family:  # a bug: every family is declared (rule 1)
        raise ValueError(f"undeclared metric families: {', '.join(sorted(by_family))}")
    return "\n".join(lines) + "\n"


__all__ = [
    "CONTENT_TYPE",
    "DERIVED",
    "DURATION_BUCKETS",
    "FAMILIES",
    "Derived",
    "Family",
    "Histogram",
    "Recorder",
    "Snapshot",
    "labels_of",
    "merge",
    "record_exchange",
    "render",
]
