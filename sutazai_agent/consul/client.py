"""A thin, typed client for the few Consul agent endpoints the registrar uses.

Why not py-consul: its asyncio client builds the aiohttp connector with the deprecated
``verify_ssl``/``ssl_context`` arguments (a DeprecationWarning on aiohttp 3.14), is untyped,
opens a session of its own and reads response bodies without a bound. This client owns one
``aiohttp.ClientSession`` created inside the running loop, applies ``timeout_s`` to every call,
bounds every body it reads and turns every failure into a ``ConsulError``.

The ACL token travels only in the ``X-Consul-Token`` header: it is never part of a URL, a
log line or an error message. Redirects are never followed (Consul's API does not redirect,
and following one would hand the token to whatever origin the ``Location`` names): a 3xx is
a ``ConsulError`` naming the status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
from aiohttp.payload import BytesPayload
from yarl import URL

from sutazai_agent import __version__
from sutazai_agent.config import ConsulConfig
from sutazai_agent.consul.http1 import BodyTooLargeError, Http1Pool, HttpError
from sutazai_agent.consul.types import (
    CHECK_STATUSES,
    AgentCheck,
    AgentService,
    Answer,
    CheckStatus,
    ConsulError,
    ConsulNotFoundError,
    ConsulUnavailableError,
    http_error,
    parse_check,
    parse_service,
)
from sutazai_agent.core.secrets import Scrubber, redact_url

POOL_SIZE = 16
"""Connections to Consul at most (kept alive between calls): the registrar's concurrency."""
BODY_MAX = 4 * 1024 * 1024
"""Largest response body read (a list of a few thousand services fits comfortably)."""
UPDATE_BODIES_MAX = 64
"""Encoded check-update bodies kept (one per status and output: a handful in practice)."""
JSON_TYPE = "application/json"
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_.~:@-]*")
"""What ``quote(value, safe=":@")`` leaves as it is."""


