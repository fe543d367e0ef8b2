"""A lean HTTP/1.1 exchange for ``http`` probes: one connection, one request, a bounded parse.

A probe needs far less than a general HTTP client: open a connection, write one request, read
a status line, a few headers and at most ``BODY_LIMIT`` bytes of body, and close. At thousands
of targets a client's generality is what the agent's CPU goes to (``docs/performance.md``).
``Exchange`` does exactly what a probe needs on an
``asyncio.Protocol``: the request bytes are built once per probe, the connection is made by
the loop (uvloop's C code when installed), and the response is parsed as it arrives.

What it keeps of a probe's contract:

- a fresh connection per probe, so a listener that stopped accepting is seen at once;
- ``Connection: close`` is sent, so the target closes first and the prober's side holds no
  TIME_WAIT; a response cut short at ``BODY_LIMIT`` is aborted instead of drained;
- aiohttp's limits (status and header lines ≤ 8190 bytes, ≤ 128 header fields, body read to
  64 KiB), and every malformed answer is a ``ProbeError`` whose message is the reason
  (``http1_parser``);
- ``https`` through the loop's TLS with a context shared by every probe with the same TLS
  settings (``probes.tls``).

It is used for ``GET``/``HEAD`` without ``follow_redirects``; redirects stay with aiohttp.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from typing import TYPE_CHECKING, Final

from sutazai_agent.probes.base import USER_AGENT, Reply, basic_auth
from sutazai_agent.probes.connect import first_connected
from sutazai_agent.probes.http1_parser import ResponseReader
from sutazai_agent.probes.tls import client_context

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from yarl import URL

DNS_TTL_S: Final = 10.0
"""How long a resolved host name is reused (aiohttp's ``ttl_dns_cache`` for probes)."""


def build_request(url: URL, method: str, headers: Mapping[str, str], user_agent: str) -> bytes:
    """The request's bytes: built once per probe, written as is on every probe."""
    host = url.raw_host or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if not url.is_default_port():
        host = f"{host}:{url.port}"
    # Keyed by lower-case name: a configured header replaces the default of the same name.
    fields = {
        "host": ("Host", host),
        "user-agent": ("User-Agent", user_agent),
        "accept": ("Accept", "*/*"),
    }
    if url.raw_user is not None:
        # Credentials in the URL are sent as Basic auth, as aiohttp does.
        fields["authorization"] = ("Authorization", basic_auth(url.user or "", url.password or ""))
    for name, value in [*headers.items(), ("Connection", "close")]:
        fields.pop(name.lower(), None)
        fields[name.lower()] = (name, value)
    lines = [f"{method} {url.raw_path_qs or '/'} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.values()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Resolver:
    """Host name → addresses, each kept ``ttl_s``; IP literals never reach the resolver."""

    def __init__(self, ttl_s: float = DNS_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}

    async def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        if _is_ip(host):
            return [(host, port)]
        now = time.monotonic()
        hit = self._cache.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses = list(dict.fromkeys((str(info[4][0]), port) for info in infos))
        if len(self._cache) > 4096:  # bounded: names come from the configuration
            self._cache.clear()
        self._cache[(host, port)] = (now + self._ttl_s, addresses)
        return addresses


RESOLVER = Resolver()
"""One cache for all probes; it holds only addresses, so it is safe across event loops."""


_Attempt = tuple[ResponseReader, "asyncio.Future[Reply]"]
"""A connected attempt: its protocol and the future of its response."""


class Exchange:
    """One probe's request to one URL; ``fetch()`` makes a fresh connection each time."""

    __slots__ = ("_head", "_host", "_literal", "_port", "_request", "_ssl")

    def __init__(
        self,
        url: URL,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        tls_verify: bool = True,
    ) -> None:
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._literal = [(self._host, self._port)] if _is_ip(self._host) else None
        self._request = build_request(url, method, headers or {}, USER_AGENT)
        self._head = method == "HEAD"
        self._ssl = client_context(tls_verify) if url.scheme == "https" else None

    async def fetch(self) -> Reply:
        """Connect, send the request, read the response; the caller applies the timeout.

        A host with several addresses is tried with staggered attempts (``first_connected``),
        so an address that drops packets costs ``ATTEMPT_DELAY_S``, not the whole timeout.
        """
        loop = asyncio.get_running_loop()
        addresses = self._literal or await RESOLVER.resolve(self._host, self._port)

        def attempt(host: str, port: int) -> Callable[[], Awaitable[_Attempt]]:
            async def connect() -> _Attempt:
                done: asyncio.Future[Reply] = loop.create_future()
                protocol = ResponseReader(self._request, self._head, done)
                try:
                    await self._connect(loop, protocol, host, port)
                except BaseException:
                    protocol.abort()
                    raise
                return protocol, done

            return connect

        protocol, done = await first_connected(
            [attempt(host, port) for host, port in addresses],
            lambda loser: loser[0].abort(),
            fatal=(ssl.SSLError,),  # the peer answered: another address would not help
        )
        try:
            return await done
        finally:
            protocol.abort()

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, protocol: ResponseReader, host: str, port: int
    ) -> None:
        if self._ssl is None:
            await loop.create_connection(lambda: protocol, host, port)
        else:
            await loop.create_connection(
                lambda: protocol, host, port, ssl=self._ssl, server_hostname=self._host
            )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
