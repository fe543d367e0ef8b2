"""The agent's own HTTP endpoints: /metrics, /healthz, /readyz, /status, POST /-/reload.

They read in-memory state only, so they keep answering while Consul, the broker or every
target is down. ``/-/reload`` (Prometheus' convention) answers POST only; the agent runs
one reload at a time and requests arriving meanwhile share the next one, so a flood of
requests costs two reloads, not one each. The port has no authentication: operators should
not expose it beyond the hosts that scrape it (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.exposition import choose_encoder

from sutazai_agent.web.metrics import MetricsRegistry

log = structlog.get_logger(__name__)
ZLIB_IN_THREAD = 64 * 1024
"""Response bodies larger than this are compressed in a worker thread."""


class AgentView(Protocol):
    """What the endpoints need to know of the running agent."""

    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    async def reload(self, trigger: str) -> tuple[bool, dict[str, Any]]:
        """Reload the configuration: ``(applied, summary or reason)``."""
        ...


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

    async def reload(_: web.Request) -> web.Response:
        applied, summary = await agent.reload("http")
        return web.json_response(summary, status=200 if applied else 400)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_post("/-/reload", reload)
    return app


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """/metrics. The agent's own registry renders its body on the loop in slices of a few
    milliseconds, letting the probes run in between, so a scrape of thousands of services
    does not hold them up. (A worker thread would not help: it would hold the GIL against the
    loop.) The response is compressed when the scraper asks, in a thread for big bodies
    (zlib releases the GIL). Any other registry goes through prometheus_client's handler."""
    if not isinstance(registry, MetricsRegistry):
        return make_aiohttp_handler(registry)

    async def handler(request: web.Request) -> web.Response:
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        _, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        parts = []
        for part in registry.exposition_chunks(openmetrics):
            parts.append(part)
            await asyncio.sleep(0)
        response = web.Response(
            body=b"".join(parts),
            headers={hdrs.CONTENT_TYPE: content_type},
            zlib_executor_size=ZLIB_IN_THREAD,
        )
        response.enable_compression()
        return response

    return handler


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
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        log.info("http_listening", host=self._host, port=self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._runner.cleanup()
