"""``sutazai-agent events``: tail the health exchange, one JSON line per event.

The queue is exclusive and auto-deleted (server-named), so a tail never leaves anything
behind on the broker and never steals events from other consumers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TextIO

import aio_pika
import aiormq.exceptions
from aio_pika.abc import ExchangeType

from sutazai_agent.core.secrets import Scrubber, redact_url, url_password
from sutazai_agent.events import cloudevents as events

DEFAULT_BINDING = "health.#"
CONNECT_TIMEOUT_S = 10.0
_BROKER_ERRORS = (OSError, TimeoutError, aiormq.exceptions.AMQPError)


async def tail(
    url: str,
    exchange: str,
    bind: Sequence[str],
    count: int | None,
    out: TextIO,
    *,
    err: TextIO | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Print events from ``exchange`` matching any of ``bind`` until ``count`` (or forever).

    Returns the exit code: 0 after ``count`` events, 1 if the broker cannot be reached or the
    connection is lost. ``ready`` is set once the queue is bound (tests and tools wait for it).
    """
    err = err or sys.stderr
    patterns = list(bind) or [DEFAULT_BINDING]
    printed = 0
    try:
        connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S)
    except _BROKER_ERRORS as exc:
        _complain(err, f"cannot connect to RabbitMQ at {redact_url(url)}", exc, url)
        return 1
    try:
        async with connection:
            channel = await connection.channel()
            target = await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            for pattern in patterns:
                await queue.bind(target, routing_key=pattern)
            if ready is not None:
                ready.set()
            async with queue.iterator(no_ack=True) as messages:
                async for message in messages:
                    try:
                        event = events.decode(message.body)
                    except (ValueError, TypeError):
                        print(
                            f"sutazai-agent: skipping a message that is not a JSON object"
                            f" (routing key {message.routing_key})",
                            file=err,
                        )
                        continue
                    line = {"routing_key": message.routing_key, "event": event}
                    try:
                        out.write(json.dumps(line, separators=(",", ":")) + "\n")
                        out.flush()
                    except BrokenPipeError:
                        return 0  # the reader went away (`events | head`): done, no error
                    printed += 1
                    if count is not None and printed >= count:
                        return 0
    except _BROKER_ERRORS as exc:
        _complain(err, f"lost the connection to RabbitMQ at {redact_url(url)}", exc, url)
        return 1
    # The iterator ends only when the broker cancels the consumer (queue deleted).
    _complain(err, "the broker cancelled the subscription", None, url)
    return 1


def _complain(err: TextIO, what: str, exc: BaseException | None, url: str) -> None:
    reason = "" if exc is None else f": {Scrubber([url_password(url) or '']).error(exc)}"
    print(f"sutazai-agent: {what}{reason}", file=err)
