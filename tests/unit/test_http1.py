"""The lean HTTP/1.1 exchange's parser, fed by hand: whole, split anywhere, or cut short."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from yarl import URL

from sutazai_agent.probes.base import BODY_LIMIT, ProbeError, Reply
from sutazai_agent.probes.http1 import Resolver, build_request
from sutazai_agent.probes.http1_parser import ResponseReader


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


def feed(
    response: bytes, *, chunk: int | None = None, head: bool = False, eof: bool = True
) -> tuple[asyncio.Future[Reply], FakeTransport, ResponseReader]:
    done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    reader = ResponseReader(b"GET / HTTP/1.1\r\n\r\n", head, done)
    transport = FakeTransport()
    reader.connection_made(transport)  # type: ignore[arg-type]
    step = chunk or max(len(response), 1)
    for start in range(0, len(response), step):
        reader.data_received(response[start : start + step])
    if eof:
        reader.eof_received()
        reader.connection_lost(None)
    return done, transport, reader


def outcome(done: asyncio.Future[Reply]) -> Any:
    assert done.done(), "the response is still pending"
    if done.exception() is not None:
        return str(done.exception())
    reply = done.result()
    return reply.status, reply.body, reply.server, reply.charset


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: demo/1\r\n"
    b"Content-Type: text/plain; charset=ISO-8859-1\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
)

WELL_FORMED = [
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        (200, b"ok", "", "utf-8"),
    ),
    (CHUNKED, (200, b"hello world", "demo/1", "iso8859-1")),
    (b"HTTP/1.0 503 Busy\r\n\r\nuntil close", (503, b"until close", "", "utf-8")),
    (b"HTTP/1.1 204 No Content\r\n\r\n", (204, b"", "", "utf-8")),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n!",
        (201, b"!", "", "utf-8"),
    ),
    (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", (200, b"", "", "utf-8")),
]

LENIENT = [
    # RFC 9112 §2.2: a bare LF may end any line, the header section included.
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", (200, b"ok", "", "utf-8")),
    (b"HTTP/1.1 200 OK\r\nServer: s\nContent-Length: 2\r\n\nok", (200, b"ok", "s", "utf-8")),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\r\nok", (200, b"ok", "", "utf-8")),
    (b"HTTP/1.0 200 OK\n\nuntil close", (200, b"until close", "", "utf-8")),
    (
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\nhello\n1\r\n \n0\nT: t\n\n",
        (200, b"hello ", "", "utf-8"),
    ),
    # §5.2: obs-fold continues a field value; it is joined with one SP.
    (
        b"HTTP/1.1 200 OK\r\nServer: demo\r\n  folded\r\n\tmore\r\nContent-Length: 2\r\n\r\nok",
        (200, b"ok", "demo folded more", "utf-8"),
    ),
    (
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain;\r\n charset=ISO-8859-1\r\n"
            b"Content-Length: 1\r\n\r\n!"
        ),
        (200, b"!", "", "iso8859-1"),
    ),
    # §2.2: whitespace lines between the status line and the first field are consumed.
    (b"HTTP/1.1 200 OK\r\n  junk\r\nContent-Length: 2\r\n\r\nok", (200, b"ok", "", "utf-8")),
    # §5.1: whitespace between a field name and its colon is removed.
    (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", (200, b"ok", "", "utf-8")),
    (b"HTTP/1.1 200 OK\r\nServer\t: s\r\nContent-Length: 0\r\n\r\n", (200, b"", "s", "utf-8")),
]


@pytest.mark.parametrize(("response", "expected"), LENIENT)
@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7])
async def test_what_rfc_9112_lets_a_recipient_accept_is_accepted(
    response: bytes, expected: tuple[Any, ...], chunk: int | None
) -> None:
    done, _, _ = feed(response, chunk=chunk)

    assert outcome(done) == expected


@pytest.mark.parametrize(("response", "expected"), WELL_FORMED)
@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7])
async def test_a_response_parses_the_same_however_it_is_split(
    response: bytes, expected: tuple[Any, ...], chunk: int | None
) -> None:
    done, _, _ = feed(response, chunk=chunk)

    assert outcome(done) == expected


async def test_a_sized_body_completes_before_the_peer_closes() -> None:
    done, transport, reader = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", eof=False)

    assert outcome(done) == (200, b"abc", "", "utf-8")
    reader.abort()
    assert transport.closed  # complete: a normal close
    assert not transport.aborted


async def test_a_head_response_has_no_body_whatever_its_length_says() -> None:
    done, _, _ = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", head=True, eof=False)

    assert outcome(done) == (200, b"", "", "utf-8")


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: %d\r\n" % (10 * BODY_LIMIT), b"Transfer-Encoding: chunked\r\n", b""],
)
async def test_a_huge_body_stops_at_the_limit_and_the_connection_is_aborted(
    framing: bytes,
) -> None:
    body = b"x" * (2 * BODY_LIMIT)
    if b"chunked" in framing:
        body = b"%x\r\n" % len(body) + body
    done, transport, reader = feed(
        b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n" + body, chunk=8192, eof=False
    )

    status, read, _, _ = outcome(done)
    assert (status, len(read)) == (200, BODY_LIMIT)
    reader.abort()
    assert transport.aborted


BROKEN = [
    (b"", "server closed the connection without a response"),
    (b"ok", "invalid HTTP response: connection closed inside the header section"),
    (
        b"HTTP/1.1 200 OK\r\nX: y",
        "invalid HTTP response: connection closed inside the header section",
    ),
    (b"ok\n", "invalid HTTP response: not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\nBad Name : v\n\n", "invalid HTTP response: malformed header line"),
    (b"HTTP/1.1 200 OK\nX: 1\n: v\n\n", "invalid HTTP response: malformed header line"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "invalid HTTP response: not an HTTP/1.x status line"),
    (b"HTTP/2 200\r\n\r\n", "invalid HTTP response: not an HTTP/1.x status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "invalid HTTP response: not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", "invalid HTTP response: malformed header line"),
    (b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n", "invalid HTTP response: malformed header line"),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "invalid HTTP response: conflicting Content-Length headers",
    ),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        "invalid HTTP response: bad Content-Length b'0x10'",
    ),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "response body broken off"),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
        "response body broken off",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
        "invalid HTTP response: bad chunk size b'-5'",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n",
        "invalid HTTP response: bad chunk size b'0x5'",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        "invalid HTTP response: chunk not followed by CRLF",
    ),
    (
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200,
        "invalid HTTP response: too many headers (more than 128)",
    ),
    (
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 9000,
        "invalid HTTP response: header line of more than 8190 bytes",
    ),
    (
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 8000 + (b"\r\nY: " + b"b" * 8000) * 9,
        "invalid HTTP response: header section of more than 65536 bytes",
    ),
]


@pytest.mark.parametrize(("response", "reason"), BROKEN)
@pytest.mark.parametrize("chunk", [None, 1, 5])
async def test_a_broken_response_fails_with_a_reason(
    response: bytes, reason: str, chunk: int | None
) -> None:
    done, _, _ = feed(response, chunk=chunk)

    assert outcome(done) == reason
    assert isinstance(done.exception(), ProbeError)


async def test_bad_bytes_fail_before_the_peer_closes() -> None:
    done, transport, reader = feed(b"\x16\x03\x01\x00\xa5\x01\x00", eof=False)

    assert outcome(done) == "invalid HTTP response: not an HTTP/1.x status line"
    reader.abort()
    assert transport.aborted


async def test_a_connection_error_fails_the_exchange() -> None:
    done, _, reader = feed(b"HTTP/1.1 200 OK\r\n", eof=False)
    reader.connection_lost(ConnectionResetError(104, "Connection reset by peer"))

    assert isinstance(done.exception(), ConnectionResetError)


def test_the_request_is_built_once_with_host_credentials_and_connection_close() -> None:
    url = URL("http://user:p%40ss@example.test:8080/health?full=1")

    request = build_request(url, "HEAD", {"X-Token": "t", "user-agent": "custom"}, "agent/1")

    assert request == (
        b"HEAD /health?full=1 HTTP/1.1\r\n"
        b"Host: example.test:8080\r\n"
        b"Accept: */*\r\n"
        b"Authorization: Basic dXNlcjpwQHNz\r\n"
        b"X-Token: t\r\n"
        b"user-agent: custom\r\n"
        b"Connection: close\r\n\r\n"
    )


def test_default_ports_and_ipv6_literals_in_the_host_header() -> None:
    plain = build_request(URL("http://[::1]/"), "GET", {"Connection": "keep-alive"}, "a")
    tls = build_request(URL("https://example.test/x"), "GET", {}, "a")

    assert plain.startswith(b"GET / HTTP/1.1\r\nHost: [::1]\r\n")
    assert plain.endswith(b"Connection: close\r\n\r\n")
    assert b"keep-alive" not in plain
    assert tls.startswith(b"GET /x HTTP/1.1\r\nHost: example.test\r\n")


async def test_the_resolver_skips_ip_literals_and_caches_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        calls.append(host)
        return [(2, 1, 6, "", ("10.0.0.7", port)), (2, 1, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    resolver = Resolver(ttl_s=60)

    assert await resolver.resolve("127.0.0.1", 80) == [("127.0.0.1", 80)]
    assert await resolver.resolve("::1", 80) == [("::1", 80)]
    assert await resolver.resolve("svc.test", 80) == [("10.0.0.7", 80)]
    assert await resolver.resolve("svc.test", 80) == [("10.0.0.7", 80)]
    assert calls == ["svc.test"]
    expired = Resolver(ttl_s=0)
    await expired.resolve("svc.test", 80)
    await expired.resolve("svc.test", 80)
    assert calls == ["svc.test"] * 3
