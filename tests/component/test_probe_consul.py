"""ConsulProbe against a tiny local server speaking ``GET /v1/status/leader``."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from sutazai_agent.config import ConsulService
from sutazai_agent.core.model import Outcome
from sutazai_agent.probes.consul import ConsulProbe

from .conftest import Serve

TIMEOUT_S = 0.5


def probe_for(session: aiohttp.ClientSession, url: str) -> ConsulProbe:
    return ConsulProbe(ConsulService(name="consul", kind="consul", url=url), session, TIMEOUT_S)


async def consul(serve: Serve, status: int, body: str) -> str:
    """A Consul agent whose leader endpoint answers ``body`` (JSON text) with ``status``."""

    async def leader(_: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/status/leader", leader)
    return await serve(app)


async def test_cluster_with_a_leader_is_up(session: aiohttp.ClientSession, serve: Serve) -> None:
    url = await consul(serve, 200, '"10.0.0.1:8300"')

    result = await probe_for(session, url).probe()

    assert result.outcome is Outcome.OK
    assert result.detail == "leader 10.0.0.1:8300"


async def test_trailing_slash_in_the_url_still_reaches_the_endpoint(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    url = await consul(serve, 200, '"10.0.0.1:8300"')

    result = await probe_for(session, url + "/").probe()

    assert result.outcome is Outcome.OK


async def test_empty_leader_is_down(session: aiohttp.ClientSession, serve: Serve) -> None:
    url = await consul(serve, 200, '""')

    result = await probe_for(session, url).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "no cluster leader"


async def test_server_error_is_down(session: aiohttp.ClientSession, serve: Serve) -> None:
    url = await consul(serve, 500, '"rpc error making call: No cluster leader"')

    result = await probe_for(session, url).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "HTTP 500"


async def test_non_json_answer_is_down(session: aiohttp.ClientSession, serve: Serve) -> None:
    url = await consul(serve, 200, "<html>captive portal</html>")

    result = await probe_for(session, url).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "unexpected /v1/status/leader response"


async def test_unreachable_agent_is_down(session: aiohttp.ClientSession, closed_port: int) -> None:
    result = await probe_for(session, f"http://127.0.0.1:{closed_port}").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "connection refused"


async def test_agent_that_never_answers_times_out(
    session: aiohttp.ClientSession, silent_port: int
) -> None:
    result = await probe_for(session, f"http://127.0.0.1:{silent_port}").probe()

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.5s"
