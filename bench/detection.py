"""Detection: from a target stopping to (a) /metrics, (b) Consul, (c) a consumer knowing it.

The real agent probes ``--services`` targets of ``bench.targets`` at a short interval; Consul
is the strict fake (its own process), RabbitMQ the real broker with a consumer bound to the
agent's exchange. Every target cycles independently: wait a random fraction of the interval
(so the stop falls anywhere in the probe cycle), stop it (listener closed and connections
reset, as when a process dies; ``--mode hang`` instead leaves it accepting but mute, so
probes time out), then time until

  (a) ``sutazai_agent_service_up{service=…}`` reads 0 on /metrics,
  (b) the service is gone from the fake Consul's ``/v1/agent/services``,
  (c) the ``health.<service>.down`` event reaches the consumer,

then start the target again and wait for it to be up everywhere before the next trial.
(a) and (b) are polled every ``--poll`` seconds (that is their resolution); (c) is pushed.
The distributions are compared with the bound ``fall * interval + timeout``.

    python -m bench.detection --services 20 --trials 200 --interval 1 --timeout 0.5
    python -m bench.detection --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from bench.common import RABBITMQ_URL, ConsulServer, get, loadavg, machine, parse_metrics, run
from bench.targets import TargetFarm, raise_fd_limit
from tests.integration.agent_process import AgentProcess

EXCHANGE = "sutazai.bench.detection"


class Observer:
    """What the three observers (metrics, Consul, the exchange) last saw, with timestamps."""

    def __init__(self) -> None:
        self.up: dict[str, float] = {}
        self.registered: set[str] = set()
        self.events: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.polls = 0

    def on_event(self, message: AbstractIncomingMessage) -> None:
        at = time.monotonic()
        body = json.loads(message.body)
        self.events[body["subject"]].append((body["data"]["current"], at))

    def event_since(self, name: str, state: str, since: float) -> float | None:
        for current, at in self.events[name]:
            if current == state and at >= since:
                return at
        return None

    async def poll(
        self,
        session: aiohttp.ClientSession,
        agent: AgentProcess,
        consul: ConsulServer,
        poll_s: float,
    ) -> None:
        while True:
            _, body, _ = await get(session, agent.base + "/metrics")
            self.up = parse_metrics(body).up
            _, body, _ = await get(session, consul.url + "/v1/agent/services")
            self.registered = set(json.loads(body))
            self.polls += 1
            await asyncio.sleep(poll_s)


async def wait_for(condition: Any, timeout_s: float, poll_s: float) -> float | None:
    """Time when ``condition()`` first held, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        await asyncio.sleep(poll_s / 2)
    return None


async def cycle(
    name: str,
    port: int,
    farm: TargetFarm,
    seen: Observer,
    args: argparse.Namespace,
    budget: list[int],
    results: list[dict[str, float | None]],
) -> None:
    bound_s = args.fall * args.interval + args.timeout
    patience = 3 * bound_s + 5
    rng = random.Random(port)
    while budget[0] > 0:
        budget[0] -= 1
        await asyncio.sleep(rng.uniform(0, args.interval))
        t0 = time.monotonic()
        await farm.acontrol("stop" if args.mode == "stop" else "hang", port)
        a = await wait_for(lambda: seen.up.get(name) == 0, patience, args.poll)
        b = await wait_for(lambda: name not in seen.registered, patience, args.poll)
        c = await wait_for(lambda t0=t0: seen.event_since(name, "down", t0), patience, args.poll)
        c_at = seen.event_since(name, "down", t0)
        results.append(
            {
                "metrics": None if a is None else a - t0,
                "consul": None if b is None else b - t0,
                "event": None if c is None or c_at is None else c_at - t0,
            }
        )
        t1 = time.monotonic()
        await farm.acontrol("start", port)
        back = await wait_for(
            lambda t1=t1: (
                seen.up.get(name) == 1
                and name in seen.registered
                and seen.event_since(name, "up", t1) is not None
            ),
            patience + args.rise * args.interval,
            args.poll,
        )
        if back is None:
            print(f"# {name} did not come back up; stopping its trials", file=sys.stderr)
            return


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return (
        f"min={ordered[0] * 1000:.0f} p50={q(0.5):.0f} p90={q(0.9):.0f} "
        f"p99={q(0.99):.0f} max={ordered[-1] * 1000:.0f}"
    )


