"""Drains the outbox to the RabbitMQ topic exchange, in order, with publisher confirms.

One long-running task (``run``) publishes the outbox in batches: every message of a batch is
written to one channel in outbox order and each is settled on its own. What the broker
confirmed, or returned as unroutable (counted, logged, not retried), is deleted from the
outbox and never sent again: if the delete fails (disk full), it alone is retried, counted as
an outbox failure. A nack (e.g. a ``reject-publish`` queue at its limit) holds back only that
service's events, retried with backoff and counted; other services' events go on. Anything
else (broker unreachable, connection or channel lost, confirm timeout) leaves the events in
the outbox: the failure is counted, logged once per outage ("will retry"), and the task backs
off with jitter until the robust connection is back. Delivery is therefore at least once: an
event whose confirm was lost, or that was nacked, is published again with the same ``id``.

How a batch is confirmed, held and sized: ``confirms``. The connection: ``connection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import unquote

import aio_pika
import aiormq.abc
import structlog
from aio_pika.abc import (
    AbstractExchange,
    DeliveryMode,
)

from sutazai_agent.config import RabbitmqConfig, redact_url, url_password
from sutazai_agent.core.backoff import Backoff
from sutazai_agent.core.model import format_time
from sutazai_agent.core.outage import Outage
from sutazai_agent.core.scheduler import MIN_SLEEP_S
from sutazai_agent.core.secrets import Scrubber
from sutazai_agent.events import cloudevents as events
from sutazai_agent.events.confirms import (
    EventSource,
    Holds,
    OutboxAckError,
    PublishFailedError,
    is_nack,
    next_batch_size,
    outcome,
    settle,
)
from sutazai_agent.events.connection import BrokerConnection, BrokerUnavailableError
from sutazai_agent.events.outbox import StoredEvent
from sutazai_agent.web.metrics import Metrics

log = structlog.get_logger(__name__)

OUTAGE_RETRY_CAP_S = 5.0
"""The longest wait between two connection attempts while the broker is down. It is also how
late the first event can leave once the broker is back after a long outage, when no robust
connection is there to announce it (the agent started or reconnected during the outage)."""

HOLD_RETRY_CAP_S = 15.0
"""The longest wait before re-sending a service's event the broker rejected: each retry also
reaches the queues that accepted it, so rejected events are retried more slowly."""


class RabbitPublisher:
    """Implements the ``Publisher`` role. Start ``run()`` as a task; ``flush()`` at shutdown."""

    def __init__(
        self,
        config: RabbitmqConfig,
        agent_id: str,
        source: EventSource,
        metrics: Metrics,
        *,
        batch_size: int = 256,
        min_batch_size: int = 16,
        publish_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        reconnect_interval_s: float = 2.0,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = OUTAGE_RETRY_CAP_S,
        max_hold_s: float = HOLD_RETRY_CAP_S,
        idle_poll_s: float = 5.0,
    ) -> None:
        self._url = config.url
        self._exchange_name = config.exchange
        self._agent_id = agent_id
        self._source = source
        self._metrics = metrics
        self._batch_size = batch_size
        self._min_batch_size = max(1, min(min_batch_size, batch_size))
        self._batch_limit = batch_size  # adapts between the two (``next_batch_size``)
        self._publish_timeout_s = publish_timeout_s
        # Jitter per agent, so a fleet does not reconnect in lockstep after a broker restart.
        jitter = random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not cryptography
        self._backoff = Backoff(min_backoff_s, max_backoff_s)
        self._idle_poll_s = idle_poll_s
        password = url_password(config.url)
        self._scrubber = Scrubber(p for p in (password, password and unquote(password)) if p)
        self._wake = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._broker = BrokerConnection(
            config.url,
            config.exchange,
            f"{events.APP_ID}/{agent_id}",
            connect_timeout_s=connect_timeout_s,
            reconnect_interval_s=round(reconnect_interval_s * jitter, 3),
            scrubber=self._scrubber,
            closing=self._closing,
            reconnected=self._reconnected,
        )
        self._outage = Outage()
        self._ack_outage = Outage()
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._holds = Holds(min_backoff_s, max_hold_s)
        self._unacked: list[str] = []

    # --- Publisher role -------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "url": redact_url(self._url),
            "exchange": self._exchange_name,
            "batch_size": self._batch_limit,
            "held_services": self._holds.attempts(),
            "confirmed_not_deleted": len(self._unacked),
            "last_error": self._last_error,
            "last_error_at": None
            if self._last_error_at is None
            else format_time(self._last_error_at),
        }

    @property
    def connected(self) -> bool:
        return self._broker.connected

    # --- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection. Cancel ``run()`` first; unpublished events stay in the outbox."""
        self._closing.set()
        self._wake.set()
        await self._broker.disconnect()

    async def run(self) -> None:
        """Publish the outbox until cancelled (or closed). Never raises on broker trouble."""
        while not self._closing.is_set():
            if self._source.pending() == 0:
                await self._idle()
                continue
            try:
                published = await self._drain_once()
            except OutboxAckError as exc:
                self._ack_failed(exc)
                await self._pause(self._backoff.next())
            except Exception as exc:  # noqa: BLE001 - loop boundary: log, count, back off, retry
                if self._closing.is_set():
                    return
                self._failed(exc)
                await self._pause(self._backoff.next())
            else:
                self._recovered()
                if published == 0:
                    await self._idle()

    async def flush(self, timeout_s: float) -> int:
        """Publish what the outbox holds within ``timeout_s``; returns how many are left.

        Safe while ``run()`` is still going (they take turns batch by batch). What is not
        confirmed in time stays in the outbox for the next start.
        """
        start = self._source.pending()
        if start == 0:
            return 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._source.pending() > 0:
                    try:
                        published = await self._drain_once()
                    except OutboxAckError as exc:
                        self._ack_failed(exc)
                        await self._pause(self._backoff.next())
                        continue
                    except Exception as exc:  # noqa: BLE001 - retry until the deadline
                        self._failed(exc)
                        await self._pause(self._backoff.next())
                        continue
                    self._recovered()
                    if published == 0:
                        break
        left = self._source.pending()
        log_event = log.info if left == 0 else log.warning
        log_event("outbox_flushed", published=max(start - left, 0), left=left)
        return left

    # --- one batch ----------------------------------------------------------------------
    async def _drain_once(self) -> int:
        """Publish one batch from the outbox; returns how many events left the outbox.

        Every message is settled on its own: what the broker confirmed or returned is deleted
        from the outbox (and never sent again, even if deleting has to be retried); a nack
        holds back that service's events; what got no answer stays. Raises
        ``PublishFailedError`` when messages got no answer (unless a confirm timeout came after
        some progress) and ``OutboxAckError`` when the confirmed ones cannot be deleted.
        """
        async with self._lock:
            self._reconnected.clear()
            if self._unacked:  # confirmed earlier, delete failed: retry that, publish nothing
                await self._ack(self._unacked)
            exchange = await self._ensure_exchange()
            rows = self._holds.probe_only(
                await self._source.peek(
                    self._batch_limit, exclude=self._holds.waiting(time.monotonic())
                )
            )
            if not rows:
                return 0
            # Tasks start in order and each reaches the channel's publish lock without
            # suspending, so the messages go out on the channel in outbox order.
            tasks = [
                asyncio.create_task(self._publish(exchange, row), name=f"publish-{row.id}")
                for row in rows
            ]
            timed_out = await settle(tasks, self._publish_timeout_s)
            done: list[str] = []
            error: BaseException | None = None
            rejected: dict[str, StoredEvent] = {}
            for row, task in zip(rows, tasks, strict=True):
                settled = outcome(task)
                if isinstance(settled, BaseException):
                    if is_nack(settled):
                        rejected.setdefault(row.service, row)
                    else:
                        error = error or settled
                    continue
                done.append(row.id)
                if isinstance(settled, aiormq.abc.DeliveredMessage):
                    self._unroutable(row)
                else:
                    self._metrics.events_published.inc()
                    if row.service not in rejected:
                        self._released(row.service)
            for row in rejected.values():
                self._rejected(row)
            await self._ack(done)
            self._batch_limit = next_batch_size(
                self._batch_limit,
                sent=len(rows),
                confirmed=len(done) + len(rejected),
                timed_out=timed_out,
                floor=self._min_batch_size,
                ceiling=self._batch_size,
            )
            if error is None:
                return len(done)
            failure = PublishFailedError(
                f"{len(rows) - len(done) - len(rejected)} of {len(rows)} events not confirmed:"
                f" {self._scrubber.error(error)}"
            )
            if timed_out and done:
                self._slow(failure, confirmed=len(done), sent=len(rows))
                return len(done)
            raise failure from error

    async def _ack(self, ids: list[str]) -> None:
        """Delete confirmed events; if that fails, keep them to retry (never to re-publish)."""
        try:
            await self._source.ack(ids)
        except Exception as exc:
            self._unacked = list(dict.fromkeys([*self._unacked, *ids]))
            raise OutboxAckError(f"cannot delete {len(self._unacked)} confirmed events") from exc
        if self._unacked:
            outage_s = self._ack_outage.recovered()
            log.info("outbox_ack_recovered", outage_s=outage_s, deleted=len(self._unacked))
            self._unacked = []
            self._backoff.reset()

    def _unroutable(self, row: StoredEvent) -> None:
        self._metrics.events_unroutable.inc()
        log.warning(
            "event_unroutable",
            event_id=row.id,
            service=row.service,
            sequence=row.sequence,
            routing_key=row.routing_key,
            exchange=self._exchange_name,
        )

    def _rejected(self, row: StoredEvent) -> None:
        """The broker nacked ``row``: hold its service's events back, with backoff."""
        self._metrics.events_publish_failures.inc()
        hold = self._holds.hold(row.service, time.monotonic())
        fields = {
            "event_id": row.id,
            "service": row.service,
            "sequence": row.sequence,
            "routing_key": row.routing_key,
            "attempt": hold.attempts,
            "retry_in_s": round(hold.until - time.monotonic(), 3),
        }
        if hold.attempts == 1:
            log.warning("event_rejected", **fields, will_retry=True)
        else:
            log.debug("event_rejected_again", **fields)

    def _released(self, service: str) -> None:
        hold = self._holds.release(service)
        if hold is not None:
            log.info("event_rejection_cleared", service=service, attempts=hold.attempts)

    async def _publish(self, exchange: AbstractExchange, row: StoredEvent) -> object:
        message = aio_pika.Message(
            row.body,
            message_id=row.id,
            content_type=events.CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
            timestamp=row.created_at,
            app_id=events.APP_ID,
            type=events.EVENT_TYPE,
        )
        # No timeout here: the caller's clock starts when the confirm before this one came.
        return await exchange.publish(message, row.routing_key, mandatory=True)

    async def _ensure_exchange(self) -> AbstractExchange:
        if self._closing.is_set():
            raise BrokerUnavailableError("the publisher is closed")
        return await self._broker.exchange()

    # --- waiting, failures and recovery ---------------------------------------------------
    async def _idle(self) -> None:
        """Wait for new events, the poll interval, or the end of the next hold."""
        poll_s = self._idle_poll_s
        hold_s = self._holds.next_until(time.monotonic())
        if hold_s is not None:
            poll_s = min(poll_s, max(hold_s, MIN_SLEEP_S))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_s):
                await self._wake.wait()
        self._wake.clear()

    async def _pause(self, delay_s: float) -> None:
        """Back off for ``delay_s``, or less if the robust connection comes back first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._reconnected.wait()

    def _failed(self, exc: BaseException) -> None:
        self._metrics.events_publish_failures.inc()
        self._last_error = self._scrubber.error(exc)
        self._last_error_at = datetime.now(UTC)
        if self._outage.failed():
            log.warning(
                "event_publish_failed",
                error=self._last_error,
                pending=self._source.pending(),
                url=redact_url(self._url),
                will_retry=True,
            )
        else:
            log.debug(
                "event_publish_retry_failed", error=self._last_error, attempt=self._outage.failures
            )

    def _ack_failed(self, exc: OutboxAckError) -> None:
        """The outbox cannot delete confirmed events (disk full...): an outbox failure, not a
        broker one. Counted, logged once with the real cause; the delete is retried alone."""
        self._metrics.outbox_write_failures.inc()
        cause = self._scrubber.error(exc.__cause__ or exc)
        if self._ack_outage.failed():
            log.error(
                "outbox_ack_failed",
                error=cause,
                confirmed=len(self._unacked),
                action="will retry the delete; nothing is published again",
            )
        else:
            log.debug("outbox_ack_retry_failed", error=cause, attempt=self._ack_outage.failures)

    def _slow(self, exc: BaseException, *, confirmed: int, sent: int) -> None:
        """A batch timed out after confirming a prefix: count it, but it is no outage."""
        self._metrics.events_publish_failures.inc()
        self._last_error = self._scrubber.error(exc)
        self._last_error_at = datetime.now(UTC)
        log.info(
            "event_publish_slow",
            error=self._last_error,
            confirmed=confirmed,
            sent=sent,
            batch_size=self._batch_limit,
            pending=self._source.pending(),
        )

    def _recovered(self) -> None:
        failures = self._outage.failures
        outage_s = self._outage.recovered()
        if outage_s is None:
            return
        self._backoff.reset()
        log.info(
            "event_publisher_recovered",
            outage_s=outage_s,
            failed_attempts=failures,
            pending=self._source.pending(),
        )
