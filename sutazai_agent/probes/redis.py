"""Redis probe: ``PING`` answered ``PONG`` is up, after the URL's AUTH and SELECT.

Each probe opens one connection (redis.asyncio's ``Connection``: no pool, no retries, no
``CLIENT SETINFO``), sends ``PING`` and ``INFO replication`` in one write, reads both replies
and closes the connection, on every path. Degraded: the server answers ``LOADING`` (it is
still loading its dataset), or it is a replica whose link to its master is down. Down:
refused, timeout, authentication error, anything else. A server that refuses ``INFO`` is
judged by ``PING`` alone.

redis-py is the optional ``redis`` extra, imported when the first redis probe is built.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.core.secrets import scrub_urls
from sutazai_agent.probes.base import (
    clock,
    elapsed_since,
    error_reason,
    failed_after,
    outcome_for,
    seconds,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiohttp

    from sutazai_agent.config import RedisService


class RedisProbe:
    kind = "redis"

    def __init__(
        self,
        service: RedisService,
        session: aiohttp.ClientSession,  # unused: one constructor signature for every kind
        timeout_s: float,
    ) -> None:
        from redis.asyncio.connection import Connection, SSLConnection, parse_url

        self._timeout_s = timeout_s
        options: dict[str, Any] = dict(parse_url(service.url))
        connection_class = options.pop("connection_class", Connection)
        # RESP2 unless the URL asks otherwise: plain AUTH and SELECT, which every Redis
        # version answers (HELLO needs Redis 6 and fails before AUTH on a protected server).
        options.setdefault("protocol", 2)
        if connection_class is SSLConnection and not service.tls_verify:
            options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        # The read timeout is the probe's own (asyncio.timeout below): redis-py's per-write
        # timeout would start a task per command.
        self._connection: Callable[[], Any] = functools.partial(
            connection_class,
            **options,
            socket_connect_timeout=timeout_s,
            socket_timeout=None,
            driver_info=None,
        )

    async def probe(self) -> ProbeResult:
        start = clock()
        connection = self._connection()
        try:
            async with asyncio.timeout(self._timeout_s):
                await connection.connect()
                commands = connection.pack_commands([("PING",), ("INFO", "replication")])
                await connection.send_packed_command(commands, check_health=False)
                pong = await connection.read_response()
                info = await _read_info(connection)
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            return _failed(exc, start, self._timeout_s)
        finally:
            await connection.disconnect(nowait=True)
        latency_s = elapsed_since(start)
        if pong != b"PONG":
            return ProbeResult(Outcome.FAIL, latency_s, f"unexpected reply to PING: {pong!r}")
        role, problem = _replication(info)
        detail = f"PONG, role {role}" if role else "PONG"
        if problem:
            return ProbeResult(Outcome.DEGRADED, latency_s, problem, detail)
        return ProbeResult(Outcome.OK, latency_s, "", detail)


async def _read_info(connection: Any) -> bytes:
    """The reply to ``INFO replication``; empty when the server refuses INFO (an ACL, a
    renamed command): PING alone decides then."""
    from redis.exceptions import ResponseError

    try:
        info = await connection.read_response()
    except ResponseError:
        return b""
    return info if isinstance(info, bytes) else b""


def _replication(info: bytes) -> tuple[str, str]:
    """The server's role, and why a replica is degraded (empty when it is not)."""
    fields = dict(
        line.split(":", 1) for line in info.decode(errors="replace").splitlines() if ":" in line
    )
    role = fields.get("role", "")
    if role != "slave":
        return role, ""
    link = fields.get("master_link_status", "unknown")
    if link == "up":
        return "replica", ""
    return "replica", f"replica: link to master {link}"


def _failed(exc: BaseException, start: float, timeout_s: float) -> ProbeResult:
    from redis import exceptions

    latency_s = failed_after(exc, start, timeout_s)
    if isinstance(exc, exceptions.BusyLoadingError):
        return ProbeResult(Outcome.DEGRADED, latency_s, "loading the dataset into memory")
    if isinstance(exc, exceptions.TimeoutError):
        latency_s = max(latency_s, timeout_s)
        return ProbeResult(Outcome.TIMEOUT, latency_s, f"timeout after {seconds(timeout_s)}")
    return ProbeResult(outcome_for(exc), latency_s, redis_reason(exc, timeout_s))


def redis_reason(exc: BaseException, timeout_s: float) -> str:
    """Why the exchange failed, in a few words (never the URL's password)."""
    from redis import exceptions

    if isinstance(
        exc, exceptions.AuthenticationError | exceptions.AuthenticationWrongNumberOfArgsError
    ):
        return f"authentication failed: {_message(exc)}".rstrip(": ")
    if isinstance(exc, exceptions.ConnectionError):
        # redis-py raises its own ConnectionError inside ``except OSError``.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError | TimeoutError):
            return error_reason(cause, timeout_s)
        message = _message(exc)
        if message == "Connection closed by server.":
            return "connection closed by the server"
        return message or "connection error"
    if isinstance(exc, exceptions.ResponseError):
        return f"error reply: {_message(exc)}"
    return error_reason(exc, timeout_s)


def _message(exc: BaseException) -> str:
    return scrub_urls(str(exc)).strip()
