"""Kong probe: the proxy decides up/down; the Admin API and readiness decide degraded.

Three requests run concurrently under one deadline:

- proxy ``GET <proxy_url>``: any status below 500 is alive (Kong's own 404 "no Route matched
  with those values" included); an error or a 5xx is down;
- admin ``GET /status``: must be 200; ``database.reachable: false`` is degraded;
- readiness ``GET /status/ready`` on the status listener (``status_url``) if configured, else
  on the Admin API: 200 ready, 503 degraded, 404 ignored (Kong before 3.3 has no such route).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.probes.base import (
    Reply,
    clock,
    elapsed_since,
    error_reason,
    failed_after,
    fetch,
    outcome_for,
)

if TYPE_CHECKING:
    import aiohttp

    from sutazai_agent.config import KongService


class KongProbe:
    kind = "kong"

    def __init__(
        self, service: KongService, session: aiohttp.ClientSession, timeout_s: float
    ) -> None:
        self._service = service
        self._session = session
        self._timeout_s = timeout_s
        self._status_url = service.admin_url.rstrip("/") + "/status"
        self._ready_step = "status" if service.status_url else "admin"
        self._ready_url = (service.status_url or service.admin_url).rstrip("/") + "/status/ready"

    async def _step(self, url: str, deadline: float) -> Reply | Exception:
        try:
            async with asyncio.timeout_at(deadline):
                return await fetch(self._session, url, tls_verify=self._service.tls_verify)
        except Exception as exc:  # noqa: BLE001 - the caller classifies every failure
            return exc

    async def probe(self) -> ProbeResult:
        start = clock()
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        admin, proxy, ready = await asyncio.gather(
            self._step(self._status_url, deadline),
            self._step(self._service.proxy_url, deadline),
            self._step(self._ready_url, deadline),
        )
        latency_s = elapsed_since(start)
        detail = _detail(admin, proxy, ready)
        if isinstance(proxy, Exception):
            reason = f"proxy: {error_reason(proxy, self._timeout_s)}"
            latency_s = failed_after(proxy, start, self._timeout_s)
            return ProbeResult(outcome_for(proxy), latency_s, reason, detail)
        if proxy.status >= 500:
            return ProbeResult(Outcome.FAIL, latency_s, f"proxy: HTTP {proxy.status}", detail)
        problems = self._admin_problems(admin)
        if not (self._ready_step == "admin" and problems):
            problems.extend(self._ready_problems(ready))
        if problems:
            return ProbeResult(Outcome.DEGRADED, latency_s, "; ".join(problems), detail)
        return ProbeResult(Outcome.OK, latency_s, "", detail)

    def _admin_problems(self, admin: Reply | Exception) -> list[str]:
        if isinstance(admin, Exception):
            return [f"admin: {error_reason(admin, self._timeout_s)}"]
        if admin.status != 200:
            return [f"admin: HTTP {admin.status}"]
        status = _json_object(admin)
        if status is None:
            return ["admin: /status is not Kong's JSON"]
        database = status.get("database")
        if isinstance(database, dict) and database.get("reachable") is False:
            return ["database unreachable"]
        return []

    def _ready_problems(self, ready: Reply | Exception) -> list[str]:
        step = self._ready_step
        if isinstance(ready, Exception):
            return [f"{step}: {error_reason(ready, self._timeout_s)}"]
        if ready.status in (200, 404):
            return []
        if ready.status == 503:
            body = _json_object(ready) or {}
            message = body.get("message")
            return [f"not ready: {message}" if isinstance(message, str) else "not ready"]
        return [f"{step}: /status/ready HTTP {ready.status}"]


def _json_object(reply: Reply) -> dict[str, Any] | None:
    try:
        value = reply.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _detail(admin: Reply | Exception, proxy: Reply | Exception, ready: Reply | Exception) -> str:
    parts = []
    for reply in (admin, proxy):
        if isinstance(reply, Reply) and reply.server.lower().startswith("kong/"):
            parts.append("kong " + reply.server[len("kong/") :])
            break
    if isinstance(proxy, Reply):
        parts.append(f"proxy HTTP {proxy.status}")
    if isinstance(ready, Reply):
        parts.append({200: "ready", 404: "no readiness endpoint"}.get(ready.status, "not ready"))
    return ", ".join(parts)
