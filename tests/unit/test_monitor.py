"""Monitor: transitions reach the outbox before anything else reacts, and survive failures."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import generate_latest
from structlog.testing import capture_logs

from sutazai_agent.config import AgentConfig, ServiceConfig, TcpService
from sutazai_agent.core.model import KnownState, Outcome, ProbeResult, State, Transition
from sutazai_agent.monitor import Monitor
from sutazai_agent.web.metrics import Metrics

T0 = datetime(2026, 11, 26, tzinfo=UTC)
OK = ProbeResult(Outcome.OK, 0.01)
FAIL = ProbeResult(Outcome.FAIL, 0.02, "connection refused")


class Journal:
    """Shared log of who heard what, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []


class FakeSink:
    def __init__(self, journal: Journal, known: Mapping[str, KnownState] | None = None) -> None:
        self.journal = journal
        self.known = dict(known or {})
        self.failures = 0

    async def append(self, transitions: Sequence[Transition]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        for t in transitions:
            self.journal.lines.append(f"outbox {t.service} {t.current}")

    def known_states(self) -> Mapping[str, KnownState]:
        return self.known

    def pending(self) -> int:
        return 0


class FakeRegistrar:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def observe(self, service: ServiceConfig, state: State) -> None:
        self.journal.lines.append(f"registrar {service.name} {state}")

    def forget(self, service: ServiceConfig) -> None:
        self.journal.lines.append(f"registrar forget {service.id}")

    def is_registered(self, service_id: str) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {}


class FakePublisher:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def wake(self) -> None:
        self.journal.lines.append("publisher wake")

    def status(self) -> dict[str, Any]:
        return {}


def make(
    known: Mapping[str, KnownState] | None = None,
) -> tuple[Monitor, FakeSink, Journal, Metrics]:
    config = AgentConfig(
        services=[
            TcpService(name="db", kind="tcp", host="h", port=1),
            TcpService(name="mq", kind="tcp", host="h", port=2),
        ],
        rise=1,
        fall=1,
    )
    journal = Journal()
    sink = FakeSink(journal, known)
    metrics = Metrics()
    monitor = Monitor(
        config, sink, FakeRegistrar(journal), FakePublisher(journal), metrics, now=lambda: T0
    )
    return monitor, sink, journal, metrics


async def test_outbox_first_then_registrar_then_publisher() -> None:
    monitor, _, journal, _ = make()
    task = asyncio.create_task(monitor.run())
    monitor.record("db", OK)
    monitor.record("mq", FAIL)
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == [
        "outbox db up",
        "outbox mq down",
        "registrar db up",
        "registrar mq down",
        "publisher wake",
    ]


async def test_nothing_reacts_until_the_outbox_write_succeeds() -> None:
    monitor, sink, journal, metrics = make()
    sink.failures = 1
    task = asyncio.create_task(monitor.run())
    monitor.record("db", FAIL)
    await asyncio.sleep(0.05)
    assert journal.lines == []  # the write failed: no reaction yet
    assert await monitor.flush(5.0)
    task.cancel()
    assert journal.lines == ["outbox db down", "registrar db down", "publisher wake"]
    text = generate_latest(metrics.registry).decode()
    assert 'sutazai_agent_service_state{service="db",state="down"} 1.0' in text


async def test_restored_states_are_not_reannounced_and_reach_the_registrar() -> None:
    known = {"db": KnownState(State.UP, T0, sequence=4)}
    monitor, _, journal, metrics = make(known)
    assert journal.lines == ["registrar db up"]  # desired registration restored at start
    task = asyncio.create_task(monitor.run())
    monitor.record("db", OK)
    await asyncio.sleep(0.01)
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == ["registrar db up"]
    text = generate_latest(metrics.registry).decode()
    assert 'sutazai_agent_service_up{service="db"} 1.0' in text


async def test_ready_after_every_service_has_a_result_and_snapshot() -> None:
    monitor, _, _, metrics = make()
    assert not monitor.ready()
    monitor.record("db", OK)
    assert not monitor.ready()
    monitor.record("mq", FAIL)
    assert monitor.ready()
    snap = {s["name"]: s for s in monitor.snapshot()}
    assert snap["mq"]["state"] == "down"
    assert snap["mq"]["last_probe"]["reason"] == "connection refused"
    assert snap["mq"]["last_probe"]["latency_ms"] == 20.0
    assert snap["db"]["since"] == "2026-11-26T00:00:00.000Z"
    text = generate_latest(metrics.registry).decode()
    assert 'sutazai_agent_probes_total{kind="tcp",result="fail",service="mq"} 1.0' in text


async def test_a_long_outbox_failure_is_bounded_and_logged_once() -> None:
    config = AgentConfig(
        services=[TcpService(name=f"s{i}", kind="tcp", host="h", port=1) for i in range(3)],
        rise=1,
        fall=1,
    )
    journal = Journal()
    sink = FakeSink(journal)
    sink.failures = 10**6
    metrics = Metrics()
    monitor = Monitor(
        config, sink, FakeRegistrar(journal), FakePublisher(journal), metrics, max_pending=4
    )
    with capture_logs() as logs:
        task = asyncio.create_task(monitor.run())
        for _ in range(10):  # 30 transitions: up, down, up, ... for three services
            for name in ("s0", "s1", "s2"):
                monitor.record(name, FAIL if monitor.views[name].machine.state is State.UP else OK)
            await asyncio.sleep(0.01)
        assert len(monitor._pending) <= 4
        sink.failures = 0
        assert await monitor.flush(5.0)
        task.cancel()
    events = [entry["event"] for entry in logs]
    assert events.count("outbox_write_failed") == 1
    assert events.count("transitions_dropped") == 1
    assert events.count("outbox_write_recovered") == 1
    dropped = metrics.registry.get_sample_value("sutazai_agent_events_dropped_total")
    assert dropped == 30 - len([line for line in journal.lines if line.startswith("outbox")])
