"""The daemon as a real process: targets break and recover, /status and /metrics follow,
promtool accepts the metrics, SIGTERM exits 0, secrets stay out of every output."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.consul import FakeConsul
from tests.integration.agent_process import AgentProcess, eventually
from tests.integration.conftest import EventTap, HttpTarget, TcpTarget, agent_config

pytestmark = [pytest.mark.e2e, pytest.mark.broker]
INTERVAL_S, TIMEOUT_S, FALL = 0.5, 0.4, 2
BOUND_S = FALL * INTERVAL_S + TIMEOUT_S
SLACK_S = 3.0  # process start-up of the poller and a loaded CI machine, not the agent's budget


def metric_value(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) == want:
            return float(match[3])
    return None


async def state_of(agent: AgentProcess, name: str) -> str:
    state: str = (await agent.service(name))["state"]
    return state


@pytest.mark.timeout(90)
async def test_a_broken_target_turns_down_then_up_and_sigterm_exits_0(
    tmp_path: Path,
    consul: FakeConsul,
    tap: EventTap,
    http_target: HttpTarget,
    tcp_target: TcpTarget,
) -> None:
    services = [
        {"name": "web", "kind": "http", "url": http_target.url},
        {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": tcp_target.port},
    ]
    agent = AgentProcess(
        agent_config(consul, tap, services, interval_s=INTERVAL_S, timeout_s=TIMEOUT_S, fall=FALL),
        tmp_path,
    )
    agent.start()
    try:
        await agent.wait_ready()
        assert await state_of(agent, "web") == "up"
        metrics = await agent.metrics()
        assert metric_value(metrics, "sutazai_agent_service_up", service="web") == 1.0

        await http_target.stop()

        async def web_down() -> bool:
            return await state_of(agent, "web") == "down"

        took = await eventually(web_down, BOUND_S + SLACK_S, agent.log_tail())
        metrics = await agent.metrics()
        assert metric_value(metrics, "sutazai_agent_service_up", service="web") == 0.0
        assert metric_value(metrics, "sutazai_agent_service_state", service="web", state="down")
        assert metric_value(metrics, "sutazai_agent_service_up", service="db") == 1.0
        web = await agent.service("web")
        assert "refused" in web["last_probe"]["reason"]
        assert web["registered"] is False
        print(f"detected down in {took:.2f}s (bound {BOUND_S}s)")

        await http_target.start()

        async def web_up() -> bool:
            return await state_of(agent, "web") == "up"

        await eventually(web_up, INTERVAL_S * 2 + TIMEOUT_S + SLACK_S, agent.log_tail())
        metrics = await agent.metrics()
        changes = metric_value(
            metrics,
            "sutazai_agent_state_changes_total",
            service="web",
            from_state="down",
            to_state="up",
        )
        assert changes == 1.0
        assert (await agent.get("/healthz"))[0] == 200

        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by scripts/test"
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=metrics,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        code = agent.stop(timeout_s=30)
    assert code == 0, agent.log_tail()
    events = [line["event"] for line in agent.logs()]
    assert "shutdown_requested" in events
    assert "agent_stopped" in events


@pytest.mark.timeout(60)
async def test_a_second_signal_exits_at_once(
    tmp_path: Path, consul: FakeConsul, tap: EventTap
) -> None:
    # A target that accepts and never answers keeps a probe in flight through shutdown.
    accepted: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    services = [{"name": "slow", "kind": "http", "url": f"http://127.0.0.1:{port}/"}]
    config = agent_config(
        consul, tap, services, interval_s=INTERVAL_S, timeout_s=TIMEOUT_S, fall=FALL
    ) | {
        "interval_s": 20,
        "timeout_s": 15,
        "shutdown_grace_s": 30,
    }
    agent = AgentProcess(config, tmp_path)
    agent.start()
    try:

        async def probe_in_flight() -> bool:
            return bool(accepted)

        await eventually(probe_in_flight, 30, agent.log_tail())  # the first run is splayed
        agent.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert agent.proc is not None
        assert agent.proc.poll() is None  # still waiting for the probe, within its grace
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 1
    finally:
        agent.kill()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.timeout(90)
async def test_secrets_never_appear_in_logs_status_config_or_events(
    tmp_path: Path, tap: EventTap, http_target: HttpTarget
) -> None:
    password, token = "pw-Zq81xx", "tok-7Hh2kk"
    # Consul refuses the token and the broker the password: error paths are where secrets leak.
    consul = FakeConsul(acl_token="the-right-token")
    await consul.start()
    services = [
        {"name": "web", "kind": "http", "url": http_target.url},
        {"name": "mq", "kind": "rabbitmq", "amqp_url": f"amqp://guest:{password}@127.0.0.1:5672/"},
    ]
    config = agent_config(
        consul, tap, services, interval_s=INTERVAL_S, timeout_s=TIMEOUT_S, fall=FALL
    )
    config["consul"]["token"] = token
    config["rabbitmq"]["url"] = f"amqp://guest:{password}@127.0.0.1:5672/"
    agent = AgentProcess(config, tmp_path)
    printed = subprocess.run(
        [sys.executable, "-m", "sutazai_agent", "--config", str(agent.config_path), "config"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "amqp://guest:***@127.0.0.1:5672/" in printed
    agent.start()
    try:
        await agent.wait_ready()

        async def mq_down() -> bool:
            return await state_of(agent, "mq") == "down"

        await eventually(mq_down, 20, agent.log_tail())
        status = json.dumps(await agent.status())
        await asyncio.sleep(1.0)  # a few failed broker connections and Consul 403s
    finally:
        agent.stop()
        await consul.stop()
    outputs = {"config": printed, "status": status, "log": agent.log_text()}
    outputs["events"] = json.dumps([event for _, event in tap.received])
    for where, text in outputs.items():
        assert password not in text, where
        assert token not in text, where
    assert "authentication" in status  # the reason is there, the password is not
