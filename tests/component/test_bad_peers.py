"""Hostile and broken peers: every bad answer is a failed probe (or a Consul error) with a
short, bounded reason, never a crash, a hang or an unbounded read. docs/bad-input.md lists
these rows; the soak (bench/soak.py) throws the same at a running agent."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from sutazai_agent.config import (
    ConsulConfig,
    ConsulService,
    HttpService,
    KongService,
    RabbitmqService,
    TcpService,
)
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.types import ConsulError, ConsulUnavailableError
from sutazai_agent.core.model import REASON_MAX, Outcome
from sutazai_agent.probes import build_probe, run_probe

TIMEOUT_S = 0.5
MIB = 1024 * 1024
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Peer:
    """A raw TCP server on 127.0.0.1 acting out one behaviour per connection."""

    def __init__(self, behaviour: Callable[[Peer], Behaviour], read_request: bool = True) -> None:
        self.behaviour = behaviour(self)
        self.read_request = read_request
        self.sent = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.read_request:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await self.behaviour(reader, writer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.sent += len(data)
        await writer.drain()
        await asyncio.sleep(0)  # the probe shares this loop: let it read

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def peers() -> AsyncIterator[Callable[..., Awaitable[Peer]]]:
    started: list[Peer] = []

    async def start(behaviour: Callable[[Peer], Behaviour], read_request: bool = True) -> Peer:
        peer = Peer(behaviour, read_request)
        await peer.start()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        await peer.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    from sutazai_agent.probes import make_session

    async with make_session(limit=10) as session:
        yield session


def send(data: bytes) -> Callable[[Peer], Behaviour]:
    def make(peer: Peer) -> Behaviour:
        async def act(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await peer.write(writer, data)

        return act

    return make


def silence(_: Peer) -> Behaviour:
    async def act(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        while await reader.read(4096):  # until the probe gives up and closes
            pass

    return act


def close_at_once(_: Peer) -> Behaviour:
    async def act(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        return

    return act


def endless_headers(peer: Peer) -> Behaviour:
    async def act(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.write(writer, b"HTTP/1.1 200 OK\r\n")
        for i in range(1_000_000):
            await peer.write(writer, b"X-H%d: v\r\n" % i)

    return act


def trickle(head: bytes) -> Callable[[Peer], Behaviour]:
    def make(peer: Peer) -> Behaviour:
        async def act(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await peer.write(writer, head)
            for _ in range(100):
                await peer.write(writer, b"x")
                await asyncio.sleep(0.05)

        return act

    return make


def huge(status: int, chunk: bytes = b"x" * 65536) -> Callable[[Peer], Behaviour]:
    def make(peer: Peer) -> Behaviour:
        async def act(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, 50 * MIB)
            await peer.write(writer, head)
            for _ in range(50 * MIB // len(chunk)):
                await peer.write(writer, chunk)

        return act

    return make


GARBAGE = bytes(range(256)) * 4
KLINGON = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=klingon\r\n"
    b"Content-Length: 4\r\n\r\n\xff\xfe\x00\x01"
)
HTTP_CASES: list[tuple[str, Callable[[Peer], Behaviour], dict[str, Any], Outcome, str]] = [
    ("closes without answering", close_at_once, {}, Outcome.FAIL, "without a response"),
    ("accepts, never answers", silence, {}, Outcome.TIMEOUT, "timeout after 0.5s"),
    ("binary garbage", send(GARBAGE), {}, Outcome.FAIL, "invalid HTTP response"),
    ("SSH banner", send(b"SSH-2.0-OpenSSH_9.6\r\n"), {}, Outcome.FAIL, "invalid HTTP response"),
    ("TLS handshake bytes", send(b"\x16\x03\x01\x00\xa5\x01\x00"), {}, Outcome.FAIL, "invalid"),
    ("HTTP/0.9 style body only", send(b"ok\n"), {}, Outcome.FAIL, "invalid HTTP response"),
    (
        "negative Content-Length",
        send(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n"),
        {},
        Outcome.FAIL,
        "Content-Length",
    ),
    (
        "broken chunked encoding",
        send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        {},
        Outcome.FAIL,
        "chunk size",
    ),
    (
        "20 KB header line",
        send(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"),
        {},
        Outcome.FAIL,
        "more than 8190 bytes",
    ),
    (
        "200 headers",
        send(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n"),
        {},
        Outcome.FAIL,
        "too many headers",
    ),
    ("endless headers", endless_headers, {}, Outcome.FAIL, "too many headers"),
    ("headers trickling", trickle(b"HTTP/1.1 200 OK\r\n"), {}, Outcome.TIMEOUT, "timeout"),
    (
        "body trickling",
        trickle(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
        {},
        Outcome.TIMEOUT,
        "timeout",
    ),
    ("50 MB body, 200", huge(200), {}, Outcome.OK, ""),
    ("50 MB body, no regex match", huge(200), {"body_regex": "zzz"}, Outcome.FAIL, "zzz"),
    ("50 MB body, 500", huge(500), {}, Outcome.FAIL, "HTTP 500"),
    (
        "status 999",
        send(b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n"),
        {},
        Outcome.FAIL,
        "HTTP 999",
    ),
    (
        "unknown charset, binary body",
        send(KLINGON),
        {"body_regex": "."},
        Outcome.OK,
        "",
    ),
    (
        "redirect loop",
        send(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n"),
        {"follow_redirects": True},
        Outcome.FAIL,
        "too many redirects",
    ),
]


@pytest.mark.parametrize(
    ("behaviour", "fields", "outcome", "reason"),
    [case[1:] for case in HTTP_CASES],
    ids=[case[0] for case in HTTP_CASES],
)
async def test_http_probe_against_a_bad_peer(
    peers: Any,
    session: aiohttp.ClientSession,
    behaviour: Callable[[Peer], Behaviour],
    fields: dict[str, Any],
    outcome: Outcome,
    reason: str,
) -> None:
    peer: Peer = await peers(behaviour)
    service = HttpService(name="bad", kind="http", url=f"{peer.url}/health", **fields)
    result = await run_probe(build_probe(service, session, TIMEOUT_S), TIMEOUT_S)
    assert result.outcome is outcome, result
    assert reason in result.reason
    assert len(result.reason) <= REASON_MAX
    assert peer.sent < 20 * MIB  # the body is never read to its end


CONSUL_CASES = [
    ("leader is a number", send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n123")),
    ("leader is not JSON", send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")),
    ("leader is 50 MB", huge(200, b'"' + b"x" * 65535)),
]


@pytest.mark.parametrize(
    "behaviour", [c[1] for c in CONSUL_CASES], ids=[c[0] for c in CONSUL_CASES]
)
async def test_consul_probe_against_a_bad_peer(
    peers: Any, session: aiohttp.ClientSession, behaviour: Callable[[Peer], Behaviour]
) -> None:
    peer: Peer = await peers(behaviour)
    service = ConsulService(name="consul", kind="consul", url=peer.url)
    result = await run_probe(build_probe(service, session, TIMEOUT_S), TIMEOUT_S)
    assert result.outcome is Outcome.FAIL
    assert result.reason == "unexpected /v1/status/leader response"


async def test_kong_admin_answering_50_mb_of_non_json_is_degraded(
    peers: Any, session: aiohttp.ClientSession
) -> None:
    admin: Peer = await peers(huge(200))
    proxy: Peer = await peers(send(OK_200))
    service = KongService(name="kong", kind="kong", admin_url=admin.url, proxy_url=proxy.url)
    result = await run_probe(build_probe(service, session, TIMEOUT_S), TIMEOUT_S)
    assert result.outcome is Outcome.DEGRADED
    assert "admin: /status is not Kong's JSON" in result.reason


AMQP_CASES = [
    ("accepts, never answers", silence, Outcome.TIMEOUT, "amqp: timeout after 0.5s"),
    ("an HTTP server", send(b"HTTP/1.1 400 Bad Request\r\n\r\n"), Outcome.FAIL, "amqp: "),
    ("binary garbage", send(GARBAGE), Outcome.FAIL, "amqp: "),
    ("closes at once", close_at_once, Outcome.FAIL, "amqp: "),
]


@pytest.mark.parametrize(
    ("behaviour", "outcome", "reason"),
    [c[1:] for c in AMQP_CASES],
    ids=[c[0] for c in AMQP_CASES],
)
async def test_rabbitmq_probe_against_a_bad_peer(
    peers: Any,
    session: aiohttp.ClientSession,
    behaviour: Callable[[Peer], Behaviour],
    outcome: Outcome,
    reason: str,
) -> None:
    peer: Peer = await peers(behaviour, read_request=False)
    url = f"amqp://guest:guest@127.0.0.1:{peer.port}/"
    service = RabbitmqService(name="mq", kind="rabbitmq", amqp_url=url)
    result = await run_probe(build_probe(service, session, TIMEOUT_S), TIMEOUT_S)
    assert result.outcome is outcome, result
    assert result.reason.startswith(reason)
    assert len(result.reason) <= REASON_MAX


async def test_tcp_probe_only_needs_the_connection(peers: Any, session: Any) -> None:
    peer: Peer = await peers(silence, read_request=False)
    service = TcpService(name="db", kind="tcp", host="127.0.0.1", port=peer.port)
    result = await run_probe(build_probe(service, session, TIMEOUT_S), TIMEOUT_S)
    assert result.outcome is Outcome.OK


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_probes_that_time_out_leave_no_file_descriptor_behind(
    peers: Any, session: aiohttp.ClientSession
) -> None:
    peer: Peer = await peers(silence, read_request=False)
    http = HttpService(name="web", kind="http", url=peer.url)
    amqp = RabbitmqService(name="mq", kind="rabbitmq", amqp_url=f"amqp://127.0.0.1:{peer.port}/")
    probes = [build_probe(s, session, 0.2) for s in (http, amqp)]
    for probe in probes:  # warm up: lazily created selectors, resolvers, pools
        await run_probe(probe, 0.2)
    await asyncio.sleep(0.1)
    before = _open_fds()
    for _ in range(15):
        results = await asyncio.gather(*(run_probe(p, 0.2) for p in probes))
        assert all(r.outcome is Outcome.TIMEOUT for r in results)
    await asyncio.sleep(0.2)
    assert _open_fds() <= before + 2


CONSUL_API_CASES: list[tuple[str, Callable[[Peer], Behaviour], type[ConsulError], str]] = [
    (
        "not JSON",
        send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        ConsulError,
        "not JSON",
    ),
    ("50 MB body", huge(200), ConsulError, "response body over"),
    ("50 MB error body", huge(500), ConsulError, "response body over"),
    ("binary garbage", send(GARBAGE), ConsulUnavailableError, "unreachable"),
    ("accepts, never answers", silence, ConsulUnavailableError, "no answer within 0.5s"),
    ("closes at once", close_at_once, ConsulUnavailableError, "unreachable"),
    (
        "a JSON list instead of an object",
        send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"),
        ConsulError,
        "expected a JSON object",
    ),
    (
        "a malformed service entry",
        send(b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"a": {"X": 1}}'),
        ConsulError,
        "malformed entry",
    ),
]


@pytest.mark.parametrize(
    ("behaviour", "error", "message"),
    [c[1:] for c in CONSUL_API_CASES],
    ids=[c[0] for c in CONSUL_API_CASES],
)
async def test_consul_client_against_a_bad_agent(
    peers: Any, behaviour: Callable[[Peer], Behaviour], error: type[ConsulError], message: str
) -> None:
    peer: Peer = await peers(behaviour)
    async with ConsulClient(ConsulConfig(url=peer.url, timeout_s=TIMEOUT_S)) as client:
        with pytest.raises(error) as caught:
            await client.agent_services()
    assert message in str(caught.value)
    assert len(caught.value.message) <= 200
    assert peer.sent < 20 * MIB
