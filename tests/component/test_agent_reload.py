"""The agent applying a new configuration in process: the services it runs come from
``select``, and a new probe that cannot be built changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sutazai_agent import probes
from sutazai_agent.app import Agent
from sutazai_agent.config import AgentConfig, ConfigError, ServiceConfig
from tests.fakes.consul import FakeConsul

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
pytestmark = [pytest.mark.broker]


def config(tmp_path: Path, consul: FakeConsul, *names: str, **extra: Any) -> AgentConfig:
    return AgentConfig(
        agent_id="in-process",
        state_dir=tmp_path / "state",
        http={"host": "127.0.0.1", "port": 0},
        consul={"url": consul.url},
        rabbitmq={"url": AMQP_URL, "exchange": "test.agent-reload"},
        interval_s=5,
        timeout_s=1,
        services=[{"name": n, "kind": "tcp", "host": "127.0.0.1", "port": 9} for n in names],
        **extra,
    )


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    task = asyncio.create_task(agent.serve())
    while agent.http_port is None:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    try:
        yield agent
    finally:
        agent.stop()
        await task


def names(agent: Agent) -> list[str]:
    return [s["name"] for s in agent.status()["services"]]


async def test_select_decides_which_services_run_at_start_and_after_a_reload(
    tmp_path: Path,
) -> None:
    def mine(cfg: AgentConfig) -> Sequence[ServiceConfig]:  # what a group layer would do
        return [s for s in cfg.services if not s.name.startswith("other-")]

    async with FakeConsul() as consul:
        agent = Agent(config(tmp_path, consul, "a", "other-b"), select=mine)
        async with running(agent):
            assert names(agent) == ["a"]
            diff = agent.apply_config(config(tmp_path, consul, "a", "other-b", "c", "other-d"))
            assert diff.services.added == ("c",)
            assert names(agent) == ["a", "c"]
            assert agent.metrics.services.series.keys() == {"a", "c"}


async def test_a_probe_that_cannot_be_built_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeConsul() as consul:
        agent = Agent(config(tmp_path, consul, "a", "b"))
        async with running(agent):

            def broken(*_: object) -> probes.Probe:
                raise ValueError("the 'tcp' extra is not installed")

            monkeypatch.setitem(probes.PROBES, "tcp", broken)
            with pytest.raises(ConfigError, match=r"services\.[ac]: the 'tcp' extra"):
                agent.apply_config(config(tmp_path, consul, "a", "c", rise=5))
            assert names(agent) == ["a", "b"]
            assert agent.config.rise == 2
            assert agent.metrics.services.series.keys() == {"a", "b"}
