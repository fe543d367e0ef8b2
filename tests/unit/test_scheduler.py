"""Scheduler arithmetic and dispatch on a fake clock: no sleeps, no wall time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from sutazai_agent.core.scheduler import GATHER_S, MAX_SLEEP_S, MIN_SLEEP_S, Schedule, Scheduler


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_first_runs_are_splayed_within_the_interval() -> None:
    schedule = Schedule(random.Random(7))
    firsts = [schedule.add(f"s{i}", 10.0, now=100.0) for i in range(1000)]
    assert all(100.0 <= f <= 110.0 for f in firsts)
    # Spread out, not bunched: every second of the interval gets some first runs.
    assert {int(f - 100.0) for f in firsts} == set(range(10))


def test_no_drift_over_a_thousand_ticks() -> None:
    schedule = Schedule(random.Random(1))
    first = schedule.add("svc", 10.0, now=0.0)
    dues = []
    now = first
    for _ in range(1000):
        (item,) = schedule.pop_due(now)
        dues.append(item.due)
        # Each run is observed a little late; lateness must not accumulate.
        now = schedule.next_due() + 0.003  # type: ignore[operator]
    assert dues[-1] == pytest.approx(first + 999 * 10.0, abs=1e-6)
    assert schedule.skipped == 0


def test_late_ticks_are_skipped_not_burst() -> None:
    schedule = Schedule(random.Random(1))
    first = schedule.add("svc", 10.0, now=0.0)
    # The loop wakes 35 s late: one run now, the three missed ticks are dropped.
    due = schedule.pop_due(first + 35.0)
    assert len(due) == 1
    assert schedule.skipped == 3
    assert schedule.next_due() == pytest.approx(first + 40.0)
    assert schedule.pop_due(first + 36.0) == []


def test_all_due_jobs_are_dispatched_in_one_wake_up() -> None:
    schedule = Schedule(random.Random(3))
    for i in range(50):
        schedule.add(f"s{i}", 5.0, now=0.0)
    assert len(schedule.pop_due(5.0)) == 50
    assert len(schedule) == 50


def test_duplicate_and_bad_jobs_are_refused() -> None:
    schedule = Schedule()
    schedule.add("a", 1.0, now=0.0)
    with pytest.raises(ValueError, match="duplicate"):
        schedule.add("a", 1.0, now=0.0)
    with pytest.raises(ValueError, match="positive"):
        schedule.add("b", 0.0, now=0.0)


class Gate:
    """A job that blocks until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.started = 0

    async def __call__(self) -> None:
        self.running += 1
        self.started += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_job_still_running_skips_its_next_tick() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock, max_concurrency=10, on_lag=lambda _: None, rng=random.Random(2))
    gate = Gate()
    scheduler.add("slow", 10.0, gate)
    clock.now += 10.0
    scheduler.tick()
    await settle()
    assert gate.started == 1
    for _ in range(3):  # three more ticks come due while the first run hangs
        clock.now += 10.0
        scheduler.tick()
        await settle()
    assert gate.started == 1
    assert gate.peak == 1
    assert scheduler.skipped == 3
    gate.release.set()
    await scheduler.drain(1.0)
    clock.now += 10.0
    scheduler.tick()
    await settle()
    assert gate.started == 2


async def test_concurrency_is_bounded_and_lag_reported() -> None:
    clock = FakeClock()
    lags: list[float] = []
    scheduler = Scheduler(clock, max_concurrency=3, on_lag=lags.append, rng=random.Random(4))
    gate = Gate()
    for i in range(10):
        scheduler.add(f"s{i}", 10.0, gate)
    clock.now += 10.0
    scheduler.tick()
    await settle()
    assert gate.running == 3
    clock.now += 2.0  # the queued jobs get their slot two seconds later
    gate.release.set()
    await scheduler.drain(1.0)
    assert gate.peak == 3
    assert gate.started == 10
    assert len(lags) == 10
    assert max(lags) >= 2.0
    assert min(lags) >= 0.0


async def test_sleep_is_bounded_both_ways() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock, max_concurrency=1, on_lag=lambda _: None, rng=random.Random(5))
    assert scheduler.tick() == MAX_SLEEP_S  # nothing scheduled: still wake for liveness
    scheduler.add("a", 100.0, Gate())
    clock.now += 200.0
    delay = scheduler.tick()
    assert MIN_SLEEP_S <= delay <= MAX_SLEEP_S
    await scheduler.drain(0.01)


