"""Replay protection of Mobile IPv4 registrations by timestamps (RFC 5944 section 5.7).

* The 64-bit Identification is a time in NTP format: seconds since
  1900-01-01 in the high 32 bits, the fraction of a second in the low 32 bits
  (RFC 5905 section 6). Low-order bits the clock cannot provide SHOULD be
  random (RFC 5944 section 5.7); :func:`timestamp_identification` takes them
  from the caller, so this module stays pure.
* A receiver accepts a request only if its time is within ``tolerance`` of
  its own clock (7 s by default; RFC 5944 section 5.7 says it SHOULD be more
  than 3 s) and its Identification is greater than that of any earlier
  accepted request from the same mobile node (:func:`check_timestamp`).
* On a bad timestamp the home agent replies with code 133 and an
  Identification made of its own time in the high 32 bits and the request's
  low 32 bits (RFC 5944 section 5.7.1: :func:`mismatch_identification`), so the
  mobile node can resynchronise (:func:`identification_skew`).
* A reply matches its request on the low-order 32 bits (and the home address):
  :func:`identification_matches`.

NTP seconds wrap every 2**32 s (the next era starts in February 2036); times
are placed in the era nearest to ``now``, as RFC 5905 recommends, so the
checks keep working across the wrap.

Pure: ``now`` (Unix time, seconds) is always passed in.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

#: Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01): RFC 868.
NTP_UNIX_OFFSET = 2_208_988_800
#: RFC 5944 section 5.7: the default replay window (seconds).
DEFAULT_TOLERANCE = 7.0
#: Clock resolution assumed in :func:`timestamp_identification`: the fraction fills
#: the top 20 bits of the low word (about a microsecond, what ``time.time()`` gives);
#: the bottom 12 bits come from the caller's random source.
FRACTION_BITS = 20
RANDOM_BITS = 32 - FRACTION_BITS

_ERA = 1 << 32
_LOW = 0xFFFFFFFF


def timestamp_identification(now: float, random_low: int = 0) -> int:
    """The Identification of a request sent at Unix time ``now``.

    ``random_low`` supplies the :data:`RANDOM_BITS` low-order bits the clock
    does not (RFC 5944 section 5.7: they SHOULD be random); it is masked to
    that width, so successive calls stay increasing with the clock."""
    if not math.isfinite(now):
        raise ValueError(f"now = {now!r} is not a finite time")
    ntp = now + NTP_UNIX_OFFSET
    seconds = math.floor(ntp)
    fraction = int((ntp - seconds) * (1 << FRACTION_BITS))
    low = (fraction << RANDOM_BITS) | (random_low & ((1 << RANDOM_BITS) - 1))
    return ((seconds % _ERA) << 32) | low


def _absolute(identification: int, now: float) -> int:
    """``identification`` as a 96-bit count of 2**-32 s since the NTP epoch,
    its seconds placed in the era closest to ``now``."""
    if not 0 <= identification <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"identification {identification!r} is not a 64-bit value")
    reference = math.floor(now) + NTP_UNIX_OFFSET
    seconds = identification >> 32
    # Choose the era that puts ``seconds`` nearest to the reference time.
    candidate = reference - ((reference - seconds + _ERA // 2) % _ERA) + _ERA // 2
    return (candidate << 32) | (identification & _LOW)


def identification_time(identification: int, now: float) -> float:
    """The Unix time an Identification stands for (era chosen near ``now``)."""
    return _absolute(identification, now) / _ERA - NTP_UNIX_OFFSET


def identification_skew(identification: int, now: float) -> float:
    """How far the sender's clock is ahead of ours (seconds; negative: behind)."""
    return (_absolute(identification, now) - _absolute(timestamp_identification(now), now)) / _ERA


class TimestampVerdict(enum.Enum):
    OK = "ok"
    OUT_OF_WINDOW = "out-of-window"  # too far from our clock: reply 133
    NOT_NEWER = "not-newer"  # not greater than the last accepted one: a replay, reply 133


@dataclass(frozen=True)
class TimestampCheck:
    """The outcome of :func:`check_timestamp`; true when the request is acceptable."""

    verdict: TimestampVerdict
    reason: str  # human-readable, empty when ok
    skew: float  # sender's clock minus ours, seconds

    @property
    def ok(self) -> bool:
        return self.verdict is TimestampVerdict.OK

    def __bool__(self) -> bool:
        return self.ok


def check_timestamp(
    identification: int, now: float, last_seen: int | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> TimestampCheck:
    """Whether a request's timestamp Identification is acceptable at ``now``
    (RFC 5944 section 5.7): within ``tolerance`` seconds of our clock, and
    greater than ``last_seen`` (the Identification of the last request accepted
    from this mobile node), if any."""
    if not tolerance > 0:
        raise ValueError(f"tolerance {tolerance!r} must be positive")
    skew = identification_skew(identification, now)
    if abs(skew) > tolerance:
        direction = "ahead of" if skew > 0 else "behind"
        return TimestampCheck(
            TimestampVerdict.OUT_OF_WINDOW,
            f"timestamp {abs(skew):.3f} s {direction} our clock (tolerance {tolerance} s)",
            skew,
        )
    if last_seen is not None and _absolute(identification, now) <= _absolute(last_seen, now):
        return TimestampCheck(
            TimestampVerdict.NOT_NEWER,
            f"identification 0x{identification:016x} is not greater than the last accepted 0x{last_seen:016x}",
            skew,
        )
    return TimestampCheck(TimestampVerdict.OK, "", skew)


def mismatch_identification(request_identification: int, now: float) -> int:
    """The Identification of a code-133 reply (RFC 5944 section 5.7.1): the home
    agent's own time in the high 32 bits, the request's low 32 bits copied."""
    if not 0 <= request_identification <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"identification {request_identification!r} is not a 64-bit value")
    return (timestamp_identification(now) & ~_LOW) | (request_identification & _LOW)


def identification_matches(reply_identification: int, request_identification: int) -> bool:
    """Whether a reply answers a request: the low-order 32 bits are equal
    (RFC 5944 section 5.7; the caller also compares the home address)."""
    return (reply_identification & _LOW) == (request_identification & _LOW)
