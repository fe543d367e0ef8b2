"""The SQLite outbox on a real file: durability across reopen, order, bound, ack."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sutazai_agent.core.model import KnownState, Outcome, ProbeResult, State, Transition
from sutazai_agent.events.outbox import SqliteOutbox, StateDirLockedError
from sutazai_agent.web.metrics import Metrics

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def change(service: str, previous: State, current: State, minute: int = 0) -> Transition:
    outcome = {State.UP: Outcome.OK, State.DEGRADED: Outcome.DEGRADED}.get(current, Outcome.FAIL)
    at = T0 + timedelta(minutes=minute)
    return Transition(service, "http", previous, current, f"now {current}", at,
                      ProbeResult(outcome, 0.002, f"now {current}"))  # fmt: skip


def metric(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(f"sutazai_agent_{name}")
    assert value is not None
    return value


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


async def test_append_assigns_per_service_sequences_in_order(
    tmp_path: Path, metrics: Metrics
) -> None:
    async with SqliteOutbox(tmp_path, "node-1", 100, metrics) as outbox:
        await outbox.append(
            [change("kong", State.UNKNOWN, State.UP), change("db", State.UNKNOWN, State.DOWN)]
        )
        await outbox.append([change("kong", State.UP, State.DOWN, 1)])
        await outbox.append([change("db", State.DOWN, State.UP, 2)])

        rows = await outbox.peek(10)
        assert [(r.service, r.sequence, r.routing_key) for r in rows] == [
            ("kong", 1, "health.kong.up"),
            ("db", 1, "health.db.down"),
            ("kong", 2, "health.kong.down"),
            ("db", 2, "health.db.up"),
        ]
        bodies = [json.loads(r.body) for r in rows]
        assert [b["id"] for b in bodies] == [r.id for r in rows]
        assert [b["data"]["sequence"] for b in bodies] == [1, 1, 2, 2]
        assert bodies[2]["data"]["previous"] == "up"
        assert bodies[2]["data"]["current"] == "down"
        assert bodies[2]["source"] == "sutazai-agent/node-1"
        assert all(r.created_at.tzinfo is not None for r in rows)
        assert [r.id for r in await outbox.peek(2)] == [r.id for r in rows[:2]]
        assert outbox.pending() == 4
        assert metric(metrics, "events_pending") == 4
        assert outbox.known_states() == {
            "kong": KnownState(State.DOWN, T0 + timedelta(minutes=1), 2),
            "db": KnownState(State.UP, T0 + timedelta(minutes=2), 2),
        }


async def test_states_and_sequences_survive_reopen_and_are_never_reused(
    tmp_path: Path, metrics: Metrics
) -> None:
    async with SqliteOutbox(tmp_path, "node-1", 100, metrics) as outbox:
        await outbox.append([change("kong", State.UNKNOWN, State.UP)])
        await outbox.append([change("kong", State.UP, State.DOWN, 5)])
        await outbox.ack([r.id for r in await outbox.peek(10)])
        assert outbox.pending() == 0

    async with SqliteOutbox(tmp_path, "node-1", 100, Metrics()) as reopened:
        assert reopened.known_states() == {
            "kong": KnownState(State.DOWN, T0 + timedelta(minutes=5), 2)
        }
        assert reopened.pending() == 0
        await reopened.append([change("kong", State.DOWN, State.UP, 6)])
        (row,) = await reopened.peek(10)
        assert row.sequence == 3
        assert json.loads(row.body)["data"]["sequence"] == 3


async def test_pending_events_survive_reopen_in_order(tmp_path: Path, metrics: Metrics) -> None:
    async with SqliteOutbox(tmp_path, "n", 100, metrics) as outbox:
        for minute, (prev, cur) in enumerate([(State.UNKNOWN, State.UP), (State.UP, State.DOWN)]):
            await outbox.append([change("kong", prev, cur, minute)])
        before = await outbox.peek(10)

    reopened_metrics = Metrics()
    async with SqliteOutbox(tmp_path, "n", 100, reopened_metrics) as reopened:
        assert reopened.pending() == 2
        assert metric(reopened_metrics, "events_pending") == 2
        assert await reopened.peek(10) == before


async def test_full_outbox_drops_the_oldest_counts_and_logs(
    tmp_path: Path, metrics: Metrics
) -> None:
    async with SqliteOutbox(tmp_path, "n", 3, metrics) as outbox:
        states = [State.UP, State.DOWN] * 3
        previous = State.UNKNOWN
        with capture_logs() as logs:
            for minute, current in enumerate(states):
                await outbox.append([change("kong", previous, current, minute)])
                previous = current
        rows = await outbox.peek(10)
        assert [r.sequence for r in rows] == [4, 5, 6]
        assert outbox.pending() == 3
        assert metric(metrics, "events_pending") == 3
        assert metric(metrics, "events_dropped_total") == 3
        errors = [e for e in logs if e["event"] == "outbox_full_events_dropped"]
        assert len(errors) == 3
        assert all(e["log_level"] == "error" for e in errors)
        assert errors[0]["oldest"] == ["kong#1"]
        # The known state is the newest, whatever was dropped.
        assert outbox.known_states()["kong"].sequence == 6


async def test_one_batch_larger_than_the_bound_keeps_its_newest(
    tmp_path: Path, metrics: Metrics
) -> None:
    async with SqliteOutbox(tmp_path, "n", 2, metrics) as outbox:
        await outbox.append([change(f"s{i}", State.UNKNOWN, State.UP) for i in range(5)])
        assert [r.service for r in await outbox.peek(10)] == ["s3", "s4"]
        assert metric(metrics, "events_dropped_total") == 3
        assert set(outbox.known_states()) == {f"s{i}" for i in range(5)}


async def test_ack_deletes_only_the_given_events(tmp_path: Path, metrics: Metrics) -> None:
    async with SqliteOutbox(tmp_path, "n", 100, metrics) as outbox:
        await outbox.append([change(f"s{i}", State.UNKNOWN, State.UP) for i in range(4)])
        rows = await outbox.peek(10)
        assert await outbox.ack([rows[0].id, rows[2].id, "no-such-event"]) == 2
        assert [r.id for r in await outbox.peek(10)] == [rows[1].id, rows[3].id]
        assert outbox.pending() == 2
        assert metric(metrics, "events_pending") == 2
        assert await outbox.ack([]) == 0


async def test_database_is_wal_in_state_dir_and_readable_by_sqlite(
    tmp_path: Path, metrics: Metrics
) -> None:
    state_dir = tmp_path / "nested" / "state"
    async with SqliteOutbox(state_dir, "n", 100, metrics) as outbox:
        await outbox.append([change("kong", State.UNKNOWN, State.UP)])
        assert outbox.path == state_dir / "agent.db"
        with sqlite3.connect(outbox.path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            # Committed before append returned: another connection sees it.
            assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        other.close()


async def test_sqlite_runs_on_one_dedicated_thread(
    tmp_path: Path, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()
    real_connect = sqlite3.connect

    def spy(*args: object, **kwargs: object) -> sqlite3.Connection:
        threads.add(threading.get_ident())
        return real_connect(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(sqlite3, "connect", spy)
    async with SqliteOutbox(tmp_path, "n", 100, metrics) as outbox:
        outbox._db = _ThreadCheckingDb(outbox._db, threads)  # type: ignore[assignment]
        await outbox.append([change("kong", State.UNKNOWN, State.UP)])
        await outbox.ack([r.id for r in await outbox.peek(1)])
    assert len(threads) == 1
    assert threading.get_ident() not in threads


class _ThreadCheckingDb:
    """Records the thread of every call made on the connection."""

    def __init__(self, db: object, threads: set[int]) -> None:
        self._db = db
        self._threads = threads

    def __getattr__(self, name: str) -> object:
        self._threads.add(threading.get_ident())
        return getattr(self._db, name)


async def test_closed_outbox_refuses_work(tmp_path: Path, metrics: Metrics) -> None:
    outbox = SqliteOutbox(tmp_path, "n", 100, metrics)
    with pytest.raises(RuntimeError, match="not open"):
        await outbox.append([change("kong", State.UNKNOWN, State.UP)])
    async with outbox:
        pass
    with pytest.raises(RuntimeError, match="not open"):
        await outbox.peek(1)


async def fill_up(outbox: SqliteOutbox) -> None:
    """Make the database full, as a full disk would (SQLite says ``database or disk is full``)."""

    def limit() -> None:
        db = outbox._conn()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages}")

    await outbox._call(limit)


async def test_a_full_disk_is_reported_as_such_and_nothing_half_written(
    tmp_path: Path, metrics: Metrics
) -> None:
    async with SqliteOutbox(tmp_path, "node-1", 100, metrics) as outbox:
        await outbox.append([change("kong", State.UNKNOWN, State.UP)])
        await fill_up(outbox)
        big = [change(f"s{i:03d}-{'x' * 40}", State.UNKNOWN, State.UP) for i in range(300)]
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            await outbox.append(big)
        assert outbox.pending() == 1
        assert list(outbox.known_states()) == ["kong"]
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            await outbox.append(big)  # and again: the connection is still usable


async def test_every_event_names_the_epoch_of_its_database(
    tmp_path: Path, metrics: Metrics
) -> None:
    async with SqliteOutbox(tmp_path / "a", "node-1", 100, metrics) as outbox:
        await outbox.append([change("kong", State.UNKNOWN, State.UP)])
        first_epoch = outbox.epoch
        (row,) = await outbox.peek(10)
    assert str(uuid.UUID(first_epoch)) == first_epoch
    assert json.loads(row.body)["data"]["epoch"] == first_epoch
    async with SqliteOutbox(tmp_path / "a", "node-1", 100, metrics) as outbox:
        assert outbox.epoch == first_epoch  # stored with the database
    shutil.rmtree(tmp_path / "a")  # a wiped state_dir: sequences restart, in a new epoch
    async with SqliteOutbox(tmp_path / "a", "node-1", 100, metrics) as outbox:
        await outbox.append([change("kong", State.UNKNOWN, State.UP)])
        (row,) = await outbox.peek(10)
        assert outbox.epoch != first_epoch
        assert (json.loads(row.body)["data"]["sequence"], row.sequence) == (1, 1)
        assert json.loads(row.body)["data"]["epoch"] == outbox.epoch


async def test_a_second_outbox_on_the_same_state_dir_is_refused_naming_it(
    tmp_path: Path, metrics: Metrics
) -> None:
    async with SqliteOutbox(tmp_path, "node-1", 100, metrics):
        with pytest.raises(StateDirLockedError, match=str(tmp_path)):
            await SqliteOutbox(tmp_path, "node-2", 100, metrics).open()
    async with SqliteOutbox(tmp_path, "node-2", 100, metrics):  # released on close
        pass