async def test_a_failing_job_does_not_stop_the_others() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock, max_concurrency=5, on_lag=lambda _: None, rng=random.Random(6))
    ran: list[str] = []

    async def boom() -> None:
        raise RuntimeError("bug")

    async def fine() -> None:
        ran.append("fine")

    scheduler.add("boom", 1.0, boom)
    scheduler.add("fine", 1.0, fine)
    for _ in range(3):
        clock.now += 1.0
        scheduler.tick()
        await settle()
    assert ran == ["fine"] * 3
    assert scheduler.dispatched == 6


async def test_run_returns_promptly_on_stop_and_drain_cancels_stragglers() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock, max_concurrency=5, on_lag=lambda _: None, rng=random.Random(8))
    gate = Gate()
    scheduler.add("hang", 1.0, gate)
    clock.now += 1.0
    runner = asyncio.create_task(scheduler.run())
    await settle()
    assert gate.running == 1
    scheduler.stop()
    await asyncio.wait_for(runner, 1.0)
    assert await scheduler.drain(0.01) == 1
    assert gate.running == 0


class FirstRuns(random.Random):
    """Splays first runs at the given offsets, in order."""

    def __init__(self, offsets: list[float]) -> None:
        super().__init__(0)
        self.offsets = offsets

    def uniform(self, a: float, b: float) -> float:
        return self.offsets.pop(0)


async def test_jobs_falling_due_within_the_gather_window_start_together() -> None:
    """One wake-up starts every job due in the next GATHER_S (early, phase kept): at 1,000
    services a wake-up per probe cost more than a third of the agent's CPU."""
    clock = FakeClock(0.0)
    lags: list[float] = []
    splay = FirstRuns([1.0, 1.0 + GATHER_S / 2, 1.0 + GATHER_S * 2])
    scheduler = Scheduler(clock, max_concurrency=10, on_lag=lags.append, rng=splay)
    started: list[str] = []

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started.append(name)

        return run

    for name in ("a", "b", "c"):
        scheduler.add(name, 10.0, job(name))
    first, third = 1.0, 1.0 + GATHER_S * 2
    clock.now = first
    delay = scheduler.tick()
    await settle()
    assert len(started) == 2
    assert lags == [0.0, 0.0]  # early is not late
    assert delay == pytest.approx(third - first)
    clock.now = third
    scheduler.tick()
    await settle()
    assert len(started) == 3
    assert scheduler.skipped == 0


# --- reload: jobs removed and replaced while the scheduler runs -----------------------------
def test_a_removed_job_is_no_longer_due_and_its_key_can_come_back() -> None:
    schedule = Schedule(random.Random(11))
    schedule.add("a", 10.0, now=0.0)
    schedule.add("b", 10.0, now=0.0)
    schedule.remove("a")
    assert len(schedule) == 1
    assert [d.key for d in schedule.pop_due(100.0)] == ["b"]
    first = schedule.add("a", 10.0, now=100.0)  # added again: one live entry, splayed afresh
    due = [d.key for d in schedule.pop_due(first)]
    assert due.count("a") == 1
    assert len(schedule) == 2


def test_reschedule_keeps_only_the_new_interval() -> None:
    schedule = Schedule(random.Random(12))
    schedule.add("a", 10.0, now=0.0)
    first = schedule.reschedule("a", 30.0, now=5.0)
    assert 5.0 <= first <= 35.0
    assert schedule.interval("a") == 30.0
    (item,) = schedule.pop_due(first)
    assert schedule.next_due() == pytest.approx(item.due + 30.0)
    assert schedule.pop_due(first + 29.0) == []


async def test_replace_with_the_same_interval_keeps_the_schedule_and_runs_the_new_job() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock, max_concurrency=5, on_lag=lambda _: None, rng=random.Random(13))
    ran: list[str] = []

    async def old() -> None:
        ran.append("old")

    async def new() -> None:
        ran.append("new")

    scheduler.add("svc", 10.0, old)
    due = scheduler._schedule.next_due()
    scheduler.replace("svc", 10.0, new)
    assert scheduler._schedule.next_due() == due
    clock.now += 10.0
    scheduler.tick()
    await scheduler.drain(1.0)
    assert ran == ["new"]


async def test_a_removed_job_in_flight_finishes_and_is_not_run_again() -> None:
    clock = FakeClock()
    scheduler = Scheduler(clock, max_concurrency=5, on_lag=lambda _: None, rng=random.Random(14))
    gate = Gate()
    scheduler.add("svc", 10.0, gate)
    clock.now += 10.0
    scheduler.tick()
    await settle()
    assert gate.running == 1
    scheduler.remove("svc")
    gate.release.set()
    await scheduler.drain(1.0)
    for _ in range(3):
        clock.now += 10.0
        scheduler.tick()
        await settle()
    assert gate.started == 1
