"""From probe results to health states, and from transitions to everything that reacts.

A result updates the service's view and metrics at once. A transition is first written to
the outbox (durably, in a batch with any others of the same moment); only then do the
registrar, the metrics and the publisher hear of it. If the outbox cannot be written, the
batch is kept and retried with jittered backoff (one log line when the failure starts, one when
it ends): nothing reacts to a transition that is not on disk. What waits is bounded
(``max_pending``): past it the oldest unwritten transitions are dropped and counted, so a long
disk failure cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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
from sutazai_agent.web.metrics import Metrics

log = structlog.get_logger(__name__)
RETRY_MAX_S = 30.0
MAX_PENDING = 10_000
"""Transitions waiting for the outbox (only while it cannot be written) before the oldest go."""


@dataclass(slots=True)
class ServiceView:
    """What the agent knows of one service right now (served by /status)."""

    config: ServiceConfig
    machine: HealthMachine
    last: ProbeResult | None = None
    last_at: datetime | None = None


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
        services: Iterable[ServiceConfig] | None = None,
    ) -> None:
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
            if restored is not None and restored.state is not State.UNKNOWN:
                machine.state, machine.since = restored.state, restored.since
                self._registrar.observe(service, restored.state)
            self.views[service.name] = ServiceView(service, machine)
            self._metrics.set_state(service.name, service.kind, State.UNKNOWN, machine.state)

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
            if old.kind != new.kind:
                machine.kind = new.kind
                self._metrics.forget(new.name)  # the kind is a label of the probe series
                self._metrics.set_state(new.name, new.kind, State.UNKNOWN, machine.state)
            if old.id != new.id or not new.register_service:
                self._registrar.forget(old)
            view.config = new
            self._registrar.observe(new, machine.state)

    def ready(self) -> bool:
        """True once every service has had a probe result; it stays true after that (a
        service added by a reload does not make a running agent unready)."""
        if not self._ready:
            self._ready = all(view.last is not None for view in self.views.values())
        return self._ready

    def record(self, name: str, result: ProbeResult, service: ServiceConfig | None = None) -> None:
        """Feed a probe result. A result for a service no longer followed, or (``service``
        given) probed with settings since replaced, is dropped."""
        view = self.views.get(name)
        if view is None or (service is not None and view.config is not service):
            return
        at = self._now()
        view.last, view.last_at = result, at
        self._metrics.observe_probe(name, view.config.kind, result.outcome, result.latency_s)
        transition = view.machine.observe(result, at)
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
        """Write transitions to the outbox in batches, then let the others react."""
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
                await asyncio.sleep(self._backoff.next())
                self._wake.set()
                continue
            self._backoff.reset()
            self._write_recovered()
            self._react(batch)
            if not self._pending:
                self._idle.set()

    def _write_failed(self, exc: Exception, pending: int) -> None:
        if self._outage.failed():
            log.error("outbox_write_failed", pending=pending, action="will retry", exc_info=exc)
        else:
            log.debug("outbox_write_retry_failed", attempt=self._outage.failures, error=repr(exc))

    def _write_recovered(self) -> None:
        failures = self._outage.failures
        outage_s = self._outage.recovered()
        if outage_s is None:
            return
        log.info("outbox_write_recovered", outage_s=outage_s, failed_attempts=failures)
        self._dropping = False

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every transition so far is in the outbox; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _react(self, batch: Sequence[Transition]) -> None:
        for t in batch:
            view = self.views.get(t.service)
            if view is None:  # removed by a reload since: written, announced, nothing else
                continue
            self._metrics.set_state(t.service, t.kind, t.previous, t.current)
            self._metrics.count_transition(t.service, t.previous, t.current)
            self._registrar.observe(view.config, t.current)
            log.info(
                "service_state_changed",
                service=t.service,
                previous=t.previous.value,
                current=t.current.value,
                reason=t.reason,
            )
        self._publisher.wake()

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
