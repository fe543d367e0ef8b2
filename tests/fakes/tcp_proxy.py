"""A TCP proxy a test can cut and restore, to make real network outages.

    async with TcpProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        ...
        await proxy.cut()      # every connection closed, new ones refused (ECONNREFUSED)
        await proxy.restore()  # listening again on the same port

``cut()`` stops listening (so a connect is refused, exactly as with a stopped broker) and
closes both sides of every open connection. ``restore()`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Self

_CHUNK = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.accepted = 0
        """Connections accepted and forwarded since the proxy started."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return sum(1 for task in self._tasks if not task.done())

    @property
    def is_cut(self) -> bool:
        return self._server is None

    def url(self, scheme: str, userinfo: str = "", path: str = "/") -> str:
        """``scheme://userinfo@host:port/path`` pointing at the proxy."""
        auth = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{auth}{self.host}:{self.port}{path}"

    async def start(self) -> None:
        await self._listen()

    async def cut(self) -> None:
        """Refuse new connections and close every open one (both directions)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            _abort(writer)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        if self._server is None:
            await self._listen()

    async def close(self) -> None:
        await self.cut()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._server is None:
            _abort(client_w)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            self._writers.add(upstream_w)
            self.accepted += 1
            await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
        finally:
            self._tasks.discard(task)
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    _abort(writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()
