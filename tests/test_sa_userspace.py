"""The userspace SA backend (aaa_vpn.sa.userspace) and its QoS (aaa_vpn.sa.qos).

* The token bucket, with an injected clock: no timing in these assertions.
* The backend for real, in network namespaces this module creates (prefix
  ``aau_<pid>_``) and deletes in a finalizer, even when a test fails:

      h (198.51.100.10, .11) -- A (192.0.2.1) ==== B (192.0.2.2) -- k (203.0.113.5)
                                   \\
                                    ==== C (192.0.2.3, 203.0.113.5 on lo: "the moved host")

  A, B and C are nodes with a userspace backend each; h and k are hosts
  behind A and B. Traffic between h and k goes through the tunnel; the
  capture on B's wire link must show ESP only, which tshark decrypts with the
  SAs (esp_sa UAT, reference/test-environment.md section 3.1) with every ICV
  good and the inner addresses visible.
"""

from __future__ import annotations

import pytest

from aaa_vpn.sa.qos import MIN_BURST, TokenBucket, burst_octets


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_polices_at_the_rate() -> None:
    clock = FakeClock()  # steps are powers of two: exact in floating point
    bucket = TokenBucket(128, burst=10_000, clock=clock)  # 128 kbit/s = 16,000 octets/s
    # It starts full: 10,000 octets pass at once, the next packet does not.
    assert [bucket.allow(1000) for _ in range(11)] == [True] * 10 + [False]
    assert (bucket.passed, bucket.dropped, bucket.dropped_octets) == (10, 1, 1000)
    clock.now += 1 / 32  # 500 octets: not enough for 1000
    assert not bucket.allow(1000)
    clock.now += 1 / 32  # 1000 octets in all
    assert bucket.allow(1000)
    assert not bucket.allow(1)
    # A long pause refills to the depth, not beyond it.
    clock.now += 60
    assert [bucket.allow(1000) for _ in range(11)] == [True] * 10 + [False]
    # Over 1 s of steady offered load (64,000 octets) the empty bucket passes the rate, no more.
    passed = 0
    for _ in range(64):
        clock.now += 1 / 64
        passed += bucket.allow(1000)
    assert passed == 16  # 16,000 octets


def test_token_bucket_edges() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8, clock=clock)  # 1000 octets/s
    assert bucket.burst == MIN_BURST, "the depth never falls below two full-size packets"
    assert bucket.allow(1500) and bucket.allow(1500) and not bucket.allow(1500)
    clock.now -= 5  # a clock going back adds nothing (and takes nothing)
    assert not bucket.allow(1)
    clock.now += 5 + 1.5
    assert bucket.allow(1500)
    assert burst_octets(80_000, 100) == 1_000_000  # 100 ms of 80 Mbit/s
    assert burst_octets(80_000, 0) == MIN_BURST
    for bad in (0, -1):
        with pytest.raises(ValueError):
            TokenBucket(bad)
    with pytest.raises(ValueError):
        burst_octets(-1)
    assert "8 kbit/s" in repr(bucket)
