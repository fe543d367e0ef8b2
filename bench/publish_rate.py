"""Publish rate through the outbox, and append-to-delivery latency, against a real broker.

    .venv/bin/python bench/publish_rate.py [--url amqp://guest:guest@127.0.0.1:5672/] [--uvloop]

Three figures:
- durable appends/s: one transition per ``append`` (one fsync'd SQLite commit each);
- publish rate: a backlog of N events drained with publisher confirms (events/s until the
  outbox is empty, and until a consumer has received all of them);
- latency: one transition at a time, time from the start of ``append`` to its delivery to a
  consumer (p50/p99), the path a real state change takes.

Uses an exchange of its own (deleted afterwards) and a temporary state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from sutazai_agent.config import RabbitmqConfig
from sutazai_agent.core.model import Outcome, ProbeResult, State, Transition
from sutazai_agent.events.outbox import SqliteOutbox
from sutazai_agent.events.publisher import RabbitPublisher
from sutazai_agent.web.metrics import Metrics


def transition(service: str, step: int) -> Transition:
    previous = State.UNKNOWN if step == 0 else (State.DOWN if step % 2 else State.UP)
    current = State.UP if step % 2 == 0 else State.DOWN
    outcome = Outcome.OK if current is State.UP else Outcome.FAIL
    result = ProbeResult(outcome, 0.003, "bench", "bench detail")
    return Transition(service, "http", previous, current, "bench", datetime.now(UTC), result)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def wait_for(check: object, timeout_s: float = 120.0) -> None:
    assert callable(check)
    deadline = time.perf_counter() + timeout_s
    while not check():
        if time.perf_counter() > deadline:
            raise SystemExit("benchmark timed out")
        await asyncio.sleep(0.001)


async def main(url: str, events: int, latency_events: int, appends: int, batch: int) -> None:
    exchange_name = f"sutazai.bench.{uuid.uuid4().hex[:12]}"
    received: dict[tuple[str, int], float] = {}

    def on_message(message: AbstractIncomingMessage) -> None:
        data = json.loads(message.body)["data"]
        received[(data["service"], data["sequence"])] = time.perf_counter()

    connection = await aio_pika.connect(url)
    async with connection, asyncio.timeout(600):
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="health.#")
        await queue.consume(on_message, no_ack=True)  # type: ignore[arg-type]
        try:
            with tempfile.TemporaryDirectory() as state_dir:
                metrics = Metrics()
                async with SqliteOutbox(state_dir, "bench", 10_000_000, metrics) as outbox:
                    # 1. durable appends, one commit each
                    start = time.perf_counter()
                    for step in range(appends):
                        await outbox.append([transition("commit", step)])
                    append_s = time.perf_counter() - start

                    # 2. drain a backlog with confirms
                    for first in range(0, events, 100):
                        await outbox.append(
                            [transition("rate", s) for s in range(first, min(first + 100, events))]
                        )
                    config = RabbitmqConfig(url=url, exchange=exchange_name)
                    publisher = RabbitPublisher(
                        config, "bench", outbox, metrics, batch_size=batch, idle_poll_s=1.0
                    )
                    async with publisher:
                        start = time.perf_counter()
                        task = asyncio.create_task(publisher.run())
                        publisher.wake()
                        await wait_for(lambda: outbox.pending() == 0)
                        drained_s = time.perf_counter() - start
                        await wait_for(lambda: len(received) >= appends + events)
                        delivered_s = time.perf_counter() - start

                        # 3. one transition at a time: append → delivery
                        latencies: list[float] = []
                        for step in range(latency_events):
                            key = ("latency", step + 1)
                            t0 = time.perf_counter()
                            await outbox.append([transition("latency", step)])
                            publisher.wake()
                            await wait_for(lambda key=key: key in received)  # type: ignore[misc]
                            latencies.append(received[key] - t0)
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
        finally:
            await channel.exchange_delete(exchange_name)

    backlog = appends + events
    print(f"durable appends (1 transition per commit): {appends / append_s:,.0f}/s")
    print(
        f"publish rate with confirms (backlog {backlog}, batch {batch}): "
        f"{backlog / drained_s:,.0f} events/s confirmed, "
        f"{backlog / delivered_s:,.0f} events/s delivered to a consumer"
    )
    ms = [x * 1000 for x in latencies]
    print(
        f"append → delivery latency over {latency_events} events: "
        f"p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
        f"max {max(ms):.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--latency-events", type=int, default=500)
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the daemon does")
    args = parser.parse_args()
    bench = main(args.url, args.events, args.latency_events, args.appends, args.batch_size)
    if args.uvloop:
        import uvloop

        uvloop.run(bench)
    else:
        asyncio.run(bench)
