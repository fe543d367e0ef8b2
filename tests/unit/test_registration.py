"""The pure parts of Consul registration: payload, durations, ownership, drift, backoff, and the
registrar's entry state, heartbeat schedule and pass log."""

from __future__ import annotations

import random

import pytest

from sutazai_agent.config import ConsulConfig, HttpService, TcpService
from sutazai_agent.consul.ledger import (
    BeatSchedule,
    Entry,
    Ledger,
    check_status,
    differs,
    go_duration,
    is_ours,
    next_beat_at,
    outage_kind,
    ownership_filter,
    registration_payload,
    seed_state,
)
from sutazai_agent.consul.passlog import PassLog
from sutazai_agent.consul.types import (
    AgentCheck,
    AgentService,
    ConsulError,
    ConsulNotFoundError,
    ConsulPermissionError,
    ConsulUnavailableError,
)
from sutazai_agent.core.model import State


@pytest.mark.parametrize(
    ("seconds", "text"), [(30.0, "30s"), (60, "60s"), (2.5, "2500ms"), (0.25, "250ms")]
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize(
    ("state", "status"),
    [(State.UP, "passing"), (State.DEGRADED, "warning"), (State.DOWN, None), (State.UNKNOWN, None)],
)
def test_check_status(state: State, status: str | None) -> None:
    assert check_status(state) == status


@pytest.mark.parametrize("keep_down", [False, True])
def test_check_status_of_a_down_service_follows_on_down(keep_down: bool) -> None:
    assert check_status(State.DOWN, keep_down) == ("critical" if keep_down else None)
    assert check_status(State.UP, keep_down) == "passing"


@pytest.mark.parametrize(
    ("status", "output", "seed"),
    [
        ("passing", "", State.UP),
        ("warning", "anything", State.DEGRADED),
        (
            "critical",
            "TTL expired (last output before timeout follows): up (sutazai-agent m3)",
            State.UP,
        ),
        (
            "critical",
            "TTL expired (last output before timeout follows): degraded (sutazai-agent m3)",
            State.DEGRADED,
        ),
        ("critical", "down (sutazai-agent m1)", State.DOWN),
        ("critical", "TTL expired", None),
        ("critical", "TTL expired (last output before timeout follows): up (someone else)", None),
        ("critical", "", None),
    ],
)
def test_a_new_owner_starts_from_what_the_check_shows(
    status: str, output: str, seed: State | None
) -> None:
    check = AgentCheck("sutazai:db", "db", status, output, "db", "db")
    assert seed_state(check) is seed
    assert seed_state(None) is None


def test_payload_is_the_design_contract() -> None:
    service = HttpService(
        name="backend",
        kind="http",
        url="http://10.0.0.5:10010/health",
        service_id="backend-1",
        tags=("api",),
        meta={"team": "core"},
    )
    consul = ConsulConfig(ttl_s=30, deregister_critical_after_s=90)
    assert registration_payload(service, "node-1", consul, "warning") == {
        "ID": "backend-1",
        "Name": "backend",
        "Address": "10.0.0.5",
        "Port": 10010,
        "Tags": ["api"],
        "Meta": {
            "team": "core",
            "managed-by": "sutazai-agent",
            "agent-id": "node-1",
            "kind": "http",
        },
        "Check": {
            "CheckID": "sutazai:backend-1",
            "Name": "sutazai-agent: backend",
            "Notes": "TTL check kept alive by sutazai-agent node-1",
            "TTL": "30s",
            "DeregisterCriticalServiceAfter": "90s",
            "Status": "warning",
        },
    }


def test_ownership_filter_quotes_the_agent_id() -> None:
    assert ownership_filter('odd"id\\') == (
        'Meta["managed-by"] == "sutazai-agent" and Meta["agent-id"] == "odd\\"id\\\\"'
    )


def listed(**changes: object) -> AgentService:
    base: dict[str, object] = {
        "id": "pg",
        "name": "pg",
        "address": "db",
        "port": 5432,
        "tags": (),
        "meta": {"managed-by": "sutazai-agent", "agent-id": "node-1", "kind": "tcp"},
    }
    base.update(changes)
    return AgentService(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "different"),
    [
        ({}, False),
        ({"port": 1}, True),
        ({"address": "elsewhere"}, True),
        ({"tags": ("x",)}, True),
        ({"name": "other"}, True),
        ({"meta": {"managed-by": "sutazai-agent", "agent-id": "node-1", "kind": "http"}}, True),
    ],
)
def test_differs(changes: dict[str, object], different: bool) -> None:
    service = TcpService(name="pg", kind="tcp", host="db", port=5432)
    payload = registration_payload(service, "node-1", ConsulConfig(), "passing")
    assert differs(listed(**changes), payload) is different


def test_is_ours_needs_both_marks() -> None:
    assert is_ours(listed(), "node-1")
    assert not is_ours(listed(), "node-2")
    assert not is_ours(listed(meta={"agent-id": "node-1"}), "node-1")


PG = TcpService(name="pg", kind="tcp", host="db", port=5432)