async def amain(args: argparse.Namespace) -> int:
    raise_fd_limit()
    bound_s = args.fall * args.interval + args.timeout
    print(f"machine   {machine()}; load {loadavg()}")
    print(
        f"command   services={args.services} trials={args.trials} mode={args.mode} "
        f"interval_s={args.interval} timeout_s={args.timeout} fall={args.fall} rise={args.rise} "
        f"poll_ms={args.poll * 1000:.0f} bound_ms={bound_s * 1000:.0f}"
    )
    farm = TargetFarm(args.services, args.base_port, workers=1)
    farm.start()
    consul = ConsulServer()
    consul.start()
    connection = await aio_pika.connect(RABBITMQ_URL)
    seen = Observer()
    agent: AgentProcess | None = None
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="health.#")
        await queue.consume(seen.on_event, no_ack=True)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="sutazai-detect-") as tmp:
            config = {
                "agent_id": "bench-detect",
                "interval_s": args.interval,
                "timeout_s": args.timeout,
                "rise": args.rise,
                "fall": args.fall,
                "consul": {"url": consul.url},
                "rabbitmq": {"url": RABBITMQ_URL, "exchange": EXCHANGE},
                "log": {"level": "info", "format": "json"},
                "services": [
                    {"name": f"t-{port}", "kind": args.kind, "url": farm.url(port)}
                    if args.kind == "http"
                    else {"name": f"t-{port}", "kind": "tcp", "host": "127.0.0.1", "port": port}
                    for port in farm.ports
                ],
            }
            agent = AgentProcess(config, Path(tmp))
            agent.start()
            async with aiohttp.ClientSession() as session:
                await agent.wait_ready(60)
                poller = asyncio.create_task(seen.poll(session, agent, consul, args.poll))
                names = {f"t-{port}": port for port in farm.ports}
                ok = await wait_for(
                    lambda: (
                        all(seen.up.get(n) == 1 for n in names) and set(names) <= seen.registered
                    ),
                    30,
                    args.poll,
                )
                if ok is None:
                    print(f"# agent never got all targets up\n{agent.log_tail()}", file=sys.stderr)
                    return 1
                results: list[dict[str, float | None]] = []
                budget = [args.trials]
                await asyncio.gather(
                    *(
                        cycle(name, port, farm, seen, args, budget, results)
                        for name, port in names.items()
                    )
                )
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            code = agent.stop(30)
            agent = None
    finally:
        if agent is not None:
            agent.stop(30)
        await connection.close()
        consul.close()
        farm.close()
    for what in ("metrics", "consul", "event"):
        values = [r[what] for r in results]
        got = [v for v in values if v is not None]
        within = sum(1 for v in got if v <= bound_s)
        print(
            f"detect    {what:<7} n={len(got)}/{len(values)} {summary(got)} ms; "
            f"within bound {within}/{len(values)}"
        )
    print(f"load      {loadavg()}; agent exit code {code}")
    return 0 if code == 0 and results else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", type=int, default=20, help="targets cycled in parallel")
    p.add_argument("--trials", type=int, default=200, help="stops in total")
    p.add_argument("--kind", choices=("http", "tcp"), default="http")
    p.add_argument("--mode", choices=("stop", "hang"), default="stop")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=0.5)
    p.add_argument("--fall", type=int, default=2)
    p.add_argument("--rise", type=int, default=1)
    p.add_argument("--poll", type=float, default=0.02, help="seconds between /metrics polls")
    p.add_argument("--base-port", type=int, default=23000)
    p.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    args = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the agent, targets and fakes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.services, args.trials, args.interval, args.timeout = 3, 3, 0.5, 0.25
    sys.exit(run(amain(args)))


if __name__ == "__main__":
    main()
