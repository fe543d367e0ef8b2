"""The agent in-process: a long-running task that crashes is reported whole and does not hold
up shutdown."""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sutazai_agent.app import Agent
from sutazai_agent.config import AgentConfig
from sutazai_agent.monitor import Monitor
from tests.fakes.consul import FakeConsul
from tests.integration.agent_process import free_port


async def crashing_run(self: Monitor) -> None:
    """The outbox writer, dying on its first batch with transitions still unwritten."""
    await self._wake.wait()
    raise RuntimeError("outbox writer bug")


@pytest.mark.timeout(60)
async def test_a_crashed_task_is_logged_with_its_traceback_and_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Monitor, "run", crashing_run)
    async with FakeConsul() as consul:
        config = AgentConfig.model_validate(
            {
                "agent_id": "crash",
                "state_dir": str(tmp_path / "state"),
                "interval_s": 0.2,
                "timeout_s": 0.1,
                "shutdown_grace_s": 600,  # a dead writer must not be waited for this long
                "http": {"host": "127.0.0.1", "port": 0},
                "consul": {"url": consul.url},
                "rabbitmq": {"url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"},
                "services": [{"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9}],
            }
        )
        agent = Agent(config)
        with capture_logs() as logs:
            async with asyncio.timeout(30):
                code = await agent.main()
    assert code == 1
    [died] = [e for e in logs if e["event"] == "task_died"]
    assert died["task"] == "outbox-writer"
    text = "".join(traceback.format_exception(died["exc_info"]))
    assert "crashing_run" in text
    assert "RuntimeError: outbox writer bug" in text
    events = [e["event"] for e in logs]
    assert "transitions_not_written_at_shutdown" in events
    assert events[-1] == "agent_stopped"