class ConsulClient:
    """Client of one Consul agent. Use as ``async with ConsulClient(config) as client:``."""

    def __init__(self, config: ConsulConfig) -> None:
        self._config = config
        # Per call only the path changes: ``with_path`` on the parsed base is several times
        # cheaper than parsing the whole URL again (the heartbeat is the hot call).
        self._base_url = URL(config.url.rstrip("/"), encoded=True)
        self._prefix = self._base_url.raw_path.rstrip("/")
        self._update_bodies: dict[tuple[str, str], bytes] = {}
        self._token = config.token.get_secret_value()
        self._scrubber = Scrubber([self._token])
        self._session: aiohttp.ClientSession | None = None
        self._writes: Http1Pool | None = None

    @property
    def url(self) -> str:
        """The agent's URL with any password replaced by ``***``."""
        return redact_url(self._config.url)

    # --- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        """Create the session; must run inside the event loop that will use it."""
        if self._session is not None:
            return
        headers = {"User-Agent": f"sutazai-agent/{__version__}"}
        if self._token:
            headers["X-Consul-Token"] = self._token
        tls = self._ssl()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=POOL_SIZE),
            timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
            headers=headers,
        )
        # The writes that repeat (check updates above all) take the lean kept-alive path.
        https = self._base_url.scheme == "https"
        lean_headers = dict(headers)
        if self._base_url.raw_user is not None:  # aiohttp takes them from the URL
            credentials = f"{self._base_url.user or ''}:{self._base_url.password or ''}"
            basic = base64.b64encode(credentials.encode()).decode()
            lean_headers["Authorization"] = f"Basic {basic}"
        self._writes = Http1Pool(
            self._base_url.raw_host or "localhost",
            self._base_url.port or (443 if https else 80),
            lean_headers,
            ssl_context=_context(tls) if https else None,
            size=POOL_SIZE,
            body_max=BODY_MAX,
        )

    async def close(self) -> None:
        writes, self._writes = self._writes, None
        if writes is not None:
            writes.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._config.url.startswith("https:"):
            return True
        if not self._config.tls_verify:
            return False
        cafile = str(self._config.ca_file) if self._config.ca_file else None
        return ssl.create_default_context(cafile=cafile)

    # --- the endpoints -----------------------------------------------------------------
    async def register_service(self, payload: Mapping[str, Any]) -> None:
        """``PUT /v1/agent/service/register``: create or replace a service and its checks."""
        data = json.dumps(payload).encode()
        await self._write("register", "/v1/agent/service/register", data)

    async def deregister_service(self, service_id: str) -> None:
        """``PUT /v1/agent/service/deregister/<id>``; an unknown id counts as done.

        Older Consul answers 200 for an unknown id, newer 404 "Unknown service ID".
        """
        path = f"/v1/agent/service/deregister/{_segment(service_id)}"
        try:
            await self._write("deregister", path)
        except ConsulNotFoundError as exc:
            if "unknown service" not in exc.message.lower():
                raise

    async def update_ttl(self, check_id: str, status: CheckStatus, output: str = "") -> None:
        """``PUT /v1/agent/check/update/<id>``: set a TTL check's status and reset its timer.

        A missing check raises ``ConsulNotFoundError`` (404 on current Consul, a 500
        "does not have associated TTL" on older versions).
        """
        if status not in CHECK_STATUSES:
            raise ValueError(f"invalid check status {status!r}")
        path = f"/v1/agent/check/update/{_segment(check_id)}"
        try:
            await self._write("check_update", path, self._update_body(status, output))
        except ConsulUnavailableError as exc:
            if exc.status == 500 and "does not have associated ttl" in exc.message.lower():
                raise ConsulNotFoundError(exc.operation, exc.message, 404) from None
            raise

    async def agent_services(self, filter_expr: str | None = None) -> dict[str, AgentService]:
        """``GET /v1/agent/services``, optionally with a ``filter`` expression."""
        params = {"filter": filter_expr} if filter_expr else None
        data = await self._call("list", "GET", "/v1/agent/services", params=params)
        if not isinstance(data, dict):
            raise ConsulError("list", "agent services: expected a JSON object")
        return {str(key): parse_service("list", value) for key, value in data.items()}

    async def agent_service(self, service_id: str) -> AgentService | None:
        """``GET /v1/agent/service/<id>``: the local registration under ``service_id``, or
        ``None`` (404 "unknown service ID")."""
        path = f"/v1/agent/service/{_segment(service_id)}"
        try:
            data = await self._call("get", "GET", path)
        except ConsulNotFoundError as exc:
            if "unknown service id" in exc.message.lower():
                return None
            raise
        return parse_service("get", data)

    async def agent_checks(self, filter_expr: str | None = None) -> dict[str, AgentCheck]:
        """``GET /v1/agent/checks``, optionally with a ``filter`` expression."""
        params = {"filter": filter_expr} if filter_expr else None
        data = await self._call("checks", "GET", "/v1/agent/checks", params=params)
        if not isinstance(data, dict):
            raise ConsulError("checks", "agent checks: expected a JSON object")
        return {str(key): parse_check("checks", value) for key, value in data.items()}

    async def health_service(self, name: str) -> list[tuple[AgentService, tuple[AgentCheck, ...]]]:
        """``GET /v1/health/service/<name>``: every instance in the cluster, with its checks."""
        data = await self._call("health", "GET", f"/v1/health/service/{_segment(name)}")
        try:
            return [
                (
                    parse_service("health", e["Service"]),
                    tuple(parse_check("health", c) for c in e["Checks"]),
                )
                for e in data
            ]
        except (KeyError, TypeError):
            raise ConsulError("health", "health service: malformed entry") from None

    async def leader(self) -> str:
        """``GET /v1/status/leader``: the Raft leader's address, ``""`` when there is none."""
        data = await self._call("leader", "GET", "/v1/status/leader")
        if not isinstance(data, str):
            raise ConsulError("leader", "status leader: expected a JSON string")
        return data

    # --- plumbing ----------------------------------------------------------------------
    def _update_body(self, status: CheckStatus, output: str) -> bytes:
        """The encoded check-update body: the registrar sends the same few again and again."""
        key = (status, output)
        data = self._update_bodies.get(key)
        if data is None:
            if len(self._update_bodies) >= UPDATE_BODIES_MAX:
                self._update_bodies.clear()
            data = json.dumps({"Status": status, "Output": output}).encode()
            self._update_bodies[key] = data
        return data

    async def _write(self, operation: str, path: str, data: bytes | None = None) -> None:
        """One PUT through the lean kept-alive path; the answer's body only matters on error."""
        writes = self._writes
        if writes is None:
            raise RuntimeError("ConsulClient is not open: use 'async with ConsulClient(...)'")
        request = writes.build("PUT", self._prefix + path, data, JSON_TYPE)
        try:
            async with asyncio.timeout(self._config.timeout_s):
                status, raw = await writes.request(request)
        except TimeoutError:
            raise ConsulUnavailableError(
                operation, f"no answer within {self._config.timeout_s:g}s"
            ) from None
        except BodyTooLargeError as exc:
            raise ConsulError(operation, str(exc), exc.status) from None
        except (OSError, HttpError) as exc:  # refused, reset, TLS, an answer that is not HTTP
            raise ConsulUnavailableError(operation, self._scrubber.error(exc)) from None
        if 300 <= status < 400:  # never followed: the token stays with the configured agent
            message = f"redirect refused (Consul's API does not redirect): HTTP {status}"
            raise ConsulError(operation, message, status)
        if status >= 400:
            text = self._scrubber.text(raw.decode("utf-8", "replace"))
            raise http_error(operation, status, text)

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; ``body`` is sent as JSON, ``data`` as already encoded JSON."""
        answer = await self.request(operation, method, path, body=body, data=data, params=params)
        return answer.data

    async def request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        absent_ok: bool = False,
    ) -> Answer:
        """One request and its decoded answer. ``timeout_s`` replaces the configured timeout
        (a blocking query waits longer); ``absent_ok`` turns a 404 with an empty body (a KV
        read of a missing key) into an answer with ``data = None``."""
        session = self._session
        if session is None:
            raise RuntimeError("ConsulClient is not open: use 'async with ConsulClient(...)'")
        url = self._base_url.with_path(self._prefix + path, encoded=True)
        if body is not None:
            data = json.dumps(body).encode()
        # A payload carrying its Content-Type: no per-call headers to merge with the session's.
        payload = None if data is None else BytesPayload(data, content_type=JSON_TYPE)
        limit_s = self._config.timeout_s if timeout_s is None else timeout_s
        extra: dict[str, Any] = {}
        if timeout_s is not None:  # else the session's (aiohttp reads None as "no timeout")
            extra["timeout"] = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with session.request(
                method, url, params=params, data=payload, allow_redirects=False, **extra
            ) as response:
                status = response.status
                index = _index(response.headers.get("X-Consul-Index"))
                raw = await _read_bounded(operation, response)
        except ConsulError:
            raise
        except TimeoutError:
            raise ConsulUnavailableError(operation, f"no answer within {limit_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise ConsulUnavailableError(operation, self._scrubber.error(exc)) from None
        if 300 <= status < 400:
            message = f"redirect refused (Consul's API does not redirect): HTTP {status}"
            raise ConsulError(operation, message, status)
        if status == 404 and absent_ok and not raw.strip():
            return Answer(status, index, None)
        if status >= 400:
            text = self._scrubber.text(raw.decode("utf-8", "replace"))
            raise http_error(operation, status, text)
        if not raw.strip():
            return Answer(status, index, None)
        try:
            return Answer(status, index, json.loads(raw))
        except ValueError:
            raise ConsulError(operation, "response is not JSON", status) from None


def _context(tls: ssl.SSLContext | bool) -> ssl.SSLContext:
    """aiohttp's ``ssl`` argument as a context: ``False`` verifies nothing."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    context = ssl.create_default_context()
    if not tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _index(header: str | None) -> int:
    """``X-Consul-Index`` as an int; 0 when absent or unusable."""
    try:
        return max(int(header or 0), 0)
    except ValueError:
        return 0


def _segment(value: str) -> str:
    """``value`` as one path segment; IDs that need no escaping (the usual) skip ``quote``."""
    if _PLAIN_SEGMENT.fullmatch(value):
        return value
    return quote(value, safe=":@")


async def _read_bounded(operation: str, response: aiohttp.ClientResponse) -> bytes:
    length = response.content_length
    if length == 0:  # the writes' usual answer: nothing to read, the connection stays reusable
        return b""
    if length is not None and length > BODY_MAX:
        raise ConsulError(operation, f"response body over {BODY_MAX} bytes", response.status)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > BODY_MAX:
            raise ConsulError(operation, f"response body over {BODY_MAX} bytes", response.status)
        chunks.append(chunk)
    return b"".join(chunks)