@pytest.mark.parametrize(
    ("desired", "registered", "fresh", "status", "change"),
    [
        (State.UP, False, False, None, "register"),
        (State.UP, True, False, "passing", "register"),  # adopted or changed: re-register
        (State.UP, True, True, None, "check_update"),  # registered, status write failed
        (State.UP, True, True, "warning", "check_update"),
        (State.UP, True, True, "passing", None),
        (State.DEGRADED, True, True, "passing", "check_update"),
        (State.DOWN, True, True, "passing", "deregister"),
        (State.DOWN, True, False, None, "deregister"),
        (State.DOWN, False, False, None, None),
        (State.UNKNOWN, True, False, None, None),  # adopted, left alone until known
        (State.UNKNOWN, False, False, None, None),
    ],
)
def test_entry_change(
    desired: State, registered: bool, fresh: bool, status: str | None, change: str | None
) -> None:
    entry = Entry(PG, desired, registered, fresh, status)  # type: ignore[arg-type]
    assert entry.change() == change
    assert entry.pending() is (change is not None)
    entry.rejected = "HTTP 400: bad"
    assert not entry.pending()  # until the next anti-entropy clears it


def test_entry_beats_only_when_registered_with_a_status() -> None:
    assert Entry(PG, State.UP, True, True, "passing", next_beat_at=5.0).beat_due() == 5.0
    assert Entry(PG, State.UP, True, True, None, next_beat_at=5.0).beat_due() is None
    assert Entry(PG, State.UP, False, False, "passing", next_beat_at=5.0).beat_due() is None
    assert Entry(PG, State.UP, True, True, "passing").beat_due() is None


@pytest.mark.parametrize(
    ("due", "now", "heartbeat", "expected"),
    [
        (100.0, 100.5, True, 110.0),  # on time: keep the phase
        (100.0, 109.0, True, 110.0),  # late, but the next one is still ahead: no drift
        (100.0, 125.0, True, 135.0),  # a whole interval late: skip, don't burst
        (100.0, 103.0, False, 113.0),  # a check update: one interval from now
    ],
)
def test_next_beat_at(due: float, now: float, heartbeat: bool, expected: float) -> None:
    assert next_beat_at(due, now, 10.0, heartbeat, random.Random(1)) == expected


def test_the_first_beat_is_spread_over_half_an_interval() -> None:
    rng = random.Random(3)
    firsts = [next_beat_at(None, 50.0, 10.0, False, rng) for _ in range(200)]
    assert all(55.0 <= t <= 60.0 for t in firsts)
    assert max(firsts) - min(firsts) > 4.0


def test_beat_schedule_pops_due_beats_in_order_and_drops_stale_ones() -> None:
    current: dict[str, float | None] = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 9.0}
    schedule = BeatSchedule(current.get)
    for service_id, due in current.items():
        assert due is not None
        schedule.push(due, service_id)
    schedule.push(0.5, "c")  # rescheduled since: stale
    schedule.push(2.0, "c")  # pushed twice at the same time: sent once
    current["a"] = None  # deregistered: stale
    assert schedule.first() == 1.0
    assert schedule.pop_due(now=5.0, limit=16) == ["b", "c"]
    assert schedule.first() == 9.0
    assert schedule.pop_due(now=5.0, limit=16) == []
    assert len(schedule) == 1


def test_beat_schedule_pops_at_most_limit() -> None:
    current = {f"s{i}": float(i) for i in range(40)}
    schedule = BeatSchedule(current.get)
    for service_id, due in current.items():
        schedule.push(due, service_id)
    assert schedule.pop_due(now=100.0, limit=16) == [f"s{i}" for i in range(16)]
    assert schedule.pop_due(now=100.0, limit=16) == [f"s{i}" for i in range(16, 32)]
    assert schedule.pop_due(now=35.5, limit=16) == [f"s{i}" for i in range(32, 36)]
    assert schedule.first() == 36.0


def test_ledger_keeps_pending_and_registered_count_in_step() -> None:
    other = TcpService(name="mq", kind="tcp", host="mq", port=5672)
    ledger = Ledger(
        [PG, other, TcpService(name="quiet", kind="tcp", host="q", port=1, register=False)]
    )
    assert set(ledger.entries) == {"pg", "mq"}
    pg = ledger.entry(PG)
    pg.desired = State.UP
    ledger.settle(pg)
    assert list(ledger.pending) == ["pg"]
    ledger.set_registered(pg, True)
    ledger.set_registered(pg, True)  # idempotent
    pg.fresh, pg.status = True, "passing"
    ledger.settle(pg)
    assert (list(ledger.pending), ledger.registered) == ([], 1)
    ledger.schedule_beat(pg, 12.0)
    assert ledger.beats.first() == 12.0
    ledger.set_registered(pg, False)
    assert (pg.fresh, ledger.registered, ledger.beats.first()) == (False, 0, None)
    ledger.settle(pg)
    assert list(ledger.pending) == ["pg"]


def test_pass_log_is_one_line_each_or_one_summary_for_many() -> None:
    log = PassLog(limit=2, warnings=frozenset({"lost"}))
    log.note("registered", {"service_id": "a", "status": "passing"})
    log.note("lost", {"service_id": "a", "action": "re-register"})
    for sid, status in (("b", "passing"), ("c", "warning")):
        log.note("registered", {"service_id": sid, "status": status})
    lines = log.drain()
    assert [(level, event) for level, event, _ in lines] == [
        ("debug", "registered"),
        ("debug", "registered"),
        ("debug", "registered"),
        ("info", "registered"),
        ("warning", "lost"),
    ]
    assert lines[3][2] == {"count": 3, "service_ids": ["a", "b"], "status": ["passing", "warning"]}
    assert log.drain() == []


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConsulPermissionError("list", "denied", 403), "forbidden"),
        (ConsulUnavailableError("list", "refused"), "unreachable"),
        (ConsulError("list", "expected a JSON object", 200), "error"),
        (ConsulNotFoundError("heartbeat", "unknown check", 404), "error"),
    ],
)
def test_outage_kind(exc: ConsulError, kind: str) -> None:
    assert outage_kind(exc) == kind
