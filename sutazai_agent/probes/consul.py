"""Consul probe: up when the cluster has a leader (``GET /v1/status/leader``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.probes.base import clock, elapsed_since, failure, fetch

if TYPE_CHECKING:
    import aiohttp

    from sutazai_agent.config import ConsulService

LEADER_PATH = "/v1/status/leader"


class ConsulProbe:
    """Ask the agent for the Raft leader; ``""`` means the cluster cannot serve writes."""

    kind = "consul"

    def __init__(
        self, service: ConsulService, session: aiohttp.ClientSession, timeout_s: float
    ) -> None:
        self._service = service
        self._session = session
        self._timeout_s = timeout_s
        self._url = service.url.rstrip("/") + LEADER_PATH

    async def probe(self) -> ProbeResult:
        start = clock()
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await fetch(self._session, self._url, tls_verify=self._service.tls_verify)
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            return failure(exc, start, self._timeout_s)
        latency_s = elapsed_since(start)
        if reply.status != 200:
            return ProbeResult(Outcome.FAIL, latency_s, f"HTTP {reply.status}")
        try:
            leader = reply.json()
        except ValueError:
            leader = None
        if not isinstance(leader, str):
            return ProbeResult(Outcome.FAIL, latency_s, "unexpected /v1/status/leader response")
        if not leader:
            return ProbeResult(Outcome.FAIL, latency_s, "no cluster leader")
        return ProbeResult(Outcome.OK, latency_s, "", f"leader {leader}")
