"""Where the registrar's contract tests run: the fake Consul, or a real one.

By default every contract test runs against ``tests.fakes.consul.FakeConsul`` on a manual
clock. With ``CONSUL_HTTP_ADDR`` set (``127.0.0.1:8500`` or a URL; ``CONSUL_HTTP_TOKEN`` for
ACLs), the same tests also run against that agent on the real clock, with short TTLs, a
unique agent id per test, and clean-up of everything they registered.

Both variants put a ``TcpProxy`` between the registrar and Consul, so an outage is a real
network cut in both.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import structlog
from structlog.testing import LogCapture

from sutazai_agent.config import ConsulConfig, TcpService
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.registrar import ConsulRegistrar
from sutazai_agent.web.metrics import Metrics
from tests.fakes.consul import FakeConsul, ManualClock
from tests.fakes.tcp_proxy import TcpProxy

REAL_ADDR = os.environ.get("CONSUL_HTTP_ADDR", "")
REAL_TOKEN = os.environ.get("CONSUL_HTTP_TOKEN", "")
SKIP_REAL = "real Consul not configured: set CONSUL_HTTP_ADDR (e.g. 127.0.0.1:8500) to run"
BACKENDS = [
    "fake",
    pytest.param("real", marks=pytest.mark.skipif(not REAL_ADDR, reason=SKIP_REAL)),
]


def real_url() -> str:
    return REAL_ADDR if "://" in REAL_ADDR else f"http://{REAL_ADDR}"


def tcp_service(name: str, **extra: Any) -> TcpService:
    return TcpService(name=name, kind="tcp", host="127.0.0.1", port=10000, **extra)


@dataclass
class Backend:
    """One Consul agent as the tests see it, behind a cuttable proxy."""

    kind: str
    direct_url: str
    proxy: TcpProxy
    session: aiohttp.ClientSession
    clock: Callable[[], float]
    fake: FakeConsul | None = None
    agent_id: str = "node-1"
    ttl_s: float = 30.0
    resync_interval_s: float = 60.0
    prefix: str = ""
    created: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The registrar's URL: through the proxy."""
        return f"http://127.0.0.1:{self.proxy.port}"

    def name(self, base: str) -> str:
        """A service name unique to this test on a shared real agent."""
        return f"{self.prefix}{base}"

    def consul_config(self, **overrides: Any) -> ConsulConfig:
        values: dict[str, Any] = {
            "url": self.url,
            "token": REAL_TOKEN,
            "ttl_s": self.ttl_s,
            "resync_interval_s": self.resync_interval_s,
            "deregister_critical_after_s": 60.0,
            "timeout_s": 2.0,
        }
        values.update(overrides)
        return ConsulConfig(**values)

    async def advance(self, seconds: float) -> None:
        """Let time pass: the fake's clock jumps; a real agent needs the real wait."""
        if isinstance(self.clock, ManualClock):
            self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    async def _get(self, path: str) -> Any:
        headers = {"X-Consul-Token": REAL_TOKEN} if REAL_TOKEN else {}
        async with self.session.get(self.direct_url + path, headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def put(self, path: str, body: Any = None) -> int:
        headers = {"X-Consul-Token": REAL_TOKEN} if REAL_TOKEN else {}
        async with self.session.put(self.direct_url + path, json=body, headers=headers) as r:
            await r.read()
            return r.status

    async def services(self) -> dict[str, Any]:
        services: dict[str, Any] = await self._get("/v1/agent/services")
        return services

    async def check_status(self, check_id: str) -> str | None:
        checks = await self._get("/v1/agent/checks")
        check = checks.get(check_id)
        return None if check is None else str(check["Status"])

    async def passing(self, name: str, expect: set[str] | None = None) -> set[str]:
        """IDs listed by ``/v1/health/service/<name>?passing``.

        A real agent syncs to the catalog asynchronously: wait (bounded) for ``expect``.
        """
        deadline = time.monotonic() + (5.0 if self.fake is None else 0.0)
        while True:
            entries = await self._get(f"/v1/health/service/{name}?passing")
            ids = {e["Service"]["ID"] for e in entries}
            if expect is None or ids == expect or time.monotonic() >= deadline:
                return ids
            await asyncio.sleep(0.1)

    async def register_foreign(self, service_id: str, name: str, meta: dict[str, str]) -> None:
        body = {
            "ID": service_id,
            "Name": name,
            "Port": 9999,
            "Meta": meta,
            "Check": {"CheckID": f"foreign:{service_id}", "TTL": "1h", "Status": "passing"},
        }
        self.created.add(service_id)
        assert await self.put("/v1/agent/service/register", body) == 200

    async def deregister(self, service_id: str) -> None:
        await self.put(f"/v1/agent/service/deregister/{service_id}")

    async def wipe(self) -> None:
        """Consul lost its state (the fake restarts; on a real agent, ours are deregistered)."""
        if self.fake is not None:
            self.fake.restart()
            return
        for service_id, service in (await self.services()).items():
            if service.get("Meta", {}).get("agent-id") == self.agent_id:
                await self.deregister(service_id)

    async def cleanup(self) -> None:
        if self.fake is not None:
            return
        for service_id, service in (await self.services()).items():
            if service_id in self.created or service["Service"].startswith(self.prefix):
                await self.deregister(service_id)

    def registrar(
        self,
        client: ConsulClient,
        services: list[TcpService],
        logger: Any = None,
        metrics: Metrics | None = None,
        **overrides: Any,
    ) -> ConsulRegistrar:
        return ConsulRegistrar(
            client,
            self.consul_config(**overrides),
            self.agent_id,
            services,
            metrics or Metrics(),
            self.clock,
            logger,
        )


@asynccontextmanager
async def consul_backend(kind: str, **fake_options: Any) -> AsyncIterator[Backend]:
    """A fake (manual clock, 30 s TTL) or real (real clock, 3 s TTL) backend."""
    async with aiohttp.ClientSession() as session:
        if kind == "fake":
            clock = ManualClock()
            fake = FakeConsul(clock=clock, **fake_options)
            # Items of one "async with" are entered in order: the fake's port is known here.
            async with fake, TcpProxy("127.0.0.1", fake.port) as proxy:
                yield Backend("fake", fake.url, proxy, session, clock, fake)
            return
        parts = urlsplit(real_url())
        port = parts.port or (443 if parts.scheme == "https" else 8500)
        async with TcpProxy(parts.hostname or "127.0.0.1", port) as proxy:
            backend = Backend(
                "real",
                real_url().rstrip("/"),
                proxy,
                session,
                time.monotonic,
                agent_id=f"test-{uuid.uuid4().hex[:8]}",
                ttl_s=3.0,
                resync_interval_s=3.0,
                prefix=f"t{uuid.uuid4().hex[:6]}-",
            )
            try:
                yield backend
            finally:
                await backend.cleanup()


def capturing_logger() -> tuple[Any, LogCapture]:
    """A structlog logger whose events land in ``capture.entries`` (and nowhere else)."""
    capture = LogCapture()
    return structlog.wrap_logger(None, processors=[capture]), capture


def events(capture: LogCapture, name: str) -> list[dict[str, Any]]:
    return [e for e in capture.entries if e["event"] == name]
