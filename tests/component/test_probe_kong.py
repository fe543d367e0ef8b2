"""KongProbe against the strict fake Kong (admin, status listener, proxy on their own ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sutazai_agent.config import KongService
from sutazai_agent.core.model import Outcome
from sutazai_agent.probes.kong import KongProbe
from tests.fakes.kong import FakeKong

TIMEOUT_S = 0.5


@pytest.fixture
async def kong() -> AsyncIterator[FakeKong]:
    async with FakeKong(version="3.9.1") as fake:
        yield fake


def probe_for(session: aiohttp.ClientSession, kong: FakeKong, **fields: Any) -> KongProbe:
    fields = {"admin_url": kong.admin_url, "proxy_url": kong.proxy_url, **fields}
    return KongProbe(KongService(name="kong", kind="kong", **fields), session, TIMEOUT_S)


async def test_healthy_kong_is_up(session: aiohttp.ClientSession, kong: FakeKong) -> None:
    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.OK
    assert result.reason == ""
    assert result.detail == "kong 3.9.1, proxy HTTP 404, ready"
    assert ("admin", "GET", "/status") in kong.requests
    assert ("admin", "GET", "/status/ready") in kong.requests
    assert ("proxy", "GET", "/") in kong.requests


async def test_not_ready_is_degraded_with_kongs_reason(
    session: aiohttp.ClientSession, kong: FakeKong
) -> None:
    kong.set_ready(False, "no configuration available")

    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "not ready: no configuration available"


async def test_readiness_comes_from_the_status_listener_when_configured(
    session: aiohttp.ClientSession, kong: FakeKong
) -> None:
    await kong.stop_status()
    via_admin = await probe_for(session, kong).probe()
    via_status = await probe_for(session, kong, status_url=kong.status_url).probe()

    assert via_admin.outcome is Outcome.OK
    assert via_status.outcome is Outcome.DEGRADED
    assert via_status.reason == "status: connection refused"

    await kong.start_status()
    kong.requests.clear()
    recovered = await probe_for(session, kong, status_url=kong.status_url).probe()

    assert recovered.outcome is Outcome.OK
    assert ("status", "GET", "/status/ready") in kong.requests
    assert ("admin", "GET", "/status/ready") not in kong.requests


async def test_kong_without_a_readiness_endpoint_is_up(session: aiohttp.ClientSession) -> None:
    async with FakeKong(version="3.2.2", readiness_endpoint=False) as old_kong:
        result = await probe_for(session, old_kong).probe()

    assert result.outcome is Outcome.OK
    assert result.detail == "kong 3.2.2, proxy HTTP 404, no readiness endpoint"


async def test_admin_down_while_proxy_serves_is_degraded(
    session: aiohttp.ClientSession, kong: FakeKong
) -> None:
    await kong.stop_admin()

    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "admin: connection refused"


async def test_database_unreachable_is_degraded(
    session: aiohttp.ClientSession, kong: FakeKong
) -> None:
    kong.set_database_reachable(False)

    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "database unreachable"


async def test_proxy_down_is_down(session: aiohttp.ClientSession, kong: FakeKong) -> None:
    await kong.stop_proxy()

    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "proxy: connection refused"

    await kong.start_proxy()
    assert (await probe_for(session, kong).probe()).outcome is Outcome.OK


async def test_proxy_answering_5xx_is_down(session: aiohttp.ClientSession, kong: FakeKong) -> None:
    message = "An invalid response was received from the upstream server"
    kong.add_route("/", 502, {"message": message})

    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "proxy: HTTP 502"


async def test_proxy_route_answering_4xx_is_alive(
    session: aiohttp.ClientSession, kong: FakeKong
) -> None:
    kong.add_route("/", 401, {"message": "No API key found in request"})

    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.OK
    assert "proxy HTTP 401" in result.detail


async def test_proxy_that_never_answers_times_out(
    session: aiohttp.ClientSession, kong: FakeKong, silent_port: int
) -> None:
    result = await probe_for(session, kong, proxy_url=f"http://127.0.0.1:{silent_port}").probe()

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "proxy: timeout after 0.5s"
    assert result.latency_s < TIMEOUT_S + 0.25


async def test_admin_that_never_answers_is_degraded_in_time(
    session: aiohttp.ClientSession, kong: FakeKong, silent_port: int
) -> None:
    result = await probe_for(session, kong, admin_url=f"http://127.0.0.1:{silent_port}").probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "admin: timeout after 0.5s"
    assert result.latency_s < TIMEOUT_S + 0.25


async def test_everything_down_reports_the_proxy(
    session: aiohttp.ClientSession, kong: FakeKong
) -> None:
    await kong.stop()

    result = await probe_for(session, kong).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "proxy: connection refused"


class TestFakeKongContract:
    """The fake answers like Kong 3.x, so the probe is tested against realistic responses."""

    async def test_admin_status_has_kong_3_shape(
        self, session: aiohttp.ClientSession, kong: FakeKong
    ) -> None:
        async with session.get(kong.admin_url + "/status") as response:
            body = await response.json()
            server = response.headers["Server"]

        assert server == "kong/3.9.1"
        assert body["database"] == {"reachable": True}
        assert {"lua_shared_dicts", "workers_lua_vms"} <= set(body["memory"])
        assert {"connections_accepted", "connections_active", "total_requests"} <= set(
            body["server"]
        )
        assert len(body["configuration_hash"]) == 32

    async def test_admin_rejects_what_kong_rejects(
        self, session: aiohttp.ClientSession, kong: FakeKong
    ) -> None:
        async with session.post(kong.admin_url + "/status") as wrong_method:
            assert wrong_method.status == 405
            assert await wrong_method.json() == {"message": "Method not allowed"}
        async with session.get(kong.admin_url + "/status?unit=x") as bad_unit:
            assert bad_unit.status == 400
        async with session.get(kong.admin_url + "/nope") as unknown:
            assert unknown.status == 404
            assert await unknown.json() == {"message": "Not found"}

    async def test_proxy_without_routes_answers_no_route_matched(
        self, session: aiohttp.ClientSession, kong: FakeKong
    ) -> None:
        async with session.delete(kong.proxy_url + "/anything") as response:
            body = await response.json()
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            assert "X-Kong-Response-Latency" in response.headers

        assert body["message"] == "no Route matched with those values"

    async def test_readiness_switches(self, session: aiohttp.ClientSession, kong: FakeKong) -> None:
        kong.set_ready(False, "failed to connect to database")
        async with session.get(kong.status_url + "/status/ready") as response:
            assert response.status == 503
            assert await response.json() == {"message": "failed to connect to database"}
        kong.set_ready(True)
        async with session.get(kong.status_url + "/status/ready") as response:
            assert response.status == 200
            assert await response.json() == {"message": "ready"}
