"""Outbox → publisher → real RabbitMQ (127.0.0.1:5672), including real outages.

Every test uses an exchange of its own (deleted afterwards), so concurrent runs do not
collide. Outages are made by a TCP proxy the test cuts and restores.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractMessage,
    AbstractQueue,
    DeliveryMode,
    ExchangeType,
)
from structlog.testing import capture_logs

from sutazai_agent.config import RabbitmqConfig
from sutazai_agent.core.model import Outcome, ProbeResult, State, Transition
from sutazai_agent.events import consumer
from sutazai_agent.events.outbox import SqliteOutbox, StoredEvent
from sutazai_agent.events.publisher import RabbitPublisher
from sutazai_agent.web.metrics import Metrics
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.broker

BROKER = ("127.0.0.1", 5672)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_URL = "http://127.0.0.1:15672"
DEADLINE_S = 30.0
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


# --- helpers ------------------------------------------------------------------------------
def change(service: str, previous: State, current: State, step: int = 0) -> Transition:
    outcome = {State.UP: Outcome.OK, State.DEGRADED: Outcome.DEGRADED}.get(current, Outcome.FAIL)
    result = ProbeResult(outcome, 0.0042, f"became {current}", "detail")
    return Transition(
        service,
        "http",
        previous,
        current,
        f"became {current}",
        T0 + timedelta(seconds=step),
        result,
    )


def flips(service: str, count: int, start: State = State.UNKNOWN) -> list[Transition]:
    """``count`` alternating transitions of one service: up, down, up, ..."""
    out, previous = [], start
    for step in range(count):
        current = State.UP if step % 2 == 0 else State.DOWN
        out.append(change(service, previous, current, step))
        previous = current
    return out


def metric(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(f"sutazai_agent_{name}")
    assert value is not None
    return value


async def until(check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


async def receive(queue: AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    got: list[AbstractIncomingMessage] = []

    def have_all() -> bool:
        return len(got) >= count

    async def pull() -> None:
        while not have_all():
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.02)
            else:
                got.append(message)

    try:
        await asyncio.wait_for(pull(), DEADLINE_S)
    except TimeoutError:
        raise AssertionError(f"received {len(got)} of {count} messages") from None
    return got


async def assert_queue_empty(queue: AbstractQueue) -> None:
    extra = await queue.get(no_ack=True, fail=False)
    assert extra is None, f"unexpected extra message {extra.routing_key if extra else ''}"


def bodies(messages: Sequence[AbstractIncomingMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in messages]


def publisher_for(
    url: str, exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> RabbitPublisher:
    return RabbitPublisher(
        RabbitmqConfig(url=url, exchange=exchange),
        "it",
        outbox,
        metrics,
        publish_timeout_s=5.0,
        connect_timeout_s=5.0,
        reconnect_interval_s=0.2,
        min_backoff_s=0.05,
        max_backoff_s=0.3,
        idle_poll_s=0.5,
    )


@asynccontextmanager
async def running(publisher: RabbitPublisher) -> AsyncIterator[RabbitPublisher]:
    async with publisher:
        task = asyncio.create_task(publisher.run(), name="publisher")
        try:
            yield publisher
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert task.cancelled(), "run() must keep running until cancelled"


async def append(outbox: SqliteOutbox, publisher: RabbitPublisher, t: list[Transition]) -> None:
    await outbox.append(t)
    publisher.wake()


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    """A consumer-side channel on the broker, directly (not through any proxy)."""
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    async with connection:
        yield await connection.channel()


@pytest.fixture
async def exchange(channel: AbstractChannel) -> AsyncIterator[str]:
    name = f"sutazai.test.{uuid.uuid4().hex[:12]}"
    yield name
    await channel.exchange_delete(name)


@pytest.fixture
def bind(channel: AbstractChannel, exchange: str) -> Callable[..., Any]:
    async def make(*patterns: str) -> AbstractQueue:
        target = await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for pattern in patterns or ("health.#",):
            await queue.bind(target, routing_key=pattern)
        return queue

    return make


@pytest.fixture
async def outbox(tmp_path: Path, metrics: Metrics) -> AsyncIterator[SqliteOutbox]:
    async with SqliteOutbox(tmp_path / "state", "it", 1000, metrics) as box:
        yield box


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    async with TcpProxy(*BROKER) as tcp:
        yield tcp


# --- delivery -----------------------------------------------------------------------------
async def test_bound_queue_receives_exactly_the_transitions_in_order(
    bind: Callable[..., Any], exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    queue = await bind("health.#")
    transitions = [
        change("kong", State.UNKNOWN, State.UP, 0),
        change("backend", State.UNKNOWN, State.DOWN, 0),
        change("kong", State.UP, State.DEGRADED, 1),
        change("kong", State.DEGRADED, State.DOWN, 2),
        change("backend", State.DOWN, State.UP, 3),
    ]
    await outbox.append(transitions[:2])
    await outbox.append(transitions[2:])
    rows: list[StoredEvent] = await outbox.peek(100)

    async with running(publisher_for(AMQP_URL, exchange, outbox, metrics)) as publisher:
        publisher.wake()
        messages = await receive(queue, len(transitions))
        await until(lambda: outbox.pending() == 0, "outbox drained")
        await assert_queue_empty(queue)
        assert publisher.status()["connected"] is True

    assert [m.routing_key for m in messages] == [
        "health.kong.up", "health.backend.down", "health.kong.degraded",
        "health.kong.down", "health.backend.up",
    ]  # fmt: skip
    events = bodies(messages)
    assert [e["id"] for e in events] == [r.id for r in rows]
    assert [(e["subject"], e["data"]["sequence"]) for e in events] == [
        ("kong", 1), ("backend", 1), ("kong", 2), ("kong", 3), ("backend", 2),
    ]  # fmt: skip
    for event, t in zip(events, transitions, strict=True):
        assert event["specversion"] == "1.0"
        assert event["type"] == "io.sutazai.service.health.changed"
        assert event["source"] == "sutazai-agent/it"
        assert event["datacontenttype"] == "application/json"
        assert event["time"] == t.at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert event["data"]["previous"] == t.previous.value
        assert event["data"]["current"] == t.current.value
        assert event["data"]["probe"] == {"latency_ms": 4.2, "detail": "detail"}
    for message, row in zip(messages, rows, strict=True):
        assert message.message_id == row.id
        assert message.content_type == "application/cloudevents+json"
        assert message.delivery_mode == DeliveryMode.PERSISTENT
        assert message.app_id == "sutazai-agent"
        assert message.type == "io.sutazai.service.health.changed"
        assert message.timestamp is not None
        assert message.timestamp.replace(tzinfo=UTC) == row.created_at.replace(microsecond=0)
    assert metric(metrics, "events_published_total") == 5
    assert metric(metrics, "events_pending") == 0
    assert metric(metrics, "events_publish_failures_total") == 0


async def test_down_binding_sees_only_downs(
    bind: Callable[..., Any], exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    downs = await bind("health.*.down")
    everything = await bind("health.#")
    transitions = flips("kong", 4) + flips("db", 3)
    await outbox.append(transitions)
    async with running(publisher_for(AMQP_URL, exchange, outbox, metrics)) as publisher:
        publisher.wake()
        await receive(everything, len(transitions))
        got = await receive(downs, 3)
        await until(lambda: outbox.pending() == 0, "outbox drained")
        await assert_queue_empty(downs)
    assert [m.routing_key for m in got] == ["health.kong.down"] * 2 + ["health.db.down"]
    assert [e["data"]["current"] for e in bodies(got)] == ["down"] * 3


async def test_unroutable_events_are_counted_logged_and_not_retried(
    exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    # No queue is bound to this exchange: the broker returns every mandatory message.
    await outbox.append(flips("kong", 3))
    with capture_logs() as logs:
        async with running(publisher_for(AMQP_URL, exchange, outbox, metrics)) as publisher:
            publisher.wake()
            await until(lambda: outbox.pending() == 0, "unroutable events acked")
    assert metric(metrics, "events_unroutable_total") == 3
    assert metric(metrics, "events_published_total") == 0
    assert metric(metrics, "events_publish_failures_total") == 0
    unroutable = [e for e in logs if e["event"] == "event_unroutable"]
    assert [e["routing_key"] for e in unroutable] == [
        "health.kong.up", "health.kong.down", "health.kong.up",
    ]  # fmt: skip
    assert all(e["exchange"] == exchange for e in unroutable)


# --- outages ------------------------------------------------------------------------------
async def test_broker_outage_events_wait_and_arrive_in_order(
    bind: Callable[..., Any],
    exchange: str,
    outbox: SqliteOutbox,
    metrics: Metrics,
    proxy: TcpProxy,
) -> None:
    queue = await bind()
    publisher = publisher_for(proxy.url("amqp", "guest:guest"), exchange, outbox, metrics)
    with capture_logs() as logs:
        async with running(publisher):
            await append(outbox, publisher, flips("kong", 2))
            first = await receive(queue, 2)
            await until(lambda: outbox.pending() == 0, "first events confirmed")

            await proxy.cut()
            await until(lambda: not publisher.status()["connected"], "publisher sees the outage")
            during = flips("kong", 3, start=State.DOWN)
            for t in during:
                await append(outbox, publisher, [t])
            await append(outbox, publisher, flips("db", 2))
            await until(
                lambda: metric(metrics, "events_publish_failures_total") >= 3,
                "several failed attempts during the outage",
            )
            assert outbox.pending() == 5
            assert metric(metrics, "events_pending") == 5
            status = publisher.status()
            assert status["connected"] is False
            assert status["last_error"]

            await proxy.restore()
            after = await receive(queue, 5)
            await until(lambda: outbox.pending() == 0, "backlog confirmed")
            await until(lambda: publisher.status()["connected"], "publisher reconnected")
            await assert_queue_empty(queue)

    assert [e["data"]["sequence"] for e in bodies(first)] == [1, 2]
    assert [(e["subject"], e["data"]["sequence"], e["data"]["current"]) for e in bodies(after)] == [
        ("kong", 3, "up"), ("kong", 4, "down"), ("kong", 5, "up"),
        ("db", 1, "up"), ("db", 2, "down"),
    ]  # fmt: skip
    assert metric(metrics, "events_published_total") == 7
    failed = [e for e in logs if e["event"] == "event_publish_failed"]
    assert len(failed) == 1, "a failure is logged once per outage, not per attempt"
    assert failed[0]["log_level"] == "warning"
    assert failed[0]["will_retry"] is True
    assert [e["event"] for e in logs].count("event_publisher_recovered") == 1


class PauseRecorder(RabbitPublisher):
    """Records each back-off the publisher asks for, and skips the wait."""

    pauses: list[float]

    async def _pause(self, delay_s: float) -> None:
        self.pauses.append(delay_s)
        await asyncio.sleep(0)


async def test_a_long_broker_outage_is_retried_at_least_every_five_seconds(
    exchange: str, outbox: SqliteOutbox, metrics: Metrics, proxy: TcpProxy
) -> None:
    """After a long outage with no robust connection to announce the broker's return (the
    agent started during it), the first event leaves within one retry: the default cap."""
    await proxy.cut()
    publisher = PauseRecorder(
        RabbitmqConfig(url=proxy.url("amqp", "guest:guest"), exchange=exchange),
        "it",
        outbox,
        metrics,
        connect_timeout_s=5.0,
    )
    publisher.pauses = []
    await outbox.append(flips("kong", 1))
    async with running(publisher):
        await until(lambda: len(publisher.pauses) >= 12, "a dozen failed attempts")
    assert max(publisher.pauses) <= 5.0
    assert max(publisher.pauses[-4:]) >= 2.5, "the back-off still grows to its cap"


async def test_full_outbox_during_outage_drops_the_oldest(
    bind: Callable[..., Any], exchange: str, tmp_path: Path, metrics: Metrics, proxy: TcpProxy
) -> None:
    queue = await bind()
    await proxy.cut()  # the broker is away from the start: the first connect fails
    async with SqliteOutbox(tmp_path, "it", 3, metrics) as outbox:
        publisher = publisher_for(proxy.url("amqp", "guest:guest"), exchange, outbox, metrics)
        async with running(publisher):
            for t in flips("kong", 6):
                await append(outbox, publisher, [t])
            await until(
                lambda: metric(metrics, "events_publish_failures_total") >= 1, "failed attempt"
            )
            assert metric(metrics, "events_dropped_total") == 3
            assert outbox.pending() == 3

            await proxy.restore()
            got = await receive(queue, 3)
            await until(lambda: outbox.pending() == 0, "outbox drained")
            await assert_queue_empty(queue)
    assert [e["data"]["sequence"] for e in bodies(got)] == [4, 5, 6]


async def test_restart_replays_pending_events_and_keeps_sequences(
    bind: Callable[..., Any], exchange: str, tmp_path: Path, proxy: TcpProxy
) -> None:
    queue = await bind()
    state_dir = tmp_path / "state"
    await proxy.cut()
    first_metrics = Metrics()
    async with SqliteOutbox(state_dir, "it", 100, first_metrics) as outbox:
        url = proxy.url("amqp", "guest:guest")
        async with publisher_for(url, exchange, outbox, first_metrics) as publisher:
            await outbox.append(flips("kong", 3))
            # Shutdown with the broker away: the flush is bounded and keeps everything.
            assert await publisher.flush(0.5) == 3
        ids = [r.id for r in await outbox.peek(10)]

    second_metrics = Metrics()
    async with SqliteOutbox(state_dir, "it", 100, second_metrics) as outbox:
        assert outbox.pending() == 3
        assert outbox.known_states()["kong"].state == State.UP
        assert outbox.known_states()["kong"].sequence == 3
        async with running(publisher_for(AMQP_URL, exchange, outbox, second_metrics)) as pub:
            pub.wake()
            replayed = await receive(queue, 3)
            await append(outbox, pub, [change("kong", State.UP, State.DOWN, 9)])
            (newer,) = await receive(queue, 1)
            await until(lambda: outbox.pending() == 0, "outbox drained")
    assert [m.message_id for m in replayed] == ids
    assert [e["data"]["sequence"] for e in bodies(replayed)] == [1, 2, 3]
    assert bodies([newer])[0]["data"]["sequence"] == 4


async def test_flush_publishes_within_its_bound_alongside_run(
    bind: Callable[..., Any], exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    queue = await bind()
    transitions = flips("kong", 300)
    async with running(publisher_for(AMQP_URL, exchange, outbox, metrics)) as publisher:
        await append(outbox, publisher, transitions)
        assert await publisher.flush(DEADLINE_S) == 0
        got = await receive(queue, 300)
        await assert_queue_empty(queue)
    sequences = [e["data"]["sequence"] for e in bodies(got)]
    assert sequences == list(range(1, 301)), "flush and run together publish each event once"


# --- a slow channel -----------------------------------------------------------------------
class SlowChannel:
    """Stands in for the publisher's exchange like a channel on a saturated loop.

    Messages reach the real exchange one at a time, ``handoff_s`` apart, so each queues
    behind those before it; the first attempt of every event id in ``stall`` is never
    confirmed (it waits, holding up the ones behind it, until the publisher gives up).
    """

    def __init__(self, handoff_s: float = 0.0, stall: Iterable[str] = ()) -> None:
        self.exchange: AbstractExchange | None = None
        self.handoff_s = handoff_s
        self.stall = set(stall)
        self.stalled: list[str] = []
        self._lock = asyncio.Lock()

    async def publish(self, message: AbstractMessage, routing_key: str, *, mandatory: bool) -> Any:
        async with self._lock:
            await asyncio.sleep(self.handoff_s)
            if message.message_id in self.stall:
                self.stall.discard(message.message_id)
                self.stalled.append(message.message_id)
                await asyncio.Event().wait()  # no confirm, until the publisher cancels
            assert self.exchange is not None
            return await self.exchange.publish(message, routing_key, mandatory=mandatory)


class SlowChannelPublisher(RabbitPublisher):
    """The real publisher and broker, with a ``SlowChannel`` in front of the exchange."""

    def __init__(self, channel: SlowChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel = channel

    async def _ensure_exchange(self) -> AbstractExchange:
        self.channel.exchange = await super()._ensure_exchange()
        return cast(AbstractExchange, self.channel)


class RecordingSource:
    """The outbox, noting how many events each batch asks for."""

    def __init__(self, outbox: SqliteOutbox) -> None:
        self.outbox = outbox
        self.limits: list[int] = []

    def pending(self) -> int:
        return self.outbox.pending()

    async def peek(self, limit: int, exclude: Collection[str] = ()) -> list[StoredEvent]:
        self.limits.append(limit)
        return await self.outbox.peek(limit, exclude)

    async def ack(self, ids: Iterable[str]) -> int:
        return await self.outbox.ack(ids)


def slow_publisher(
    channel: SlowChannel,
    exchange: str,
    source: RecordingSource,
    metrics: Metrics,
    *,
    publish_timeout_s: float,
    backoff_s: tuple[float, float] = (0.05, 0.3),
) -> SlowChannelPublisher:
    return SlowChannelPublisher(
        channel,
        RabbitmqConfig(url=AMQP_URL, exchange=exchange),
        "it",
        source,
        metrics,
        batch_size=64,
        publish_timeout_s=publish_timeout_s,
        connect_timeout_s=5.0,
        reconnect_interval_s=0.2,
        min_backoff_s=backoff_s[0],
        max_backoff_s=backoff_s[1],
        idle_poll_s=0.5,
    )


def logged(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def drain_through(
    publisher: RabbitPublisher, queue: AbstractQueue, outbox: SqliteOutbox, count: int
) -> tuple[list[AbstractIncomingMessage], dict[str, Any]]:
    """Run ``publisher`` until ``count`` events arrived, the outbox is empty and nothing more
    is queued; returns the messages and the publisher's final status."""
    async with running(publisher):
        publisher.wake()
        got = await receive(queue, count)
        await until(lambda: outbox.pending() == 0, "outbox drained")
        await assert_queue_empty(queue)
        return got, publisher.status()


