"""``Link``: the registrar's connection to Consul, as the operator sees it.

Every call goes through ``op()``: counted per operation and outcome
(``consul_operations_total``); a success ends an outage. ``failed()`` starts or continues
one: one log line at its start (or when its kind changes: unreachable, forbidden, error), one
at its end (``consul_recovered``), and a jittered exponential backoff, capped, until the next
attempt (``retry_at``). ``reachable`` and ``last_error`` feed ``/status``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable
from typing import Any, TypeVar

from sutazai_agent.consul.ledger import OUTAGE_LOG, Entry, outage_kind
from sutazai_agent.consul.types import ConsulError, ConsulUnavailableError
from sutazai_agent.core.backoff import Backoff
from sutazai_agent.core.outage import Outage
from sutazai_agent.core.protocols import Clock
from sutazai_agent.web.metrics import Metrics

T = TypeVar("T")
BACKOFF_CAP_S = 30.0


class Link:
    def __init__(
        self, url: str, metrics: Metrics, clock: Clock, logger: Any, rng: random.Random
    ) -> None:
        self.url = url
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._backoff = Backoff(cap_s=BACKOFF_CAP_S, rng=rng)
        self._outage = Outage(clock)
        self.reachable = False
        self.last_error: str | None = None
        self.retry_at = 0.0

    async def op(self, operation: str, call: Awaitable[T]) -> T:
        counter = self._metrics.consul_operations
        try:
            result = await call
        except ConsulError as exc:
            counter.labels(operation, "error").inc()
            if not isinstance(exc, ConsulUnavailableError):
                self.reachable = True  # Consul answered; only a success ends an outage
            raise
        counter.labels(operation, "ok").inc()
        self._recovered()
        return result

    def _recovered(self) -> None:
        self.reachable = True
        outage_s = self._outage.recovered()
        if outage_s is not None:
            self._log.info("consul_recovered", url=self.url, outage_s=outage_s)
            self.last_error = None
            self._backoff.reset()

    def failed(self, exc: ConsulError) -> float:
        """A pass stopped on ``exc``: the seconds until the next attempt."""
        kind = outage_kind(exc)
        self.reachable = kind != "unreachable"  # a 403 or a 400 is an answer
        self.last_error = str(exc)
        if self._outage.failed(kind):  # one line per outage (or change of kind)
            level, event, extra = OUTAGE_LOG[kind]
            getattr(self._log, level)(event, url=self.url, error=str(exc), **extra)
        return self._back_off()

    def crashed(self, exc: Exception) -> float:
        """A pass raised something else (a bug): logged whole each time, backed off."""
        delay_s = self._back_off()
        self.last_error = f"internal: {exc!r}"[:200]
        self._log.error(
            "consul_sync_failed",
            error=repr(exc),
            retry_in_s=round(delay_s, 3),
            action="will retry",
            exc_info=True,
        )
        return delay_s

    def rejected(self, entry: Entry, exc: ConsulError) -> None:
        """Consul refused ``entry``'s write (4xx): logged once per message, retried at the
        next anti-entropy."""
        message = str(exc)
        if entry.rejected != message:
            self._log.error(
                "consul_registration_rejected",
                service_id=entry.service.id,
                error=message,
                action="will retry at the next resync",
            )
        entry.rejected = message
        self.last_error = message

    def _back_off(self) -> float:
        delay_s = self._backoff.next()
        self.retry_at = self._clock() + delay_s
        return delay_s
