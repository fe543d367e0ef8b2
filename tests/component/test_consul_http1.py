"""The Consul client's lean kept-alive HTTP/1.1 path against raw loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from sutazai_agent.config import ConsulConfig
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.http1 import BodyTooLargeError, Http1Pool, HttpError
from sutazai_agent.consul.types import ConsulNotFoundError, ConsulUnavailableError

OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
Reply = Callable[[int, bytes], bytes | None]
"""(request number on this connection, request head) -> bytes to answer, None to close."""


class RawServer:
    """Answers each request with what ``reply`` says; counts connections."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.hold: dict[int, bytes] = {}
        """Request number -> an answer sent only once ``release`` is set."""
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                held = self.hold.get(number)
                if held is not None:
                    await self.release.wait()
                answer = held or self.reply(number, head)
                number += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Reply], asyncio.Future[RawServer]]]:
    servers: list[RawServer] = []

    async def start(reply: Reply) -> RawServer:
        server = RawServer(reply)
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        assert server.server is not None
        server.server.close()


def pool(server: RawServer, **kwargs: int) -> Http1Pool:
    return Http1Pool("127.0.0.1", server.port, {"User-Agent": "t"}, **kwargs)


async def put(client: Http1Pool, body: bytes | None = b"{}") -> tuple[int, bytes]:
    return await client.request(client.build("PUT", "/v1/x", body, "application/json"))


async def test_requests_reuse_one_connection(raw: Callable[..., asyncio.Future[RawServer]]) -> None:
    server = await raw(lambda n, head: OK_EMPTY)
    client = pool(server)
    for _ in range(5):
        assert await put(client) == (200, b"")
    client.close()
    assert server.connections == 1
    assert server.requests[0].startswith(b"PUT /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert server.requests[0].endswith(b"Content-Length: 2\r\n\r\n{}")


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    raw: Callable[..., asyncio.Future[RawServer]],
) -> None:
    # The server answers one request per connection, then closes without saying so (as
    # an idle timeout does): the next request finds the kept connection dead.
    server = await raw(lambda n, head: OK_EMPTY if n == 0 else None)
    client = pool(server)
    for _ in range(4):
        assert await put(client) == (200, b"")
    client.close()
    assert server.connections >= 4


async def test_a_fresh_connection_closed_without_answer_is_an_error(
    raw: Callable[..., asyncio.Future[RawServer]],
) -> None:
    server = await raw(lambda n, head: None)
    client = pool(server)
    with pytest.raises(ConnectionError, match="without a response"):
        await put(client)
    client.close()
    assert server.connections == 1  # no retry on a connection that was never used


async def test_chunked_and_close_framed_bodies(
    raw: Callable[..., asyncio.Future[RawServer]],
) -> None:
    answers = [
        (
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
        ),
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    ]
    server = await raw(lambda n, head: answers[n] if n < len(answers) else None)
    client = pool(server)
    assert await put(client) == (500, b"hello world")
    assert await put(client, None) == (404, b"abc")
    write_request = client.build("PUT", "/v1/x", None, "application/json")
    assert b"Content-Length: 0\r\n\r\n" in write_request
    status, body = await put(client)
    assert (status, body) == (200, b"until the end")
    client.close()
    assert server.connections == 1


async def test_bodies_over_the_bound_and_garbage_are_refused(
    raw: Callable[..., asyncio.Future[RawServer]],
) -> None:
    answers = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"SSH-2.0-x\r\n\r\n"])
    server = await raw(lambda n, head: next(answers))
    client = pool(server, body_max=10)
    with pytest.raises(BodyTooLargeError, match="over 10 bytes"):
        await put(client)
    with pytest.raises(HttpError, match="status line"):
        await put(client)
    client.close()


async def test_a_cancelled_exchange_drops_its_connection(
    raw: Callable[..., asyncio.Future[RawServer]],
) -> None:
    # The second request's answer comes late, after its caller gave up: it must not be read
    # as the third request's answer.
    server = await raw(lambda n, head: OK_EMPTY)
    server.hold = {1: b"HTTP/1.1 409 Conflict\r\nContent-Length: 4\r\n\r\nlate"}
    client = pool(server)
    assert await put(client) == (200, b"")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await put(client)
    server.release.set()
    assert await put(client) == (200, b"")
    client.close()
    assert server.connections == 2


async def test_the_client_maps_lean_path_failures_to_consul_errors(
    raw: Callable[..., asyncio.Future[RawServer]],
) -> None:
    answers = [
        (
            b"HTTP/1.1 500 Internal\r\nContent-Length: 40\r\n\r\n"
            b'CheckID "x" does not have associated TTL'
        ),
        b"nonsense\r\n\r\n",
    ]
    server = await raw(lambda n, head: answers[min(n, 1)])
    config = ConsulConfig(url=f"http://user:pw@127.0.0.1:{server.port}", token="t0k")
    async with ConsulClient(config) as client:
        with pytest.raises(ConsulNotFoundError) as caught:
            await client.update_ttl("x", "passing")
        assert caught.value.status == 404
        with pytest.raises(
            ConsulUnavailableError,
            match="check_update: unreachable: HttpError: invalid status line",
        ):
            await client.update_ttl("x", "passing")
    head = server.requests[0]
    assert b"X-Consul-Token: t0k\r\n" in head
    assert b"Authorization: Basic dXNlcjpwdw==\r\n" in head
