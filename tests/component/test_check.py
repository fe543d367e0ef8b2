"""The ``check`` command's probing: every service once, ``max_concurrency`` at a time."""

from __future__ import annotations

import asyncio

from aiohttp import web

from sutazai_agent.check import check_once
from sutazai_agent.config import AgentConfig
from sutazai_agent.core.model import Outcome


async def test_check_probes_at_most_max_concurrency_at_once() -> None:
    in_flight = 0
    most = 0

    async def slow(_: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)  # the target's pace: long enough for probes to overlap
        in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        services = [
            {"name": f"web-{i}", "kind": "http", "url": f"http://127.0.0.1:{port}/"}
            for i in range(12)
        ]
        config = AgentConfig(
            max_concurrency=3,
            interval_s=10,
            timeout_s=5,
            services=services,  # type: ignore[arg-type]
        )
        results = await check_once(config)
    finally:
        await runner.cleanup()
    assert [result.outcome for _, result in results] == [Outcome.OK] * 12
    assert most == 3
