"""The fast /metrics body says exactly what prometheus_client's own encoder says."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from pydantic import ValidationError

from sutazai_agent.config import AgentConfig, describe
from sutazai_agent.core.model import Outcome, State
from sutazai_agent.web.metrics import Metrics, MetricsRegistry


def samples(families: object) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in families  # type: ignore[attr-defined]
        for s in family.samples
        if not s.name.startswith(("process_", "python_"))
    }


def busy_metrics(buckets: tuple[float, ...] = (0.01, 0.1)) -> Metrics:
    metrics = Metrics(probe_buckets_s=buckets)
    metrics.observe_probe("db", "tcp", Outcome.OK, 0.004)
    metrics.observe_probe("db", "tcp", Outcome.OK, 0.1)  # on a bound: counted in le="0.1"
    metrics.observe_probe("db", "tcp", Outcome.TIMEOUT, 5.0)
    metrics.set_state("db", "tcp", State.UNKNOWN, State.UP)
    metrics.count_transition("db", State.UNKNOWN, State.UP)
    metrics.service("web", "http")
    metrics.consul_operations.labels("register", "ok").inc()
    return metrics


def exposition(metrics: Metrics, openmetrics: bool = False) -> bytes:
    registry = metrics.registry
    assert isinstance(registry, MetricsRegistry)
    return b"".join(registry.exposition_chunks(openmetrics))


def test_fast_text_matches_prometheus_client() -> None:
    metrics = busy_metrics()
    fast = exposition(metrics).decode()
    slow = generate_latest(metrics.registry).decode()
    assert samples(parse_text(fast)) == samples(parse_text(slow))
    assert 'sutazai_agent_probe_duration_seconds_bucket{kind="tcp",le="0.1",service="db"} 2.0' in (
        fast
    )
    assert 'sutazai_agent_service_state{service="web",state="unknown"} 1.0' in fast


def test_fast_openmetrics_parses_and_ends_with_eof() -> None:
    metrics = busy_metrics()
    text = exposition(metrics, openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    names = {family.name for family in parse_om(text)}
    assert {"sutazai_agent_probes", "sutazai_agent_probe_duration_seconds"} <= names


def test_bucket_count_sets_the_series_per_service() -> None:
    metrics = busy_metrics(buckets=())
    text = exposition(metrics).decode()
    lines = [line for line in text.splitlines() if 'service="db"' in line]
    # up 1, state 4, duration +Inf/count/sum 3, probes 4, state changes 1
    assert len(lines) == 13


def test_buckets_are_configurable_and_must_increase() -> None:
    config = AgentConfig(metrics={"probe_duration_buckets_s": []})
    assert config.metrics.probe_duration_buckets_s == ()
    with pytest.raises(ValidationError) as info:
        AgentConfig(metrics={"probe_duration_buckets_s": [0.1, 0.1]})
    assert describe(info.value) == "metrics.probe_duration_buckets_s: must be strictly increasing"
