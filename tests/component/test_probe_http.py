"""HttpProbe against real local servers: what an operator sees for each kind of failure."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sutazai_agent.config import HttpService
from sutazai_agent.core.model import Outcome
from sutazai_agent.probes import build_probe, run_probe
from sutazai_agent.probes.http import HttpProbe

from .conftest import RawServer, Serve

TIMEOUT_S = 0.5
MIB = 1024 * 1024


def http_service(url: str, **fields: Any) -> HttpService:
    return HttpService(name="web", kind="http", url=url, **fields)


def probe_for(session: aiohttp.ClientSession, url: str, **fields: Any) -> HttpProbe:
    return HttpProbe(http_service(url, **fields), session, TIMEOUT_S)


def app_with(path: str, handler: Any) -> web.Application:
    app = web.Application()
    app.router.add_route("*", path, handler)
    return app


async def ok_handler(_: web.Request) -> web.Response:
    return web.Response(text='{"status": "healthy"}', content_type="application/json")


async def test_healthy_endpoint_is_up(session: aiohttp.ClientSession, serve: Serve) -> None:
    url = await serve(app_with("/health", ok_handler))

    result = await probe_for(session, url + "/health").probe()

    assert result.outcome is Outcome.OK
    assert result.detail == "HTTP 200"
    assert 0 < result.latency_s < TIMEOUT_S


async def test_server_error_is_down_with_status_in_reason(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500, text="database is gone")

    url = await serve(app_with("/health", broken))

    result = await probe_for(session, url + "/health").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "HTTP 500"


async def test_refused_connection_is_down(session: aiohttp.ClientSession, closed_port: int) -> None:
    result = await probe_for(session, f"http://127.0.0.1:{closed_port}/health").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "connection refused"


async def test_server_that_never_answers_times_out_within_the_timeout(
    session: aiohttp.ClientSession, silent_port: int
) -> None:
    result = await probe_for(session, f"http://127.0.0.1:{silent_port}/").probe()

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.5s"
    assert TIMEOUT_S <= result.latency_s < TIMEOUT_S + 0.25


async def test_body_that_stalls_halfway_times_out(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.sleep(30)
        return response

    url = await serve(app_with("/", stalls))

    result = await probe_for(session, url + "/").probe()

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.5s"


async def test_ten_megabyte_body_is_not_read_into_memory(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    chunk = b"A" * (64 * 1024)
    sent = 0

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Length": str(160 * len(chunk))})
        await response.prepare(request)
        try:
            for _ in range(160):  # 10 MiB, written chunk by chunk from one buffer
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            pass
        return response

    url = await serve(app_with("/", huge))
    probe = probe_for(session, url + "/", body_regex="^A+")

    tracemalloc.start()
    try:
        result = await probe.probe()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.outcome is Outcome.OK
    assert peak < 2 * MIB, f"probe held {peak / MIB:.1f} MiB for a 10 MiB body"
    assert sent < 10 * MIB, "the probe read the whole body instead of stopping at 64 KiB"


async def test_garbage_bytes_are_a_failed_probe_not_a_crash(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"\x00\xff\x13garbage that is not HTTP at all\r\n\r\n")

    result = await run_probe(probe_for(session, f"http://127.0.0.1:{port}/"), TIMEOUT_S)

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("invalid HTTP response")


async def test_oversized_header_is_rejected(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")

    result = await probe_for(session, f"http://127.0.0.1:{port}/").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("invalid HTTP response")


async def test_connection_closed_without_response_is_down(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"")

    result = await probe_for(session, f"http://127.0.0.1:{port}/").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "server closed the connection without a response"


async def test_untrusted_certificate_is_down_unless_verification_is_off(
    session: aiohttp.ClientSession, serve_tls: Serve
) -> None:
    url = await serve_tls(app_with("/health", ok_handler))

    verified = await probe_for(session, url + "/health").probe()
    unverified = await probe_for(session, url + "/health", tls_verify=False).probe()

    assert verified.outcome is Outcome.FAIL
    assert verified.reason.startswith("TLS: certificate verify failed")
    assert unverified.outcome is Outcome.OK


async def test_redirect_is_not_followed_unless_asked(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/gone")

    async def gone(_: web.Request) -> web.Response:
        return web.Response(status=404)

    app = app_with("/old", moved)
    app.router.add_get("/gone", gone)
    url = await serve(app)

    plain = await probe_for(session, url + "/old").probe()
    strict = await probe_for(session, url + "/old", expect_status=[200]).probe()
    followed = await probe_for(session, url + "/old", follow_redirects=True).probe()

    assert (plain.outcome, plain.detail) == (Outcome.OK, "HTTP 302")
    assert (strict.outcome, strict.reason) == (Outcome.FAIL, "HTTP 302 (unexpected status)")
    assert (followed.outcome, followed.reason) == (Outcome.FAIL, "HTTP 404")


async def test_expect_status_replaces_the_default_range(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    async def teapot(_: web.Request) -> web.Response:
        return web.Response(status=418)

    url = await serve(app_with("/", teapot))

    expected = await probe_for(session, url + "/", expect_status=[418]).probe()
    default = await probe_for(session, url + "/").probe()

    assert expected.outcome is Outcome.OK
    assert (default.outcome, default.reason) == (Outcome.FAIL, "HTTP 418")


async def test_body_regex_must_match(session: aiohttp.ClientSession, serve: Serve) -> None:
    url = await serve(app_with("/health", ok_handler))

    matching = await probe_for(session, url + "/health", body_regex='"status": "healthy"').probe()
    failing = await probe_for(session, url + "/health", body_regex='"status": "ok"').probe()

    assert matching.outcome is Outcome.OK
    assert failing.outcome is Outcome.FAIL
    assert failing.reason == 'body does not match \'"status": "ok"\''


async def test_method_and_headers_are_sent_and_secrets_stay_out_of_reasons(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def guarded(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != "Bearer s3cret-token":
            return web.Response(status=401)
        return web.Response(status=204)

    url = await serve(app_with("/private", guarded))

    allowed = await probe_for(
        session, url + "/private", method="HEAD", headers={"Authorization": "Bearer s3cret-token"}
    ).probe()
    denied = await probe_for(
        session, url + "/private", headers={"Authorization": "Bearer wrong-s3cret"}
    ).probe()

    assert allowed.outcome is Outcome.OK
    assert seen[0] == ("HEAD", "Bearer s3cret-token")
    assert (denied.outcome, denied.reason) == (Outcome.FAIL, "HTTP 401")
    assert "s3cret" not in denied.reason + denied.detail


async def test_url_password_never_appears_in_the_reason(
    session: aiohttp.ClientSession, closed_port: int
) -> None:
    url = f"http://admin:hunter2-pw@127.0.0.1:{closed_port}/"

    result = await run_probe(probe_for(session, url), TIMEOUT_S)

    assert result.outcome is Outcome.FAIL
    assert "hunter2" not in result.reason + result.detail


@pytest.mark.usefixtures("no_proxy_env")
async def test_proxy_environment_variables_are_ignored(serve: Serve) -> None:
    from sutazai_agent.probes import make_session

    url = await serve(app_with("/health", ok_handler))
    async with make_session(limit=2) as session:
        result = await build_probe(http_service(url + "/health"), session, TIMEOUT_S).probe()

    assert result.outcome is Outcome.OK


async def test_unknown_host_names_the_dns_failure(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, "http://no-such-host.invalid/").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("DNS:")


async def test_https_to_a_plain_http_port_is_a_tls_failure(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    url = await serve(app_with("/health", ok_handler))

    result = await probe_for(session, url.replace("http://", "https://") + "/health").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "TLS: wrong version number"
