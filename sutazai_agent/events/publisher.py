"""Drains the outbox to the RabbitMQ topic exchange, in order, with publisher confirms.

One long-running task (``run``) publishes the outbox in batches: every message of a batch is
written to one channel in outbox order, the broker's confirms are awaited, and the confirmed
prefix of the batch is deleted from the outbox. A message the broker returns as unroutable is
counted, logged and deleted (not retried). Anything else that goes wrong (broker unreachable,
connection or channel lost, confirm timeout) leaves the events in the outbox: the failure is
counted, logged once per outage ("will retry"), and the task backs off with jitter until the
robust connection is back. Delivery is therefore at least once: an event whose confirm was
lost is published again with the same ``id``.

How a batch is confirmed and sized under a slow loop: ``batching``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol, Self
from urllib.parse import unquote

import aio_pika
import aiormq.abc
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
    ExchangeType,
)
from aio_pika.connection import make_url

from sutazai_agent.config import RabbitmqConfig, redact_url, url_password
from sutazai_agent.core.backoff import Backoff
from sutazai_agent.core.model import format_time
from sutazai_agent.core.outage import Outage
from sutazai_agent.core.secrets import Scrubber
from sutazai_agent.events import cloudevents as events
from sutazai_agent.events.confirms import confirmed_prefix, next_batch_size
from sutazai_agent.events.outbox import StoredEvent
from sutazai_agent.web.metrics import Metrics

log = structlog.get_logger(__name__)


class EventSource(Protocol):
    """What the publisher needs of the outbox."""

    def pending(self) -> int: ...

    async def peek(self, limit: int) -> list[StoredEvent]: ...

    async def ack(self, ids: Iterable[str]) -> int: ...


class BrokerUnavailableError(Exception):
    """The connection to the broker is down; the robust connection is reconnecting."""


class PublishFailedError(Exception):
    """A batch was not fully confirmed; its unconfirmed tail stays in the outbox."""


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
        max_backoff_s: float = 15.0,
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
        self._connect_timeout_s = connect_timeout_s
        # Jitter per agent, so a fleet does not reconnect in lockstep after a broker restart.
        jitter = random.uniform(0.75, 1.25)  # noqa: S311 - jitter, not cryptography
        self._reconnect_interval_s = round(reconnect_interval_s * jitter, 3)
        self._backoff = Backoff(min_backoff_s, max_backoff_s)
        self._idle_poll_s = idle_poll_s
        password = url_password(config.url)
        self._scrubber = Scrubber(p for p in (password, password and unquote(password)) if p)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._wake = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._outage = Outage()
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None

    # --- Publisher role -------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "url": redact_url(self._url),
            "exchange": self._exchange_name,
            "batch_size": self._batch_limit,
            "last_error": self._last_error,
            "last_error_at": None
            if self._last_error_at is None
            else format_time(self._last_error_at),
        }

    @property
    def connected(self) -> bool:
        connection, channel = self._connection, self._channel
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    # --- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection. Cancel ``run()`` first; unpublished events stay in the outbox."""
        self._closing.set()
        self._wake.set()
        await self._disconnect()

    async def run(self) -> None:
        """Publish the outbox until cancelled (or closed). Never raises on broker trouble."""
        while not self._closing.is_set():
            if self._source.pending() == 0:
                await self._idle()
                continue
            try:
                published = await self._drain_once()
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

        Raises ``PublishFailedError`` unless every event was confirmed or, after a confirm
        timeout, at least the first was (the confirmed prefix is acked either way).
        """
        async with self._lock:
            self._reconnected.clear()
            exchange = await self._ensure_exchange()
            rows = await self._source.peek(self._batch_limit)
            if not rows:
                return 0
            # Tasks start in order and each reaches the channel's publish lock without
            # suspending, so the messages go out on the channel in outbox order.
            tasks = [
                asyncio.create_task(self._publish(exchange, row), name=f"publish-{row.id}")
                for row in rows
            ]
            results, error, timed_out = await confirmed_prefix(tasks, self._publish_timeout_s)
            done: list[str] = []
            for row, result in zip(rows[: len(results)], results, strict=True):
                if isinstance(result, aiormq.abc.DeliveredMessage):
                    self._metrics.events_unroutable.inc()
                    log.warning(
                        "event_unroutable",
                        event_id=row.id,
                        service=row.service,
                        sequence=row.sequence,
                        routing_key=row.routing_key,
                        exchange=self._exchange_name,
                    )
                else:
                    self._metrics.events_published.inc()
                done.append(row.id)
            await self._source.ack(done)
            self._batch_limit = next_batch_size(
                self._batch_limit,
                sent=len(rows),
                confirmed=len(done),
                timed_out=timed_out,
                floor=self._min_batch_size,
                ceiling=self._batch_size,
            )
            if error is None:
                return len(done)
            why = self._scrubber.error(error)
            failure = PublishFailedError(
                f"{len(rows) - len(done)} of {len(rows)} events not confirmed: {why}"
            )
            if timed_out and done:
                self._slow(failure, confirmed=len(done), sent=len(rows))
                return len(done)
            raise failure from error

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
        if self._connection is not None and self._connection.is_closed:
            await self._disconnect()
        if self._exchange is None:
            await self._connect()
        if self._exchange is None or not self.connected:
            raise BrokerUnavailableError("not connected to the broker; reconnecting")
        return self._exchange

    async def _connect(self) -> None:
        # What aio_pika.connect_robust() does, but holding the connection before connecting,
        # so that a failed or cancelled (shutdown, flush deadline) connect is closed rather
        # than left reconnecting in the background.
        connection = aio_pika.RobustConnection(
            make_url(self._url),
            client_properties={"connection_name": f"{events.APP_ID}/{self._agent_id}"},
            reconnect_interval=self._reconnect_interval_s,
        )
        try:
            # One deadline for the handshake, the channel and the exchange: a broker that
            # accepts and then stops answering must not wedge the publisher.
            async with asyncio.timeout(self._connect_timeout_s):
                await connection.connect(timeout=self._connect_timeout_s)
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.declare_exchange(
                    self._exchange_name, ExchangeType.TOPIC, durable=True
                )
        except BaseException:
            await _close(connection)
            raise
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_connection_lost)
        self._connection, self._channel, self._exchange = connection, channel, exchange
        log.info(
            "event_publisher_connected", url=redact_url(self._url), exchange=self._exchange_name
        )

    async def _disconnect(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._exchange = None
        if connection is not None:
            await _close(connection)

    def _on_reconnect(self, *_: object) -> None:
        self._reconnected.set()

    def _on_connection_lost(self, _: object, exc: BaseException | None) -> None:
        if not self._closing.is_set() and exc is not None:
            log.debug("event_broker_connection_lost", error=self._scrubber.error(exc))

    # --- waiting, failures and recovery ---------------------------------------------------
    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle_poll_s):
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


CLOSE_TIMEOUT_S = 5.0


async def _close(connection: AbstractRobustConnection) -> None:
    """Close, but never wait on a dead peer for more than ``CLOSE_TIMEOUT_S``."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await connection.close()
