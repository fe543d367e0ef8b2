"""Several agents on one Consul: the identity lock (standby, takeover) and groups, with the
daemons as processes and the fake Consul over HTTP (real clock: sessions of 10 s)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from sutazai_agent.core.rendezvous import owner
from tests.fakes.consul import FakeConsul
from tests.integration.agent_process import AgentProcess, eventually
from tests.integration.conftest import EventTap, TcpTarget, agent_config

TTL_S, INTERVAL_S = 10.0, 1.0
BOUND_S = 2 * TTL_S + 2 * INTERVAL_S


def config(consul: FakeConsul, tap: EventTap, services: list[dict[str, Any]], **extra: Any) -> dict:
    cfg = agent_config(
        consul, tap, services, interval_s=INTERVAL_S, timeout_s=0.5, ttl_s=TTL_S, resync_s=5
    )
    cfg.update(extra)
    return cfg


def registered_by(consul: FakeConsul) -> dict[str, str]:
    return {sid: s.meta.get("agent-id", "") for sid, s in consul.services.items()}


@pytest.mark.timeout(110)
async def test_a_second_agent_with_the_same_id_waits_and_takes_over(
    tmp_path: Path, tap: EventTap, tcp_target: TcpTarget
) -> None:
    services = [{"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port}]
    async with FakeConsul() as consul:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        holder = AgentProcess(config(consul, tap, services, agent_id="twin"), tmp_path / "a")
        standby = AgentProcess(config(consul, tap, services, agent_id="twin"), tmp_path / "b")
        holder.start()
        try:
            await holder.wait_ready()
            await eventually(lambda: _async(consul.passing("db") == ["db"]), 20)
            standby.start()

            async def waiting() -> bool:
                try:
                    return (await standby.status())["agent"]["role"] == "standby"
                except Exception:
                    return False

            await eventually(waiting, 20, standby.log_tail())
            assert (await standby.get("/readyz"))[0] == 503
            assert (await holder.status())["agent"]["role"] == "active"
            probes = [ln for ln in standby.logs() if ln["event"] == "service_state_changed"]
            assert probes == [], "a standby probes nothing"

            holder.signal(signal.SIGKILL)
            holder.wait(10)
            took = await eventually(
                lambda: _role_is(standby, "active"), BOUND_S + 10, standby.log_tail()
            )
            await standby.wait_ready(BOUND_S)
            assert took <= 2 * TTL_S + 5
            await eventually(lambda: _async(consul.passing("db") == ["db"]), 2 * INTERVAL_S + 5)
        finally:
            holder.kill()
            if standby.proc is not None:
                assert standby.stop() == 0, standby.log_tail()


@pytest.mark.timeout(115)
async def test_a_group_splits_services_and_survivors_take_over_a_killed_member(
    tmp_path: Path, tap: EventTap, tcp_target: TcpTarget
) -> None:
    names = [f"svc-{i}" for i in range(30)]
    services = [
        {"name": n, "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port} for n in names
    ]
    ids = ["m1", "m2", "m3"]
    async with FakeConsul() as consul:
        agents = []
        for agent_id in ids:
            (tmp_path / agent_id).mkdir()
            cfg = config(consul, tap, services, agent_id=agent_id, group="g")
            agents.append(AgentProcess(cfg, tmp_path / agent_id))
        for agent in agents:
            agent.start()
        try:

            async def split(live: list[str]) -> bool:
                by = registered_by(consul)
                want = {n: owner(n, live) for n in names}
                return by == want and sorted(consul.passing(names[0])) == [names[0]]

            await eventually(lambda: split(ids), 40, agents[0].log_tail())
            status = await agents[1].status()
            assert status["agent"]["members"] == ids
            assert {s["name"]: s["owner"] for s in status["services"]} == {
                n: owner(n, ids) for n in names
            }

            agents[2].signal(signal.SIGKILL)
            agents[2].wait(10)
            took = await eventually(lambda: split(ids[:2]), BOUND_S + 10, agents[0].log_tail())
            assert took <= BOUND_S + 2
            for agent in agents[:2]:
                assert agent.stop() == 0, agent.log_tail()
        finally:
            for agent in agents:
                agent.kill()


async def _role_is(agent: AgentProcess, role: str) -> bool:
    try:
        return bool((await agent.status())["agent"]["role"] == role)
    except Exception:
        return False


async def _async(value: bool) -> bool:
    return value
