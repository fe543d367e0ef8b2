"""The pure parts of Consul registration: payload, durations, ownership, drift, backoff."""

from __future__ import annotations

import random

import pytest

from sutazai_agent.config import ConsulConfig, HttpService, TcpService
from sutazai_agent.consul_api import AgentService
from sutazai_agent.model import State
from sutazai_agent.registration import (
    Backoff,
    check_status,
    differs,
    go_duration,
    is_ours,
    ownership_filter,
    registration_payload,
)


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


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1.0, cap_s=30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(10)]
    steps = [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next() <= 1.0


def test_backoff_survives_a_day_long_outage() -> None:
    # 2.0 ** 1024 overflows: without a bounded exponent the registrar's retry loop died
    # after some 8 hours of Consul being unreachable.
    backoff = Backoff(initial_s=1.0, cap_s=30.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(3000)]
    assert all(15.0 <= d <= 30.0 for d in delays[10:])
