"""Does a probe leak file descriptors? Run it many times and count ``/proc/self/fd``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest

POLLS = 250
"""Readings, 20 ms apart (5 s), before a count that does not settle is taken as it is."""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def fd_growth(run: Callable[[], Awaitable[object]], times: int) -> int:
    """How many more descriptors are open after ``times`` more runs than after a warm-up.

    The warm-up lets a client library open what it keeps for the process (gRPC's pollers).
    In-process servers close their side when they see the probe's close, a moment later, so
    the count is polled until it is back down (bounded).
    """
    for _ in range(3):
        await run()
    before = await _steady()
    for _ in range(times):
        await run()
    for _ in range(POLLS):
        if open_fds() <= before:
            break
        await asyncio.sleep(0.02)
    return open_fds() - before


async def _steady(readings: int = 25) -> int:
    """The descriptor count once it has not changed for ``readings`` readings (0.5 s)."""
    count, same = open_fds(), 0
    for _ in range(POLLS):
        await asyncio.sleep(0.02)
        count, previous = open_fds(), count
        same = same + 1 if count == previous else 0
        if same == readings:
            break
    return count


class Connectable(Protocol):
    connected: asyncio.Event


def cancelled_once_connected(
    probe: Callable[[], Awaitable[object]], server: Connectable
) -> Callable[[], Awaitable[None]]:
    """A run that starts ``probe`` against a silent server and cancels it once connected."""

    async def run() -> None:
        server.connected.clear()
        task = asyncio.ensure_future(probe())
        await server.connected.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    return run
