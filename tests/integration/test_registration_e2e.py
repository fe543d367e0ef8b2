"""Consul tells the truth while the daemon runs as a process: registration follows health,
drift is repaired, a dead agent's entries expire, foreign entries are never touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.consul import FakeConsul
from tests.integration.agent_process import AgentProcess, eventually
from tests.integration.conftest import EventTap, HttpTarget, TcpTarget, agent_config

pytestmark = [pytest.mark.e2e, pytest.mark.broker]
TTL_S, RESYNC_S = 2.0, 2.0


async def consul_put(consul: FakeConsul, path: str, body: dict[str, Any] | None = None) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.put(consul.url + path, data=json.dumps(body) if body else None) as resp,
    ):
        return resp.status


def passing(consul: FakeConsul, name: str) -> list[str]:
    return consul.passing(name)


@pytest.mark.timeout(120)
async def test_registration_follows_health_and_drift_is_repaired(
    tmp_path: Path,
    consul: FakeConsul,
    tap: EventTap,
    http_target: HttpTarget,
    tcp_target: TcpTarget,
) -> None:
    services = [
        {"name": "web", "kind": "http", "url": http_target.url, "tags": ["api"],
         "meta": {"team": "core"}},
        {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port},
    ]  # fmt: skip
    # Someone else's instance of the same service name: never ours to touch.
    foreign = {"ID": "web-foreign", "Name": "web", "Port": 1234, "Meta": {"owner": "ops"}}
    assert await consul_put(consul, "/v1/agent/service/register", foreign) == 200
    agent = AgentProcess(
        agent_config(consul, tap, services, ttl_s=TTL_S, resync_s=RESYNC_S), tmp_path
    )
    agent.start()
    try:
        await agent.wait_ready()

        async def both_passing() -> bool:
            # The foreign instance has no check, so Consul lists it as passing too.
            web = set(passing(consul, "web"))
            return web == {"web-foreign", "web"} and passing(consul, "db") == ["db"]

        await eventually(both_passing, 10, agent.log_tail())
        registered = consul.services["web"]
        assert registered.meta == {
            "managed-by": "sutazai-agent",
            "agent-id": "e2e",
            "kind": "http",
            "team": "core",
        }
        assert registered.tags == ["api"]
        assert registered.port == http_target.port
        assert (await agent.service("web"))["registered"] is True

        # Heartbeats keep it passing across several TTLs.
        writes_before = consul.writes()
        await eventually(lambda: _later(consul, writes_before + 6), 3 * TTL_S + 5)
        assert "web" in passing(consul, "web")

        # Down → deregistered; the foreign instance stays.
        await http_target.stop()

        async def web_gone() -> bool:
            return consul.service("web") is None

        await eventually(web_gone, 10, agent.log_tail())
        assert consul.service("web-foreign") is not None
        await http_target.start()
        await eventually(lambda: _is_passing(consul, "web"), 10, agent.log_tail())

        # Manual deregistration of a healthy service → restored within a resync.
        assert await consul_put(consul, "/v1/agent/service/deregister/db") == 200
        await eventually(lambda: _is_passing(consul, "db"), RESYNC_S + 5, agent.log_tail())

        # Consul restarted without its data → everything back within one resync.
        consul.restart()
        await eventually(lambda: _all_back(consul), RESYNC_S + 5, agent.log_tail())
        assert consul.service("web-foreign") is None  # wiped by the restart, not by us

        # Consul down for a while → no crash, /readyz stays 200, converges after return.
        await consul.stop()
        await http_target.stop()
        await eventually(lambda: _state_is(agent, "web", "down"), 10, agent.log_tail())
        status = await agent.status()
        assert status["consul"]["reachable"] is False
        assert (await agent.get("/readyz"))[0] == 200
        await consul.start()
        await eventually(lambda: _converged_without_web(consul), RESYNC_S + 10, agent.log_tail())
    finally:
        assert agent.stop() == 0, agent.log_tail()
    unreachable = [line for line in agent.logs() if line["event"] == "consul_unreachable"]
    assert len(unreachable) == 1, "one line per outage, not per attempt"


async def _later(consul: FakeConsul, writes: int) -> bool:
    return consul.writes() >= writes


async def _is_passing(consul: FakeConsul, name: str) -> bool:
    return name in consul.passing(name)


async def _all_back(consul: FakeConsul) -> bool:
    return "web" in consul.passing("web") and "db" in consul.passing("db")


async def _converged_without_web(consul: FakeConsul) -> bool:
    return consul.service("web") is None and consul.passing("db") == ["db"]


async def _state_is(agent: AgentProcess, name: str, state: str) -> bool:
    return bool((await agent.service(name))["state"] == state)


@pytest.mark.timeout(120)
async def test_a_killed_agent_leaves_ttl_to_expire_and_a_restart_cleans_up(
    tmp_path: Path, consul: FakeConsul, tap: EventTap, tcp_target: TcpTarget
) -> None:
    services = [
        {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port},
        {"name": "cache", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port},
    ]
    agent = AgentProcess(
        agent_config(consul, tap, services, ttl_s=TTL_S, resync_s=RESYNC_S), tmp_path
    )
    agent.start()
    try:
        await agent.wait_ready()
        await eventually(lambda: _is_passing(consul, "cache"), 10, agent.log_tail())
    finally:
        agent.kill()  # SIGKILL: no goodbye, no deregistration

    async def critical() -> bool:
        check = consul.check("sutazai:cache")
        return check is not None and check.status == "critical"

    waited = await eventually(critical, TTL_S + 5)
    assert consul.passing("cache") == []  # out of ?passing, so out of DNS
    assert waited <= TTL_S + 5

    # Restart with "cache" no longer configured: it is deregistered, "db" is healthy again.
    restarted = AgentProcess(
        agent_config(consul, tap, services[:1], ttl_s=TTL_S, resync_s=RESYNC_S), tmp_path
    )
    restarted.start()
    try:
        await restarted.wait_ready()

        async def cleaned() -> bool:
            return consul.service("cache") is None and consul.passing("db") == ["db"]

        await eventually(cleaned, RESYNC_S + 10, restarted.log_tail())
    finally:
        assert restarted.stop() == 0, restarted.log_tail()


@pytest.mark.timeout(60)
async def test_a_wrong_token_is_reported_once_not_flooded(
    tmp_path: Path, tap: EventTap, tcp_target: TcpTarget
) -> None:
    services = [{"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port}]
    async with FakeConsul(acl_token="right-token") as consul:
        cfg = agent_config(consul, tap, services, ttl_s=TTL_S, resync_s=RESYNC_S)
        cfg["consul"]["token"] = "wrong-token"
        agent = AgentProcess(cfg, tmp_path)
        agent.start()
        try:
            await agent.wait_ready()
            await eventually(lambda: _requests_at_least(consul, 5), 20, agent.log_tail())
            status = await agent.status()
        finally:
            assert agent.stop() == 0
    denied = [line for line in agent.logs() if line["event"] == "consul_permission_denied"]
    assert len(denied) == 1
    assert consul.service("db") is None
    assert status["consul"]["last_error"]
    assert "wrong-token" not in agent.log_text()


async def _requests_at_least(consul: FakeConsul, count: int) -> bool:
    return sum(consul.requests.values()) >= count
