"""A lean HTTP/1.1 client with kept-alive connections, for the Consul writes that repeat.

At thousands of services the registrar sends hundreds of TTL updates a second. Through
aiohttp's client each costs ~0.1 CPU-ms of Python (request building, header multidicts,
the response object and its stream); the exchange below writes bytes prepared once per
client, reads a status line, three header fields and a bounded body straight from an
``asyncio.Protocol`` and keeps the connection for the next call (``docs/performance.md``).

What it does and does not do:

- up to ``size`` connections, reused last-in first-out (the warmest first);
- a request on a kept-alive connection that the server had closed meanwhile (idle timeout,
  restart) fails before any byte of answer: it is sent again, once, on a fresh connection.
  Only idempotent calls go through here (check update, register, deregister);
- responses framed by Content-Length, chunked encoding or the end of the connection; bodies
  over ``body_max`` are refused; ``Connection: close`` is honoured;
- TLS through the loop's own TLS with the caller's context;
- no redirects, no proxies, no compression, no cookies: Consul's agent API needs none.

The caller applies its timeout around ``request()``; a cancelled exchange drops its
connection, so a late answer can never be read as the next call's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Final

HEAD_LIMIT: Final = 64 * 1024
"""Largest response header section accepted."""


class HttpError(Exception):
    """The answer could not be read: invalid HTTP, or a body over the bound."""


class BodyTooLargeError(HttpError):
    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"response body over {limit} bytes")
        self.status = status


class StaleConnectionError(ConnectionError):
    """The server closed the connection before answering."""

    def __init__(self) -> None:
        super().__init__("server closed the connection without a response")


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one exchange at a time, the response parsed as it comes."""

    def __init__(self, body_max: int) -> None:
        self.body_max = body_max
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self._done: asyncio.Future[tuple[int, bytes]] | None = None
        self._buffer = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._length: int | None = None  # Content-Length, or -1: chunked, None: until close
        self._keep = True
        self._body = bytearray()
        self._in_head = True
        self._chunk_left = 0
        self._received = False

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._done is None:  # nothing asked: a server talking out of turn
            self.abort()
            return
        self._received = True
        self._buffer += data
        try:
            self._parse()
        except HttpError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._end_of_stream()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_stream(exc)

    # --- the exchange -------------------------------------------------------------------
    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.transport is None or self._done is not None:
            raise RuntimeError("one exchange at a time, on an open connection")
        self._done = asyncio.get_running_loop().create_future()
        self._reset()
        self.used = True
        self.transport.write(request)
        return self._done

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _end_of_stream(self, exc: Exception | None = None) -> None:
        self.closed = True
        if self._done is None or self._done.done():
            return
        if not self._received:
            self._fail(StaleConnectionError())
        elif not self._in_head and self._length is None:
            self._finish()  # the body was framed by the end of the connection
        else:
            self._fail(exc or ConnectionError("connection closed in the middle of the response"))

    def _fail(self, exc: BaseException) -> None:
        done, self._done = self._done, None
        if done is not None and not done.done():
            done.set_exception(exc)
        self.abort()

    def _finish(self) -> None:
        done, self._done = self._done, None
        if not self._keep or self._buffer:
            self.abort()  # the server closes, or sent more than it was asked for
        if done is not None and not done.done():
            done.set_result((self._status, bytes(self._body)))

    def _parse(self) -> None:
        if self._in_head:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_LIMIT:
                    raise HttpError("response header section too long")
                return
            self._head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
            self._in_head = False
        if self._length is None:
            self._take(len(self._buffer))
        elif self._length >= 0:
            self._take(min(self._length - len(self._body), len(self._buffer)))
            if len(self._body) == self._length:
                self._finish()
        else:
            self._chunks()

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpError("invalid status line")
        self._status = int(parts[1])
        self._keep = parts[0] != b"HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise HttpError("invalid header line")
            key = name.strip().lower()
            if key == b"content-length":
                if not value.strip().isdigit():
                    raise HttpError("invalid Content-Length")
                self._length = int(value)
                if self._length > self.body_max:
                    raise BodyTooLargeError(self._status, self.body_max)
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                self._length = -1
            elif key == b"connection":
                self._keep = b"close" not in value.lower()
        if self._length is None and self._status in (204, 304):
            self._length = 0
        if self._length is None:
            self._keep = False  # framed by the end of the connection

    def _take(self, size: int) -> None:
        if size <= 0:
            return
        if len(self._body) + size > self.body_max:
            raise BodyTooLargeError(self._status, self.body_max)
        self._body += self._buffer[:size]
        del self._buffer[:size]

    def _chunks(self) -> None:
        while self._done is not None:
            if self._chunk_left > 0:
                take = min(self._chunk_left, len(self._buffer))
                self._take(take)
                self._chunk_left -= take
                if self._chunk_left:
                    return
                self._chunk_left = -2  # the CRLF after the data
            if len(self._buffer) < 2 and self._chunk_left == -2:
                return
            if self._chunk_left == -2:
                if self._buffer[:2] != b"\r\n":
                    raise HttpError("invalid chunk end")
                del self._buffer[:2]
                self._chunk_left = 0
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > 1024:
                    raise HttpError("invalid chunk size line")
                return
            size_text = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError("invalid chunk size") from None
            if size == 0:  # the last chunk; trailers (none expected) end with an empty line
                tail = self._buffer.find(b"\r\n\r\n", end)
                if tail < 0:
                    if len(self._buffer) > HEAD_LIMIT:
                        raise HttpError("chunked trailers too long")
                    return
                del self._buffer[: tail + 4]
                self._finish()
                return
            del self._buffer[: end + 2]
            self._chunk_left = size


class Http1Pool:
    """Kept-alive connections to one HTTP/1.1 server; ``request()`` is one exchange."""

    def __init__(
        self,
        host: str,
        port: int,
        headers: Mapping[str, str],
        *,
        ssl_context: ssl.SSLContext | None = None,
        size: int = 16,
        body_max: int = 4 * 1024 * 1024,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._body_max = body_max
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False
        netloc = f"[{host}]" if ":" in host else host
        fields = {"Host": f"{netloc}:{port}", **headers}
        self._fields = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode()

    def build(self, method: str, target: str, body: bytes | None, content_type: str) -> bytes:
        """The request's bytes: request line, the fixed fields, then the body's."""
        line = f"{method} {target} HTTP/1.1\r\n".encode()
        if body is None:
            return line + self._fields + b"Content-Length: 0\r\n\r\n"
        length = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        return line + self._fields + length.encode() + body

    async def request(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request`` (from ``build``); return the status and the body."""
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        async with self._slots:
            connection = await self._connection()
            reused = connection.used
            try:
                answer = await connection.send(request)
            except StaleConnectionError:
                connection.abort()
                if not reused:
                    raise
                # A kept-alive connection the server had closed meanwhile: once more, afresh.
                connection = await self._open()
                try:
                    answer = await connection.send(request)
                except BaseException:
                    connection.abort()
                    raise
            except BaseException:
                connection.abort()  # cancelled or failed: its answer must not be read later
                raise
            if not connection.closed:
                self._idle.append(connection)
            return answer

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return await self._open()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(self._body_max)
        if self._ssl is None:
            await loop.create_connection(lambda: connection, self._host, self._port)
        else:
            await loop.create_connection(
                lambda: connection, self._host, self._port, ssl=self._ssl,
                server_hostname=self._host,
            )  # fmt: skip
        return connection

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()
