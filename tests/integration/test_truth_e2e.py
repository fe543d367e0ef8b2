"""What Consul, /metrics and consumers are told stays true under faults of the agent's own
state: a full state_dir, a restart from week-old state, a second agent on the same state_dir."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fakes.consul import FakeConsul
from tests.integration.agent_process import AgentProcess, eventually
from tests.integration.conftest import EventTap, HttpTarget, agent_config

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tiny filesystem at ``path`` (root only), always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.timeout(120)
async def test_a_full_state_dir_freezes_neither_consul_nor_metrics_and_recovers(
    tmp_path: Path, consul: FakeConsul, tap: EventTap, http_target: HttpTarget
) -> None:
    services = [{"name": "web", "kind": "http", "url": http_target.url}]
    config = agent_config(consul, tap, services, interval_s=0.3, timeout_s=0.2, fall=1)
    with small_tmpfs(tmp_path / "state") as state:
        agent = AgentProcess(config, tmp_path)
        agent.start()
        try:
            await agent.wait_ready()
            await eventually(lambda: _true(consul.passing("web") == ["web"]), 10)
            filler = fill(state)

            # Flip the target until a transition cannot be written (SQLite may still reuse
            # space it had): from then on, what is said must still follow the probes.
            async def write_failed() -> bool:
                return any(e.get("event") == "outbox_write_failed" for e in agent.logs())

            for _ in range(20):
                await http_target.stop()
                await eventually(lambda: _state(agent, "down"), 10, agent.log_tail())
                with contextlib.suppress(AssertionError):
                    await eventually(write_failed, 2)
                    break
                await http_target.start()
                await eventually(lambda: _state(agent, "up"), 10, agent.log_tail())
            assert await write_failed(), "the full state_dir never failed a write"
            # Down, with the outbox failing: deregistered, service_up 0, and it shows.
            await eventually(lambda: _true(consul.passing("web") == []), 10, agent.log_tail())
            text = await agent.metrics()
            assert metric(text, 'sutazai_agent_service_up{service="web"}') == 0
            assert metric(text, "sutazai_agent_outbox_write_failures_total") > 0
            outbox = (await agent.status())["outbox"]
            assert outbox["writable"] is False
            assert "database or disk is full" in outbox["last_error"]
            await http_target.start()
            await eventually(lambda: _true(consul.passing("web") == ["web"]), 10)
            failed = [e for e in agent.logs() if e.get("event") == "outbox_write_failed"]
            assert len(failed) == 1, "one line per outage"
            assert "database or disk is full" in failed[0]["error"]
            assert "cannot rollback" not in agent.log_text()
            # The disk is freed: it recovers by itself and the events go out.
            filler.unlink()

            async def recovered() -> bool:
                status = await agent.status()
                return bool(status["outbox"]["writable"] and status["outbox"]["pending"] == 0)

            await eventually(recovered, 30, agent.log_tail())
            await eventually(lambda: _true(tap.transitions("web")[-1:] == [("down", "up")]), 10)
        finally:
            assert agent.stop() == 0, agent.log_tail()


def store_state(state_dir: Path, service: str, state: str, since: datetime) -> None:
    """What a week-old run left: ``service`` last known ``state``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state_dir / "agent.db")
    with db:
        db.execute(
            "CREATE TABLE services (name TEXT PRIMARY KEY, state TEXT NOT NULL,"
            " since TEXT NOT NULL, sequence INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO services VALUES (?, ?, ?, 3)", (service, state, since.isoformat()))
    db.close()


@pytest.mark.timeout(60)
async def test_a_restart_registers_nothing_from_stored_state(
    tmp_path: Path, consul: FakeConsul, tap: EventTap
) -> None:
    # A week ago the service was up; today it is gone and Consul no longer lists it.
    store_state(tmp_path / "state", "web", "up", datetime.now(UTC) - timedelta(days=7))
    services = [{"name": "web", "kind": "http", "url": "http://127.0.0.1:9/health"}]
    config = agent_config(consul, tap, services, interval_s=0.5, timeout_s=0.3, fall=3)
    agent = AgentProcess(config, tmp_path)
    agent.start()
    try:
        await agent.wait_ready()
        # The first probe of this run fails: it decides, whatever fall says.
        await eventually(lambda: _state(agent, "down"), 10, agent.log_tail())
        await eventually(lambda: _true(tap.transitions("web") == [("up", "down")]), 10)
        text = await agent.metrics()
        assert metric(text, 'sutazai_agent_service_up{service="web"}') == 0
    finally:
        assert agent.stop() == 0, agent.log_tail()
    assert consul.passing("web") == []
    assert consul.service("web") is None, "registered from stored state"
    assert not [e for e in agent.logs() if e.get("event") == "consul_registered"]


@pytest.mark.timeout(60)
async def test_a_second_agent_on_the_same_state_dir_exits_2_naming_it(
    tmp_path: Path, consul: FakeConsul, tap: EventTap, http_target: HttpTarget
) -> None:
    services = [{"name": "web", "kind": "http", "url": http_target.url}]
    (tmp_path / "a").mkdir()
    first = AgentProcess(agent_config(consul, tap, services), tmp_path / "a")
    (tmp_path / "b").mkdir()
    second_config = {**first.config}
    second_config.pop("http")
    second = AgentProcess({**second_config, "agent_id": "other"}, tmp_path / "b")
    first.start()
    try:
        await first.wait_ready()
        second.start()
        assert second.wait(30) == 2
        text = second.log_text()
        assert str(tmp_path / "a" / "state") in text
        assert "in use by another agent" in text
        assert (await first.status())["outbox"]["writable"] is True
    finally:
        second.kill()
        assert first.stop() == 0, first.log_tail()


async def _true(value: bool) -> bool:
    return value


async def _state(agent: AgentProcess, state: str) -> bool:
    return bool((await agent.service("web"))["state"] == state)
