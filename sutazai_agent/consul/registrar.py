"""``ConsulRegistrar``: keeps Consul's agent catalog in line with the services' health.

``observe()`` only records the desired state and wakes the loop. ``run()`` is the one
long-running task; each pass (``sync_once()``) does, in order:

1. anti-entropy (``reconcile.Reconciler``), when due (at start, every
   ``resync_interval_s``, after every failure, after a change of ownership): adopt this
   agent's registrations and those it takes over, mark what is missing or differs,
   deregister what is ours but no longer configured, tell a new owner what Consul shows;
2. apply changes: register (always followed by a check update, because Consul keeps an
   existing check's status on re-registration), update the check on passing ↔ warning
   (↔ critical with ``on_down: critical``), deregister on down (``on_down: deregister``);
3. TTL heartbeats, every ``ttl_s / 3`` per service, their phases spread out; those falling
   due within ``BEAT_EARLY_S`` go together, ``BEATS_PER_PASS`` at most. A heartbeat that
   finds its registration gone re-registers it and triggers an anti-entropy pass at once, so
   that after Consul loses its state every registration is back in one pass.

A pass costs what it does, not the number of services: it applies only pending changes (at
most ``APPLY_MAX``: heartbeats are not held up by thousands), pops only due heartbeats from a
heap, ``IN_FLIGHT_MAX`` services at a time, and keeps a running registered count.

Consul unreachable, 5xx or 403: nothing is forgotten; the pass stops, the next one waits a
jittered exponential backoff (capped), one log line marks the start of the outage and one
its end (``link.Link``), and the first pass after it starts with anti-entropy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import structlog

from sutazai_agent.config import ConsulConfig, ServiceConfig, redact_url
from sutazai_agent.consul.client import POOL_SIZE
from sutazai_agent.consul.ledger import (
    CONSUL_DEREGISTER_FLOOR_S,
    Entry,
    Ledger,
    check_id,
    check_output,
    next_beat_at,
    registration_payload,
)
from sutazai_agent.consul.link import Link
from sutazai_agent.consul.pacing import BUDGET_S, Pacer, slow_threshold
from sutazai_agent.consul.passlog import PassLog
from sutazai_agent.consul.reconcile import Ownership, Reconciler, Seed, SoleOwner
from sutazai_agent.consul.types import (
    CheckStatus,
    ConsulAgentApi,
    ConsulError,
    ConsulNotFoundError,
    ConsulPermissionError,
    ConsulUnavailableError,
)
from sutazai_agent.core.model import State, format_optional_time, utcnow
from sutazai_agent.core.protocols import Clock
from sutazai_agent.core.scheduler import MIN_SLEEP_S
from sutazai_agent.web.metrics import Metrics

LOG_EACH_MAX = 10
"""A pass with more changes of one kind than this logs them as one line (count + first ids):
after Consul loses its state, 300 services re-registered are one line, not 600."""
IN_FLIGHT_MAX = POOL_SIZE
"""Services whose changes or heartbeats are sent at once (one service's calls stay in order)."""
APPLY_MAX = 256
"""Changes applied per pass at most; the next pass, with the due heartbeats first, follows."""
WAIT_FOR_LOCK_S = 0.5
"""How often a registrar without its lock looks again whether it may write."""
BEAT_EARLY_S = 1.0
"""A beat may go this much early (a tenth of its interval at most), so one wake-up sends the
next second's beats together: a wake-up costs more than the call it makes. The phase is kept
(``next_beat_at``)."""
BEATS_PER_PASS = 64
"""Heartbeats per pass at most (due ones first); the next pass follows at once if more are
due, so thousands of beats due together never hold the loop up as one burst."""
_WARNINGS = frozenset({"consul_registration_lost"})


class ConsulRegistrar:
    """Implements the ``Registrar`` protocol on Consul's agent API."""

    def __init__(
        self,
        client: ConsulAgentApi,
        config: ConsulConfig,
        agent_id: str,
        services: Iterable[ServiceConfig],
        metrics: Metrics,
        clock: Clock = time.monotonic,
        logger: Any = None,
        *,
        rng: random.Random | None = None,
        ownership: Ownership | None = None,
        on_seed: Seed | None = None,
    ) -> None:
        self._client = client
        self._owners: Ownership = ownership or SoleOwner(agent_id)
        self._config = config
        self._agent_id = agent_id
        self._metrics = metrics
        self._clock = clock
        self._log = logger if logger is not None else structlog.get_logger("sutazai_agent.consul")
        self._rng = rng or random.Random()  # noqa: S311 - spreading heartbeats, not crypto
        self._link = Link(redact_url(config.url), metrics, clock, self._log, self._rng)
        self._op = self._link.op
        self._beat_interval_s = config.ttl_s / 3.0
        self._beat_early_s = min(BEAT_EARLY_S, self._beat_interval_s / 10)
        self._ledger = Ledger(services, keep_down=config.on_down == "critical")
        self._entries = self._ledger.entries
        for entry in self._entries.values():
            entry.owned = self._owners.owns(entry.service.name)
        self._reconciler = Reconciler(
            client,
            self._ledger,
            self._owners,
            self._op,
            self._note,
            self._payload,
            self._log,
            on_seed,
        )
        self._pacer = Pacer(IN_FLIGHT_MAX, slow_threshold(config.timeout_s))
        self._pass_log = PassLog(LOG_EACH_MAX, _WARNINGS)
        self._wake = asyncio.Event()
        self._closed = False
        self._resync_pending = True
        self._more_pending = False
        self._next_resync_at = 0.0
        self._last_sync_at: datetime | None = None
        if config.deregister_critical_after_s < CONSUL_DEREGISTER_FLOOR_S:
            self._log.warning(
                "consul_deregister_after_below_floor",
                configured_s=config.deregister_critical_after_s,
                effective_s=CONSUL_DEREGISTER_FLOOR_S,
                hint="Consul raises deregister_critical_after_s to its 1 minute minimum",
            )

    # --- the Registrar protocol (never blocks) -----------------------------------------
    def observe(self, service: ServiceConfig, state: State) -> None:
        if not service.register_service:
            return
        entry = self._ledger.entry(service)
        changed = False
        if entry.service is not service and entry.service != service:
            if self._registration(entry.service) != self._registration(service):
                entry.fresh, changed = False, True
            entry.service = service
        if entry.desired is not state:
            entry.desired, entry.rejected, changed = state, None, True
        if changed:
            self._ledger.settle(entry)
            self._wake.set()

    def forget(self, service: ServiceConfig) -> None:
        """``service`` is no longer configured here: deregister it (when registered, and so
        ours) in the next pass, and forget it."""
        if service.id in self._entries:
            self._ledger.remove(service.id)
            self._wake.set()

    def owner(self, service_name: str) -> str | None:
        return self._owners.owner(service_name)

    def is_registered(self, service_id: str) -> bool:
        entry = self._entries.get(service_id)
        return entry is not None and entry.registered

    def status(self) -> dict[str, Any]:
        return {
            "reachable": self._link.reachable,
            "url": self._link.url,
            "registered": self._ledger.registered,
            "last_error": self._link.last_error,
            "last_sync_at": format_optional_time(self._last_sync_at),
        }

    # --- lifecycle ---------------------------------------------------------------------
    def wake(self) -> None:
        """Re-evaluate what is due now (after the clock moved, or on an operator's request)."""
        self._wake.set()

    async def close(self) -> None:
        """Make ``run()`` return. Registrations stay: their TTL checks expire on their own."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """The registrar's task: never raises except ``CancelledError``."""
        while not self._closed:
            self._wake.clear()
            try:
                delay_s = await self.sync_once()
            except Exception as exc:  # noqa: BLE001 - the loop boundary: survive, retry later
                delay_s = self._link.crashed(exc)
            if self._closed or self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay_s, MIN_SLEEP_S)):
                    await self._wake.wait()

    async def sync_once(self) -> float:
        """Do everything due now; return the seconds until something is due again.

        Consul failures are handled here (logged once per outage, backed off); anything else
        propagates to ``run()``'s loop boundary.
        """
        now = self._clock()
        if now < self._link.retry_at:
            return self._link.retry_at - now
        if not self._owners.can_write():
            self._resync_pending = True  # after the lock is (re)gained, look before writing
            return WAIT_FOR_LOCK_S
        try:
            if self._resync_pending or now >= self._next_resync_at:
                await self._resync()
            await self._apply_pending()
            await self._heartbeats()
            if self._resync_pending:
                # A heartbeat found a registration gone: Consul may have lost them all (a
                # restart without its data). Check them all now rather than one by one as
                # each heartbeat comes due, which leaves services out of DNS meanwhile.
                await self._resync()
                await self._apply_pending()
        except ConsulError as exc:  # unreachable, 403, or an answer we cannot use
            self._resync_pending = True
            self._pacer.reset()  # after the outage, start small again
            return self._link.failed(exc)
        finally:
            self._metrics.consul_registered_services.set(self._ledger.registered)
            self._metrics.consul_registration_backlog.set(len(self._ledger.pending))
            self._metrics.consul_conflicts.set(len(self._reconciler.conflicts))
            for level, event, fields in self._pass_log.drain():
                getattr(self._log, level)(event, **fields)
        return self._next_due()

    # --- the three duties ----------------------------------------------------------------
    def regroup(self) -> None:
        """Ownership changed (a member joined or left, the role changed): see
        ``Reconciler.regroup``; then look at Consul before acting."""
        self._reconciler.regroup()
        self._resync_pending = True
        self._wake.set()

    async def _resync(self) -> None:
        await self._reconciler.resync()
        self._resync_pending = False
        self._next_resync_at = self._clock() + self._config.resync_interval_s
        self._last_sync_at = utcnow()

    async def _apply_pending(self) -> None:
        """Apply up to ``APPLY_MAX`` changes, ``pacer.window`` at a time, for at most
        ``BUDGET_S``; what is left waits for the next pass, after the due heartbeats."""
        pending = self._ledger.pending
        entries = [self._entries[sid] for sid in itertools.islice(pending, APPLY_MAX)]
        started = self._clock()
        start = 0
        while start < len(entries) and self._clock() - started < BUDGET_S:
            size = self._pacer.window
            group_started = self._clock()
            await self._together(self._apply, entries[start : start + size])
            self._pacer.done(self._clock() - group_started)
            start += size
        self._more_pending = len(pending) > 0

    async def _apply(self, entry: Entry, *, retry_lost: bool = True) -> None:
        """Write ``entry``'s pending change, if any; then file it under pending or not."""
        try:
            if entry.rejected is None:
                await self._apply_once(entry)
        except ConsulNotFoundError as exc:
            if retry_lost:
                # The check vanished under a registration we believed in: register it again.
                self._lost(entry)
                await self._apply(entry, retry_lost=False)
            else:
                self._link.rejected(entry, exc)
        except (ConsulUnavailableError, ConsulPermissionError):
            raise
        except ConsulError as exc:
            self._link.rejected(entry, exc)
        self._ledger.settle(entry)
        self._ledger.drop_if_removed(entry)

    async def _apply_once(self, entry: Entry) -> None:
        service_id = entry.service.id
        status = entry.check_status()
        change = entry.change()
        if change in ("register", "deregister") and not await self._reconciler.still_ours(entry):
            return
        if change == "register" and status is not None:
            reason = "changed" if entry.registered else "missing"
            await self._op("register", self._client.register_service(self._payload(entry, status)))
            self._ledger.set_registered(entry, True)
            entry.fresh, entry.status = True, None
            # Consul keeps an existing check's status on re-registration: always set it.
            await self._write_status(entry, status, "check_update")
            self._note("consul_registered", service_id=service_id, status=status, reason=reason)
        elif change == "check_update" and status is not None:
            await self._write_status(entry, status, "check_update")
            self._note("consul_check_updated", service_id=service_id, status=status)
        elif change == "deregister":
            await self._op("deregister", self._client.deregister_service(service_id))
            self._ledger.set_registered(entry, False)
            entry.status = entry.next_beat_at = None
            reason = "not configured" if entry.removed else "down"
            self._note("consul_deregistered", service_id=service_id, reason=reason)

    async def _heartbeats(self) -> None:
        """Send up to ``BEATS_PER_PASS`` heartbeats due by now + ``BEAT_EARLY_S``,
        ``IN_FLIGHT_MAX`` at a time (those falling due meanwhile wait for the next pass, so
        that changes are not held up); on an outage, stop there."""
        horizon = self._clock() + self._beat_early_s
        budget = BEATS_PER_PASS
        while budget and (batch := self._ledger.beats.pop_due(horizon, min(IN_FLIGHT_MAX, budget))):
            budget -= len(batch)
            entries = [self._entries[service_id] for service_id in batch]
            dues = [entry.next_beat_at for entry in entries]
            try:
                await self._together(self._beat, entries)
            finally:
                for entry, due in zip(entries, dues, strict=True):
                    if due is not None and entry.beat_due() == due:  # not sent: still due
                        self._ledger.beats.push(due, entry.service.id)

    async def _together(
        self, action: Callable[[Entry], Awaitable[None]], entries: list[Entry]
    ) -> None:
        """``action`` on every entry at once; then the first failure, if any, is raised."""
        results = await asyncio.gather(*(action(e) for e in entries), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _beat(self, entry: Entry) -> None:
        status, due = entry.status, entry.next_beat_at
        if status is None:
            return
        try:
            await self._write_status(entry, status, "heartbeat")
            if due is not None:  # how late Consul got it, against when it was due
                self._metrics.consul_heartbeat_lag.observe(max(self._clock() - due, 0.0))
        except ConsulNotFoundError:
            if status == "critical":
                # on_down critical: Consul reaps a check critical for longer than
                # DeregisterCriticalServiceAfter. Expected: put it back, quietly.
                self._note("consul_registered", service_id=entry.service.id, reason="reaped")
                self._ledger.set_registered(entry, False)
                entry.status = entry.next_beat_at = None
            else:
                # Consul lost it (restart, manual deregistration, reaped): restore it now.
                self._lost(entry)
            await self._apply(entry, retry_lost=False)
        except (ConsulUnavailableError, ConsulPermissionError):
            raise
        except ConsulError as exc:
            self._ledger.schedule_beat(entry, self._clock() + self._beat_interval_s)
            self._link.rejected(entry, exc)

    def _lost(self, entry: Entry) -> None:
        self._note("consul_registration_lost", service_id=entry.service.id, action="re-register")
        self._resync_pending = True
        self._ledger.set_registered(entry, False)
        entry.status = entry.next_beat_at = None
        self._ledger.settle(entry)

    # --- helpers -------------------------------------------------------------------------
    def _registration(self, service: ServiceConfig) -> dict[str, Any]:
        """What Consul would hold for ``service`` (its check status aside)."""
        return registration_payload(
            service, self._agent_id, self._config, "passing", self._owners.group
        )

    def _payload(self, entry: Entry, status: CheckStatus) -> dict[str, Any]:
        return registration_payload(
            entry.service, self._agent_id, self._config, status, self._owners.group
        )

    async def _write_status(self, entry: Entry, status: CheckStatus, operation: str) -> None:
        output = check_output(entry.desired, self._agent_id)
        call = self._client.update_ttl(check_id(entry.service.id), status, output)
        await self._op(operation, call)
        entry.status = status
        beat = operation == "heartbeat"
        due = next_beat_at(
            entry.next_beat_at, self._clock(), self._beat_interval_s, beat, self._rng
        )
        self._ledger.schedule_beat(entry, due)

    def _note(self, event: str, **fields: Any) -> None:
        """Log ``event`` at the end of the pass (one line each, or one for many)."""
        self._pass_log.note(event, fields)

    def _next_due(self) -> float:
        if self._more_pending:
            return 0.0
        beat = self._ledger.beats.first()
        due = self._next_resync_at if beat is None else min(beat, self._next_resync_at)
        return max(due - self._clock(), 0.0)
