"""The fast /metrics body says exactly what prometheus_client's own encoder says."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from pydantic import ValidationError

from sutazai_agent.config import AgentConfig, describe
from sutazai_agent.core.model import Outcome, State
from sutazai_agent.web.metrics import Metrics, MetricsRegistry


def samples(families: object) -> set[tuple[str, tuple[tuple[str, str], ...], float | str]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), "NaN" if math.isnan(s.value) else s.value)
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


def test_services_another_agent_owns_are_not_exported_and_come_back_where_they_were() -> None:
    metrics = busy_metrics()
    metrics.hide(["db"])
    for text in (exposition(metrics).decode(), generate_latest(metrics.registry).decode()):
        assert 'service="db"' not in text
        assert 'sutazai_agent_service_up{service="web"} 0.0' in text
    metrics.observe_probe("db", "tcp", Outcome.OK, 0.004)  # a late probe of the old owner
    metrics.hide([])
    fast = exposition(metrics).decode()
    assert samples(parse_text(fast)) == samples(
        parse_text(generate_latest(metrics.registry).decode())
    )
    assert 'sutazai_agent_probes_total{kind="tcp",result="ok",service="db"} 3.0' in fast


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


def lean_metrics() -> Metrics:
    metrics = Metrics(per_service_histogram=False)
    for latency in (0.004, 0.2):
        metrics.observe_probe("db", "tcp", Outcome.OK, latency)
    metrics.observe_probe("web", "http", Outcome.OK, 0.01)
    metrics.observe_probe("web", "http", Outcome.TIMEOUT, 5.0)
    for name, kind in (("db", "tcp"), ("web", "http")):
        metrics.set_state(name, kind, State.UNKNOWN, State.UP)
        metrics.count_transition(name, State.UNKNOWN, State.UP)
    metrics.service("new", "tcp")
    return metrics


def test_without_per_service_histograms_the_fast_text_still_matches() -> None:
    metrics = lean_metrics()
    fast = exposition(metrics).decode()
    slow = generate_latest(metrics.registry).decode()
    assert samples(parse_text(fast)) == samples(parse_text(slow))
    assert "sutazai_agent_probe_duration_seconds" not in fast
    assert 'sutazai_agent_probe_last_duration_seconds{kind="tcp",service="db"} 0.2' in fast
    assert 'sutazai_agent_probe_last_duration_seconds{kind="tcp",service="new"} NaN' in fast
    assert 'sutazai_agent_probe_kind_duration_seconds_count{kind="tcp"} 2.0' in fast
    assert 'sutazai_agent_probe_kind_duration_seconds_bucket{kind="http",le="0.025"} 1.0' in fast
    names = {family.name for family in parse_om(exposition(metrics, openmetrics=True).decode())}
    assert "sutazai_agent_probe_last_duration_seconds" in names


def test_without_per_service_histograms_a_service_has_at_most_8_series() -> None:
    text = exposition(lean_metrics()).decode()

    def lines(service: str) -> list[str]:
        return [line for line in text.splitlines() if f'service="{service}"' in line]

    # up 1, state 4, last duration 1, probes 1 (only "ok" seen), state changes 1
    assert len(lines("db")) == 8
    assert len(lines("web")) == 9  # a second result seen: one more counter
    assert len(lines("new")) == 6  # not probed yet: no counters


def test_per_service_histogram_is_a_config_key_on_by_default() -> None:
    assert AgentConfig().metrics.per_service_histogram is True
    config = AgentConfig(metrics={"per_service_histogram": False})
    assert config.metrics.per_service_histogram is False
    assert "sutazai_agent_probe_kind_duration_seconds" not in exposition(busy_metrics()).decode()
