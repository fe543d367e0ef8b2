"""Every Prometheus metric of the agent, on a registry of its own (no global state).

Names, labels and units are the public contract in DESIGN.md ("Metrics").

The per-service families (``service_up``, ``service_state``, ``probe_duration_seconds``,
``probes_total``, ``state_changes_total``) are the ones that grow with the number of services,
so they are not prometheus_client children (about 11 KB and a lock per value each, and
~25 µs per sample to expose) but plain counters in one ``ServiceSeries`` per service, created
once, written without label lookups or locks, and rendered straight to the exposition text.
At 10,000 services that is ~1 KB instead of ~11 KB per service and a /metrics body built in
tens of milliseconds instead of seconds. They still collect like any prometheus_client
collector (``registry.collect()``, ``get_sample_value``, ``generate_latest`` all see them).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sutazai_agent import __version__
from sutazai_agent.config import PROBE_DURATION_BUCKETS_S
from sutazai_agent.core.model import Outcome, State

PREFIX = "sutazai_agent"
LAG_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
HEARTBEAT_LAG_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
STATES = tuple(State)
OUTCOMES = tuple(Outcome)
UP_STATES = frozenset({State.UP, State.DEGRADED})
Add = Callable[[str], None]
CHUNK_SERVICES = 200
"""Services per piece of the /metrics body (a few ms of rendering between loop turns)."""

UP = f"{PREFIX}_service_up"
STATE = f"{PREFIX}_service_state"
DURATION = f"{PREFIX}_probe_duration_seconds"
PROBES = f"{PREFIX}_probes"
CHANGES = f"{PREFIX}_state_changes"
LAST = f"{PREFIX}_probe_last_duration_seconds"
KIND_DURATION = f"{PREFIX}_probe_kind_duration_seconds"
HELP = {
    LAST: "Duration of the service's last probe (NaN before the first).",
    UP: "1 if the service is up or degraded, else 0.",
    STATE: "1 for the service's current state, 0 for the others.",
    DURATION: "Duration of one probe.",
    PROBES: "Probes run, by result.",
    CHANGES: "Health state transitions.",
}


class ServiceSeries:
    """Everything the per-service families show of one service; observing allocates nothing."""

    __slots__ = (
        "buckets",
        "changes",
        "duration_sum",
        "kind",
        "labels",
        "last",
        "name",
        "results",
        "state",
    )

    def __init__(self, name: str, kind: str, buckets: int) -> None:
        self.name = name
        self.kind = kind
        self.labels = (f'service="{_escape(name)}"', f'kind="{_escape(kind)}"')
        self.state = State.UNKNOWN
        self.buckets = [0] * (buckets + 1)
        """Observations per bucket (not cumulative); the last one is +Inf."""
        self.duration_sum = 0.0
        self.last = math.nan
        self.results = dict.fromkeys(OUTCOMES, 0)
        self.changes: dict[tuple[State, State], int] = {}

    @property
    def up(self) -> int:
        return 1 if self.state in UP_STATES else 0


class ServiceFamilies:
    """The per-service metric families: a prometheus_client collector that can also render
    its own exposition text fast (``render``).

    With ``histogram`` false (``metrics.per_service_histogram: false``) there is no
    per-service ``probe_duration_seconds``: a ``probe_last_duration_seconds`` gauge per
    service instead, and ``probes_total`` only for the results a service has had (the
    latency distribution is then per kind, ``Metrics.probe_kind_duration``)."""

    def __init__(self, buckets_s: Sequence[float], histogram: bool = True) -> None:
        self.histogram = histogram
        self.bounds = tuple(float(b) for b in buckets_s) if histogram else ()
        self._le = [_go_float(b) for b in (*self.bounds, math.inf)]
        self.series: dict[str, ServiceSeries] = {}
        self.hidden: frozenset[str] = frozenset()
        """Services another agent owns (a group's other members, the holder of a standby's
        id): not exported, so that summing ``service_up`` over a fleet counts each service
        once. Their series are kept: counters go on where they were if they come back."""

    def get(self, name: str, kind: str) -> ServiceSeries:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = ServiceSeries(name, kind, len(self.bounds))
        return series

    def observe(self, series: ServiceSeries, outcome: Outcome, latency_s: float) -> None:
        if self.histogram:
            series.buckets[bisect_left(self.bounds, latency_s)] += 1
            series.duration_sum += latency_s
        else:
            series.last = latency_s
        series.results[outcome] += 1

    # --- prometheus_client's view (tests, generate_latest) ---------------------------------
    def describe(self) -> list[Metric]:
        return self._families([])

    def collect(self) -> list[Metric]:
        return self._families(self._exported())

    def _exported(self) -> list[ServiceSeries]:
        hidden = self.hidden
        if not hidden:
            return list(self.series.values())
        return [s for s in self.series.values() if s.name not in hidden]

    def _families(self, all_series: list[ServiceSeries]) -> list[Metric]:
        up = GaugeMetricFamily(UP, HELP[UP], labels=["service"])
        state = GaugeMetricFamily(STATE, HELP[STATE], labels=["service", "state"])
        duration = HistogramMetricFamily(DURATION, HELP[DURATION], labels=["service", "kind"])
        last = GaugeMetricFamily(LAST, HELP[LAST], labels=["service", "kind"])
        probes = CounterMetricFamily(PROBES, HELP[PROBES], labels=["service", "kind", "result"])
        changes = CounterMetricFamily(
            CHANGES, HELP[CHANGES], labels=["service", "from_state", "to_state"]
        )
        for s in all_series:
            up.add_metric([s.name], s.up)
            for st in STATES:
                state.add_metric([s.name, st.value], 1 if st is s.state else 0)
            if self.histogram:
                cumulative, buckets = 0, []
                for le, count in zip(self._le, list(s.buckets), strict=True):
                    cumulative += count
                    buckets.append((le, cumulative))
                duration.add_metric([s.name, s.kind], buckets, s.duration_sum)
            else:
                last.add_metric([s.name, s.kind], s.last)
            for outcome, n in list(s.results.items()):
                if n or self.histogram:
                    probes.add_metric([s.name, s.kind, outcome.value], n)
            for (before, after), n in list(s.changes.items()):
                changes.add_metric([s.name, before.value, after.value], n)
        return [up, state, duration if self.histogram else last, probes, changes]

    # --- the fast path ---------------------------------------------------------------------
    def chunks(self, openmetrics: bool = False, size: int = CHUNK_SERVICES) -> Iterator[str]:
        """The five families as exposition text (Prometheus 0.0.4, or OpenMetrics without the
        final ``# EOF``) in pieces of at most ``size`` services, so that a caller on the event
        loop can let the probes run between them. Reads a snapshot of the service list; a
        histogram's +Inf bucket and count come from the same reads."""
        all_series = self._exported()
        slices = [all_series[i : i + size] for i in range(0, len(all_series), size)] or [[]]
        counter_suffix = "" if openmetrics else "_total"
        latency: tuple[str, str, str, Callable[[ServiceSeries, Add], None]] = (
            (DURATION, "histogram", "", self._duration_lines)
            if self.histogram
            else (LAST, "gauge", "", self._last_lines)
        )
        families: list[tuple[str, str, str, Callable[[ServiceSeries, Add], None]]] = [
            (UP, "gauge", "", self._up_lines),
            (STATE, "gauge", "", self._state_lines),
            latency,
            (PROBES, "counter", counter_suffix, self._probes_lines),
            (CHANGES, "counter", counter_suffix, self._changes_lines),
        ]
        out: list[str] = []
        add = out.append
        for name, kind, suffix, lines in families:
            add(f"# HELP {name}{suffix} {HELP[name]}\n# TYPE {name}{suffix} {kind}\n")
            for part in slices:
                for series in part:
                    lines(series, add)
                yield "".join(out)
                out.clear()

    @staticmethod
    def _up_lines(s: ServiceSeries, add: Add) -> None:
        add(f"{UP}{{{s.labels[0]}}} {s.up}.0\n")

    @staticmethod
    def _state_lines(s: ServiceSeries, add: Add) -> None:
        current = s.state
        for st in STATES:
            add(f'{STATE}{{{s.labels[0]},state="{st.value}"}} {int(st is current)}.0\n')

    def _duration_lines(self, s: ServiceSeries, add: Add) -> None:
        svc, kind = s.labels
        cumulative = 0
        for le, count in zip(self._le, list(s.buckets), strict=True):
            cumulative += count
            add(f'{DURATION}_bucket{{{kind},le="{le}",{svc}}} {cumulative}.0\n')
        add(f"{DURATION}_count{{{kind},{svc}}} {cumulative}.0\n")
        add(f"{DURATION}_sum{{{kind},{svc}}} {s.duration_sum!r}\n")

    @staticmethod
    def _last_lines(s: ServiceSeries, add: Add) -> None:
        svc, kind = s.labels
        add(f"{LAST}{{{kind},{svc}}} {_go_float(s.last)}\n")

    def _probes_lines(self, s: ServiceSeries, add: Add) -> None:
        svc, kind = s.labels
        every = self.histogram  # without the histogram, only the results seen
        for outcome, n in list(s.results.items()):
            if n or every:
                add(f'{PROBES}_total{{{kind},result="{outcome.value}",{svc}}} {n}.0\n')

    @staticmethod
    def _changes_lines(s: ServiceSeries, add: Add) -> None:
        for (before, after), n in list(s.changes.items()):
            add(
                f'{CHANGES}_total{{from_state="{before.value}",{s.labels[0]},'
                f'to_state="{after.value}"}} {n}.0\n'
            )


class MetricsRegistry(CollectorRegistry):
    """A registry whose per-service families render fast (``exposition_chunks``).

    Everything else registered here is also kept in ``core``, so that prometheus_client
    encodes only the few fixed metrics and ``ServiceFamilies`` renders the rest itself.
    """

    def __init__(self, services: ServiceFamilies) -> None:
        self.core = CollectorRegistry(auto_describe=True)
        self.services = services
        super().__init__(auto_describe=True)
        super().register(services)

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.core.register(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self.core.unregister(collector)

    def exposition_chunks(self, openmetrics: bool = False) -> Iterator[bytes]:
        """The /metrics body in pieces of a few milliseconds' work each."""
        if not openmetrics:
            yield generate_latest(self.core)
        else:
            full: bytes = generate_openmetrics(self.core)  # type: ignore[no-untyped-call]
            yield full.removesuffix(b"# EOF\n")
        for chunk in self.services.chunks(openmetrics):
            yield chunk.encode()
        if openmetrics:
            yield b"# EOF\n"


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        probe_buckets_s: Sequence[float] = PROBE_DURATION_BUCKETS_S,
        *,
        per_service_histogram: bool = True,
    ) -> None:
        self.services = ServiceFamilies(probe_buckets_s, per_service_histogram)
        if registry is None:
            registry = MetricsRegistry(self.services)
        else:
            registry.register(self.services)
        self.registry = registry
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
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
        self.consul_registration_backlog = Gauge(
            f"{PREFIX}_consul_registration_backlog",
            "Registration changes (register, check update, deregister) waiting to be written "
            "to Consul.", registry=r,
        )  # fmt: skip
        self.consul_heartbeat_lag = Histogram(
            f"{PREFIX}_consul_heartbeat_lag_seconds",
            "How late a TTL heartbeat reached Consul after its due time (a heartbeat is due "
            "every ttl_s / 3; later than 2/3 of the TTL, the check goes critical).",
            buckets=HEARTBEAT_LAG_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.consul_conflicts = Gauge(
            f"{PREFIX}_consul_conflicts",
            "Configured service IDs whose Consul registration belongs to another owner.",
            registry=r,
        )  # fmt: skip
        self.group_members = Gauge(
            f"{PREFIX}_group_members", "Live members of this agent's group (1 alone).",
            registry=r,
        )  # fmt: skip
        self.owned_services = Gauge(
            f"{PREFIX}_owned_services", "Services this agent probes and announces now.",
            registry=r,
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
        self.outbox_write_failures = Counter(
            f"{PREFIX}_outbox_write_failures",
            "Failed attempts to write transitions to the outbox (will retry).", registry=r,
        )  # fmt: skip
        self.config_last_reload_successful = Gauge(
            f"{PREFIX}_config_last_reload_successful",
            "1 if the last configuration reload (or the start) succeeded, else 0.", registry=r,
        )  # fmt: skip
        self.config_last_reload_success_timestamp = Gauge(
            f"{PREFIX}_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or reload).",
            registry=r,
        )  # fmt: skip
        self.build_info = Info(f"{PREFIX}_build", "Build information.", registry=r)
        self.build_info.info({"version": __version__})
        self.probe_kind_duration: Histogram | None = None
        self._kind_durations: dict[str, Histogram] = {}
        if not per_service_histogram:  # the latency distribution per kind instead
            self.probe_kind_duration = Histogram(
                KIND_DURATION, "Duration of one probe, by kind (all services of the kind).",
                ["kind"], buckets=tuple(probe_buckets_s) or PROBE_DURATION_BUCKETS_S, registry=r,
            )  # fmt: skip

    def service(self, name: str, kind: str) -> ServiceSeries:
        """The series of one service, created (all at 0, state unknown) on first use."""
        return self.services.get(name, kind)

    def hide(self, names: Iterable[str]) -> None:
        """Export no per-service series of ``names`` (only these) from now on: services
        another agent owns (see ``ServiceFamilies.hidden``)."""
        self.services.hidden = frozenset(names)

    def forget(self, name: str) -> None:
        """Drop every per-service series of ``name`` (a service no longer configured)."""
        self.services.series.pop(name, None)

    def observe_probe(self, name: str, kind: str, outcome: Outcome, latency_s: float) -> None:
        self.services.observe(self.services.get(name, kind), outcome, latency_s)
        if self.probe_kind_duration is not None:
            child = self._kind_durations.get(kind)
            if child is None:
                child = self._kind_durations[kind] = self.probe_kind_duration.labels(kind)
            child.observe(latency_s)

    def set_state(self, name: str, kind: str, previous: State, current: State) -> None:
        self.services.get(name, kind).state = current

    def count_transition(self, name: str, previous: State, current: State) -> None:
        series = self.services.series.get(name)
        if series is None:  # not seen yet (the monitor sets the state first)
            series = self.services.get(name, "")
        key = (previous, current)
        series.changes[key] = series.changes.get(key, 0) + 1


def _go_float(value: float) -> str:
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
