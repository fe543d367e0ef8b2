"""Takeover in a group: how long a SIGKILLed member's services stay without an owner.

A group of ``--members`` real agents (processes) splits ``--services`` TCP targets (one
loopback listener); Consul is the strict fake in a process of its own (``bench.consul_server``,
sessions invalidated 2 x TTL after the last renewal, as Consul's ``SessionTTLMultiplier``),
RabbitMQ the real broker with a consumer bound to the agents' exchange. Each of ``--kills``
rounds: SIGKILL one member (in turn), time until every one of its services is registered by
the survivor that owns it by the group's hashing (polled every ``--poll`` s: that is the
resolution), then start it again and time until the group's split is back. Reported:

- takeover time (kill → all its services registered by survivors), p50/p90/max, against
  the bound 2 x ``ttl_s`` + 2 x ``interval_s`` (DESIGN.md "Several agents");
- services moved per leave and per join (registrations whose agent-id changed);
- events a consumer received during the rounds (a handover is not a health change: 0);
- Consul writes (PUTs: TTL updates, session renewals, KV) per minute per agent in steady state.

    python -m bench.takeover --kills 20
    python -m bench.takeover --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from bench.common import RABBITMQ_URL, ConsulServer, loadavg, machine, run
from sutazai_agent.core.rendezvous import owner
from tests.integration.agent_process import AgentProcess


class Consumer:
    """Every event the agents publish, with the round it arrived in."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.events: list[tuple[str, str]] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(RABBITMQ_URL)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "health.#")

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                body = json.loads(message.body)
                self.events.append((body["subject"], body["data"]["current"]))

        await queue.consume(on_message)

    async def close(self) -> None:
        if self._connection is not None:
            channel = await self._connection.channel()
            await channel.exchange_delete(self.exchange)
            await self._connection.close()


async def serve_target() -> tuple[asyncio.Server, int]:
    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


def agent(
    workdir: Path, agent_id: str, args: argparse.Namespace, consul: str, exchange: str, port: int
) -> AgentProcess:
    (workdir / agent_id).mkdir(exist_ok=True)
    config = {
        "agent_id": agent_id,
        "group": "bench",
        "interval_s": args.interval,
        "timeout_s": 0.5,
        "rise": 1,
        "fall": 2,
        "log": {"level": "warning", "format": "json"},
        "consul": {"url": consul, "ttl_s": args.ttl, "resync_interval_s": 60},
        "rabbitmq": {"url": RABBITMQ_URL, "exchange": exchange},
        "services": [
            {"name": f"svc-{i}", "kind": "tcp", "host": "127.0.0.1", "port": port}
            for i in range(args.services)
        ],
    }
    return AgentProcess(config, workdir / agent_id)


async def owners(server: ConsulServer, http: aiohttp.ClientSession) -> dict[str, str]:
    found: dict[str, str] = (await server.stats(http))["owners"]
    return found


async def until_split(
    server: ConsulServer,
    http: aiohttp.ClientSession,
    names: list[str],
    live: list[str],
    poll_s: float,
    limit_s: float,
) -> tuple[float, dict[str, str]]:
    """Wait until every service is registered by its owner among ``live``: (seconds, owners)."""
    want = {n: owner(n, live) for n in names}
    start = time.monotonic()
    while True:
        found = await owners(server, http)
        if found == want:
            return time.monotonic() - start, found
        if time.monotonic() - start > limit_s:
            raise RuntimeError(f"no split among {live} within {limit_s}s: {found}")
        await asyncio.sleep(poll_s)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(args: argparse.Namespace) -> None:
    names = [f"svc-{i}" for i in range(args.services)]
    ids = [f"m{i + 1}" for i in range(args.members)]
    bound_s = 2 * args.ttl + 2 * args.interval
    exchange = f"sutazai.bench.takeover.{uuid.uuid4().hex[:8]}"
    server = ConsulServer()
    server.start()
    target, port = await serve_target()
    consumer = Consumer(exchange)
    await consumer.start()
    agents: dict[str, AgentProcess] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for agent_id in ids:
                agents[agent_id] = agent(Path(tmp), agent_id, args, server.url, exchange, port)
                agents[agent_id].start()
            async with aiohttp.ClientSession() as http:
                await until_split(server, http, names, ids, args.poll, 60)
                await asyncio.sleep(2 * args.interval)  # let the first events through
                settled_events = len(consumer.events)
                # Steady state: Consul writes over a window, all members alive.
                before = await server.stats(http)
                await asyncio.sleep(args.steady)
                after = await server.stats(http)
                minutes = (after["at"] - before["at"]) / 60
                per_agent = (after["writes"] - before["writes"]) / minutes / len(ids)
                takeovers: list[float] = []
                joins: list[float] = []
                moved_leave: list[int] = []
                moved_join: list[int] = []
                for round_ in range(args.kills):
                    victim = ids[round_ % len(ids)]
                    live = [i for i in ids if i != victim]
                    start_owners = await owners(server, http)
                    agents[victim].kill()
                    took, found = await until_split(
                        server, http, names, live, args.poll, bound_s + 30
                    )
                    takeovers.append(took)
                    moved_leave.append(sum(start_owners[n] != found[n] for n in names))
                    agents[victim].start()
                    took, back = await until_split(server, http, names, ids, args.poll, 60)
                    joins.append(took)
                    moved_join.append(sum(found[n] != back[n] for n in names))
                await asyncio.sleep(2 * args.interval)
                during = consumer.events[settled_events:]
    finally:
        for process in agents.values():
            process.kill()
        target.close()
        await consumer.close()
        server.close()
    print(f"machine: {machine()}; load {loadavg()}")
    print(
        f"group: {args.members} agents, {args.services} services, ttl_s {args.ttl}, "
        f"interval_s {args.interval}, poll {args.poll}s; bound 2 x ttl + 2 x interval = "
        f"{bound_s:.0f}s"
    )
    print(
        f"takeover_s over {len(takeovers)} SIGKILLs: p50 {statistics.median(takeovers):.1f} "
        f"p90 {pct(takeovers, 0.9):.1f} max {max(takeovers):.1f} min {min(takeovers):.1f}"
    )
    print(f"rejoin_s (start → split back): p50 {statistics.median(joins):.1f} max {max(joins):.1f}")
    share = -(-args.services // args.members)
    print(
        f"moved per leave: mean {statistics.mean(moved_leave):.1f} max {max(moved_leave)}; "
        f"per join: mean {statistics.mean(moved_join):.1f} max {max(moved_join)} "
        f"(⌈{args.services}/{args.members}⌉ = {share})"
    )
    downs = sum(1 for _, state in during if state == "down")
    print(f"events during the rounds: {len(during)} ({downs} down)")
    print(
        f"consul writes per agent in steady state: {per_agent:.1f}/min "
        f"({args.steady:.0f}s window, {len(ids)} agents)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--smoke", action="store_true", help="one kill, a short window")
    args = parser.parse_args()
    if args.smoke:
        args.kills, args.services, args.steady = 1, 6, 5.0
    run(measure(args))


if __name__ == "__main__":
    main()
