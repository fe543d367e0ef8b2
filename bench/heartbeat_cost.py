"""CPU cost of one Consul heartbeat (``ConsulClient.update_ttl``), client and fake server apart.

The strict fake Consul runs in a process of its own (``bench.consul_server``). This process
registers ``--services`` services through ``ConsulClient`` (the registrar's payloads,
``POOL_SIZE`` at a time), then sends TTL updates (``PUT /v1/agent/check/update/<id>``, the
registrar's heartbeat) round-robin over the services, in two phases:

- ``heartbeat``: ``--calls`` back to back, ``--concurrency`` in flight (after ``--warmup``
  unmeasured ones): the marginal cost of a call on a busy loop;
- ``paced``: ``--rate`` calls/s for ``--paced-s`` seconds, each sent on a timer wakeup of its
  own, as the registrar spreads its heartbeats over ``ttl_s / 3``. CPU caches go cold between
  calls, so a call costs several times more than back to back; this is the figure closer to
  the agent's. The same pacing without the calls runs first, and its CPU is taken off.

Each row gives calls/s, this process's CPU per call from ``time.process_time()`` (the
client's cost; the benchmark's own loop adds little) and the server process's CPU per call
from /proc/<pid>/stat (the fake's cost; 10 ms ticks, so a phase needs a few thousand calls
for 2 digits). Both processes share the machine's cores: calls/s is bounded by whichever
side saturates first. ``register`` is the same for the registrations.

    python -m bench.heartbeat_cost [--services 1000] [--calls 20000] [--rate 100]
    python -m bench.heartbeat_cost --smoke      # seconds; for CI
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Self

from bench.common import ConsulServer, cpu_s, machine, run
from sutazai_agent.config import ConsulConfig, TcpService
from sutazai_agent.consul.client import POOL_SIZE, ConsulClient
from sutazai_agent.consul.ledger import check_id, registration_payload

AGENT_ID = "bench"
OUTPUT = f"up (sutazai-agent {AGENT_ID})"


def services(count: int) -> list[TcpService]:
    return [
        TcpService(name=f"svc-{i:05d}", kind="tcp", host="127.0.0.1", port=20000 + i % 40000)
        for i in range(count)
    ]


class Meter:
    """This process's CPU, the server's CPU and the wall time of one phase."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.cpu_s = self.server_cpu_s = self.wall_s = 0.0
        self._start = (0.0, 0.0, 0.0)

    def __enter__(self) -> Self:
        self._start = (time.process_time(), cpu_s(self.server_pid), time.perf_counter())
        return self

    def __exit__(self, *_: object) -> None:
        cpu0, server_cpu0, wall0 = self._start
        self.cpu_s = time.process_time() - cpu0
        self.server_cpu_s = cpu_s(self.server_pid) - server_cpu0
        self.wall_s = time.perf_counter() - wall0

    def row(self, name: str, calls: int, idle: Meter | None = None) -> str:
        """One figure line; ``idle``: the phase without the calls, whose CPU is taken off."""
        cpu_s = self.cpu_s - (idle.cpu_s if idle else 0.0)
        return (
            f"{name} calls={calls} calls_per_s={calls / self.wall_s:.0f} "
            f"client_cpu_ms_per_call={cpu_s * 1000 / calls:.3f} "
            f"server_cpu_ms_per_call={self.server_cpu_s * 1000 / calls:.3f} "
            f"client_cpu_pct={100 * self.cpu_s / self.wall_s:.0f} "
            f"server_cpu_pct={100 * self.server_cpu_s / self.wall_s:.0f}"
        )


async def register_all(client: ConsulClient, config: ConsulConfig, count: int) -> list[str]:
    """Register ``count`` services, ``POOL_SIZE`` at a time; return their TTL check IDs."""
    configured = services(count)
    queue = iter(configured)

    async def worker() -> None:
        for svc in queue:  # the workers share one iterator: each service is sent once
            await client.register_service(registration_payload(svc, AGENT_ID, config, "passing"))

    async with asyncio.TaskGroup() as group:
        for _ in range(POOL_SIZE):
            group.create_task(worker())
    return [check_id(svc.id) for svc in configured]


async def back_to_back(
    client: ConsulClient, check_ids: list[str], calls: int, concurrency: int
) -> None:
    """``calls`` TTL updates round-robin over ``check_ids``, ``concurrency`` in flight."""
    ids = itertools.islice(itertools.cycle(check_ids), calls)

    async def worker() -> None:
        for cid in ids:
            await client.update_ttl(cid, "passing", OUTPUT)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


async def paced(
    client: ConsulClient, check_ids: list[str], rate: float, ticks: int, *, send: bool
) -> None:
    """``ticks`` timer wakeups at ``rate``/s, each sending one TTL update if ``send``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    in_flight: set[asyncio.Task[None]] = set()
    for i in range(ticks):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        if send:
            task = asyncio.create_task(
                client.update_ttl(check_ids[i % len(check_ids)], "passing", OUTPUT)
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


async def measure(server: ConsulServer, args: argparse.Namespace) -> None:
    config = ConsulConfig(url=server.url)
    print(f"machine {machine()}")
    async with ConsulClient(config) as client:
        with Meter(server.pid) as registering:
            check_ids = await register_all(client, config, args.services)
        print(registering.row("register", args.services))
        await back_to_back(client, check_ids, args.warmup, args.concurrency)
        with Meter(server.pid) as busy:
            await back_to_back(client, check_ids, args.calls, args.concurrency)
        print(f"{busy.row('heartbeat', args.calls)} concurrency={args.concurrency}")
        ticks = int(args.rate * args.paced_s)
        if ticks > 0:
            with Meter(server.pid) as idle:
                await paced(client, check_ids, args.rate, ticks, send=False)
            with Meter(server.pid) as spread:
                await paced(client, check_ids, args.rate, ticks, send=True)
            print(
                f"{spread.row('paced', ticks, idle)} rate={args.rate:g} "
                f"idle_tick_cpu_ms={idle.cpu_s * 1000 / ticks:.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=POOL_SIZE)
    parser.add_argument("--rate", type=float, default=100.0, help="paced phase: calls/s")
    parser.add_argument("--paced-s", type=float, default=5.0, help="paced phase; 0: skip it")
    parser.add_argument("--smoke", action="store_true", help="a few seconds; for CI")
    args = parser.parse_args()
    if args.smoke:
        args.services, args.calls, args.warmup, args.paced_s = 50, 2000, 200, 1.0
    server = ConsulServer()
    server.start()
    try:
        run(measure(server, args))
    finally:
        server.close()


if __name__ == "__main__":
    main()
