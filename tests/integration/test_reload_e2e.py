"""Live configuration with the daemon as a process: the file is rewritten, then SIGHUP or
``POST /-/reload`` applies the difference; an invalid file changes nothing."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sutazai_agent.core.rendezvous import owner
from tests.fakes.consul import FakeConsul
from tests.integration.agent_process import AgentProcess, eventually
from tests.integration.conftest import EventTap, HttpTarget, TcpTarget, agent_config

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


def rewrite(agent: AgentProcess, **changes: Any) -> None:
    agent.config_path.write_text(yaml.safe_dump({**agent.config, **changes}))


async def post_reload(agent: AgentProcess) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(agent.base + "/-/reload", timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        body: dict[str, Any] = json.loads(await resp.text())
        return resp.status, body


def series_of(metrics: str, service: str) -> list[str]:
    return [line for line in metrics.splitlines() if f'service="{service}"' in line]


def reload_gauge(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("sutazai_agent_config_last_reload_successful "):
            return float(line.split()[1])
    raise AssertionError("no sutazai_agent_config_last_reload_successful")


def events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    return [line for line in agent.logs() if line.get("event") == name]


@pytest.mark.timeout(120)
async def test_sighup_adds_removes_and_keeps_services(
    tmp_path: Path,
    consul: FakeConsul,
    tap: EventTap,
    http_target: HttpTarget,
    tcp_target: TcpTarget,
) -> None:
    keep = {"name": "keep", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port}
    gone = {"name": "gone", "kind": "http", "url": http_target.url}
    fresh = {"name": "fresh", "kind": "http", "url": http_target.url, "tags": ["new"]}
    edited = {"name": "edited", "kind": "http", "url": http_target.url, "tags": ["v1"]}
    agent = AgentProcess(agent_config(consul, tap, [keep, gone, edited], ttl_s=3.0), tmp_path)
    agent.start()
    try:
        await agent.wait_ready()

        async def registered(*names: str) -> bool:
            return all(consul.passing(name) == [name] for name in names)

        await eventually(lambda: registered("keep", "gone", "edited"), 10, agent.log_tail())
        await eventually(lambda: _async(len(tap.received) >= 3), 10, "startup events")
        keep_before = await agent.service("keep")
        gone_probes = series_of(await agent.metrics(), "gone")
        assert gone_probes

        rewrite(agent, services=[keep, fresh, {**edited, "tags": ["v2"]}])
        agent.signal(signal.SIGHUP)

        async def applied() -> bool:
            names = {s["name"] for s in (await agent.status())["services"]}
            return names == {"keep", "fresh", "edited"}

        await eventually(applied, 10, agent.log_tail())
        # The new one is probed, registered and announced; the removed one is deregistered.
        await eventually(lambda: registered("fresh"), 10, agent.log_tail())
        assert consul.services["fresh"].tags == ["new"]
        assert "gone" not in consul.services
        # The changed one is re-registered with its new tags, still up, with no event.
        await eventually(lambda: _async(consul.services["edited"].tags == ["v2"]), 10)
        assert consul.passing("edited") == ["edited"]
        assert (await agent.service("edited"))["state"] == "up"
        assert tap.transitions("edited") == [("unknown", "up")]
        await eventually(lambda: _async(tap.transitions("fresh") == [("unknown", "up")]), 10)
        metrics = await agent.metrics()
        assert series_of(metrics, "gone") == []
        assert 'sutazai_agent_service_up{service="fresh"} 1.0' in metrics
        assert 'sutazai_agent_service_up{service="keep"} 1.0' in metrics

        # The unchanged one kept its state and emitted nothing.
        keep_after = await agent.service("keep")
        assert keep_after["state"] == "up"
        assert keep_after["since"] == keep_before["since"]
        assert tap.transitions("keep") == [("unknown", "up")]
        assert agent.proc is not None
        assert agent.proc.poll() is None
        (line,) = events(agent, "config_reloaded")
        assert (line["trigger"], line["added"], line["removed"], line["changed"]) == (
            "SIGHUP", 1, 1, 1,
        )  # fmt: skip
        assert line["added_names"] == ["fresh"]
        assert line["removed_names"] == ["gone"]
        assert reload_gauge(metrics) == 1
    finally:
        assert agent.stop() == 0


@pytest.mark.timeout(120)
async def test_invalid_file_changes_nothing_and_the_endpoint_reports_it(
    tmp_path: Path, consul: FakeConsul, tap: EventTap, tcp_target: TcpTarget
) -> None:
    keep = {"name": "keep", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port}
    agent = AgentProcess(agent_config(consul, tap, [keep]), tmp_path)
    agent.start()
    try:
        await agent.wait_ready()
        rewrite(agent, services=[{**keep, "port": 70000}, {**keep, "name": "other"}])
        agent.signal(signal.SIGHUP)
        await eventually(
            lambda: _async(bool(events(agent, "config_reload_failed"))), 10, agent.log_tail()
        )
        (failed,) = events(agent, "config_reload_failed")
        assert "services[0].port" in failed["reason"]
        assert failed["level"] == "error"
        assert agent.proc is not None
        assert agent.proc.poll() is None
        assert reload_gauge(await agent.metrics()) == 0
        assert [s["name"] for s in (await agent.status())["services"]] == ["keep"]

        status, body = await post_reload(agent)
        assert status == 400
        assert "services[0].port" in body["error"]
        assert (await agent.get("/-/reload"))[0] == 405

        # Fixed, with a key that needs a restart: the rest is applied, that one reported.
        rewrite(agent, services=[keep, {**keep, "name": "other"}], agent_id="renamed")
        status, body = await post_reload(agent)
        assert status == 200, body
        assert body["added"] == ["other"]
        assert body["restart_required"] == ["agent_id"]
        assert reload_gauge(await agent.metrics()) == 1
        assert (await agent.status())["agent"]["id"] == "e2e"  # kept until the restart
        restart = events(agent, "config_restart_required")
        assert restart
        assert restart[0]["keys"] == ["agent_id"]
    finally:
        assert agent.stop() == 0


async def _async(value: bool) -> bool:
    return value


@pytest.mark.timeout(115)
async def test_a_reload_in_a_group_recomputes_who_owns_what(
    tmp_path: Path, tap: EventTap, tcp_target: TcpTarget
) -> None:
    def service(name: str) -> dict[str, Any]:
        return {"name": name, "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port}

    before = [f"old-{i}" for i in range(6)]
    after = before[2:] + [f"new-{i}" for i in range(8)]
    ids = ["m1", "m2"]
    async with FakeConsul() as consul:
        agents = []
        for agent_id in ids:
            (tmp_path / agent_id).mkdir()
            cfg = agent_config(consul, tap, [service(n) for n in before], ttl_s=10.0)
            cfg.update(agent_id=agent_id, group="g")
            agents.append(AgentProcess(cfg, tmp_path / agent_id))
        for agent in agents:
            agent.start()
        try:

            async def split(names: list[str]) -> bool:
                by = {sid: s.meta.get("agent-id", "") for sid, s in consul.services.items()}
                return by == {n: owner(n, ids) for n in names}

            await eventually(lambda: split(before), 40, agents[0].log_tail())
            for agent in agents:
                rewrite(agent, services=[service(n) for n in after])
                agent.signal(signal.SIGHUP)
            await eventually(lambda: split(after), 30, agents[0].log_tail())
            for agent, agent_id in zip(agents, ids, strict=True):
                status = await agent.status()
                assert {s["name"]: s["owner"] for s in status["services"]} == {
                    n: owner(n, ids) for n in after
                }
                owned = sum(owner(n, ids) == agent_id for n in after)
                metrics = await agent.metrics()
                assert f"sutazai_agent_owned_services {float(owned)}" in metrics
                assert not events(agent, "consul_registration_conflict")
            for agent in agents:
                assert agent.stop() == 0, agent.log_tail()
        finally:
            for agent in agents:
                agent.kill()
