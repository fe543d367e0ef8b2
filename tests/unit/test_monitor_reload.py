"""Monitor during a reload: services added, removed and changed while it runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sutazai_agent.config import AgentConfig, HttpService, ServiceSpec, TcpService, service_specs
from sutazai_agent.core.model import KnownState, State
from sutazai_agent.monitor import Monitor
from sutazai_agent.web.metrics import Metrics
from tests.unit.test_monitor import (
    FAIL,
    OK,
    T0,
    FakePublisher,
    FakeRegistrar,
    FakeSink,
    Journal,
    make,
)


def specs(*services: TcpService | HttpService, rise: int = 1, fall: int = 1) -> list[ServiceSpec]:
    config = AgentConfig(services=list(services), rise=rise, fall=fall)
    return list(service_specs(config, config.services).values())


def series(metrics: Metrics) -> set[str]:
    return set(metrics.services.series)


async def test_a_removed_service_is_forgotten_everywhere() -> None:
    monitor, _, journal, metrics = make()
    monitor.record("db", OK)
    monitor.remove(["db"])
    assert "db" not in monitor.views
    assert series(metrics) == {"mq"}
    assert "db" not in "".join(metrics.services.chunks())
    assert journal.lines[-1] == "registrar forget db"
    monitor.record("db", FAIL)  # a probe that was in flight: dropped
    assert "db" not in monitor.views
    assert series(metrics) == {"mq"}


async def test_a_transition_pending_for_a_removed_service_is_written_and_nothing_else() -> None:
    monitor, _, journal, metrics = make()
    monitor.record("db", OK)  # the registrar follows at once; the event waits for the writer
    monitor.remove(["db"])
    task = asyncio.create_task(monitor.run())
    assert await monitor.flush(1.0)
    task.cancel()
    assert journal.lines == [
        "registrar db up",
        "registrar forget db",
        "outbox db up",
        "publisher wake",
    ]
    assert series(metrics) == {"mq"}


async def test_an_added_service_starts_unknown_or_from_its_stored_state() -> None:
    stored = {"web": KnownState(State.UP, T0 - timedelta(hours=1), 7)}
    monitor, _, journal, metrics = make(stored)
    monitor.record("db", OK)
    monitor.record("mq", OK)
    assert monitor.ready()
    web = HttpService(name="web", kind="http", url="http://h/")
    new = TcpService(name="new", kind="tcp", host="h", port=3)
    monitor.add(specs(web, new))
    assert monitor.views["web"].machine.state is State.UP  # as after a restart
    assert monitor.views["new"].machine.state is State.UNKNOWN
    # As after a restart: nothing registered or reported from the stored state.
    assert "registrar web up" not in journal.lines
    assert metrics.services.series["web"].state is State.UNKNOWN
    assert metrics.services.series["new"].state is State.UNKNOWN
    assert monitor.ready()  # a running agent does not turn unready on a reload


async def test_changed_settings_keep_the_state_and_apply_rise_and_fall() -> None:
    monitor, _, journal, _ = make()
    monitor.record("db", OK)
    view = monitor.views["db"]
    since = view.machine.since
    old = view.config
    changed = TcpService(name="db", kind="tcp", host="h2", port=1)
    monitor.update(specs(changed, fall=3))
    assert view.machine.state is State.UP
    assert view.machine.since == since
    assert view.config is changed
    assert journal.lines[-1] == "registrar db up"  # the registrar compares and re-registers
    monitor.record("db", FAIL, old)  # probed with the old settings: dropped
    monitor.record("db", FAIL, changed)
    monitor.record("db", FAIL, changed)
    assert view.machine.state is State.UP  # fall is 3 now
    monitor.record("db", FAIL, changed)
    assert view.machine.state is State.DOWN


async def test_a_changed_kind_keeps_the_state_and_relabels_its_series() -> None:
    monitor, _, _, metrics = make()
    monitor.record("db", OK)
    web = HttpService(name="db", kind="http", url="http://h/")
    monitor.update(specs(web))
    assert monitor.views["db"].machine.state is State.UP
    assert monitor.views["db"].machine.kind == "http"
    assert metrics.services.series["db"].kind == "http"
    assert metrics.services.series["db"].state is State.UP
    db_lines = [
        line for line in "".join(metrics.services.chunks()).splitlines() if 'service="db"' in line
    ]
    assert db_lines
    assert not [line for line in db_lines if 'kind="tcp"' in line]


async def test_a_new_service_id_moves_the_registration() -> None:
    monitor, _, journal, _ = make()
    monitor.record("db", OK)
    moved = TcpService(name="db", kind="tcp", host="h", port=1, service_id="db-2")
    monitor.update(specs(moved))
    assert journal.lines[-2:] == ["registrar forget db", "registrar db up"]


def test_monitor_follows_only_the_services_it_is_given() -> None:
    journal = Journal()
    config = AgentConfig(
        services=[
            TcpService(name="db", kind="tcp", host="h", port=1),
            TcpService(name="mq", kind="tcp", host="h", port=2),
        ]
    )
    monitor = Monitor(
        config,
        FakeSink(journal),
        FakeRegistrar(journal),
        FakePublisher(journal),
        Metrics(),
        services=config.services[1:],
    )
    assert list(monitor.views) == ["mq"]


async def test_changed_settings_of_an_unprobed_stored_service_register_nothing() -> None:
    stored = {"db": KnownState(State.UP, T0 - timedelta(days=7), 3)}
    monitor, _, journal, _ = make(stored)
    monitor.update(specs(TcpService(name="db", kind="tcp", host="h2", port=1)))
    assert not [line for line in journal.lines if line.startswith("registrar db")]
    monitor.record("db", FAIL, monitor.views["db"].config)  # the first probe decides
    assert journal.lines[-1] == "registrar db down"
