"""TcpProbe against real local listeners."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sutazai_agent.config import TcpService
from sutazai_agent.core.model import Outcome
from sutazai_agent.probes.tcp import TcpProbe

TIMEOUT_S = 0.5


def probe_for(session: aiohttp.ClientSession, port: int, host: str = "127.0.0.1") -> TcpProbe:
    return TcpProbe(TcpService(name="db", kind="tcp", host=host, port=port), session, TIMEOUT_S)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, asyncio.Queue[bytes]]]:
    """A listening port that records what each connection sent before the client closed."""
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.put_nowait(await reader.read())
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], received
    server.close()
    await server.wait_closed()


async def test_open_port_is_up_and_the_connection_is_closed_without_data(
    session: aiohttp.ClientSession, listener: tuple[int, asyncio.Queue[bytes]]
) -> None:
    port, received = listener

    result = await probe_for(session, port).probe()

    assert result.outcome is Outcome.OK
    assert result.detail == f"connected to 127.0.0.1:{port}"
    async with asyncio.timeout(2):  # the server sees EOF once the probe closed its socket
        assert await received.get() == b""


async def test_closed_port_is_down_with_refused(
    session: aiohttp.ClientSession, closed_port: int
) -> None:
    result = await probe_for(session, closed_port).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "connection refused"


async def test_handshake_that_never_completes_times_out(
    session: aiohttp.ClientSession, full_backlog_port: int
) -> None:
    result = await probe_for(session, full_backlog_port).probe()

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.5s"
    assert TIMEOUT_S <= result.latency_s < TIMEOUT_S + 0.25


async def test_unknown_host_is_down_with_a_dns_reason(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, 5432, host="no-such-host.invalid").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("DNS:")
