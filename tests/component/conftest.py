"""Real local servers on 127.0.0.1 port 0 for the probe component tests.

- ``serve(app)``: an aiohttp application, returns its base URL;
- ``serve_tls(app)``: the same over HTTPS with a certificate from a throwaway CA (trustme)
  that nothing trusts, so verification fails unless turned off;
- ``silent_port``: accepts connections and never sends a byte;
- ``raw_server(payload)``: sends ``payload`` on every connection, then closes it;
- ``closed_port``: nothing listens there (connection refused);
- ``full_backlog_port``: a listener whose accept queue is full, so a TCP handshake never
  completes (connect timeout).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import trustme
from aiohttp import web

from sutazai_agent.probes import make_session

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dev dependency
    uvloop = None

BOTH_LOOPS = (
    "test_probe_http",
    "test_probe_tcp",
    "test_bad_peers",
    "test_happy_eyeballs",
    "test_probe_redis",
    "test_probe_postgres",
    "test_probe_grpc",
)
"""Modules whose tests run on asyncio's loop and on uvloop, which the agent uses in
production: the probes' transports and protocols behave differently on the two."""


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    name = getattr(getattr(item, "module", None), "__name__", "")
    if uvloop is not None and name.rpartition(".")[2] in BOTH_LOOPS:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


Serve = Callable[..., Awaitable[str]]
RawServer = Callable[[bytes], Awaitable[int]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(limit=10) as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, tls: ssl.SSLContext | None = None) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = runner.addresses[0][1]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture(scope="session")
def untrusted_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def serve_tls(serve: Serve, untrusted_ca: trustme.CA) -> Serve:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    untrusted_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)

    async def start(app: web.Application) -> str:
        return await serve(app, context)

    return start


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def full_backlog_port() -> AsyncIterator[int]:
    """Listen with a backlog of 0, never accept, fill the queue: new SYNs are dropped."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(2):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                try:
                    async with asyncio.timeout(0.2):
                        await loop.sock_connect(filler, ("127.0.0.1", port))
                except TimeoutError:
                    break  # the queue is full
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts every connection and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in held:
        writer.close()
    await server.wait_closed()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    """``await raw_server(b"junk")`` → a port that answers the first bytes it receives on
    each connection with exactly ``payload``, then closes the connection."""
    servers: list[asyncio.Server] = []

    async def start(payload: bytes) -> int:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(4096)
                writer.write(payload)
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment whose HTTP proxy (port 9, "discard") would break every request."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")


class HangingServer:
    """Accepts every connection and never answers; closes its side when the client does."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.connected.set()
        self._writers.add(writer)
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Hang up on the clients still connected, so every handler ends on its own.
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()


@pytest.fixture
async def hanging_server() -> AsyncIterator[HangingServer]:
    server = HangingServer()
    await server.start()
    yield server
    await server.stop()
