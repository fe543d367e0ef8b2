"""Events from the daemon as a process: in order, through broker outages and SIGKILL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.consul import FakeConsul
from tests.fakes.tcp_proxy import TcpProxy
from tests.integration.agent_process import AgentProcess, eventually
from tests.integration.conftest import EventTap, HttpTarget, agent_config

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


def config(consul: FakeConsul, tap: EventTap, amqp_url: str, url: str) -> dict[str, Any]:
    services = [{"name": "web", "kind": "http", "url": url}]
    return agent_config(
        consul, tap, services, interval_s=0.3, timeout_s=0.2, fall=1, ttl_s=5, resync_s=5,
        amqp_url=amqp_url,
    )  # fmt: skip


async def flip(target: HttpTarget, agent: AgentProcess, state: str) -> None:
    if state == "up":
        await target.start()
    else:
        await target.stop()

    async def reached() -> bool:
        return bool((await agent.service("web"))["state"] == state)

    await eventually(reached, 10, agent.log_tail())


def check_delivered(tap: EventTap, expected: list[tuple[str, str]]) -> None:
    events = [e for _, e in tap.received if e["subject"] == "web"]
    # At-least-once: a redelivery repeats an id; drop those, then order must be exact.
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        seen.setdefault(event["id"], event)
    unique = sorted(seen.values(), key=lambda e: e["data"]["sequence"])
    sequences = [e["data"]["sequence"] for e in unique]
    assert sequences == list(range(1, len(unique) + 1)), sequences
    assert [(e["data"]["previous"], e["data"]["current"]) for e in unique] == expected
    keys = [key for key, e in tap.received if e["subject"] == "web"]
    assert all(k == f"health.web.{e['data']['current']}" for k, e in zip(keys, events, strict=True))


@pytest.mark.timeout(120)
async def test_transitions_during_an_outage_and_a_crash_all_arrive_in_order(
    tmp_path: Path, consul: FakeConsul, tap: EventTap, http_target: HttpTarget
) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        amqp = proxy.url("amqp", "guest:guest")
        agent = AgentProcess(config(consul, tap, amqp, http_target.url), tmp_path)
        agent.start()
        try:
            await agent.wait_ready()
            await eventually(lambda: _count(tap, 1), 10, agent.log_tail())

            # Broker cut: the transitions wait in the outbox, in order.
            await proxy.cut()
            for state in ("down", "up", "down"):
                await flip(http_target, agent, state)

            async def three_pending() -> bool:
                return bool((await agent.status())["outbox"]["pending"] == 3)

            await eventually(three_pending, 5, agent.log_tail())
            assert len(tap.received) == 1
            await proxy.restore()
            await eventually(lambda: _count(tap, 4), 30, agent.log_tail())

            # Crash with events pending: SIGKILL, then a restart replays them.
            await proxy.cut()
            await flip(http_target, agent, "up")
            await flip(http_target, agent, "down")
        finally:
            agent.kill()
        assert len(tap.received) == 4
        await proxy.restore()
        restarted = AgentProcess(agent.config, tmp_path)
        restarted.start()
        try:
            await restarted.wait_ready()
            await eventually(lambda: _count(tap, 6), 30, restarted.log_tail())

            # The replayed events leave the outbox once their confirms are processed (which
            # may come after the consumer has them): wait for that, not for a moment.
            async def drained() -> bool:
                return bool((await restarted.status())["outbox"]["pending"] == 0)

            await eventually(drained, 30, restarted.log_tail())
            # The service is still down, as before the crash: no new announcement.
            assert len({e["id"] for _, e in tap.received}) == 6
        finally:
            assert restarted.stop() == 0, restarted.log_tail()
    check_delivered(
        tap,
        [
            ("unknown", "up"),
            ("up", "down"),
            ("down", "up"),
            ("up", "down"),
            ("down", "up"),
            ("up", "down"),
        ],
    )


async def _count(tap: EventTap, n: int) -> bool:
    return len({e["id"] for _, e in tap.received}) >= n


@pytest.mark.timeout(60)
async def test_a_down_binding_sees_only_downs(
    tmp_path: Path, consul: FakeConsul, http_target: HttpTarget
) -> None:
    downs = EventTap(f"test.e2e.downs.{tmp_path.name[-8:]}")
    await downs.start("health.*.down")
    try:
        agent = AgentProcess(
            config(consul, downs, "amqp://guest:guest@127.0.0.1:5672/", http_target.url), tmp_path
        )
        agent.start()
        try:
            await agent.wait_ready()
            await flip(http_target, agent, "down")
            await flip(http_target, agent, "up")
            await flip(http_target, agent, "down")
            await eventually(lambda: _count(downs, 2), 10, agent.log_tail())
        finally:
            assert agent.stop() == 0
        assert [key for key, _ in downs.received] == ["health.web.down", "health.web.down"]
    finally:
        await downs.close()
