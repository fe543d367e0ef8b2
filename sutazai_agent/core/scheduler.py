"""One clock, one scheduler.

``Schedule`` is the arithmetic (pure, no ``await``): a heap of due times on the monotonic
clock, first runs splayed at random within the interval, next due = previous due + interval,
missed ticks skipped rather than burst. ``Scheduler`` is the thin I/O shell that sleeps until
the next due time, dispatches every due job, bounds concurrency and never lets two runs of
one job overlap.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from sutazai_agent.core.protocols import Clock

log = structlog.get_logger(__name__)

MIN_SLEEP_S = 0.001
"""Never sleep less: uvloop turns shorter sleeps into a busy spin."""
GATHER_S = 0.05
"""A wake-up starts every job due within this much: probes go up to 50 ms early, their phase
kept (the next due is still ``due + interval``). At 1,000 services a wake-up per probe was a
third of the agent's CPU (docs/performance.md); gathered, the probes' connects, answers and
closes also fall into shared loop iterations."""
MAX_SLEEP_S = 1.0
"""Wake at least this often, so the liveness heartbeat stays fresh when nothing is due."""


@dataclass(frozen=True, slots=True)
class Due:
    key: str
    due: float


class Schedule:
    """Due times of named jobs. Pure: time comes in as arguments."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311  # splay, not cryptography
        self._intervals: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._live: dict[str, int] = {}
        """The order number of each job's live heap item; a removed or rescheduled job's
        old item stays in the heap and is dropped when it reaches the top."""
        self._order = 0
        self.skipped = 0
        """Ticks dropped because the job was late or still running."""

    def add(self, key: str, interval_s: float, now: float) -> float:
        """Schedule ``key`` every ``interval_s``; the first run falls at random in the interval."""
        if key in self._intervals:
            raise ValueError(f"duplicate job {key!r}")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._intervals[key] = interval_s
        first = now + self._rng.uniform(0, interval_s)
        self._push(key, first)
        return first

    def remove(self, key: str) -> None:
        """Stop scheduling ``key`` (a no-op for an unknown key)."""
        self._intervals.pop(key, None)
        self._live.pop(key, None)

    def reschedule(self, key: str, interval_s: float, now: float) -> float:
        """Give ``key`` a new interval; its next run falls at random within it."""
        self.remove(key)
        return self.add(key, interval_s, now)

    def interval(self, key: str) -> float | None:
        return self._intervals.get(key)

    def __len__(self) -> int:
        return len(self._live)

    def next_due(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Due]:
        """Every job due at ``now``, each already rescheduled for its next tick."""
        out: list[Due] = []
        self._drop_stale()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            out.append(Due(key, due))
            self._push(key, self.following(key, due, now))
            self._drop_stale()
        return out

    def _drop_stale(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def following(self, key: str, due: float, now: float) -> float:
        """The next due time after ``due`` that is still in the future (skip, don't burst)."""
        interval = self._intervals[key]
        nxt = due + interval
        if nxt <= now:
            missed = math.floor((now - due) / interval)
            self.skipped += missed
            nxt = due + (missed + 1) * interval
        return nxt

    def _push(self, key: str, due: float) -> None:
        self._order += 1
        self._live[key] = self._order
        heapq.heappush(self._heap, (due, self._order, key))


Job = Callable[[], Awaitable[None]]


class Scheduler:
    """Runs jobs on their schedule until ``stop()``.

    At most ``max_concurrency`` jobs run at once; a job still running at its next due time
    skips that tick. ``on_lag`` receives how late each job started after its due time.
    """

    def __init__(
        self,
        clock: Clock,
        max_concurrency: int,
        on_lag: Callable[[float], None],
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._schedule = Schedule(rng)
        self._jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(max_concurrency)
        self._on_lag = on_lag
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._stopping = False
        self.last_tick: float | None = None
        self.dispatched = 0

    @property
    def skipped(self) -> int:
        return self._schedule.skipped

    def add(self, key: str, interval_s: float, job: Job) -> None:
        self._jobs[key] = job
        self._schedule.add(key, interval_s, self._clock())
        self._wake()

    def remove(self, key: str) -> None:
        """Stop scheduling ``key``; a run in flight finishes, and no run of the same key
        starts before it has."""
        self._jobs.pop(key, None)
        self._schedule.remove(key)

    def replace(self, key: str, interval_s: float, job: Job) -> None:
        """Run ``job`` for ``key`` from its next tick on. The schedule is kept when the
        interval is the same; a new interval starts afresh, splayed within it."""
        self._jobs[key] = job
        if self._schedule.interval(key) != interval_s:
            self._schedule.reschedule(key, interval_s, self._clock())
            self._wake()

    def _wake(self) -> None:
        """Re-evaluate the next due time (a new job may be due before the current sleep ends)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def stop(self) -> None:
        """Stop dispatching (safe to call from a signal handler)."""
        self._stopping = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            delay = self.tick()
            self._waiter = loop.create_future()
            handle = loop.call_later(delay, _settle, self._waiter)
            try:
                await self._waiter
            finally:
                handle.cancel()
                self._waiter = None

    def tick(self) -> float:
        """Dispatch every due job; return how long to sleep before the next tick."""
        now = self._clock()
        self.last_tick = now
        self._dispatch(self._schedule.pop_due(now + GATHER_S))
        nxt = self._schedule.next_due()
        delay = MAX_SLEEP_S if nxt is None else nxt - self._clock()
        return min(max(delay, MIN_SLEEP_S), MAX_SLEEP_S)

    def _dispatch(self, due: Iterable[Due]) -> None:
        for item in due:
            if item.key in self._running:
                self._schedule.skipped += 1
                continue
            job = self._jobs.get(item.key)
            if job is None:
                continue
            self._running.add(item.key)
            task = asyncio.create_task(self._run_one(item, job), name=f"probe:{item.key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self.dispatched += 1

    async def _run_one(self, item: Due, job: Job) -> None:
        try:
            async with self._slots:
                self._on_lag(max(0.0, self._clock() - item.due))
                await job()
        except Exception:  # job boundary: one broken job must not stop the others
            log.exception("job_failed", job=item.key)
        finally:
            self._running.discard(item.key)

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for running jobs, then cancel the rest; return how many."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
