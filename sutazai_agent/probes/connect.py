"""Connecting to a host with several addresses: staggered attempts (RFC 8305, happy eyeballs).

A host whose first address silently drops packets would otherwise hold every probe until its
timeout. Attempts start one address at a time, the next ``ATTEMPT_DELAY_S`` after the previous
one (or at once when it fails); the first to connect wins and the others are cancelled or
closed. uvloop's ``create_connection`` has no ``happy_eyeballs_delay``, so the probes do it
here, on whichever loop runs them; the caller's timeout still bounds the whole.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

T = TypeVar("T")

ATTEMPT_DELAY_S = 0.25
"""RFC 8305's recommended "Connection Attempt Delay"."""


async def first_connected(
    attempts: Sequence[Callable[[], Awaitable[T]]],
    discard: Callable[[T], None],
    *,
    delay_s: float = ATTEMPT_DELAY_S,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """The result of the first attempt to succeed; ``discard`` closes any later winner.

    An error in ``fatal`` (the peer answered, e.g. a TLS failure) ends the race at once. When
    every attempt fails, the first error seen is raised.
    """
    if len(attempts) == 1:
        return await attempts[0]()  # the usual case: no task, no timer
    if not attempts:
        raise OSError("no address to connect to")
    waiting = list(attempts)
    running: set[asyncio.Task[T]] = set()
    errors: list[BaseException] = []
    try:
        while waiting or running:
            if waiting:
                running.add(asyncio.ensure_future(waiting.pop(0)()))
            done, running = await asyncio.wait(
                running,
                timeout=delay_s if waiting else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            winner = _settle(done, discard, errors, fatal)
            if winner is not None:
                return winner[0]
        raise errors[0]
    finally:
        for task in running:
            task.cancel()
        ended = await asyncio.gather(*running, return_exceptions=True)
        for result in ended:
            if not isinstance(result, BaseException):
                discard(result)


def _settle(
    done: set[asyncio.Task[T]],
    discard: Callable[[T], None],
    errors: list[BaseException],
    fatal: tuple[type[BaseException], ...],
) -> tuple[T] | None:
    """The winner among ``done``, if any (later winners discarded); else record the errors."""
    winner: tuple[T] | None = None
    for task in done:
        error = task.exception()
        if error is None:
            if winner is None:
                winner = (task.result(),)
            else:
                discard(task.result())
        elif isinstance(error, fatal) and winner is None:
            raise error
        else:
            errors.append(error)
    return winner
