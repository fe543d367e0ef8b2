"""The agent's own HTTP endpoints: /metrics, /healthz, /readyz, /status.

They read in-memory state only, so they keep answering while Consul, the broker or every
target is down.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

log = structlog.get_logger(__name__)


class AgentView(Protocol):
    """What the endpoints need to know of the running agent."""

    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


def make_app(agent: AgentView, registry: CollectorRegistry) -> web.Application:
    def check(predicate: Callable[[], bool], ok: str, bad: str) -> web.Response:
        if predicate():
            return web.json_response({"status": ok})
        return web.json_response({"status": bad}, status=503)

    async def healthz(_: web.Request) -> web.Response:
        return check(agent.healthy, "ok", "stalled")

    async def readyz(_: web.Request) -> web.Response:
        return check(agent.ready, "ready", "starting")

    async def status(_: web.Request) -> web.Response:
        return web.json_response(agent.status(), dumps=_dumps)

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=1)


class WebServer:
    """Serves ``make_app`` on host:port inside the agent's loop (port 0 picks a free one)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._host = host
        self._port = port
        self.port = port

    async def __aenter__(self) -> WebServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("http_listening", host=self._host, port=self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._runner.cleanup()
