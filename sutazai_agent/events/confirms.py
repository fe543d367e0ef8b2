"""Publishing a batch: per-message confirms, per-service holds and the adaptive batch size.

Per message. Each message of a batch is settled on its own (``settle``): confirmed or
returned ones leave the outbox whatever happened to the others, so a confirmed event is never
sent again; a nacked one holds back only its own service (``Holds``); one that got no answer
(connection lost, confirm timeout) stays in the outbox and is sent again later.

Confirm timeout. The channel hands messages to the socket one at a time, so on a slow or
saturated loop the last of a batch waits seconds before it is even written. A deadline per
message from the start of the batch counted that wait and timed out the tail of every batch.
The publisher's ``publish_timeout_s`` therefore bounds how long the batch may go without a
confirm: each confirm restarts the clock. A clock per message from its hand-off would be as
good, but the hand-off happens inside aiormq's ``basic_publish``, which also awaits the
confirm, so it cannot be observed from here. A dead or hung broker still fails a batch
``publish_timeout_s`` after its start or its last confirm.

Adaptive batch. After a confirm timeout the next batch asks for only as many events as were
confirmed (at least ``min_batch_size``); each full batch that is confirmed whole doubles it
again, up to ``batch_size`` (``next_batch_size``). A timed-out batch that confirmed some
events is progress, not an outage: the publisher counts and logs it (``event_publish_slow``)
and goes on at once. A batch that confirmed nothing, or a broker or connection error, backs
off as an outage.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import aiormq.exceptions
import pamqp.commands

from sutazai_agent.core.backoff import Backoff

if TYPE_CHECKING:
    from sutazai_agent.events.outbox import StoredEvent


def next_batch_size(
    current: int, *, sent: int, confirmed: int, timed_out: bool, floor: int, ceiling: int
) -> int:
    """How many events the next batch asks for, after one that asked for ``current``.

    ``sent`` events were in it and its first ``confirmed`` were confirmed. A confirm timeout
    shrinks the batch to what was confirmed in time (not below ``floor``); a full batch
    confirmed whole doubles it (not above ``ceiling``); anything else leaves it as it is: a
    short batch says nothing about a bigger one, a broker error nothing about its speed.
    """
    if timed_out:
        return max(floor, min(confirmed, current))
    if confirmed == sent == current:
        return min(ceiling, current * 2)
    return current


async def settle(tasks: list[asyncio.Task[object]], timeout_s: float) -> bool:
    """Wait for every publish of a batch to be confirmed, returned, nacked or failed.

    The clock restarts at each confirm (of any message): ``timeout_s`` without one ends the
    wait, and what is still unconfirmed is cancelled (never sent if still queued for the
    channel). Returns whether it ended that way; the caller reads each task's outcome.
    """
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return True
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return False


class _Keyed(Protocol):
    @property
    def service(self) -> str: ...


_Row = TypeVar("_Row", bound=_Keyed)


@dataclass(slots=True)
class Hold:
    backoff: Backoff
    until: float = 0.0

    @property
    def attempts(self) -> int:
        return self.backoff.failures


class Holds:
    """Services whose oldest event the broker rejected (nack: e.g. a ``reject-publish`` queue
    at its limit). Their events wait, retried with exponential backoff; other services' events
    never wait behind them. Pure bookkeeping on a clock given by the caller."""

    def __init__(
        self, min_backoff_s: float, max_backoff_s: float, rng: random.Random | None = None
    ) -> None:
        self._min_s = min_backoff_s
        self._max_s = max_backoff_s
        self._rng = rng
        self._holds: dict[str, Hold] = {}

    def hold(self, service: str, now: float) -> Hold:
        """The service's event was rejected (again): hold it for the next backoff."""
        hold = self._holds.get(service)
        if hold is None:
            hold = self._holds[service] = Hold(Backoff(self._min_s, self._max_s, self._rng))
        hold.until = now + hold.backoff.next()
        return hold

    def release(self, service: str) -> Hold | None:
        """One of the service's events was confirmed: its hold ends."""
        return self._holds.pop(service, None)

    def probe_only(self, rows: list[_Row]) -> list[_Row]:
        """A held service whose hold ended sends only its oldest event, alone, until one is
        confirmed: each retry of a rejection also reaches the queues that accepted it, so
        only one event is sent again, not the whole backlog behind it."""
        if not self._holds:
            return rows
        seen: set[str] = set()
        kept = []
        for row in rows:
            if row.service in self._holds:
                if row.service in seen:
                    continue
                seen.add(row.service)
            kept.append(row)
        return kept

    def waiting(self, now: float) -> list[str]:
        """The services whose events must not be sent now."""
        return [service for service, hold in self._holds.items() if hold.until > now]

    def next_until(self, now: float) -> float | None:
        """Seconds until the next hold ends, if any is still running."""
        ends = [hold.until - now for hold in self._holds.values() if hold.until > now]
        return min(ends) if ends else None

    def attempts(self) -> dict[str, int]:
        return {service: hold.attempts for service, hold in self._holds.items()}


def outcome(task: asyncio.Task[object]) -> object:
    """A settled publish: its result (ack or returned message) or its exception."""
    if task.cancelled():
        return TimeoutError("no confirm in time")
    return task.exception() or task.result()


def is_nack(exc: BaseException) -> bool:
    return isinstance(exc, aiormq.exceptions.DeliveryError) and isinstance(
        exc.frame, pamqp.commands.Basic.Nack
    )


class EventSource(Protocol):
    """What the publisher needs of the outbox."""

    def pending(self) -> int: ...

    async def peek(self, limit: int, exclude: Collection[str] = ()) -> list[StoredEvent]: ...

    async def ack(self, ids: Iterable[str]) -> int: ...


class PublishFailedError(Exception):
    """A batch was not fully confirmed; its unconfirmed events stay in the outbox."""


class OutboxAckError(Exception):
    """Confirmed events could not be deleted from the outbox; the delete is retried."""