async def test_queueing_on_a_slow_channel_is_not_a_confirm_timeout(
    bind: Callable[..., Any], exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    # 40 events 0.1 s apart take ~4 s, twice the confirm timeout: only waiting for a confirm
    # may count against it, not waiting for the channel behind the rest of the batch.
    queue = await bind()
    await outbox.append(flips("kong", 40))
    source = RecordingSource(outbox)
    channel = SlowChannel(handoff_s=0.1)
    publisher = slow_publisher(channel, exchange, source, metrics, publish_timeout_s=2.0)
    with capture_logs() as logs:
        got, status = await drain_through(publisher, queue, outbox, 40)
    assert [e["data"]["sequence"] for e in bodies(got)] == list(range(1, 41))
    assert metric(metrics, "events_publish_failures_total") == 0
    assert metric(metrics, "events_published_total") == 40
    assert not logged(logs, "event_publish_failed")
    assert not logged(logs, "event_publish_slow")
    assert source.limits == [64], "one batch, never shrunk"
    assert status["batch_size"] == 64
    assert status["last_error"] is None


async def test_a_stalled_confirm_keeps_the_prefix_shrinks_the_batch_and_goes_on_at_once(
    bind: Callable[..., Any], exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    queue = await bind()
    await outbox.append(flips("kong", 150))
    rows = await outbox.peek(150)
    source = RecordingSource(outbox)
    channel = SlowChannel(stall=[rows[20].id])  # the 21st event's first confirm never comes
    # A backoff far beyond the test's deadlines: the rest must follow without one.
    publisher = slow_publisher(
        channel, exchange, source, metrics, publish_timeout_s=1.0, backoff_s=(600.0, 600.0)
    )
    with capture_logs() as logs:
        got, status = await drain_through(publisher, queue, outbox, 150)
    assert channel.stalled == [rows[20].id]
    assert [m.message_id for m in got] == [r.id for r in rows], "in order, each once"
    # 20 confirmed of 64, then the batch grows back from that prefix: 20, 40, 64 (the cap).
    assert source.limits == [64, 20, 40, 64, 64]
    [slow] = logged(logs, "event_publish_slow")
    assert (slow["confirmed"], slow["sent"], slow["batch_size"]) == (20, 64, 20)
    assert "TimeoutError" in slow["error"]
    assert not logged(logs, "event_publish_failed"), "progress is not an outage"
    assert metric(metrics, "events_publish_failures_total") == 1
    assert metric(metrics, "events_published_total") == 150
    assert status["batch_size"] == 64
    assert status["last_error"] is not None


async def test_a_confirm_timeout_without_progress_backs_off_as_an_outage(
    bind: Callable[..., Any], exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    queue = await bind()
    await outbox.append(flips("kong", 150))
    rows = await outbox.peek(150)
    source = RecordingSource(outbox)
    channel = SlowChannel(stall=[rows[0].id])  # not even the first event is confirmed
    publisher = slow_publisher(channel, exchange, source, metrics, publish_timeout_s=0.5)
    with capture_logs() as logs:
        got, _ = await drain_through(publisher, queue, outbox, 150)
    assert [m.message_id for m in got] == [r.id for r in rows], "in order, each once"
    # Nothing confirmed: the batch drops to the floor (16) and doubles back to the cap.
    assert source.limits == [64, 16, 32, 64, 64]
    [failed] = logged(logs, "event_publish_failed")
    assert failed["will_retry"] is True
    assert "64 of 64 events not confirmed: TimeoutError" in failed["error"]
    assert len(logged(logs, "event_publisher_recovered")) == 1
    assert not logged(logs, "event_publish_slow")
    assert metric(metrics, "events_publish_failures_total") == 1


# --- secrets ------------------------------------------------------------------------------
@pytest.fixture
async def broker_user() -> AsyncIterator[tuple[str, str]]:
    """A throwaway RabbitMQ user with a distinctive password (management API)."""
    name = f"sutazai-test-{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    headers = {"Authorization": aiohttp.encode_basic_auth("guest", "guest")}
    async with aiohttp.ClientSession(MANAGEMENT_URL, headers=headers) as http:
        response = await http.put(f"/api/users/{name}", json={"password": password, "tags": ""})
        assert response.status in (201, 204), await response.text()
        response = await http.put(
            f"/api/permissions/%2F/{name}", json={"configure": ".*", "write": ".*", "read": ".*"}
        )
        assert response.status in (201, 204), await response.text()
        yield name, password
        await http.delete(f"/api/users/{name}")


async def test_password_never_in_logs_or_status(
    bind: Callable[..., Any],
    exchange: str,
    outbox: SqliteOutbox,
    metrics: Metrics,
    proxy: TcpProxy,
    broker_user: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, password = broker_user
    queue = await bind()
    caplog.set_level(logging.DEBUG)
    statuses: list[dict[str, Any]] = []
    with capture_logs() as logs:
        # A wrong password: authentication fails, is logged and shows in status.
        wrong = f"wrong-{password}"
        bad = publisher_for(proxy.url("amqp", f"{user}:{wrong}"), exchange, outbox, Metrics())
        await outbox.append(flips("kong", 1))
        async with running(bad):
            await until(lambda: bad.status()["last_error"] is not None, "auth failure noticed")
            statuses.append(bad.status())

        # The right password: connect, publish, lose the broker, come back.
        good = publisher_for(proxy.url("amqp", f"{user}:{password}"), exchange, outbox, metrics)
        async with running(good):
            good.wake()
            await receive(queue, 1)
            statuses.append(good.status())
            await proxy.cut()
            await append(outbox, good, flips("db", 1))
            await until(lambda: good.status()["last_error"] is not None, "outage noticed")
            statuses.append(good.status())
            await proxy.restore()
            await receive(queue, 1)
            statuses.append(good.status())

    assert statuses[1]["url"] == f"amqp://{user}:***@127.0.0.1:{proxy.port}/"
    assert statuses[0]["connected"] is False
    assert statuses[1]["connected"] is True
    everything = repr(logs) + caplog.text + json.dumps(statuses)
    assert caplog.records, "the AMQP libraries' own logs are captured too"
    assert any(e["event"] == "event_publish_failed" for e in logs)
    assert password not in everything


# --- the events CLI -----------------------------------------------------------------------
async def test_tail_prints_one_json_line_per_event_and_stops_after_count(
    exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    out = io.StringIO()
    ready = asyncio.Event()
    tail = asyncio.create_task(
        consumer.tail(AMQP_URL, exchange, ["health.#"], 3, out, err=io.StringIO(), ready=ready)
    )
    await asyncio.wait_for(ready.wait(), DEADLINE_S)
    await outbox.append(flips("kong", 4))
    rows = await outbox.peek(10)
    async with running(publisher_for(AMQP_URL, exchange, outbox, metrics)) as publisher:
        publisher.wake()
        assert await asyncio.wait_for(tail, DEADLINE_S) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    parsed = [json.loads(line) for line in lines]
    assert [p["routing_key"] for p in parsed] == ["health.kong.up", "health.kong.down"] * 1 + [
        "health.kong.up"
    ]
    assert [p["event"]["id"] for p in parsed] == [r.id for r in rows[:3]]
    assert [set(p) for p in parsed] == [{"routing_key", "event"}] * 3
    assert parsed[0]["event"]["data"]["sequence"] == 1


async def test_tail_binds_only_the_given_patterns(
    exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    out = io.StringIO()
    ready = asyncio.Event()
    tail = asyncio.create_task(
        consumer.tail(AMQP_URL, exchange, ["health.*.down"], 2, out, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), DEADLINE_S)
    await outbox.append(flips("kong", 4))
    async with running(publisher_for(AMQP_URL, exchange, outbox, metrics)) as publisher:
        publisher.wake()
        assert await asyncio.wait_for(tail, DEADLINE_S) == 0
    parsed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [p["event"]["data"]["sequence"] for p in parsed] == [2, 4]
    assert {p["routing_key"] for p in parsed} == {"health.kong.down"}


async def test_tail_reports_an_unreachable_broker_without_the_password(
    proxy: TcpProxy,
) -> None:
    await proxy.cut()
    out, err = io.StringIO(), io.StringIO()
    url = proxy.url("amqp", "guest:Sup3r-s3cret-pw")
    code = await consumer.tail(url, "sutazai.health", ["health.#"], 1, out, err=err)
    assert code == 1
    assert out.getvalue() == ""
    message = err.getvalue()
    assert "cannot connect to RabbitMQ" in message
    assert f"amqp://guest:***@127.0.0.1:{proxy.port}/" in message
    assert "Sup3r-s3cret-pw" not in message


async def test_flush_is_bounded_and_leaves_nothing_running_when_the_broker_hangs(
    outbox: SqliteOutbox, metrics: Metrics
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, never answer the AMQP handshake

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await outbox.append(flips("kong", 2))
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        async with publisher_for(url, "sutazai.test.unused", outbox, metrics) as publisher:
            assert await publisher.flush(0.5) == 2
        assert outbox.pending() == 2
        await until(lambda: bool(held), "the connect attempt reached the server")
        # The abandoned connect must not keep reconnecting in the background.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not [t for t in others if "connection" in repr(t.get_coro()).lower()], others
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


# --- rejections and failing deletes ---------------------------------------------------------
async def test_a_rejecting_queue_holds_back_only_its_service_and_nothing_is_sent_twice(
    bind: Callable[..., Any],
    channel: AbstractChannel,
    exchange: str,
    outbox: SqliteOutbox,
    metrics: Metrics,
) -> None:
    healthy = await bind("health.#")
    target = await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
    full = await channel.declare_queue(
        f"{exchange}.full",
        auto_delete=False,
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=full.name)
    await full.bind(target, routing_key="health.kong.*")
    kong = flips("kong", 2)
    others = flips("backend", 3) + flips("db", 2)
    await outbox.append([kong[0], *others[:3], kong[1], *others[3:]])
    with capture_logs() as logs:
        async with running(publisher_for(AMQP_URL, exchange, outbox, metrics)) as publisher:
            publisher.wake()
            # Every other service's events arrive (once each) while kong's are rejected.
            await until(lambda: outbox.pending() == 2, "all but kong's events confirmed")
            await until(
                lambda: metric(metrics, "events_publish_failures_total") >= 2,
                "kong's first event retried",
            )
            assert publisher.status()["held_services"].get("kong", 0) >= 2
            await full.delete(if_unused=False, if_empty=False)  # room again: kong goes on
            await until(lambda: outbox.pending() == 0, "kong's events confirmed")
            assert publisher.status()["held_services"] == {}
        await asyncio.sleep(0)
        got = []
        while (message := await healthy.get(no_ack=True, fail=False)) is not None:
            got.append(message)
    events = bodies(got)
    ids = Counter(e["id"] for e in events)
    others_got = [(e["subject"], e["data"]["sequence"]) for e in events if e["subject"] != "kong"]
    assert others_got == [("backend", 1), ("backend", 2), ("backend", 3), ("db", 1), ("db", 2)]
    kong_ids = {e["id"] for e in events if e["subject"] == "kong"}
    assert len(kong_ids) == 2
    # Only the rejected event may reach the healthy queue again (each retry routes a copy).
    assert all(n == 1 for i, n in ids.items() if i not in kong_ids)
    assert [e["data"]["sequence"] for e in events if e["subject"] == "kong"][-1] == 2
    assert metric(metrics, "events_published_total") == 7
    rejected = [e for e in logs if e["event"] == "event_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["service"] == "kong"
    assert [e["event"] for e in logs].count("event_rejection_cleared") == 1
    assert not [e for e in logs if e["event"] == "event_publish_failed"]


class FailingAcks:
    """The outbox, but deleting confirmed events fails while ``failing`` (a full disk)."""

    def __init__(self, outbox: SqliteOutbox) -> None:
        self.outbox = outbox
        self.failing = True
        self.attempts = 0

    def pending(self) -> int:
        return self.outbox.pending()

    async def peek(self, limit: int, exclude: Collection[str] = ()) -> list[StoredEvent]:
        return await self.outbox.peek(limit, exclude)

    async def ack(self, ids: Iterable[str]) -> int:
        self.attempts += 1
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        return await self.outbox.ack(ids)


async def test_a_failing_delete_is_retried_without_publishing_again(
    bind: Callable[..., Any], exchange: str, outbox: SqliteOutbox, metrics: Metrics
) -> None:
    queue = await bind("health.#")
    await outbox.append(flips("kong", 3))
    source = FailingAcks(outbox)
    publisher = RabbitPublisher(
        RabbitmqConfig(url=AMQP_URL, exchange=exchange),
        "it",
        source,
        metrics,
        min_backoff_s=0.05,
        max_backoff_s=0.2,
        idle_poll_s=0.5,
    )
    with capture_logs() as logs:
        async with running(publisher):
            publisher.wake()
            await until(lambda: source.attempts >= 4, "the delete retried")
            assert publisher.status()["confirmed_not_deleted"] == 3
            assert outbox.pending() == 3
            source.failing = False
            await until(lambda: outbox.pending() == 0, "the confirmed events deleted")
    got = await receive(queue, 3)
    await assert_queue_empty(queue)
    assert len({m.message_id for m in got}) == 3
    assert metric(metrics, "events_published_total") == 3
    assert metric(metrics, "events_publish_failures_total") == 0
    assert metric(metrics, "outbox_write_failures_total") >= 3
    failed = [e for e in logs if e["event"] == "outbox_ack_failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == "OperationalError: database or disk is full"
    assert [e["event"] for e in logs].count("outbox_ack_recovered") == 1
    assert not [e for e in logs if e["event"] == "event_publish_failed"]
