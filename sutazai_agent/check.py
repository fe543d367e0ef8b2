"""``sutazai-agent check``: probe every configured service once."""

from __future__ import annotations

import asyncio

from sutazai_agent.config import AgentConfig, ServiceConfig
from sutazai_agent.core.model import ProbeResult
from sutazai_agent.probes import build_probe, make_session, run_probe


async def check_once(config: AgentConfig) -> list[tuple[ServiceConfig, ProbeResult]]:
    """Probe every service once, concurrently (the ``check`` command): ``max_concurrency``
    probes at most in flight, as the daemon's scheduler allows."""
    slots = asyncio.Semaphore(config.max_concurrency)
    async with make_session(config.max_concurrency) as session:

        async def one(service: ServiceConfig) -> tuple[ServiceConfig, ProbeResult]:
            timeout_s = config.timeout_for(service)
            async with slots:
                result = await run_probe(build_probe(service, session, timeout_s), timeout_s)
            return service, result

        return list(await asyncio.gather(*(one(s) for s in config.services)))
