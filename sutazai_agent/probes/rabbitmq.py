"""RabbitMQ probe: a real AMQP handshake decides up/down; the management API's alarm check
decides degraded.

1. AMQP: connect, open a channel, close (aiormq, no reconnects). Failure is down, with a
   reason saying why: refused, authentication, timeout.
2. Management (only with ``management_url``): ``GET /api/health/checks/alarms`` with the
   management URL's own credentials, else the AMQP URL's. 200 up; 503 "alarms in effect";
   401 or unreachable degraded: the broker serves, but its operator view is broken.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

import aiohttp
import aiormq
import aiormq.exceptions
from yarl import URL

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.core.secrets import scrub_urls
from sutazai_agent.probes.base import (
    Reply,
    basic_auth,
    clock,
    elapsed_since,
    error_reason,
    failed_after,
    fetch,
    outcome_for,
)

if TYPE_CHECKING:
    from sutazai_agent.config import RabbitmqService

ALARMS_PATH = "/api/health/checks/alarms"


class RabbitmqProbe:
    kind = "rabbitmq"

    def __init__(
        self, service: RabbitmqService, session: aiohttp.ClientSession, timeout_s: float
    ) -> None:
        self._service = service
        self._session = session
        self._timeout_s = timeout_s
        self._tls: ssl.SSLContext | None = None
        if not service.tls_verify and URL(service.amqp_url).scheme == "amqps":
            self._tls = ssl.create_default_context()
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE
        self._alarms_url: str | None = None
        self._headers: dict[str, str] = {}
        if service.management_url:
            self._alarms_url, authorization = _management(service.management_url, service.amqp_url)
            self._headers["Authorization"] = authorization

    async def _handshake(self) -> str:
        """Connect, open a channel, close; returns the broker's product and version."""
        connection = await aiormq.connect(self._service.amqp_url, context=self._tls)
        try:
            await connection.channel()
            props = connection.server_properties
        finally:
            await connection.close()
        return f"{_text(props.get('product', 'AMQP'))} {_text(props.get('version', ''))}".strip()

    async def probe(self) -> ProbeResult:
        start = clock()
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                server = await self._handshake()
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            reason = f"amqp: {amqp_reason(exc, self._timeout_s)}"
            return ProbeResult(outcome_for(exc), failed_after(exc, start, self._timeout_s), reason)
        if self._alarms_url is None:
            return ProbeResult(Outcome.OK, elapsed_since(start), "", server)
        try:
            async with asyncio.timeout_at(deadline):
                reply = await fetch(
                    self._session,
                    self._alarms_url,
                    headers=self._headers,
                    tls_verify=self._service.tls_verify,
                )
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            reason = f"management: {error_reason(exc, self._timeout_s)}"
            return ProbeResult(Outcome.DEGRADED, elapsed_since(start), reason, server)
        latency_s = elapsed_since(start)
        problem = _alarms_problem(reply)
        if problem:
            return ProbeResult(Outcome.DEGRADED, latency_s, problem, server)
        return ProbeResult(Outcome.OK, latency_s, "", server)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _management(management_url: str, amqp_url: str) -> tuple[str, str]:
    """The alarms URL without credentials, and the ``Authorization`` header to send with it:
    the management URL's own credentials, else the AMQP URL's (RabbitMQ's default guest)."""
    management = URL(management_url)
    source = management if management.user is not None else URL(amqp_url)
    authorization = basic_auth(source.user or "guest", source.password or "guest")
    base = str(management.with_user(None)).rstrip("/")
    return base + ALARMS_PATH, authorization


def _alarms_problem(reply: Reply) -> str:
    if reply.status == 200:
        return ""
    if reply.status == 503:
        return "alarms in effect"
    if reply.status == 401:
        return "management: authentication failed (HTTP 401)"
    return f"management: HTTP {reply.status}"


def amqp_reason(exc: BaseException, timeout_s: float) -> str:
    """Why the AMQP handshake failed, in a few words."""
    if isinstance(
        exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError
    ):
        text = str(exc.args[0]) if exc.args else ""
        text = text.split(". For details", 1)[0]
        return f"authentication failed: {scrub_urls(text)}" if text else "authentication failed"
    if isinstance(exc, aiormq.exceptions.IncompatibleProtocolError):
        return "not an AMQP 0-9-1 server"
    if isinstance(exc, aiormq.exceptions.InvalidFrameError):
        return "handshake rejected by the broker"
    if isinstance(exc, aiormq.exceptions.AMQPConnectionError):
        cause = exc.__cause__
        if isinstance(cause, OSError | TimeoutError):
            return error_reason(cause, timeout_s)
        if exc.args and isinstance(exc.args[0], int):
            return error_reason(OSError(exc.args[0], ""), timeout_s)
        if isinstance(exc, aiormq.exceptions.ConnectionClosed):
            return "connection closed by the broker"
    return error_reason(exc, timeout_s)
