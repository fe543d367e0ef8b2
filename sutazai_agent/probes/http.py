"""HTTP(S) probe: up when the status is expected and the body matches the optional regex.

A probe that does not follow redirects (the default) makes its request with the lean
``http1.Exchange``; one that follows redirects goes through the shared aiohttp session.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from yarl import URL

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.probes.base import Reply, clock, elapsed_since, failure, fetch
from sutazai_agent.probes.http1 import Exchange

if TYPE_CHECKING:
    from collections.abc import Container

    import aiohttp

    from sutazai_agent.config import HttpService

DEFAULT_EXPECT = range(200, 400)
"""Without ``expect_status``, any 2xx or 3xx is up (redirects are not followed by default)."""


class HttpProbe:
    """``GET``/``HEAD`` the URL once, without following redirects unless asked to."""

    kind = "http"

    def __init__(
        self, service: HttpService, session: aiohttp.ClientSession, timeout_s: float
    ) -> None:
        self._service = service
        self._session = session
        self._timeout_s = timeout_s
        self._expect: Container[int] = frozenset(service.expect_status) or DEFAULT_EXPECT
        self._pattern = re.compile(service.body_regex) if service.body_regex else None
        # Parsed once: aiohttp would parse and normalise the string again on every request.
        self._url = URL(service.url)
        self._headers = service.headers or None
        self._exchange = (
            None
            if service.follow_redirects
            else Exchange(
                self._url,
                method=service.method,
                headers=service.headers,
                tls_verify=service.tls_verify,
            )
        )

    async def probe(self) -> ProbeResult:
        start = clock()
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._request()
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            return failure(exc, start, self._timeout_s)
        latency_s = elapsed_since(start)
        detail = f"HTTP {reply.status}"
        if reply.status not in self._expect:
            expected = "" if self._expect is DEFAULT_EXPECT else " (unexpected status)"
            return ProbeResult(Outcome.FAIL, latency_s, f"HTTP {reply.status}{expected}", detail)
        if self._pattern is not None and not self._pattern.search(reply.text()):
            return ProbeResult(
                Outcome.FAIL,
                latency_s,
                f"body does not match {self._pattern.pattern!r}",
                detail,
            )
        return ProbeResult(Outcome.OK, latency_s, "", detail)

    async def _request(self) -> Reply:
        if self._exchange is not None:
            return await self._exchange.fetch()
        service = self._service
        return await fetch(
            self._session,
            self._url,
            method=service.method,
            headers=self._headers,
            tls_verify=service.tls_verify,
            follow_redirects=True,
        )
