"""RabbitmqProbe against the real broker (127.0.0.1:5672, management on 15672).

Failures of the management API are staged with a local aiohttp server standing in for it,
so the AMQP handshake stays real while the alarm check answers what the test needs.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sutazai_agent.config import RabbitmqService
from sutazai_agent.core.model import Outcome
from sutazai_agent.probes.rabbitmq import RabbitmqProbe

from .conftest import RawServer, Serve

TIMEOUT_S = 2.0
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_URL = "http://127.0.0.1:15672"

broker = pytest.mark.broker


def probe_for(session: aiohttp.ClientSession, amqp_url: str, **fields: Any) -> RabbitmqProbe:
    service = RabbitmqService(name="rabbitmq", kind="rabbitmq", amqp_url=amqp_url, **fields)
    return RabbitmqProbe(service, session, TIMEOUT_S)


async def management(serve: Serve, status: int, body: dict[str, Any]) -> tuple[str, list[str]]:
    """A stand-in management API; returns its URL and the Authorization headers it saw."""
    seen: list[str] = []

    async def alarms(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/api/health/checks/alarms", alarms)
    return await serve(app), seen


@broker
async def test_healthy_broker_is_up(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, AMQP_URL, management_url=MANAGEMENT_URL).probe()

    assert result.outcome is Outcome.OK, result.reason
    assert result.detail.startswith("RabbitMQ ")


@broker
async def test_amqp_only_without_management_url_is_up(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, AMQP_URL).probe()

    assert result.outcome is Outcome.OK, result.reason


async def test_closed_port_is_down_with_refused(
    session: aiohttp.ClientSession, closed_port: int
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port}/"

    result = await probe_for(session, url, management_url=MANAGEMENT_URL).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "amqp: connection refused"


@broker
async def test_wrong_credentials_are_down_with_authentication_reason(
    session: aiohttp.ClientSession,
) -> None:
    url = "amqp://guest:not-the-pw-42@127.0.0.1:5672/"

    result = await probe_for(session, url, management_url=MANAGEMENT_URL).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("amqp: authentication failed")
    assert "ACCESS_REFUSED" in result.reason
    assert "not-the-pw-42" not in result.reason + result.detail


@broker
async def test_management_refusing_its_own_credentials_is_degraded(
    session: aiohttp.ClientSession,
) -> None:
    management_url = "http://guest:wrong-mgmt-pw@127.0.0.1:15672"

    result = await probe_for(session, AMQP_URL, management_url=management_url).probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "management: authentication failed (HTTP 401)"
    assert "wrong-mgmt-pw" not in result.reason + result.detail


@broker
async def test_management_unreachable_is_degraded(
    session: aiohttp.ClientSession, closed_port: int
) -> None:
    management_url = f"http://127.0.0.1:{closed_port}"

    result = await probe_for(session, AMQP_URL, management_url=management_url).probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "management: connection refused"


@broker
async def test_alarms_in_effect_are_degraded(session: aiohttp.ClientSession, serve: Serve) -> None:
    body = {"status": "failed", "reason": "resource alarm(s) in effect:[disk]"}
    url, _ = await management(serve, 503, body)

    result = await probe_for(session, AMQP_URL, management_url=url).probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "alarms in effect"


@broker
async def test_management_is_called_with_the_amqp_credentials_by_default(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    url, seen = await management(serve, 200, {"status": "ok"})

    result = await probe_for(session, AMQP_URL, management_url=url).probe()

    assert result.outcome is Outcome.OK
    assert seen == ["Basic " + base64.b64encode(b"guest:guest").decode()]


@broker
async def test_management_url_credentials_take_precedence(
    session: aiohttp.ClientSession, serve: Serve
) -> None:
    url, seen = await management(serve, 200, {"status": "ok"})
    url = url.replace("http://", "http://monitor:m%40n-pw@")

    result = await probe_for(session, AMQP_URL, management_url=url).probe()

    assert result.outcome is Outcome.OK
    assert seen == ["Basic " + base64.b64encode(b"monitor:m@n-pw").decode()]


async def test_broker_that_never_answers_times_out(
    session: aiohttp.ClientSession, silent_port: int
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{silent_port}/"

    result = await probe_for(session, url).probe()

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "amqp: timeout after 2s"
    assert TIMEOUT_S <= result.latency_s < TIMEOUT_S + 0.25


async def test_non_amqp_server_is_down_not_a_crash(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    result = await probe_for(session, f"amqp://guest:guest@127.0.0.1:{port}/").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("amqp: ")
