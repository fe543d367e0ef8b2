"""What every probe shares: the probing HTTP session, bounded reads, short failure reasons.

Probes turn every failure into a ``ProbeResult`` whose reason an operator can read at a
glance ("connection refused", "timeout after 5s", "TLS: certificate verify failed",
"HTTP 500"). Reasons never carry a URL's password or a request header.
"""

from __future__ import annotations

import base64
import codecs
import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from sutazai_agent import __version__
from sutazai_agent.core.model import Outcome, ProbeResult, os_reason
from sutazai_agent.core.secrets import scrub_urls

if TYPE_CHECKING:
    from collections.abc import Mapping

BODY_LIMIT = 64 * 1024
"""Response bodies are read up to this many bytes, then the connection is dropped."""

HEADER_LINE_LIMIT = 8190
"""Longest status line or header field accepted from a target (aiohttp's default)."""

USER_AGENT = f"sutazai-agent/{__version__}"


def make_session(limit: int = 100) -> aiohttp.ClientSession:
    """The one HTTP session all probes share, configured for probing rather than browsing.

    - a fresh connection per probe (``force_close``): a probe must see a target that stopped
      accepting connections, and must not report a stale keep-alive socket as a failure;
    - no cookies (``DummyCookieJar``), no proxy from the environment, no automatic errors for
      4xx/5xx (probes classify the status themselves);
    - header lines bounded, at most ``limit`` connections in flight;
    - no session-wide timeout: each probe applies its own, per step.
    """
    connector = aiohttp.TCPConnector(limit=limit, force_close=True, ttl_dns_cache=10)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
        trust_env=False,
        max_line_size=HEADER_LINE_LIMIT,
        max_field_size=HEADER_LINE_LIMIT,
        read_bufsize=BODY_LIMIT,
    )


class ProbeError(Exception):
    """A failure whose message is already the reason an operator reads (no secrets in it)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What a probe keeps of an HTTP response: the status, at most 64 KiB of body, a header."""

    status: int
    body: bytes
    server: str
    charset: str

    def text(self) -> str:
        return self.body.decode(self.charset, errors="replace")

    def json(self) -> Any:
        return json.loads(self.body.decode(self.charset, errors="replace"))


async def read_bounded(response: aiohttp.ClientResponse, limit: int = BODY_LIMIT) -> bytes:
    """Read at most ``limit`` bytes of the body, then stop (the rest is never read)."""
    buffer = bytearray()
    while len(buffer) < limit:
        chunk = await response.content.read(limit - len(buffer))
        if not chunk:
            break
        buffer += chunk
    return bytes(buffer)


async def fetch(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    tls_verify: bool = True,
    follow_redirects: bool = False,
) -> Reply:
    """One HTTP request; the body is read up to ``BODY_LIMIT`` and the connection released.

    Raises whatever aiohttp raises; the caller applies the timeout and describes the error.
    """
    async with session.request(
        method,
        url,
        headers=headers,
        ssl=tls_verify,
        allow_redirects=follow_redirects,
    ) as response:
        body = b"" if method == "HEAD" else await read_bounded(response)
        if not response.content.at_eof():
            # Unread data is left on the wire: drop the connection instead of draining it.
            response.close()
        return Reply(
            status=response.status,
            body=body,
            server=response.headers.get("Server", ""),
            charset=codec(response.charset),
        )


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP Basic authentication (UTF-8, RFC 7617)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def codec(charset: str | None) -> str:
    """The response's declared charset if Python knows it, else UTF-8."""
    if charset:
        try:
            return codecs.lookup(charset).name
        except LookupError:
            pass
    return "utf-8"


def seconds(value: float) -> str:
    """``5.0`` → ``5s``, ``0.25`` → ``0.25s``."""
    return f"{value:g}s"


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = f" ({exc.verify_message})" if exc.verify_message else ""
        return f"TLS: certificate verify failed{why}"
    if isinstance(exc, ssl.SSLError):
        why = getattr(exc, "reason", None) or exc.strerror or str(exc)
        return f"TLS: {why.lower().replace('_', ' ')}"
    return f"TLS: {scrub_urls(str(exc))}"


def _client_reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _tls_reason(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return _tls_reason(exc.os_error)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS: cannot resolve {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return os_reason(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection without a response"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, aiohttp.ClientResponseError):
        # raise_for_status is off, so this is a response aiohttp could not parse.
        return f"invalid HTTP response: {scrub_urls(exc.message)}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body broken off"
    if isinstance(exc, OSError):
        return os_reason(exc)
    return f"{type(exc).__name__}: {scrub_urls(str(exc))}".rstrip(": ")


def error_reason(exc: BaseException, timeout_s: float) -> str:
    """A short, secret-free description of why a request failed."""
    if isinstance(exc, TimeoutError):
        return f"timeout after {seconds(timeout_s)}"
    if isinstance(exc, ProbeError):
        return str(exc)
    if isinstance(exc, aiohttp.ClientError):
        return _client_reason(exc)
    if isinstance(exc, ssl.SSLError):
        return _tls_reason(exc)
    if isinstance(exc, socket.gaierror):
        return f"DNS: {(exc.strerror or str(exc)).lower()}"
    if isinstance(exc, OSError):
        return os_reason(exc)
    text = scrub_urls(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def outcome_for(exc: BaseException, failed: Outcome = Outcome.FAIL) -> Outcome:
    """TIMEOUT for a timeout, otherwise ``failed``."""
    return Outcome.TIMEOUT if isinstance(exc, TimeoutError) else failed


def clock() -> float:
    """Where a probe's latency starts: ``time.perf_counter()``.

    Not ``loop.time()``: uvloop's clock has millisecond resolution and is read once per loop
    iteration, so a loopback probe would measure 0.
    """
    return time.perf_counter()


def elapsed_since(start: float) -> float:
    """Seconds since ``start``, a ``clock()`` reading."""
    return time.perf_counter() - start


def failed_after(exc: BaseException, start: float, timeout_s: float) -> float:
    """A failed probe's latency. A timeout took ``timeout_s`` at least: the loop's timer runs
    on its own, coarser clock and may fire a hair before ``perf_counter`` says it is time."""
    elapsed = elapsed_since(start)
    return max(elapsed, timeout_s) if isinstance(exc, TimeoutError) else elapsed


def failure(exc: BaseException, start: float, timeout_s: float, step: str = "") -> ProbeResult:
    """The result of a probe that failed with ``exc``, optionally naming the failed step."""
    reason = error_reason(exc, timeout_s)
    return ProbeResult(
        outcome_for(exc),
        failed_after(exc, start, timeout_s),
        f"{step}: {reason}" if step else reason,
    )
