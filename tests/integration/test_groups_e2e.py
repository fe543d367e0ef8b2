"""Several agents on one Consul: the identity lock (standby, takeover) and groups, with the
daemons as processes and the fake Consul over HTTP (real clock: sessions of 10 s)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
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


def tcp_services(target: TcpTarget, count: int) -> tuple[list[str], list[dict[str, Any]]]:
    names = [f"svc-{i}" for i in range(count)]
    return names, [
        {"name": n, "kind": "tcp", "host": "127.0.0.1", "port": target.port} for n in names
    ]


@asynccontextmanager
async def group(
    consul: FakeConsul,
    tap: EventTap,
    services: list[dict[str, Any]],
    ids: list[str],
    tmp_path: Path,
    *,
    start: int | None = None,
) -> AsyncIterator[list[AgentProcess]]:
    """Members of group ``g`` (each with its own ``state_dir``), the first ``start`` (all by
    default) started; every one is killed on the way out."""
    agents = []
    for agent_id in ids:
        (tmp_path / agent_id).mkdir()
        cfg = config(consul, tap, services, agent_id=agent_id, group="g")
        agents.append(AgentProcess(cfg, tmp_path / agent_id))
    for agent in agents[:start]:
        agent.start()
    try:
        yield agents
    finally:
        for agent in agents:
            agent.kill()


def exported(metrics: str) -> set[str]:
    """The services with a ``service_up`` series in an exposition."""
    prefix = 'sutazai_agent_service_up{service="'
    return {
        ln[len(prefix) :].split('"', 1)[0] for ln in metrics.splitlines() if ln.startswith(prefix)
    }


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
            assert (await standby.status())["consul"]["reachable"] is True
            assert exported(await standby.metrics()) == set(), "the holder exports db, once"
            assert exported(await holder.metrics()) == {"db"}
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
    names, services = tcp_services(tcp_target, 30)
    ids = ["m1", "m2", "m3"]
    async with FakeConsul() as consul, group(consul, tap, services, ids, tmp_path) as agents:

        async def split(live: list[str]) -> bool:
            by = registered_by(consul)
            want = {n: owner(n, live) for n in names}
            return by == want and sorted(consul.passing(names[0])) == [names[0]]

        await eventually(lambda: split(ids), 40, agents[0].log_tail())
        status = await agents[1].status()
        assert status["agent"]["members"] == ids
        for agent_id, agent in zip(ids, agents, strict=True):
            mine = {n for n in names if owner(n, ids) == agent_id}
            assert exported(await agent.metrics()) == mine, "each service exported once"
        assert {s["name"]: s["owner"] for s in status["services"]} == {
            n: owner(n, ids) for n in names
        }

        agents[2].signal(signal.SIGKILL)
        agents[2].wait(10)
        took = await eventually(lambda: split(ids[:2]), BOUND_S + 10, agents[0].log_tail())
        assert took <= BOUND_S + 2
        for agent in agents[:2]:
            assert agent.stop() == 0, agent.log_tail()


@pytest.mark.timeout(115)
async def test_a_takeover_announces_nothing_for_services_that_stay_healthy(
    tmp_path: Path, tap: EventTap, tcp_target: TcpTarget
) -> None:
    """A handover is not a health change: after a member is killed, its healthy services
    are taken over with no ``.down`` and no second ``.up`` at a consumer."""
    names, services = tcp_services(tcp_target, 12)
    ids = ["m1", "m2", "m3"]
    async with FakeConsul() as consul, group(consul, tap, services, ids, tmp_path) as agents:

        async def settled(live: list[str]) -> bool:
            if registered_by(consul) != {n: owner(n, live) for n in names}:
                return False
            if sorted(sid for n in names for sid in consul.passing(n)) != sorted(names):
                return False
            for agent in agents[: len(live)]:
                status = await agent.status()
                if status["outbox"]["pending"]:
                    return False
                for s in status["services"]:
                    if s["owner"] == agent.config["agent_id"] and s["state"] != "up":
                        return False
            return all(("unknown", "up") in tap.transitions(n) for n in names)

        await eventually(lambda: settled(ids), 40, agents[0].log_tail())
        before = len(tap.received)
        taken = [n for n in names if owner(n, ids) == "m3"]
        assert taken, "m3 owns some of the services"

        agents[2].signal(signal.SIGKILL)
        agents[2].wait(10)
        await eventually(lambda: settled(ids[:2]), BOUND_S + 10, agents[0].log_tail())
        after = [(key, e["data"]["agent_id"]) for key, e in tap.received[before:]]
        assert after == [], f"a handover announced {after}"
        downs = [key for key, _ in tap.received if key.endswith(".down")]
        assert downs == []
        for agent in agents[:2]:
            assert agent.stop() == 0, agent.log_tail()


@pytest.mark.timeout(115)
async def test_a_fourth_member_takes_only_its_share_and_never_a_foreign_registration(
    tmp_path: Path, tap: EventTap, tcp_target: TcpTarget
) -> None:
    names, services = tcp_services(tcp_target, 30)
    foreign = {"ID": "svc-7", "Name": "svc-7", "Port": 9999, "Meta": {"owner": "platform"}}
    ids = ["m1", "m2", "m3", "m4"]
    async with FakeConsul() as consul:
        async with aiohttp.ClientSession() as http:
            resp = await http.put(f"{consul.url}/v1/agent/service/register", json=foreign)
            assert resp.status == 200
        mine = [n for n in names if n != "svc-7"]
        async with group(consul, tap, services, ids, tmp_path, start=3) as agents:

            async def split(live: list[str]) -> bool:
                by = registered_by(consul)
                if by != {**{n: owner(n, live) for n in mine}, "svc-7": ""}:
                    return False
                passing = sorted(sid for n in mine for sid in consul.passing(n))
                if passing != sorted(mine):
                    return False
                for agent in agents[: len(live)]:
                    if (await agent.status())["outbox"]["pending"]:
                        return False
                return True

            await eventually(lambda: split(ids[:3]), 40, agents[0].log_tail())
            before, events = registered_by(consul), len(tap.received)
            agents[3].start()
            await eventually(lambda: split(ids), 40, agents[3].log_tail())
            after = registered_by(consul)
            moved = sorted(n for n in mine if before[n] != after[n])
            assert moved == sorted(n for n in mine if owner(n, ids) == "m4")
            assert len(moved) <= -(-len(names) // len(ids)) + 2
            assert sorted(consul.services) == sorted(names), "each service exactly once"
            kept = consul.services["svc-7"]
            assert (kept.port, kept.meta) == (9999, {"owner": "platform"}), "never touched"
            # svc-7 is not in Consul as ours: its new owner has nothing to start from.
            repeated = [key for key, e in tap.received[events:] if e["subject"] != "svc-7"]
            assert repeated == [], "a join is not a health change"
            for agent in agents:
                assert agent.stop() == 0, agent.log_tail()


@pytest.mark.timeout(60)
async def test_a_group_member_announces_nothing_while_consul_is_unreachable_at_start(
    tmp_path: Path, tap: EventTap, tcp_target: TcpTarget
) -> None:
    _, services = tcp_services(tcp_target, 4)
    async with FakeConsul() as consul:
        await consul.stop()  # same port when started again
        member = AgentProcess(config(consul, tap, services, agent_id="m1", group="g"), tmp_path)
        member.start()
        try:

            async def scheduled_twice() -> bool:
                try:
                    return bool((await member.status())["scheduler"]["dispatched"] >= 8)
                except aiohttp.ClientError:
                    return False

            await eventually(scheduled_twice, 20, member.log_tail())
            status = await member.status()
            assert status["agent"]["role"] == "starting"
            assert {s["owner"] for s in status["services"]} == {None}
            assert (await member.get("/readyz"))[0] == 503
            changes = [ln for ln in member.logs() if ln["event"] == "service_state_changed"]
            assert changes == [], "a member that does not know the members announces nothing"
            await consul.start()
            await member.wait_ready(30)
            await eventually(lambda: _async(len(tap.received) == 4), 10, member.log_tail())
            assert sorted(consul.services) == [s["name"] for s in services]
            assert member.stop() == 0, member.log_tail()
        finally:
            member.kill()


async def _role_is(agent: AgentProcess, role: str) -> bool:
    try:
        return bool((await agent.status())["agent"]["role"] == role)
    except Exception:
        return False


async def _async(value: bool) -> bool:
    return value
