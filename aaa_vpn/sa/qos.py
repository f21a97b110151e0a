"""Per-path QoS of the ``userspace`` data plane: the rate limit of a path's
QoS class (:class:`~aaa_vpn.wire.profile.QosSpec`), as a token bucket.

The other half of a QoS class, the DSCP marking of the outer header
(RFC 2474, RFC 4301 section 5.1.2.1), is done by the ESP codec
(:class:`~aaa_vpn.sa.esp.OuterHeader`) for every backend that builds packets.

Rules:

* ``rate_kbps`` is kilobits (1000 bits) per second of *outer* packets, the
  octets the path puts on the wire, ESP overhead included; 0 means no limit
  and no bucket at all.
* The bucket holds at most ``burst`` octets: :func:`burst_octets` gives
  ``burst_ms`` worth of the rate, but never less than :data:`MIN_BURST`, so
  that one packet of the largest usual size always fits once the bucket has
  refilled (a bucket smaller than a packet would drop that packet forever).
* A packet passes when the bucket holds at least its size, and then takes
  its size out; otherwise it is dropped and counted, and takes nothing (a
  policer, RFC 2475 section 2.3.3.3, not a shaper: the data plane holds no queue).
* Time comes from a clock passed in (``time.monotonic`` by default), so the
  logic is tested with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

#: Smallest bucket: two outer packets of a 1500-octet link.
MIN_BURST: Final = 3000
#: Default bucket depth in milliseconds of the rate.
DEFAULT_BURST_MS: Final = 100


def burst_octets(rate_kbps: int, burst_ms: int = DEFAULT_BURST_MS) -> int:
    """The bucket depth for ``rate_kbps``: ``burst_ms`` of traffic, at least :data:`MIN_BURST`."""
    if rate_kbps < 0 or burst_ms < 0:
        raise ValueError("rate and burst must not be negative")
    return max(rate_kbps * 1000 // 8 * burst_ms // 1000, MIN_BURST)


class TokenBucket:
    """A token bucket policer of ``rate_kbps`` with depth ``burst`` octets; starts full.

    Not thread-safe: one bucket belongs to the data-plane thread (the counters
    may be read from elsewhere; they only grow)."""

    __slots__ = ("_clock", "_last", "_rate", "_tokens", "burst", "dropped", "dropped_octets", "passed", "rate_kbps")

    def __init__(self, rate_kbps: int, burst: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(rate_kbps, int) or rate_kbps <= 0:
            raise ValueError(f"a token bucket needs a positive rate, not {rate_kbps!r} kbit/s")
        self.rate_kbps = rate_kbps
        self.burst = burst_octets(rate_kbps) if burst is None else burst
        if self.burst <= 0:
            raise ValueError("the bucket depth must be positive")
        self._rate = rate_kbps * 1000 / 8  # octets per second
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()
        self.passed = 0
        self.dropped = 0
        self.dropped_octets = 0

    def __repr__(self) -> str:
        return f"TokenBucket({self.rate_kbps} kbit/s, burst={self.burst}, passed={self.passed}, dropped={self.dropped})"

    def allow(self, octets: int) -> bool:
        """Refill for the time since the last call; let a packet of ``octets`` pass or drop it."""
        now = self._clock()
        tokens = self._tokens
        if now > self._last:  # a clock that stands still (or a fake one going back) adds nothing
            tokens += (now - self._last) * self._rate
            self._last = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= octets:
            self._tokens = tokens - octets
            self.passed += 1
            return True
        self._tokens = tokens
        self.dropped += 1
        self.dropped_octets += octets
        return False
