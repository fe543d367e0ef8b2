#!/usr/bin/env python
"""Chaos soak: the real agent under random faults for a while, then invariants as figures.

    python bench/soak.py --duration 1800 --services 300 --seed 1   # the long soak
    python bench/soak.py --short                                     # ~2 minutes, CI

What runs:

- the agent as a process (``python -m sutazai_agent --config FILE run``), JSON logs to a file;
- a target farm in a separate process (``bench/soak.py --farm``): real HTTP and TCP servers
  on loopback whose behaviour the controller switches: up, down (refused), hang (accept,
  never answer), garbage bytes, slow (answers inside the timeout), huge (200 and a 50 MB
  body, streamed), drip (a body trickling slower than the timeout), bigheader (a 20 KB
  header line);
- the strict fake Consul (tests/fakes/consul.py) in this process;
- the real RabbitMQ at 127.0.0.1:5672 behind a TcpProxy this process cuts and restores, and
  a consumer on the run's own exchange (``soak.<run id>``, deleted at the end).

Faults, all seeded: target mode changes; Consul restarts (state wiped) and outages
(stop/start); broker connection cuts; state_dir (a small tmpfs, when run as root) filling
up to the last byte and freed; a never-consumed ``reject-publish`` queue (max length 1) on
one service's routing key for the whole fault phase; and, only in the first half (so the
second half is one long-lived incarnation whose RSS and fds are measured), SIGKILL and
restart of the agent, graceful stops for a long while with targets changed meanwhile, and
state_dir wiped between two runs (a new event epoch).

Then faults stop, everything is restored, targets are frozen, and the invariants are checked:

1. events: every sequence 1..last the agent recorded per service and epoch (its outbox DB,
   read read-only after it stopped, and before each wipe) was delivered to the consumer, new
   sequences in order, duplicates only with the same id;
2. consul: the passing set equals the set of targets actually up within
   max(rise, fall) * interval + timeout + one resync interval;
3. resources: RSS and open fds of the longest-lived incarnation, after warm-up, grow < 10%
   (fds: plus 4 of slack, the base is ~20 and connection pools vary by a few);
4. health: no unhandled task exception, task_died, job_failed or traceback in the logs; the
   scheduler lag p99 (from /metrics) below 1 s; every graceful stop exits 0;
5. consul truth: Consul never shows passing a service whose last probe of this run failed
   for longer than fall * interval + timeout + 1 s (sampled every 0.5 s; Consul outages
   excused, see bench/soak_truth.py);
6. no resend: no event id reaches the consumer twice unless a broker cut or an agent stop
   came between (copies of the rejected service's retried event are counted apart);
7. no blocking: no event waited more than 15 s from its transition to the consumer without
   a broker cut, agent stop or full disk to explain it (the rejected service excepted):
   one service's events never wait behind another's.

Exit 0 when every invariant holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELF = str(Path(__file__).resolve())
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.soak_truth import (  # noqa: E402
    ConsulWatch,
    Delivery,
    Windows,
    deliveries,
    wall,
)
from sutazai_agent.consul.client import POOL_SIZE  # noqa: E402  # after the sys.path set-up

FALL = 2
STATE_DIR_SIZE = "16m"
"""The tmpfs state_dir: room for the outbox and its WAL, small enough to fill at once."""
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/"
MANAGEMENT_URL = "http://127.0.0.1:15672"

HTTP_MODES = ("up", "down", "hang", "garbage", "slow", "huge", "drip", "bigheader")
TCP_MODES = ("up", "down", "hang", "garbage")
HTTP_UP_MODES = frozenset({"up", "slow", "huge"})
TCP_UP_MODES = frozenset({"up", "hang", "garbage"})
HTTP_WEIGHTS = (30, 20, 10, 10, 10, 8, 6, 6)
TCP_WEIGHTS = (40, 35, 15, 10)
HUGE_BYTES = 50 * 1024 * 1024
FD_SLACK = 4 + POOL_SIZE
"""A few fds for probes in flight, plus the Consul client's keep-alive pool, which a burst of
registrations (after a Consul wipe) fills and idle time drains: bounded, not a leak."""
GARBAGE = (
    b"\x00\x01\x02\xff" * 64,
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
)
LOG_PROBLEMS = (
    "Task exception was never retrieved",
    "Future exception was never retrieved",
    "task_died",
    "job_failed",
    "Traceback",
    "loop_exception",
)


# =============================================================================================
# The target farm (runs in its own process)
# =============================================================================================
class FarmTarget:
    def __init__(self, kind: str, rng: random.Random) -> None:
        self.kind = kind
        self.mode = "up"
        self.port = 0
        self._rng = rng
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> bool:
        for _ in range(20):  # bounded: the port may linger for a moment after a close
            try:
                self._server = await asyncio.start_server(
                    self._handle, "127.0.0.1", self.port, reuse_address=True, backlog=128
                )
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.port = self._server.sockets[0].getsockname()[1]
            return True
        return False

    async def set_mode(self, mode: str) -> str:
        if mode == "down":
            server, self._server = self._server, None
            if server is not None:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self.mode = "down"
        else:
            if self._server is None and not await self.listen():
                self.mode = "down"
                return self.mode
            self.mode = mode
        return self.mode

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        self._writers.add(writer)
        try:
            if self.kind == "tcp":
                await self._tcp(mode, reader, writer)
            else:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                await self._http(mode, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _tcp(
        self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if mode == "hang":
            await asyncio.wait_for(reader.read(1), 30)
        elif mode == "garbage":
            writer.write(self._rng.choice(GARBAGE))
            await writer.drain()

    async def _http(
        self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        if mode == "up":
            writer.write(ok)
        elif mode == "slow":
            await asyncio.sleep(self._rng.uniform(0.05, 0.5))
            writer.write(ok)
        elif mode == "hang":
            await asyncio.wait_for(reader.read(1), 30)
        elif mode == "garbage":
            writer.write(self._rng.choice(GARBAGE))
        elif mode == "bigheader":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\nok")
        elif mode == "huge":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % HUGE_BYTES
            )
            chunk = b"x" * 65536
            for _ in range(HUGE_BYTES // len(chunk)):
                writer.write(chunk)
                await writer.drain()
        elif mode == "drip":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            for _ in range(150):  # 30 s at most
                writer.write(b".")
                await writer.drain()
                await asyncio.sleep(0.2)
        await writer.drain()


async def farm_main(n_http: int, n_tcp: int, seed: int) -> None:
    """Serve the targets; read ``<index> <mode>`` lines on stdin, answer ``<index> <mode>``."""
    rng = random.Random(seed)
    targets = [FarmTarget("http", rng) for _ in range(n_http)]
    targets += [FarmTarget("tcp", rng) for _ in range(n_tcp)]
    for target in targets:
        if not await target.listen():
            raise SystemExit("farm: cannot listen")
    print(json.dumps({"ports": [t.port for t in targets]}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        index, mode = line.decode().split()
        actual = await targets[int(index)].set_mode(mode)
        sys.stdout.write(f"{index} {actual}\n")
        sys.stdout.flush()


class Farm:
    """The controller's handle on the farm process."""

    def __init__(self, n_http: int, n_tcp: int, seed: int) -> None:
        self.kinds = ["http"] * n_http + ["tcp"] * n_tcp
        self.modes = ["up"] * len(self.kinds)
        self.ports: list[int] = []
        self._args = [str(n_http), str(n_tcp), str(seed)]
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SELF,
            "--farm",
            *self._args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 60)
        self.ports = json.loads(line)["ports"]

    async def set(self, index: int, mode: str) -> str:
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        async with self._lock:
            proc.stdin.write(f"{index} {mode}\n".encode())
            await proc.stdin.drain()
            answer = await asyncio.wait_for(proc.stdout.readline(), 30)
        actual = answer.decode().split()[1]
        self.modes[index] = actual
        return actual

    def up(self, index: int) -> bool:
        good = HTTP_UP_MODES if self.kinds[index] == "http" else TCP_UP_MODES
        return self.modes[index] in good

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# =============================================================================================
# The consumer
# =============================================================================================
class Consumer:
    """A queue of its own bound to the run's exchange, straight to the broker (no proxy)."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.queue = f"{exchange}.consumer"
        self.received: list[Delivery] = []
        self.last_at = time.monotonic()
        self._connection: Any = None
        self._channel: Any = None
        self._queue: Any = None
        self._tag = ""

    async def start(self) -> None:
        import aio_pika
        from aio_pika.abc import ExchangeType

        from sutazai_agent.events.cloudevents import decode

        self._connection = await aio_pika.connect_robust(AMQP_URL)
        channel = self._channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=500)
        exchange = await channel.declare_exchange(self.exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue, durable=True, auto_delete=False)
        await queue.bind(exchange, "health.#")

        async def on_message(message: Any) -> None:
            async with message.process():
                event = decode(message.body)
                data = event["data"]
                self.received.append(
                    Delivery(
                        data["service"],
                        data["epoch"],
                        int(data["sequence"]),
                        event["id"],
                        wall(event["time"]),
                        time.time(),
                    )
                )
                self.last_at = time.monotonic()

        self._queue = queue
        self._tag = await queue.consume(on_message)

    async def reject(self, service: str) -> None:
        """A never-consumed queue at its limit, with ``reject-publish``, on ``service``'s
        events: the broker nacks every one of them (and still routes them elsewhere)."""
        import aio_pika
        from aio_pika.abc import ExchangeType

        channel = self._channel
        exchange = await channel.declare_exchange(self.exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(
            f"{self.exchange}.reject",
            durable=True,
            auto_delete=False,
            arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )
        await channel.default_exchange.publish(aio_pika.Message(b"full"), queue.name)
        await queue.bind(exchange, f"health.{service}.*")

    async def unreject(self) -> None:
        with contextlib.suppress(Exception):
            await self._channel.queue_delete(f"{self.exchange}.reject")

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            await self._queue.cancel(self._tag)
            channel = await connection.channel()
            await channel.queue_delete(self.queue)
            await channel.queue_delete(f"{self.exchange}.reject")
            await channel.exchange_delete(self.exchange)
        await connection.close()


# =============================================================================================
# The controller
# =============================================================================================
@dataclass
class Incarnation:
    pid: int
    started: float
    ended: float | None = None
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss KiB, fds)
    lag_buckets: dict[float, float] = field(default_factory=dict)
    quiet_from: float | None = None


@dataclass
class Preset:
    duration_s: float
    services: int
    seed: int
    interval_s: float
    timeout_s: float
    resync_s: float
    ttl_s: float
    target_rate: float  # target mode changes per second
    infra_gap_s: float  # mean gap between Consul / broker faults
    kills: int  # agent SIGKILLs, spread over the first half
    warmup_s: float
    sample_s: float
    long_stops: int = 1  # graceful stops for long_stop_s, targets changed meanwhile
    long_stop_s: float = 12.0
    wipes: int = 1  # graceful stop, state_dir wiped, start again
    disk_full_s: tuple[float, float] = (4.0, 10.0)  # how long state_dir stays full
    reject: bool = True  # a never-consumed reject-publish queue on one service's key


class Soak:
    def __init__(self, preset: Preset, workdir: Path) -> None:
        self.p = preset
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:8]
        self.exchange = f"soak.{self.run_id}"
        self.faults: Counter[str] = Counter()
        self.incarnations: list[Incarnation] = []
        n_tcp = max(1, preset.services // 3)
        n_http = max(1, preset.services - n_tcp - 2)  # + one consul and one rabbitmq service
        self.farm = Farm(n_http, n_tcp, preset.seed)
        self.agent: Any = None
        self.consul: Any = None
        self.proxy: Any = None
        self.consumer = Consumer(self.exchange)
        self.fault_end = 0.0
        self.t_faults = 0.0
        self.t0 = time.monotonic()
        self.state_dir = workdir / "state"
        self.tmpfs: Path | None = None
        self.windows = Windows()
        self.watch = ConsulWatch(FALL * preset.interval_s + preset.timeout_s + 1, self.windows)
        self.recorded: dict[str, dict[str, int]] = {}
        self.abandoned: dict[str, dict[str, set[int]]] = {}
        self.stop_codes: list[int] = []
        self.rejected: str | None = None
        self.state_lock: asyncio.Lock | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    # --- setup -------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        services: list[dict[str, Any]] = []
        for index, (kind, port) in enumerate(zip(self.farm.kinds, self.farm.ports, strict=True)):
            name = f"t{index:04d}-{kind}"
            if kind == "http":
                services.append({"name": name, "kind": "http", "url": f"http://127.0.0.1:{port}/h"})
            else:
                services.append({"name": name, "kind": "tcp", "host": "127.0.0.1", "port": port})
        services.append({"name": "consul", "kind": "consul", "url": self.consul.url})
        services.append(
            {
                "name": "rabbitmq",
                "kind": "rabbitmq",
                "amqp_url": self.proxy.url("amqp", "guest:guest"),
                "management_url": MANAGEMENT_URL,
            }
        )
        p = self.p
        return {
            "agent_id": f"soak-{self.run_id}",
            "interval_s": p.interval_s,
            "timeout_s": p.timeout_s,
            "rise": 2,
            "fall": FALL,
            "shutdown_grace_s": 5,
            "log": {"level": "info", "format": "json"},
            "consul": {
                "url": self.consul.url,
                "ttl_s": p.ttl_s,
                "resync_interval_s": p.resync_s,
                "timeout_s": 2,
            },
            "rabbitmq": {"url": self.proxy.url("amqp", "guest:guest"), "exchange": self.exchange},
            "services": services,
        }

    def expected_up(self) -> set[str]:
        up = {f"t{i:04d}-{kind}" for i, kind in enumerate(self.farm.kinds) if self.farm.up(i)}
        up.add("rabbitmq")  # the proxy is restored before convergence is measured
        return up

    def consul_passing(self) -> set[str]:
        consul = self.consul
        consul.evaluate()
        passing = set()
        for sid in consul.services:
            check = consul.checks.get(f"sutazai:{sid}")
            if check is not None and check.status == "passing":
                passing.add(sid)
        return passing

    async def start_agent(self) -> None:
        self.agent.start()
        self.incarnations.append(Incarnation(self.agent.proc.pid, time.monotonic()))

    # --- sampling ----------------------------------------------------------------------
    async def sampler(self, stop: asyncio.Event) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                await self.sample(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.p.sample_s)

    async def sample(self, session: Any) -> None:
        import aiohttp

        inc = self.incarnations[-1] if self.incarnations else None
        if inc is None or inc.ended is not None:
            return
        rss, fds = proc_usage(inc.pid)
        if rss is None or fds is None:
            return
        inc.samples.append((time.monotonic(), rss, fds))
        try:
            url = f"{self.agent.base}/metrics"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return
        buckets = parse_lag_buckets(text)
        if buckets:
            inc.lag_buckets = buckets

    # --- fault injectors ---------------------------------------------------------------
    async def until(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless that passes the end of the fault phase."""
        remaining = self.fault_end - time.monotonic()
        if remaining <= delay_s:
            await asyncio.sleep(max(remaining, 0))
            return False
        await asyncio.sleep(delay_s)
        return True

    async def target_faults(self) -> None:
        rng = random.Random(self.p.seed * 1000 + 1)
        n = len(self.farm.kinds)
        while await self.until(rng.expovariate(self.p.target_rate)):
            index = rng.randrange(n)
            http = self.farm.kinds[index] == "http"
            modes, weights = (HTTP_MODES, HTTP_WEIGHTS) if http else (TCP_MODES, TCP_WEIGHTS)
            mode = rng.choices(modes, weights)[0]
            if mode == self.farm.modes[index]:
                continue
            actual = await self.farm.set(index, mode)
            self.faults[f"target_{'http' if http else 'tcp'}_{actual}"] += 1

    async def consul_faults(self) -> None:
        rng = random.Random(self.p.seed * 1000 + 2)
        while await self.until(rng.expovariate(1 / self.p.infra_gap_s)):
            if rng.random() < 0.5:
                self.consul.restart()
                self.faults["consul_restart_wiped"] += 1
                self.say("fault: consul restarted (state wiped)")
            else:
                outage = rng.uniform(3, 4 * self.p.ttl_s / 3)
                self.faults["consul_outage"] += 1
                self.say(f"fault: consul outage {outage:.0f}s")
                self.windows.begin("consul_down", time.time())
                await self.consul.stop()
                try:
                    await asyncio.sleep(outage)
                finally:
                    await self.consul.start()
                    self.windows.end("consul_down", time.time())

    async def broker_faults(self) -> None:
        rng = random.Random(self.p.seed * 1000 + 3)
        while await self.until(rng.expovariate(1 / self.p.infra_gap_s)):
            cut = rng.uniform(2, 20)
            self.faults["broker_cut"] += 1
            self.say(f"fault: broker connection cut {cut:.0f}s")
            self.windows.begin("broker_cut", time.time())
            await self.proxy.cut()
            try:
                await asyncio.sleep(cut)
            finally:
                await self.proxy.restore()
                self.windows.end("broker_cut", time.time())

    async def agent_restarts(self) -> None:
        """SIGKILLs, long graceful stops (targets changed meanwhile) and state_dir wipes, in
        a seeded order over the first half; never while state_dir is full (an agent does not
        start on a full disk)."""
        p = self.p
        actions = ["kill"] * p.kills + ["long_stop"] * p.long_stops + ["wipe"] * p.wipes
        if not actions:
            return
        rng = random.Random(p.seed * 1000 + 4)
        rng.shuffle(actions)
        slot = (self.fault_end - time.monotonic()) / 2 / len(actions)
        assert self.state_lock is not None
        for k, action in enumerate(actions):
            at = self.t_faults + k * slot + rng.uniform(0.1, 0.4) * slot
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            async with self.state_lock:
                self.windows.begin("agent_down", time.time())
                try:
                    if action == "kill":
                        await self.kill_and_restart(rng)
                    elif action == "long_stop":
                        await self.long_stop(rng)
                    else:
                        await self.wipe()
                    await self.started()
                finally:
                    self.windows.end("agent_down", time.time())

    async def started(self) -> None:
        """Until the restarted agent serves (its outbox is open) or has exited."""
        deadline = time.monotonic() + 60
        while self.agent.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await self.agent.status()
                return
            await asyncio.sleep(0.2)

    async def kill_and_restart(self, rng: random.Random) -> None:
        self.faults["agent_sigkill"] += 1
        self.say("fault: agent SIGKILL")
        await asyncio.to_thread(self.agent.kill)
        self.incarnations[-1].ended = time.monotonic()
        await asyncio.sleep(rng.uniform(0.5, 3))
        await self.start_agent()

    async def stop_agent(self) -> None:
        self.stop_codes.append(await asyncio.to_thread(self.agent.stop, 60))
        self.incarnations[-1].ended = time.monotonic()

    async def long_stop(self, rng: random.Random) -> None:
        self.faults["agent_long_stop"] += 1
        await self.stop_agent()
        n = len(self.farm.kinds)
        changed = rng.sample(range(n), max(1, n // 5))
        for index in changed:
            await self.farm.set(index, "down" if self.farm.up(index) else "up")
        self.say(
            f"fault: agent stopped for {self.p.long_stop_s:.0f}s, {len(changed)} targets "
            "changed meanwhile"
        )
        await asyncio.sleep(self.p.long_stop_s)
        await self.start_agent()

    async def wipe(self) -> None:
        self.faults["state_dir_wiped"] += 1
        await self.stop_agent()
        epoch, last, left = read_outbox(self.state_dir)
        self.recorded[epoch] = last
        self.abandoned[epoch] = left
        for path in self.state_dir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self.say(f"fault: state_dir wiped (epoch {epoch[:8]}, {sum(map(len, left.values()))} "
                 "events abandoned)")  # fmt: skip
        await self.start_agent()

    async def disk_faults(self) -> None:
        """state_dir (a small tmpfs) fills up to the last byte, then is freed."""
        if self.tmpfs is None:
            return
        rng = random.Random(self.p.seed * 1000 + 5)
        assert self.state_lock is not None
        while await self.until(rng.expovariate(1 / self.p.infra_gap_s)):
            hold = rng.uniform(*self.p.disk_full_s)
            async with self.state_lock:
                self.faults["state_dir_full"] += 1
                self.say(f"fault: state_dir full for {hold:.0f}s")
                self.windows.begin("disk_full", time.time())
                filler = await asyncio.to_thread(fill_up, self.tmpfs)
                try:
                    await asyncio.sleep(hold)
                finally:
                    filler.unlink(missing_ok=True)
                    self.windows.end("disk_full", time.time())

    async def truth(self, stop: asyncio.Event) -> None:
        """Sample /status (the last probe of this run) against Consul's passing set."""
        import aiohttp

        pid = None
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                proc = self.agent.proc
                if proc is not None and proc.pid != pid:
                    pid = proc.pid
                    self.watch.new_run()
                try:
                    url = f"{self.agent.base}/status"
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                        status = await r.json()
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    status = None
                if status is not None and proc is not None and proc.poll() is None:
                    self.watch.sample(status["services"], self.consul_passing(), time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    # --- the run -----------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        from tests.fakes.consul import FakeConsul
        from tests.fakes.tcp_proxy import TcpProxy
        from tests.integration.agent_process import AgentProcess

        p = self.p
        await self.farm.start()
        self.state_lock = asyncio.Lock()
        self.tmpfs = await asyncio.to_thread(mount_tmpfs, self.state_dir, STATE_DIR_SIZE)
        self.consul = FakeConsul()
        await self.consul.start()
        self.proxy = TcpProxy(AMQP_HOST, AMQP_PORT)
        await self.proxy.start()
        await self.consumer.start()
        self.agent = AgentProcess(self._config(), self.workdir)
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(self.sampler(stop_sampling))
        truth = asyncio.create_task(self.truth(stop_sampling))
        try:
            return await self._phases(p, stop_sampling)
        finally:
            stop_sampling.set()
            await sampler
            await truth
            await asyncio.to_thread(self.agent.kill)
            if self.tmpfs is not None:
                await asyncio.to_thread(unmount_tmpfs, self.tmpfs, self.workdir / "state-final")
            await self.farm.close()
            await self.consul.stop()
            await self.proxy.close()
            await self.consumer.close()

    async def _phases(self, p: Preset, stop_sampling: asyncio.Event) -> dict[str, Any]:
        self.say(
            f"run {self.run_id}: {len(self.farm.kinds) + 2} services "
            f"({self.farm.kinds.count('http')} http, {self.farm.kinds.count('tcp')} tcp, "
            f"consul, rabbitmq), seed {p.seed}, faults for {p.duration_s:.0f}s, "
            f"exchange {self.exchange}, workdir {self.workdir}"
        )
        await self.start_agent()
        await self.agent.wait_ready(60)
        self.say("agent ready; injecting faults")
        if self.tmpfs is None:
            self.say("state_dir is not a tmpfs (needs root): no disk-full faults")
        if p.reject:
            self.rejected = f"t0000-{self.farm.kinds[0]}"
            await self.consumer.reject(self.rejected)
            self.faults["reject_publish_queue"] += 1
            self.say(f"fault: a never-consumed reject-publish queue on {self.rejected}'s events")
        self.t_faults = time.monotonic()
        self.fault_end = self.t_faults + p.duration_s
        injectors = [
            asyncio.create_task(self.target_faults()),
            asyncio.create_task(self.consul_faults()),
            asyncio.create_task(self.broker_faults()),
            asyncio.create_task(self.agent_restarts()),
            asyncio.create_task(self.disk_faults()),
        ]
        await asyncio.gather(*injectors)
        # Settle: everything restored (the injectors restore what they break), targets frozen.
        await self.consul.start()
        await self.proxy.restore()
        await self.consumer.unreject()
        if self.agent.proc.poll() is not None:
            await self.start_agent()
        settle_start = time.monotonic()
        self.say(f"faults stopped: {dict(sorted(self.faults.items()))}")
        budget = 2 * p.interval_s + p.timeout_s + p.resync_s
        converge = await self.converge(settle_start, budget)
        delivered_wait = await self.wait_delivered(60 + p.interval_s)
        await self.quiesce()
        stop_sampling.set()
        self.say("stopping the agent (SIGTERM)")
        await self.stop_agent()
        await asyncio.sleep(1)  # the last deliveries reach the consumer
        return {
            "converge": converge,
            "delivered_wait_s": delivered_wait,
            "exit_code": max(self.stop_codes, key=abs),
            "stop_codes": self.stop_codes,
            "consul_truth": {
                "samples": self.watch.samples,
                "bound_s": round(self.watch.bound_s, 1),
                "violations": len(self.watch.worst),
                "longest": None
                if self.watch.longest is None
                else (self.watch.longest[0], round(self.watch.longest[1], 1)),
                "worst": sorted(
                    ((name, round(age, 1)) for name, age in self.watch.worst.items()),
                    key=lambda item: -item[1],
                )[:5],
            },
            "events": self.check_events(),
            "resources": self.check_resources(),
            "logs": self.check_logs(),
            "lag": self.check_lag(),
        }

    async def converge(self, settle_start: float, budget_s: float) -> dict[str, Any]:
        expected = self.expected_up()
        deadline = settle_start + budget_s
        converged_at: float | None = None
        while True:
            passing = self.consul_passing()
            wrong = passing ^ expected
            now = time.monotonic()
            if not wrong and converged_at is None:
                converged_at = now
            if wrong:
                converged_at = None
            if now >= deadline:
                break
            await asyncio.sleep(0.5)
        result = {
            "budget_s": round(budget_s, 1),
            "expected_up": len(expected),
            "passing": len(passing),
            "wrong": len(wrong),
            "wrong_examples": sorted(wrong)[:10],
            "converged_after_s": None
            if converged_at is None
            else round(converged_at - settle_start, 1),
        }
        self.say(f"consul after {budget_s:.0f}s: {result}")
        return result

    async def quiesce(self) -> None:
        """Targets that hold a probe's connection open (hang, drip, slow, huge) go down, so the
        last fd samples count what the agent keeps, not what is in flight."""
        holding = {"hang", "drip", "slow", "huge"}
        for index, mode in enumerate(self.farm.modes):
            if mode in holding:
                await self.farm.set(index, "down")
        await asyncio.sleep(self.p.interval_s + self.p.timeout_s + 1)
        self.incarnations[-1].quiet_from = time.monotonic()
        await asyncio.sleep(3 * self.p.sample_s + 0.5)

    async def wait_delivered(self, timeout_s: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            try:
                status = await self.agent.status()
            except Exception:  # the agent may still be starting: retry until the deadline
                await asyncio.sleep(1)
                continue
            quiet = time.monotonic() - self.consumer.last_at
            if status["outbox"]["pending"] == 0 and quiet > 2:
                break
            await asyncio.sleep(0.5)
        return round(time.monotonic() - start, 1)

    # --- invariants --------------------------------------------------------------------
    def check_events(self) -> dict[str, Any]:
        """Every epoch's recorded sequences against what the consumer got (soak_truth)."""
        epoch, last, left = read_outbox(self.state_dir)
        self.recorded[epoch] = last
        result = deliveries(
            self.consumer.received, self.recorded, self.abandoned, self.windows, self.rejected
        )
        result["received_total"] = len(self.consumer.received)
        result["outbox_left"] = sum(len(s) for s in left.values())
        result["windows"] = self.windows.count()
        return result

    def check_resources(self) -> dict[str, Any]:
        rows = []
        for inc in self.incarnations:
            end = inc.ended or time.monotonic()
            warm = [s for s in inc.samples if s[0] >= inc.started + self.p.warmup_s]
            row: dict[str, Any] = {"pid": inc.pid, "lived_s": round(end - inc.started, 1)}
            if len(warm) >= 6:
                # RSS: medians of the first and last samples after warm-up. Fds: the minimum
                # of the first fifth (during faults, so including some probes in flight)
                # against the minimum once quiet (nothing held open): a leak survives both.
                fifth = max(3, len(warm) // 5)
                quiet = [s for s in warm if inc.quiet_from and s[0] >= inc.quiet_from]
                last = quiet or warm[-fifth:]
                for key, col, pick in (("rss_kib", 1, _median), ("fds", 2, min)):
                    start = pick([s[col] for s in warm[:fifth]])
                    stop = pick([s[col] for s in last])
                    row[key] = {
                        "start": start,
                        "end": stop,
                        "peak": max(s[col] for s in warm),
                        "growth_pct": round(100 * (stop - start) / start, 1) if start else 0.0,
                    }
                row["measured_s"] = round(warm[-1][0] - warm[0][0], 1)
            rows.append(row)
        measured = [r for r in rows if "rss_kib" in r]
        longest = max(measured, key=lambda r: r["lived_s"]) if measured else None
        return {"incarnations": rows, "longest": longest}

    def check_logs(self) -> dict[str, Any]:
        problems: Counter[str] = Counter()
        events: Counter[str] = Counter()
        examples: list[str] = []
        lines = 0
        for raw in self.agent.log_text().splitlines():
            lines += 1
            try:
                event = json.loads(raw).get("event", "?")
            except ValueError:
                event = "<not json>"
            events[str(event)] += 1
            for needle in LOG_PROBLEMS:
                if needle in raw:
                    problems[needle] += 1
                    if len(examples) < 5:
                        examples.append(raw[:400])
        return {
            "lines": lines,
            "problems": dict(problems),
            "examples": examples,
            "top_events": events.most_common(12),
        }

    def check_lag(self) -> dict[str, Any]:
        total: dict[float, float] = defaultdict(float)
        for inc in self.incarnations:
            for bound, count in inc.lag_buckets.items():
                total[bound] += count
        return {"p99_s": histogram_quantile(total, 0.99), "p50_s": histogram_quantile(total, 0.5)}


def read_outbox(state_dir: Path) -> tuple[str, dict[str, int], dict[str, set[int]]]:
    """The outbox of a stopped agent: its epoch, each service's last sequence, and the
    sequences still waiting in it."""
    db = sqlite3.connect(f"file:{state_dir / 'agent.db'}?mode=ro", uri=True)
    try:
        epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        last = dict(db.execute("SELECT name, sequence FROM services").fetchall())
        left: dict[str, set[int]] = defaultdict(set)
        for service, sequence in db.execute("SELECT service, sequence FROM events"):
            left[service].add(sequence)
    finally:
        db.close()
    return epoch, last, dict(left)


def mount_tmpfs(path: Path, size: str) -> Path | None:
    """A small tmpfs at ``path`` (root only), or None; the caller unmounts it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return None
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return path if done.returncode == 0 else None


def unmount_tmpfs(path: Path, keep: Path) -> None:
    """Copy what the tmpfs holds to ``keep`` (for --keep and post-mortems), then unmount."""
    with contextlib.suppress(OSError):
        shutil.copytree(path, keep)
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(directory: Path) -> Path:
    """Fill ``directory``'s filesystem to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def _median(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def proc_usage(pid: int) -> tuple[int | None, int | None]:
    """RSS in KiB and the number of open fds of ``pid`` (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None, None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]), fds
    return None, fds


def parse_lag_buckets(text: str) -> dict[float, float]:
    out: dict[float, float] = {}
    prefix = "sutazai_agent_scheduler_lag_seconds_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, _, value = line.rpartition(" ")
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            out[math.inf if bound == "+Inf" else float(bound)] = float(value)
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (cumulative buckets)."""
    if not buckets or buckets.get(math.inf, 0) == 0:
        return None
    total = buckets[math.inf]
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return math.inf


# =============================================================================================
# Report
# =============================================================================================
def report(preset: Preset, soak: Soak, result: dict[str, Any]) -> bool:
    ok = True

    def line(name: str, passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        print(f"invariant {name}: {'PASS' if passed else 'FAIL'} {text}", flush=True)

    print("\n=== soak figures ===")
    print(f"services: {len(soak.farm.kinds) + 2}; fault phase: {preset.duration_s:.0f}s")
    print(f"faults injected: {sum(soak.faults.values())} {dict(sorted(soak.faults.items()))}")
    e = result["events"]
    line(
        "1-events",
        e["lost"] == 0
        and e["out_of_order"] == 0
        and e["id_conflicts"] == 0
        and e["outbox_left"] == 0,
        f"recorded={e['recorded']} delivered={e['delivered_unique']} lost={e['lost']} "
        f"duplicates={e['duplicates']} out_of_order={e['out_of_order']} "
        f"id_conflicts={e['id_conflicts']} outbox_left={e['outbox_left']} "
        f"received_total={e['received_total']} epochs={e['epochs']} "
        f"abandoned_by_wipe={e['abandoned_by_wipe']} not_recorded={e['not_recorded']}",
    )
    c = result["converge"]
    line(
        "2-consul",
        c["wrong"] == 0,
        f"wrong_registrations={c['wrong']} expected_up={c['expected_up']} "
        f"passing={c['passing']} converged_after_s={c['converged_after_s']} "
        f"budget_s={c['budget_s']} examples={c['wrong_examples']}",
    )
    r = result["resources"]
    longest = r["longest"]
    if longest is None:
        line("3-resources", False, "no incarnation lived long enough to measure")
    else:
        rss, fds = longest["rss_kib"], longest["fds"]
        # Fds: 10 %, plus FD_SLACK because the base is small (~20) and pools legitimately hold
        # a few more or fewer (Consul keep-alive connections, the AMQP connection).
        line(
            "3-resources",
            rss["growth_pct"] < 10 and fds["end"] < fds["start"] * 1.1 + FD_SLACK,
            f"incarnations={len(r['incarnations'])} longest_lived_s={longest['lived_s']} "
            f"measured_s={longest['measured_s']} "
            f"rss_kib start={rss['start']} end={rss['end']} peak={rss['peak']} "
            f"growth={rss['growth_pct']}% fds start={fds['start']} end={fds['end']} "
            f"peak={fds['peak']} growth={fds['growth_pct']}% (limit 10% + {FD_SLACK} fds)",
        )
    g, lag = result["logs"], result["lag"]
    p99 = lag["p99_s"]
    line(
        "4-health",
        not g["problems"] and p99 is not None and p99 < 1.0 and result["exit_code"] == 0,
        f"log_problems={g['problems'] or 0} lag_p99_s<={p99} lag_p50_s<={lag['p50_s']} "
        f"exit_codes={result['stop_codes']} log_lines={g['lines']}",
    )
    t = result["consul_truth"]
    line(
        "5-consul-truth",
        t["violations"] == 0 and t["samples"] > 0,
        f"passing_while_failing_beyond_bound={t['violations']} bound_s={t['bound_s']} "
        f"samples={t['samples']} longest_disagreement={t['longest']} worst={t['worst']}",
    )
    line(
        "6-no-resend",
        e["resent_without_cause"] == 0,
        f"resent_without_cause={e['resent_without_cause']} duplicates={e['duplicates']} "
        f"rejected_copies={e['rejected_copies']} (service {soak.rejected}) "
        f"disruptions={e['windows']}",
    )
    line(
        "7-no-blocking",
        e["blocked"] == 0,
        f"waited_behind_another={e['blocked']} examples={e['blocked_examples']}",
    )
    for example in g["examples"]:
        print(f"  log: {example}")
    print(f"top log events: {g['top_events']}")
    for inc in r["incarnations"]:
        print(f"incarnation: {inc}")
    print(f"delivery wait after convergence: {result['delivered_wait_s']}s")
    print(f"soak {'PASSED' if ok else 'FAILED'}", flush=True)
    return ok


def _controller_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # TcpProxy.cut() cancels its pipe tasks; Python 3.11's StreamReaderProtocol then reports
    # the cancellation as an error. That is the soak's own proxy, not the agent: ignore it.
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


SHORT = Preset(
    duration_s=90,
    services=60,
    seed=7,
    interval_s=2,
    timeout_s=1.5,
    resync_s=10,
    ttl_s=9,
    target_rate=1.5,
    infra_gap_s=12,
    kills=1,
    warmup_s=10,
    sample_s=2,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, default=1800, help="fault phase, seconds")
    parser.add_argument("--services", type=int, default=300)
    parser.add_argument("--seed", type=int, help="default: 1 (--short: 7)")
    parser.add_argument("--interval", type=float, default=5.0, help="probe interval_s")
    parser.add_argument("--short", action="store_true", help="the ~2 minute CI preset")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--farm", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.farm:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(farm_main(*args.farm))
        return 0
    if args.short:
        preset = SHORT if args.seed is None else dataclasses.replace(SHORT, seed=args.seed)
    else:
        interval = args.interval
        preset = Preset(
            duration_s=args.duration,
            services=args.services,
            seed=1 if args.seed is None else args.seed,
            interval_s=interval,
            timeout_s=min(2.0, interval * 0.6),
            resync_s=30,
            ttl_s=15,
            target_rate=max(0.5, args.services / 200),
            infra_gap_s=40,
            kills=max(1, int(args.duration // 600)),
            warmup_s=60,
            sample_s=5,
            long_stops=max(1, int(args.duration // 900)),
            long_stop_s=90,
            wipes=1,
            disk_full_s=(10, 60),
        )
    if preset.services < 6:
        parser.error("--services must be at least 6")
    workdir = Path(tempfile.mkdtemp(prefix="sutazai-soak-"))
    soak = Soak(preset, workdir)
    loop_signals = (signal.SIGINT, signal.SIGTERM)

    async def go() -> dict[str, Any]:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_controller_exceptions)
        for signum in loop_signals:
            loop.add_signal_handler(signum, task.cancel)  # type: ignore[union-attr]
        return await soak.run()

    try:
        result = asyncio.run(go())
    except (asyncio.CancelledError, KeyboardInterrupt):
        print(f"soak interrupted; work directory kept: {workdir}", file=sys.stderr)
        return 130
    except Exception:
        print(f"soak crashed; work directory kept: {workdir}", file=sys.stderr)
        raise
    ok = report(preset, soak, result)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"faults": soak.faults, **result}, indent=2, default=str)
        )
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
