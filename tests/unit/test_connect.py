"""``first_connected``: staggered attempts, the first to connect wins, the rest are closed."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest

from sutazai_agent.probes.connect import first_connected

Attempt = Callable[[], Awaitable[str]]


def never(started: list[str], name: str, running: asyncio.Event | None = None) -> Attempt:
    async def attempt() -> str:
        started.append(name)
        if running is not None and len(started) == 2:
            running.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return attempt


def ok(started: list[str], name: str) -> Attempt:
    async def attempt() -> str:
        started.append(name)
        return name

    return attempt


def failing(started: list[str], name: str, error: BaseException) -> Attempt:
    async def attempt() -> str:
        started.append(name)
        raise error

    return attempt


async def test_a_hanging_first_attempt_is_overtaken_by_the_next() -> None:
    started: list[str] = []
    discarded: list[str] = []
    winner = await first_connected(
        [never(started, "a"), ok(started, "b")], discarded.append, delay_s=0.01
    )
    assert (winner, started, discarded) == ("b", ["a", "b"], [])


async def test_a_failed_attempt_starts_the_next_at_once() -> None:
    started: list[str] = []
    winner = await first_connected(
        [failing(started, "a", ConnectionRefusedError()), ok(started, "b")],
        lambda _: None,
        delay_s=3600,
    )
    assert winner == "b"


async def test_when_every_attempt_fails_an_error_is_raised() -> None:
    started: list[str] = []
    with pytest.raises(ConnectionRefusedError):
        await first_connected(
            [failing(started, n, ConnectionRefusedError()) for n in "abc"],
            lambda _: None,
            delay_s=3600,
        )
    assert started == ["a", "b", "c"]


async def test_a_fatal_error_ends_the_race() -> None:
    started: list[str] = []
    with pytest.raises(ssl.SSLError):
        await first_connected(
            [failing(started, "a", ssl.SSLError()), ok(started, "b")],
            lambda _: None,
            delay_s=3600,
            fatal=(ssl.SSLError,),
        )
    assert started == ["a"]


async def test_cancelling_the_race_cancels_every_attempt() -> None:
    started: list[str] = []
    both = asyncio.Event()
    attempts = [never(started, "a", both), never(started, "b", both)]
    race = asyncio.ensure_future(first_connected(attempts, lambda _: None, delay_s=0))
    await both.wait()
    race.cancel()
    with pytest.raises(asyncio.CancelledError):
        await race
    assert len(asyncio.all_tasks()) == 1  # only this test's own task is left
