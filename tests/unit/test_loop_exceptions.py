"""Errors only the event loop sees are logged once per kind and window, never silently lost."""

from __future__ import annotations

import asyncio
import gc
import io
import json

import structlog

from sutazai_agent import logs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_repeats_are_held_back_and_counted() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    clock = Clock()
    handler = logs.LoopExceptionLogger(structlog.get_logger("t"), window_s=60, clock=clock)
    loop = asyncio.new_event_loop()
    try:
        lost = "Task exception was never retrieved"
        for _ in range(50):
            handler(loop, {"message": lost, "exception": ValueError("boom")})
        handler(loop, {"message": lost, "exception": KeyError("k")})
        clock.now = 61
        handler(loop, {"message": lost, "exception": ValueError("boom")})
    finally:
        loop.close()
    lines = _lines(out)
    assert [line["event"] for line in lines] == ["loop_exception"] * 3
    assert [line["repeated"] for line in lines] == [0, 0, 49]
    assert "ValueError: boom" in str(lines[0]["exception"])


async def test_a_lost_task_exception_reaches_the_log() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)  # quiets the asyncio logger
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(logs.LoopExceptionLogger())
    try:

        async def fail() -> None:
            raise RuntimeError("nobody awaited me")

        task = loop.create_task(fail())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        del task
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    [line] = _lines(out)
    assert line["event"] == "loop_exception"
    assert line["message"] == "Task exception was never retrieved"
    assert "nobody awaited me" in str(line["exception"])
