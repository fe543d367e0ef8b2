"""PostgreSQL probe: connect, authenticate, run one query; up when it answers.

The query is ``SELECT 1``, or ``SELECT pg_is_in_recovery()`` when the service asks for a
``primary``: a server in recovery (a standby) is then degraded. Down: refused, timeout,
authentication or database error. The connection is closed politely (``Terminate``) after a
successful query, and dropped at once on any failure, timeout or cancellation.

asyncpg is the optional ``postgres`` extra, imported when the first postgres probe is built.
Reasons are the server's own messages ("password authentication failed for user ...",
"database ... does not exist"), which never carry the password.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.core.secrets import scrub_urls
from sutazai_agent.probes.base import (
    clock,
    elapsed_since,
    error_reason,
    failed_after,
    outcome_for,
)

if TYPE_CHECKING:
    import aiohttp

    from sutazai_agent.config import PostgresService


class PostgresProbe:
    kind = "postgres"

    def __init__(
        self,
        service: PostgresService,
        session: aiohttp.ClientSession,  # unused: one constructor signature for every kind
        timeout_s: float,
    ) -> None:
        import asyncpg

        self._connect: Any = asyncpg.connect
        self._dsn = service.dsn
        self._primary = service.primary
        self._timeout_s = timeout_s

    async def probe(self) -> ProbeResult:
        start = clock()
        connection: Any = None
        try:
            async with asyncio.timeout(self._timeout_s):
                connection = await self._connect(
                    self._dsn, timeout=self._timeout_s, statement_cache_size=0
                )
                if self._primary:
                    in_recovery = bool(await connection.fetchval("SELECT pg_is_in_recovery()"))
                else:
                    in_recovery = False
                    await connection.execute("SELECT 1")
                version = connection.get_server_version()
                await connection.close()
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            reason = postgres_reason(exc, self._timeout_s)
            return ProbeResult(outcome_for(exc), failed_after(exc, start, self._timeout_s), reason)
        finally:
            if connection is not None and not connection.is_closed():
                connection.terminate()
        latency_s = elapsed_since(start)
        detail = f"PostgreSQL {version.major}.{version.minor}"
        if in_recovery:
            return ProbeResult(
                Outcome.DEGRADED, latency_s, "in recovery (a standby), primary asked for", detail
            )
        return ProbeResult(Outcome.OK, latency_s, "", detail)


def postgres_reason(exc: BaseException, timeout_s: float) -> str:
    """Why the connection or the query failed, in a few words."""
    import asyncpg

    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return scrub_urls(str(exc)).strip() or type(exc).__name__
    return error_reason(exc, timeout_s)
