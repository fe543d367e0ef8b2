"""``Pacer``: additive increase, multiplicative decrease of the registrations in flight."""

from __future__ import annotations

import pytest

from sutazai_agent.consul.pacing import WINDOW_START, Pacer, slow_threshold


def test_fast_groups_grow_the_window_up_to_its_bound() -> None:
    pacer = Pacer(window_max=6, slow_s=0.5)
    assert pacer.window == WINDOW_START
    sizes = []
    for _ in range(4):
        pacer.done(0.1)
        sizes.append(pacer.window)
    assert sizes == [5, 6, 6, 6]


def test_slow_groups_halve_it_down_to_one_and_reset_starts_small() -> None:
    pacer = Pacer(window_max=16, slow_s=0.5)
    for _ in range(12):
        pacer.done(0.1)
    assert pacer.window == 16
    sizes = []
    for _ in range(5):
        pacer.done(0.8)
        sizes.append(pacer.window)
    assert sizes == [8, 4, 2, 1, 1]
    pacer.reset()
    assert pacer.window == WINDOW_START


@pytest.mark.parametrize(("timeout_s", "slow_s"), [(5.0, 0.5), (2.0, 0.2), (0.1, 0.05), (60, 0.5)])
def test_slow_is_a_tenth_of_the_timeout_within_bounds(timeout_s: float, slow_s: float) -> None:
    assert slow_threshold(timeout_s) == pytest.approx(slow_s)
