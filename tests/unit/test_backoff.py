"""core.backoff: the one retry pacing of the outbox writer, the registrar and the publisher."""

from __future__ import annotations

import random

from sutazai_agent.core.backoff import Backoff


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1.0, cap_s=30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(10)]
    steps = [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next() <= 1.0


def test_backoff_survives_a_day_long_outage() -> None:
    # 2.0 ** 1024 overflows: without a bounded exponent the registrar's retry loop died
    # after some 8 hours of Consul being unreachable.
    backoff = Backoff(initial_s=1.0, cap_s=30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(3000)]
    assert all(15.0 <= d <= 30.0 for d in delays[10:])
