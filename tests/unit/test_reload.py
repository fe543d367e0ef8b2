"""The reloader (load, apply, serialize, report) and the ``/-/reload`` endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from sutazai_agent import config
from sutazai_agent.config import AgentConfig, ConfigDiff, ServiceDiff
from sutazai_agent.reload import Reloader
from sutazai_agent.web.metrics import Metrics
from sutazai_agent.web.server import make_app
from tests.unit.test_web import View

TCP = {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 5432}


def gauge(metrics: Metrics, name: str) -> float | None:
    value: float | None = metrics.registry.get_sample_value(f"sutazai_agent_{name}")
    return value


class Applier:
    def __init__(self) -> None:
        self.applied: list[AgentConfig] = []
        self.done = asyncio.Event()

    def __call__(self, new: AgentConfig) -> ConfigDiff:
        self.applied.append(new)
        self.done.set()
        return ConfigDiff(ServiceDiff(added=("db",)), ("rise",), ("http",))


def reloader_for(path: Path, applier: Applier, metrics: Metrics) -> Reloader:
    return Reloader(lambda: config.load(path), applier, metrics, wall_clock=lambda: 1234.5)


async def test_start_counts_as_a_successful_load() -> None:
    metrics = Metrics()
    reloader_for(Path("/nonexistent"), Applier(), metrics)
    assert gauge(metrics, "config_last_reload_successful") == 1
    assert gauge(metrics, "config_last_reload_success_timestamp_seconds") == 1234.5


async def test_an_invalid_file_changes_nothing_and_says_which_field(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"services": [{**TCP, "port": 70000}]}))
    metrics, applier = Metrics(), Applier()
    reloader = reloader_for(path, applier, metrics)
    with capture_logs() as logs:
        result = await reloader.reload("SIGHUP")
    assert not result.ok
    assert applier.applied == []
    assert gauge(metrics, "config_last_reload_successful") == 0
    (line,) = logs
    assert line["event"] == "config_reload_failed"
    assert line["log_level"] == "error"
    assert "services[0].port" in line["reason"]
    assert result.summary() == {"status": "failed", "error": line["reason"]}


async def test_a_valid_file_is_applied_and_summarized(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("services: [")  # invalid first, then fixed
    metrics, applier = Metrics(), Applier()
    reloader = reloader_for(path, applier, metrics)
    assert not (await reloader.reload("http")).ok
    path.write_text(yaml.safe_dump({"services": [TCP]}))
    with capture_logs() as logs:
        result = await reloader.reload("http")
    assert result.ok
    assert [s.name for s in applier.applied[0].services] == ["db"]
    assert gauge(metrics, "config_last_reload_successful") == 1
    summary = result.summary()
    assert summary["added"] == ["db"]
    assert summary["restart_required"] == ["http"]
    assert summary["applied_keys"] == ["rise"]
    events = [(line["event"], line["log_level"]) for line in logs]
    assert events == [("config_reloaded", "info"), ("config_restart_required", "warning")]


async def test_reloads_run_one_at_a_time_and_waiting_requests_share_one(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"services": [TCP]}))
    inside = 0
    peak = 0
    loading = asyncio.Event()
    proceed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_load() -> AgentConfig:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        try:
            loop.call_soon_threadsafe(loading.set)
            asyncio.run_coroutine_threadsafe(proceed.wait(), loop).result(5)
            return config.load(path)
        finally:
            inside -= 1

    applier = Applier()
    reloader = Reloader(slow_load, applier, Metrics())
    first = asyncio.create_task(reloader.reload("http"))
    await loading.wait()  # the first reload is running (reading the file)
    # Ten more requests meanwhile: they all want a reload after the running one, and share it.
    later = [asyncio.create_task(reloader.reload("http")) for _ in range(10)]
    await asyncio.sleep(0)
    proceed.set()
    results = await asyncio.gather(first, *later)
    assert all(r.ok for r in results)
    assert peak == 1
    assert len(applier.applied) == 2
    assert len({id(r) for r in results[1:]}) == 1  # one result for the ten


async def test_a_caller_going_away_does_not_cancel_the_reload(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"services": [TCP]}))
    applier = Applier()
    reloader = reloader_for(path, applier, Metrics())
    caller = asyncio.create_task(reloader.reload("http"))
    await asyncio.sleep(0)
    caller.cancel()
    async with asyncio.timeout(5):
        await applier.done.wait()
    assert caller.cancelled()


class ReloadView(View):
    def __init__(self) -> None:
        super().__init__()
        self.answer: tuple[bool, dict[str, Any]] = (True, {"status": "applied"})
        self.triggers: list[str] = []

    async def reload(self, trigger: str) -> tuple[bool, dict[str, Any]]:
        self.triggers.append(trigger)
        return self.answer


async def test_the_reload_endpoint_answers_post_only() -> None:
    view = ReloadView()
    async with TestClient(TestServer(make_app(view, Metrics().registry))) as client:
        resp = await client.post("/-/reload")
        assert resp.status == 200
        assert await resp.json() == {"status": "applied"}
        view.answer = (False, {"status": "failed", "error": "services[0].port: too big"})
        resp = await client.post("/-/reload")
        assert resp.status == 400
        assert (await resp.json())["error"] == "services[0].port: too big"
        assert (await client.get("/-/reload")).status == 405
        assert (await client.put("/-/reload")).status == 405
    assert view.triggers == ["http", "http"]


async def test_a_config_error_found_while_applying_is_a_failed_reload(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"services": [TCP]}))

    def refuse(_: AgentConfig) -> ConfigDiff:
        raise config.ConfigError("services.db: the 'postgres' extra is not installed")

    metrics = Metrics()
    with capture_logs() as logs:
        result = await Reloader(lambda: config.load(path), refuse, metrics).reload("SIGHUP")
    assert not result.ok
    assert gauge(metrics, "config_last_reload_successful") == 0
    assert [line["event"] for line in logs] == ["config_reload_failed"]
    assert "services.db" in logs[0]["reason"]
