"""A host whose first address drops packets: the probes try the next address after
``ATTEMPT_DELAY_S`` instead of timing out (RFC 8305).

Loopback only: the name resolves (through the probes' resolver) to 127.0.0.2, where a
listener with a full accept queue drops every SYN, then to 127.0.0.1, where the target is.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from sutazai_agent.config import HttpService, TcpService
from sutazai_agent.core.model import Outcome
from sutazai_agent.probes import build_probe
from sutazai_agent.probes.http1 import RESOLVER

NAME = "two-homed.test"
TIMEOUT_S = 3.0


async def blackhole(port: int) -> AsyncIterator[None]:
    """127.0.0.2:``port`` listens with a full accept queue: SYNs are silently dropped."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.2", port))
        listener.listen(0)
        fillers: list[socket.socket] = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                try:
                    async with asyncio.timeout(0.2):
                        await loop.sock_connect(filler, ("127.0.0.2", port))
                except TimeoutError:
                    break  # the queue is full: this SYN was dropped
            else:
                pytest.skip("could not fill the accept queue")
            yield
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
async def two_homed(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    """``NAME``: first a dropping address, then a healthy HTTP server; yields the port."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]

    async def resolve(host: str, port_: int) -> list[tuple[str, int]]:
        assert host == NAME
        return [("127.0.0.2", port_), ("127.0.0.1", port_)]

    monkeypatch.setattr(RESOLVER, "resolve", resolve)
    try:
        async for _ in blackhole(port):
            yield port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("kind", ["http", "tcp"])
async def test_a_dropping_first_address_does_not_time_the_probe_out(
    two_homed: int, kind: str
) -> None:
    service: HttpService | TcpService
    if kind == "http":
        service = HttpService(name="web", kind="http", url=f"http://{NAME}:{two_homed}/")
    else:
        service = TcpService(name="web", kind="tcp", host=NAME, port=two_homed)
    async with aiohttp.ClientSession() as session:
        result = await build_probe(service, session, TIMEOUT_S).probe()
    assert result.outcome is Outcome.OK, result.reason
