"""Every Prometheus metric of the agent, on a registry of its own (no global state).

Names, labels and units are the public contract in DESIGN.md ("Metrics"). Label children are
created once per service and cached, so observing a probe allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from sutazai_agent import __version__
from sutazai_agent.model import Outcome, State

PREFIX = "sutazai_agent"
PROBE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
STATES = tuple(State)
OUTCOMES = tuple(Outcome)


@dataclass(slots=True)
class ServiceSeries:
    """Cached label children of one service: observing a probe does no label lookups."""

    up: Gauge
    state: dict[State, Gauge]
    duration: Histogram
    results: dict[Outcome, Counter]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.service_up = Gauge(
            f"{PREFIX}_service_up", "1 if the service is up or degraded, else 0.", ["service"],
            registry=r,
        )  # fmt: skip
        self.service_state = Gauge(
            f"{PREFIX}_service_state", "1 for the service's current state, 0 for the others.",
            ["service", "state"], registry=r,
        )  # fmt: skip
        self.probe_duration = Histogram(
            f"{PREFIX}_probe_duration_seconds", "Duration of one probe.", ["service", "kind"],
            buckets=PROBE_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.probes = Counter(
            f"{PREFIX}_probes", "Probes run, by result.", ["service", "kind", "result"], registry=r
        )
        self.state_changes = Counter(
            f"{PREFIX}_state_changes", "Health state transitions.",
            ["service", "from_state", "to_state"], registry=r,
        )  # fmt: skip
        self.scheduler_lag = Histogram(
            f"{PREFIX}_scheduler_lag_seconds", "How late a probe started after its due time.",
            buckets=LAG_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.consul_operations = Counter(
            f"{PREFIX}_consul_operations", "Consul API calls, by operation and outcome.",
            ["operation", "outcome"], registry=r,
        )  # fmt: skip
        self.consul_registered_services = Gauge(
            f"{PREFIX}_consul_registered_services",
            "Services this agent currently has registered in Consul.", registry=r,
        )  # fmt: skip
        self.events_published = Counter(
            f"{PREFIX}_events_published", "Events confirmed by the broker.", registry=r
        )
        self.events_pending = Gauge(
            f"{PREFIX}_events_pending", "Events in the outbox awaiting confirmation.", registry=r
        )
        self.events_publish_failures = Counter(
            f"{PREFIX}_events_publish_failures", "Failed publish attempts (will retry).",
            registry=r,
        )  # fmt: skip
        self.events_unroutable = Counter(
            f"{PREFIX}_events_unroutable", "Events returned by the broker as unroutable.",
            registry=r,
        )  # fmt: skip
        self.events_dropped = Counter(
            f"{PREFIX}_events_dropped", "Events dropped because the outbox was full.", registry=r
        )
        self.build_info = Info(f"{PREFIX}_build", "Build information.", registry=r)
        self.build_info.info({"version": __version__})
        self._series: dict[str, ServiceSeries] = {}

    def service(self, name: str, kind: str) -> ServiceSeries:
        """The cached label children of one service, created (all at 0) on first use."""
        series = self._series.get(name)
        if series is None:
            series = ServiceSeries(
                up=self.service_up.labels(name),
                state={s: self.service_state.labels(name, s.value) for s in STATES},
                duration=self.probe_duration.labels(name, kind),
                results={o: self.probes.labels(name, kind, o.value) for o in OUTCOMES},
            )
            series.state[State.UNKNOWN].set(1)
            self._series[name] = series
        return series

    def observe_probe(self, name: str, kind: str, outcome: Outcome, latency_s: float) -> None:
        series = self.service(name, kind)
        series.duration.observe(latency_s)
        series.results[outcome].inc()

    def set_state(self, name: str, kind: str, previous: State, current: State) -> None:
        series = self.service(name, kind)
        series.state[previous].set(0)
        series.state[current].set(1)
        series.up.set(1 if current in (State.UP, State.DEGRADED) else 0)

    def count_transition(self, name: str, previous: State, current: State) -> None:
        self.state_changes.labels(name, previous.value, current.value).inc()
