"""Monitor: transitions reach the outbox before anything else reacts, and survive failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
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


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


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


async def test_registrar_and_metrics_follow_at_once_the_publisher_after_the_write() -> None:
    monitor, _, journal, _ = make()
    task = asyncio.create_task(monitor.run())
    monitor.record("db", OK)
    monitor.record("mq", FAIL)
    assert journal.lines == ["registrar db up", "registrar mq down"]
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == [
        "registrar db up",
        "registrar mq down",
        "outbox db up",
        "outbox mq down",
        "publisher wake",
    ]


async def test_a_failing_outbox_freezes_neither_consul_nor_metrics_and_is_visible() -> None:
    monitor, sink, journal, metrics = make()
    sink.failures = 10**6
    with capture_logs() as logs:
        task = asyncio.create_task(monitor.run())
        monitor.record("db", OK)
        monitor.record("db", FAIL)
        # The registrar and the metrics know at once, whatever the disk does.
        assert journal.lines == ["registrar db up", "registrar db down"]
        text = generate_latest(metrics.registry).decode()
        assert 'sutazai_agent_service_up{service="db"} 0.0' in text
        assert 'sutazai_agent_service_state{service="db",state="down"} 1.0' in text
        failures = "sutazai_agent_outbox_write_failures_total"
        await wait_for(lambda: (metrics.registry.get_sample_value(failures) or 0) >= 2)
        status = monitor.outbox_status()
        assert status["writable"] is False
        assert status["unwritten"] == 2
        assert status["last_error"] == "OSError: disk full"
        assert status["failing_since"] == "2026-11-26T00:00:00.000Z"
        sink.failures = 0  # the disk is freed: it recovers by itself
        assert await monitor.flush(5.0)
        task.cancel()
    assert journal.lines[2:] == ["outbox db up", "outbox db down", "publisher wake"]
    assert monitor.outbox_status()["writable"] is True
    failed = [entry for entry in logs if entry["event"] == "outbox_write_failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == "OSError: disk full"
    assert [e["event"] for e in logs].count("outbox_write_recovered") == 1


async def test_a_stored_state_reaches_neither_registrar_nor_metrics_before_a_probe() -> None:
    known = {"db": KnownState(State.UP, T0, sequence=4)}
    monitor, _, journal, metrics = make(known)
    assert journal.lines == []  # nothing registered from stored state
    text = generate_latest(metrics.registry).decode()
    assert 'sutazai_agent_service_up{service="db"} 0.0' in text
    assert 'sutazai_agent_service_state{service="db",state="unknown"} 1.0' in text
    task = asyncio.create_task(monitor.run())
    monitor.record("db", OK)  # the first probe of this run decides; unchanged: no event
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == ["registrar db up"]
    text = generate_latest(metrics.registry).decode()
    assert 'sutazai_agent_service_up{service="db"} 1.0' in text


async def test_a_stored_up_state_is_overruled_by_the_first_failing_probe() -> None:
    known = {"db": KnownState(State.UP, T0, sequence=4)}
    monitor, _, journal, _ = make(known)
    monitor.views["db"].machine.fall = 3
    task = asyncio.create_task(monitor.run())
    monitor.record("db", FAIL)
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == ["registrar db down", "outbox db down", "publisher wake"]


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


class PauseRecorder(Monitor):
    """Records each pause between failed outbox writes, and skips the wait."""

    pauses: list[float]

    async def _retry_pause(self) -> None:
        self.pauses.append(self._backoff.next())
        await asyncio.sleep(0)


async def test_a_freed_disk_is_written_within_five_seconds_however_long_it_was_full() -> None:
    config = AgentConfig(services=[TcpService(name="s0", kind="tcp", host="h", port=1)], fall=1)
    journal = Journal()
    sink = FakeSink(journal)
    sink.failures = 20
    monitor = PauseRecorder(config, sink, FakeRegistrar(journal), FakePublisher(journal), Metrics())
    monitor.pauses = []
    task = asyncio.create_task(monitor.run())
    monitor.record("s0", OK)
    assert await monitor.flush(5.0)
    task.cancel()
    assert len(monitor.pauses) == 20
    assert max(monitor.pauses) <= 5.0
    assert max(monitor.pauses[-4:]) >= 2.5, "the back-off still grows to its cap"
    assert "outbox s0 up" in journal.lines


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


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def make_seeding(seed_wait_s: float = 10.0) -> tuple[Monitor, Journal, Clock]:
    config = AgentConfig(
        services=[TcpService(name="db", kind="tcp", host="h", port=1)], rise=1, fall=1
    )
    journal, clock = Journal(), Clock()
    monitor = Monitor(
        config,
        FakeSink(journal),
        FakeRegistrar(journal),
        FakePublisher(journal),
        Metrics(),
        now=clock,
        seed_wait_s=seed_wait_s,
    )
    return monitor, journal, clock


async def test_a_handover_seeded_up_announces_nothing_and_registers_only_after_a_probe() -> None:
    monitor, journal, _ = make_seeding()
    task = asyncio.create_task(monitor.run())
    monitor.record("db", OK)  # owned before: announced
    assert await monitor.flush(1.0)
    journal.lines.clear()
    monitor.release("db", await_seed=False)  # another member owns it now
    monitor.release("db", await_seed=True)  # and back: wait for what Consul shows
    assert monitor.awaiting_seed("db")
    monitor.seed("db", State.UP)
    assert not monitor.awaiting_seed("db")
    assert journal.lines == [], "a seed alone writes nothing"
    monitor.record("db", OK)
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == ["registrar db up"], "no event, but the registrar follows the probe"


async def test_a_seeded_state_the_first_probe_contradicts_is_announced_from_it() -> None:
    monitor, journal, _ = make_seeding()
    task = asyncio.create_task(monitor.run())
    monitor.release("db", await_seed=True)
    monitor.seed("db", State.UP)
    monitor.record("db", FAIL)
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == ["registrar db down", "outbox db down", "publisher wake"]
    assert monitor.views["db"].machine.state is State.DOWN


async def test_without_a_seed_the_probes_wait_only_until_the_deadline() -> None:
    monitor, _, clock = make_seeding(seed_wait_s=10.0)
    monitor.release("db", await_seed=True)
    monitor.seed("mq", State.UP)  # not configured: ignored
    clock.now = T0 + timedelta(seconds=9)
    assert monitor.awaiting_seed("db")
    clock.now = T0 + timedelta(seconds=10)
    with capture_logs() as logs:
        assert not monitor.awaiting_seed("db")
    assert [e["event"] for e in logs] == ["consul_seed_timed_out"]
    monitor.seed("db", State.UP)  # too late: the first probe decides from unknown
    assert monitor.views["db"].machine.state is State.UNKNOWN


async def test_when_consul_shows_nothing_the_last_known_state_is_the_provisional_start() -> None:
    """A down service is deregistered, so Consul shows nothing of it: after a handover back
    (e.g. a restart whose previous session still held the lock), the state the agent knew
    is kept, provisionally; an unchanged probe announces nothing."""
    monitor, journal, _ = make_seeding()
    task = asyncio.create_task(monitor.run())
    monitor.record("db", FAIL)
    assert await monitor.flush(1.0)
    journal.lines.clear()
    monitor.release("db", await_seed=False)  # standby: another holds the lock
    monitor.release("db", await_seed=True)  # active again
    monitor.seed("db", None)
    assert monitor.views["db"].machine.state is State.DOWN
    assert not monitor.views["db"].machine.confirmed
    monitor.record("db", FAIL)
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == ["registrar db down"]
