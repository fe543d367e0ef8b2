"""Output piped into a reader that stops early (`config | head`, `events | head`) ends the
command quietly with exit 0, never with a traceback or a complaint about the broker."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import pytest
import yaml

from sutazai_agent.events.consumer import tail

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
CONFIG = {
    "agent_id": "pipes",
    "state_dir": "state",
    "services": [{"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9}],
}


def test_config_into_a_closed_pipe_exits_0_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sutazai_agent", "--config", str(path), "config"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.broker
async def test_events_into_a_closed_pipe_ends_with_0_and_does_not_blame_the_broker() -> None:
    exchange_name = f"test.pipes.{uuid.uuid4().hex[:8]}"
    ready = asyncio.Event()
    err = io.StringIO()
    consumer = asyncio.create_task(
        tail(AMQP_URL, exchange_name, ["health.#"], None, ClosedPipe(), err=err, ready=ready)
    )
    connection = await aio_pika.connect(AMQP_URL)
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        channel = await connection.channel()
        exchange = await channel.get_exchange(exchange_name)
        body = json.dumps({"id": "1", "subject": "db", "data": {}}).encode()
        await exchange.publish(aio_pika.Message(body), routing_key="health.db.down")
        async with asyncio.timeout(30):
            code = await consumer
        await exchange.delete()
    finally:
        consumer.cancel()
        await connection.close()
    assert code == 0
    assert err.getvalue() == ""
