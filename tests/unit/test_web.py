"""The agent's endpoints through a real aiohttp server on a free port."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from sutazai_agent.web.metrics import Metrics
from sutazai_agent.web.server import make_app


class View:
    def __init__(self) -> None:
        self.is_healthy = True
        self.is_ready = False

    def healthy(self) -> bool:
        return self.is_healthy

    def ready(self) -> bool:
        return self.is_ready

    def status(self) -> dict[str, Any]:
        return {"agent": {"id": "n1"}, "services": []}


async def test_endpoints() -> None:
    view, metrics = View(), Metrics()
    metrics.service("kong", "kong")
    async with TestClient(TestServer(make_app(view, metrics.registry))) as client:
        resp = await client.get("/healthz")
        assert resp.status == 200
        view.is_healthy = False
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert (await resp.json())["status"] == "stalled"

        assert (await client.get("/readyz")).status == 503
        view.is_ready = True
        assert (await client.get("/readyz")).status == 200

        resp = await client.get("/status")
        assert resp.status == 200
        assert (await resp.json())["agent"]["id"] == "n1"

        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
        assert 'sutazai_agent_service_state{service="kong",state="unknown"} 1.0' in text
        assert 'sutazai_agent_build_info{version="' in text

        resp = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).rstrip().endswith("# EOF")
        assert (await client.post("/status")).status == 405
