"""TCP probe: up when a connection is established within the timeout (then closed at once).

A host with several addresses is tried with staggered attempts (``probes.connect``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.probes.base import clock, elapsed_since, failure
from sutazai_agent.probes.connect import first_connected
from sutazai_agent.probes.http1 import RESOLVER

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp

    from sutazai_agent.config import TcpService


class TcpProbe:
    """Open a TCP connection to ``host:port`` and close it; nothing is sent."""

    kind = "tcp"

    def __init__(
        self,
        service: TcpService,
        session: aiohttp.ClientSession,  # unused: one constructor signature for every kind
        timeout_s: float,
    ) -> None:
        self._service = service
        self._timeout_s = timeout_s

    async def probe(self) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = clock()

        def attempt(host: str, port: int) -> Callable[[], Awaitable[asyncio.BaseTransport]]:
            async def connect() -> asyncio.BaseTransport:
                transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
                return transport

            return connect

        try:
            async with asyncio.timeout(self._timeout_s):
                addresses = await RESOLVER.resolve(self._service.host, self._service.port)
                transport = await first_connected(
                    [attempt(host, port) for host, port in addresses],
                    lambda loser: loser.close(),
                )
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            return failure(exc, start, self._timeout_s)
        latency_s = elapsed_since(start)
        peer = transport.get_extra_info("peername")
        transport.close()
        detail = f"connected to {peer[0]}:{peer[1]}" if peer else "connected"
        return ProbeResult(Outcome.OK, latency_s, "", detail)
