"""The publisher's adaptive batch size: a pure function of the last batch's outcome."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from sutazai_agent.events.confirms import Holds, next_batch_size


@pytest.mark.parametrize(
    ("current", "sent", "confirmed", "timed_out", "expected"),
    [
        # A full batch confirmed whole doubles, up to the ceiling.
        (16, 16, 16, False, 32),
        (128, 128, 128, False, 256),
        (200, 200, 200, False, 256),
        (256, 256, 256, False, 256),
        # A short batch (the outbox held fewer) confirmed whole says nothing about more.
        (256, 40, 40, False, 256),
        (16, 3, 3, False, 16),
        # A confirm timeout shrinks to the confirmed prefix ...
        (256, 256, 44, True, 44),
        (64, 40, 20, True, 20),
        # ... but not below the floor, also when nothing was confirmed.
        (256, 256, 3, True, 16),
        (256, 256, 0, True, 16),
        (16, 16, 0, True, 16),
        # Any other failure (broker gone, channel closed, nack) leaves it alone.
        (64, 64, 10, False, 64),
        (256, 256, 0, False, 256),
        (32, 32, 0, False, 32),
    ],
)
def test_next_batch_size(
    current: int, sent: int, confirmed: int, timed_out: bool, expected: int
) -> None:
    got = next_batch_size(
        current, sent=sent, confirmed=confirmed, timed_out=timed_out, floor=16, ceiling=256
    )
    assert got == expected


def test_timeouts_then_successes_converge_back_to_the_ceiling() -> None:
    size, sizes = 256, []
    for confirmed in (44, 30):  # two slow batches
        size = next_batch_size(
            size, sent=size, confirmed=confirmed, timed_out=True, floor=16, ceiling=256
        )
        sizes.append(size)
    while size < 256:
        size = next_batch_size(
            size, sent=size, confirmed=size, timed_out=False, floor=16, ceiling=256
        )
        sizes.append(size)
    assert sizes == [44, 30, 60, 120, 240, 256]


class NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_rejected_service_is_held_with_growing_backoff_and_released_on_a_confirm() -> None:
    holds = Holds(min_backoff_s=0.5, max_backoff_s=4.0, rng=NoJitter())
    assert holds.waiting(0.0) == []
    assert holds.next_until(0.0) is None
    delays = [holds.hold("kong", 0.0).until for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    holds.hold("db", 0.0)
    assert holds.waiting(0.1) == ["kong", "db"]
    assert holds.waiting(3.0) == ["kong"]  # db's hold ended: its events go again
    assert holds.next_until(3.0) == 1.0
    assert holds.attempts() == {"kong": 6, "db": 1}
    released = holds.release("kong")
    assert released is not None
    assert released.attempts == 6
    assert holds.release("kong") is None
    assert holds.hold("kong", 10.0).until == 10.5  # a new rejection starts over


@dataclass(frozen=True)
class Row:
    service: str
    sequence: int


def test_a_held_service_retries_with_its_oldest_event_alone() -> None:
    holds = Holds(min_backoff_s=0.5, max_backoff_s=4.0, rng=NoJitter())
    rows = [Row("kong", 1), Row("db", 1), Row("kong", 2), Row("db", 2), Row("kong", 3)]
    assert holds.probe_only(rows) == rows
    holds.hold("kong", 0.0)
    assert holds.probe_only(rows) == [Row("kong", 1), Row("db", 1), Row("db", 2)]
    holds.release("kong")
    assert holds.probe_only(rows) == rows
