"""Fixtures for end-to-end tests: targets that can be stopped, a fake Consul, a real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, ExchangeType
from aiohttp import web

from sutazai_agent.events.cloudevents import decode
from tests.fakes.consul import FakeConsul
from tests.integration.agent_process import free_port

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def agent_config(
    consul: FakeConsul,
    tap: EventTap,
    services: list[dict[str, Any]],
    *,
    interval_s: float = 0.5,
    timeout_s: float = 0.4,
    fall: int = 2,
    ttl_s: float = 3.0,
    resync_s: float = 2.0,
    amqp_url: str = AMQP_URL,
) -> dict[str, Any]:
    """An agent configuration for end-to-end tests: fast probes, rise 1, the test's fakes."""
    return {
        "interval_s": interval_s,
        "timeout_s": timeout_s,
        "rise": 1,
        "fall": fall,
        "consul": {"url": consul.url, "ttl_s": ttl_s, "resync_interval_s": resync_s},
        "rabbitmq": {"url": amqp_url, "exchange": tap.exchange},
        "services": services,
    }


class HttpTarget:
    """An HTTP service on a fixed loopback port that the test can stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/health"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class TcpTarget:
    """A TCP listener on a fixed loopback port that accepts and closes."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class EventTap:
    """A queue bound to the exchange, collecting every event the agent publishes."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self, pattern: str = "health.#") -> None:
        self._connection = await aio_pika.connect_robust(AMQP_URL)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, pattern)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                self.received.append((message.routing_key or "", decode(message.body)))

        await queue.consume(on_message)

    def transitions(self, service: str) -> list[tuple[str, str]]:
        return [
            (e["data"]["previous"], e["data"]["current"])
            for _, e in self.received
            if e["subject"] == service
        ]

    async def close(self) -> None:
        if self._connection is not None:
            channel = await self._connection.channel()
            await channel.exchange_delete(self.exchange)
            await self._connection.close()


@pytest.fixture
async def http_target() -> AsyncIterator[HttpTarget]:
    target = HttpTarget()
    await target.start()
    yield target
    await target.stop()


@pytest.fixture
async def tcp_target() -> AsyncIterator[TcpTarget]:
    target = TcpTarget()
    await target.start()
    yield target
    await target.stop()


@pytest.fixture
async def consul() -> AsyncIterator[FakeConsul]:
    async with FakeConsul() as fake:
        yield fake


@pytest.fixture
async def tap() -> AsyncIterator[EventTap]:
    tap = EventTap(f"test.e2e.{uuid.uuid4().hex[:8]}")
    await tap.start()
    yield tap
    await tap.close()
