"""From probe results to health states, and from transitions to everything that reacts.

A result updates the service's view and metrics at once. The registrar and the metrics
follow the health state machine directly (both are idempotent: they are told the state, not
the change), so what Consul and ``/metrics`` say never waits for the disk. Only the event
goes through the outbox: transitions are written in batches by ``run()``, and the publisher
is woken after each successful write.

A stored state (the outbox's last known states) is provisional (``HealthMachine.restore``):
it is never given to the registrar or the metrics; the first probe result of this run is.

If the outbox cannot be written (disk full, I/O error), the batch is kept and retried with
jittered backoff; every failed attempt is counted (``outbox_write_failures_total``), one log
line with the real cause marks the start of the outage and one its end, and ``/status``
shows it (``outbox_status``). What waits is bounded (``max_pending``): past it the oldest
unwritten transitions are dropped and counted, so a long disk failure cannot exhaust memory.

Handover (a group's member died or joined, a standby became active): a service this agent
comes to own waits (``await_seed``) for what Consul shows of it (``seed``), at most
``seed_wait_s``, before its first probe. A seeded state is provisional, like a stored one:
the first result of this run equal to it announces nothing, and only that result reaches the
registrar, so a handover is not a health change and nothing is marked passing from a state
this run has not probed. When Consul shows nothing, the state the agent last knew (or
restored from disk) stays the provisional start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from sutazai_agent.config import AgentConfig, ServiceConfig, ServiceSpec, service_specs
from sutazai_agent.core.backoff import Backoff
from sutazai_agent.core.health import HealthMachine
from sutazai_agent.core.model import (
    KnownState,
    ProbeResult,
    State,
    Transition,
    format_optional_time,
    utcnow,
)
from sutazai_agent.core.outage import Outage
from sutazai_agent.core.protocols import EventSink, Publisher, Registrar
from sutazai_agent.core.secrets import Scrubber
from sutazai_agent.web.metrics import Metrics

log = structlog.get_logger(__name__)
RETRY_MAX_S = 5.0
"""The longest wait between two attempts to write the outbox while it fails (a full disk):
also how late the first transition is written once the disk is freed. A retry is one small
SQLite transaction, cheap enough every few seconds."""
MAX_PENDING = 10_000
"""Transitions waiting for the outbox (only while it cannot be written) before the oldest go."""


@dataclass(slots=True)
class ServiceView:
    """What the agent knows of one service right now (served by /status)."""

    config: ServiceConfig
    machine: HealthMachine
    last: ProbeResult | None = None
    last_at: datetime | None = None
    seed_until: datetime | None = None
    """Waiting for what Consul shows of the service (a handover) until then."""


class Monitor:
    def __init__(
        self,
        config: AgentConfig,
        sink: EventSink,
        registrar: Registrar,
        publisher: Publisher,
        metrics: Metrics,
        now: Callable[[], datetime] = utcnow,
        max_pending: int = MAX_PENDING,
        seed_wait_s: float = 30.0,
        services: Iterable[ServiceConfig] | None = None,
    ) -> None:
        self._seed_wait = timedelta(seconds=seed_wait_s)
        self._sink = sink
        self._max_pending = max_pending
        self._outage = Outage()
        self._backoff = Backoff(0.5, RETRY_MAX_S)
        self._dropping = False
        self._registrar = registrar
        self._publisher = publisher
        self._metrics = metrics
        self._now = now
        self._pending: list[Transition] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ready = False
        self.views: dict[str, ServiceView] = {}
        self._last_error: str | None = None
        self._failing_at: datetime | None = None
        specs = service_specs(config, config.services if services is None else services)
        self.add(specs.values())

    # --- the set of services (start and reload) ------------------------------------------
    def add(self, specs: Iterable[ServiceSpec]) -> None:
        """Start following these services, from their last announced state if any (as at
        start: a service removed and added again continues its sequence)."""
        known: Mapping[str, KnownState] = self._sink.known_states()
        for spec in specs:
            service = spec.service
            machine = HealthMachine(service.name, service.kind, spec.rise, spec.fall)
            restored = known.get(service.name)
            if restored is not None:
                machine.restore(restored.state, restored.since)  # provisional: not reported
            self.views[service.name] = ServiceView(service, machine)
            self._metrics.set_state(service.name, service.kind, State.UNKNOWN, State.UNKNOWN)

    def remove(self, names: Iterable[str]) -> None:
        """Forget these services: their view, their metric series, their registration (the
        registrar deregisters it when it is ours). Their stored state and sequence stay in
        the outbox."""
        for name in names:
            view = self.views.pop(name, None)
            if view is None:
                continue
            self._metrics.forget(name)
            self._registrar.forget(view.config)

    def update(self, specs: Iterable[ServiceSpec]) -> None:
        """Apply new settings to followed services. The health state, its streak and the
        sequence are kept: the next probes decide, with the usual rise and fall, so a change
        of settings alone is never a health change. The registration is redone when it
        differs (the registrar compares), and moved when the service id changed."""
        for spec in specs:
            view = self.views[spec.name]
            old, new = view.config, spec.service
            machine = view.machine
            machine.rise, machine.fall = spec.rise, spec.fall
            state = machine.state if machine.confirmed else State.UNKNOWN
            if old.kind != new.kind:
                machine.kind = new.kind
                self._metrics.forget(new.name)  # the kind is a label of the probe series
                self._metrics.set_state(new.name, new.kind, State.UNKNOWN, state)
            if old.id != new.id or not new.register_service:
                self._registrar.forget(old)
            view.config = new
            if machine.confirmed:  # never from a stored state: the next probe decides
                self._registrar.observe(new, state)

    def ready(self) -> bool:
        """True once every service has had a probe result; it stays true after that (a
        service added by a reload does not make a running agent unready)."""
        if not self._ready:
            self._ready = all(view.last is not None for view in self.views.values())
        return self._ready

    # --- handover --------------------------------------------------------------------------
    def release(self, name: str, *, await_seed: bool) -> None:
        """The service's ownership changed: its state becomes provisional (no evidence of
        this run); with ``await_seed`` (this agent now owns it), hold its probes until
        ``seed`` says what Consul shows."""
        view = self.views.get(name)
        if view is None:
            return
        old = view.machine
        previous = old.state
        view.machine = HealthMachine(old.service, old.kind, old.rise, old.fall)
        if old.state is not State.UNKNOWN and old.since is not None:
            # Kept as a fallback, provisionally: when Consul shows nothing (a down service
            # is deregistered), the state this agent last knew, or restored, is the best
            # start (a restart whose previous session still held the lock).
            view.machine.restore(old.state, old.since)
        view.last = view.last_at = None
        view.seed_until = self._now() + self._seed_wait if await_seed else None
        self._metrics.set_state(name, view.config.kind, previous, State.UNKNOWN)

    def seed(self, name: str, state: State | None) -> None:
        """Start from what Consul shows (``None``: nothing to start from), provisionally."""
        view = self.views.get(name)
        if view is None or view.seed_until is None:
            return
        view.seed_until = None
        if state is not None:
            view.machine.restore(state, self._now())

    def awaiting_seed(self, name: str) -> bool:
        """Whether the service's probes wait for its seed (bounded by ``seed_wait_s``)."""
        view = self.views.get(name)
        if view is None:
            return False
        if view.seed_until is not None and self._now() >= view.seed_until:
            log.warning("consul_seed_timed_out", service=name, action="probe from unknown")
            view.seed_until = None
        return view.seed_until is not None

    def record(self, name: str, result: ProbeResult, service: ServiceConfig | None = None) -> None:
        """Feed a probe result. A result for a service no longer followed, or (``service``
        given) probed with settings since replaced, is dropped."""
        view = self.views.get(name)
        if view is None or (service is not None and view.config is not service):
            return
        at = self._now()
        first = view.last is None
        view.last, view.last_at = result, at
        self._metrics.observe_probe(name, view.config.kind, result.outcome, result.latency_s)
        transition = view.machine.observe(result, at)
        if first or transition is not None:
            self._follow(view, transition)
        if transition is not None:
            self._pending.append(transition)
            if len(self._pending) > self._max_pending:
                self._drop_oldest()
            self._idle.clear()
            self._wake.set()

    def _drop_oldest(self) -> None:
        excess = len(self._pending) - self._max_pending
        dropped, self._pending = self._pending[:excess], self._pending[excess:]
        self._metrics.events_dropped.inc(len(dropped))
        if not self._dropping:
            self._dropping = True
            log.error(
                "transitions_dropped",
                reason="the outbox cannot be written",
                max_pending=self._max_pending,
                oldest=[f"{t.service}:{t.current.value}" for t in dropped[:5]],
            )

    async def run(self) -> None:
        """Write transitions to the outbox in batches; wake the publisher after each."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._pending
            self._pending = []
            try:
                await self._sink.append(batch)
            except Exception as exc:  # noqa: BLE001 - loop boundary: a full disk must not kill us
                self._write_failed(exc, len(batch))
                self._pending[:0] = batch
                if len(self._pending) > self._max_pending:
                    self._drop_oldest()
                await self._retry_pause()
                self._wake.set()
                continue
            self._backoff.reset()
            self._write_recovered()
            self._publisher.wake()
            if not self._pending:
                self._idle.set()

    async def _retry_pause(self) -> None:
        await asyncio.sleep(self._backoff.next())

    def _write_failed(self, exc: Exception, pending: int) -> None:
        self._metrics.outbox_write_failures.inc()
        self._last_error = Scrubber().error(exc)
        if self._outage.failed():
            self._failing_at = self._now()
            log.error(
                "outbox_write_failed", error=self._last_error, pending=pending, action="will retry"
            )
        else:
            log.debug(
                "outbox_write_retry_failed", attempt=self._outage.failures, error=self._last_error
            )

    def _write_recovered(self) -> None:
        failures = self._outage.failures
        outage_s = self._outage.recovered()
        if outage_s is None:
            return
        log.info("outbox_write_recovered", outage_s=outage_s, failed_attempts=failures)
        self._failing_at = None
        self._dropping = False

    def outbox_status(self) -> dict[str, Any]:
        """The outbox writer's part of ``/status``: is the disk taking the transitions?"""
        return {
            "writable": self._outage.since is None,
            "unwritten": len(self._pending),
            "failing_since": format_optional_time(self._failing_at),
            "failed_attempts": self._outage.failures,
            "last_error": self._last_error,
        }

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every transition so far is in the outbox; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _follow(self, view: ServiceView, transition: Transition | None) -> None:
        """Bring the metrics and the registrar to the machine's state (first result of this
        run, or a transition): directly, whatever the outbox is doing."""
        config, state = view.config, view.machine.state
        self._metrics.set_state(config.name, config.kind, State.UNKNOWN, state)
        self._registrar.observe(config, state)
        if transition is None:
            return
        t = transition
        self._metrics.count_transition(t.service, t.previous, t.current)
        log.info(
            "service_state_changed",
            service=t.service,
            previous=t.previous.value,
            current=t.current.value,
            reason=t.reason,
        )

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for name, view in self.views.items():
            last = view.last
            out.append(
                {
                    "name": name,
                    "kind": view.config.kind,
                    "state": view.machine.state.value,
                    "since": format_optional_time(view.machine.since),
                    "registered": self._registrar.is_registered(view.config.id),
                    "last_probe": None
                    if last is None
                    else {
                        "result": last.outcome.value,
                        "latency_ms": round(last.latency_s * 1000, 3),
                        "reason": last.reason,
                        "at": format_optional_time(view.last_at),
                    },
                }
            )
        return out
