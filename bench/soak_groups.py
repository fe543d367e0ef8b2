#!/usr/bin/env python
"""Group soak: members of a group SIGKILLed, stopped and restarted at random, targets going
down and up; then, after convergence, the group's invariants.

    python -m bench.soak_groups --duration 600 --members 3 --services 30 --seed 1
    python -m bench.soak_groups --smoke

Kept apart from ``bench/soak.py`` (one agent under every other fault): the group needs several
agents, one fake Consul shared by them (``bench.consul_server``, its own process) and targets
it can stop one by one (TCP listeners in this process). RabbitMQ is the real broker, with a
consumer on the run's own exchange.

Faults, seeded, one every ``--every`` seconds on average: SIGKILL of a random live member
(never the last one), SIGTERM of one (a clean leave), restart of a dead one, a target
stopped or started again. Then every member is started, the targets freeze, and after
2 x ``ttl_s`` + 2 x ``interval_s`` + one resync the invariants are checked (exit 1 if one fails):

1. ownership: every service is registered exactly once, by the member that owns it among the
   live members (rendezvous hashing), and by no one if its target is down;
2. consul: the passing set equals the set of targets up;
3. events: each service's last event says its target's final state;
4. health: no ``task_died`` or traceback in any member's log.

Reported: takeovers and their times, events, repeated announcements (an event whose state
equals the service's previous event's: a handover that was announced).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp

from bench.common import ConsulServer, loadavg, machine, run
from bench.takeover import Consumer, agent
from sutazai_agent.core.rendezvous import owner
from tests.integration.agent_process import AgentProcess


class Target:
    """A TCP listener this soak can stop and start on a fixed port."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", self.port or 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def up(self) -> bool:
        return self.server is not None


def configure(
    workdir: Path, agent_id: str, args: argparse.Namespace, consul: str, exchange: str,
    ports: list[int],
) -> AgentProcess:  # fmt: skip
    process = agent(workdir, agent_id, args, consul, exchange, ports[0])
    services = process.config["services"]
    for service, port in zip(services, ports, strict=True):
        service["port"] = port
    process.config["log"] = {"level": "info", "format": "json"}
    process.config_path.write_text(json.dumps(process.config))  # YAML is a superset of JSON
    return process


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    names = [f"svc-{i}" for i in range(args.services)]
    ids = [f"m{i + 1}" for i in range(args.members)]
    exchange = f"sutazai.soak.groups.{uuid.uuid4().hex[:8]}"
    targets = [Target() for _ in names]
    for target in targets:
        await target.start()
    server = ConsulServer()
    server.start()
    consumer = Consumer(exchange)
    await consumer.start()
    agents: dict[str, AgentProcess] = {}
    counts = {"sigkill": 0, "sigterm": 0, "restart": 0, "target": 0}
    failures: list[str] = []
    stopping: set[str] = set()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            tmp = args.workdir or scratch
            ports = [t.port for t in targets]
            for agent_id in ids:
                agents[agent_id] = configure(Path(tmp), agent_id, args, server.url, exchange, ports)
                agents[agent_id].start()
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                await asyncio.sleep(rng.expovariate(1 / args.every))
                live = [i for i in ids if agents[i].proc and agents[i].proc.poll() is None]
                dead = [i for i in ids if i not in live]
                roll = rng.random()
                if roll < 0.3 and len(live) > 1:
                    agents[rng.choice(live)].kill()
                    counts["sigkill"] += 1
                elif roll < 0.4 and len(live) > 1:
                    victim = rng.choice(live)
                    agents[victim].signal(signal.SIGTERM)  # not waited for
                    stopping.add(victim)
                    counts["sigterm"] += 1
                elif roll < 0.7 and dead:
                    revived = rng.choice(dead)
                    stopping.discard(revived)
                    agents[revived].start()
                    counts["restart"] += 1
                else:
                    target = rng.choice(targets)
                    await (target.stop() if target.up else target.start())
                    counts["target"] += 1
            for agent_id in ids:
                proc = agents[agent_id].proc
                if proc is not None and agent_id in stopping:
                    await asyncio.to_thread(proc.wait, 30)  # a SIGTERMed one finishing
                elif proc is not None and proc.poll() is None:
                    continue
                agents[agent_id].start()
            settle_s = 2 * args.ttl + 2 * args.interval + 60 + 10
            up = {n for n, t in zip(names, targets, strict=True) if t.up}
            want = {n: owner(n, ids) for n in sorted(up)}
            async with aiohttp.ClientSession() as http:
                start = time.monotonic()
                while True:
                    stats = await server.stats(http)
                    passing = {n for n in names if stats["checks"].get(f"sutazai:{n}") == "passing"}
                    if stats["owners"] == want and passing == up:
                        break
                    if time.monotonic() - start > settle_s:
                        failures.append(
                            f"ownership/consul: not converged in {settle_s:.0f}s: "
                            f"owners {stats['owners']} passing {sorted(passing)} "
                            f"want {want}"
                        )
                        break
                    await asyncio.sleep(0.5)
                converged_s = time.monotonic() - start
                await asyncio.sleep(3 * args.interval)  # let the last events through
            last: dict[str, str] = {}
            repeats: Counter[str] = Counter()
            for name, state in consumer.events:
                if last.get(name) == state:
                    repeats[state] += 1
                last[name] = state
            for name, target in zip(names, targets, strict=True):
                expected = "up" if target.up else "down"
                if last.get(name) != expected:
                    failures.append(f"events: {name} last {last.get(name)}, target {expected}")
            for agent_id, process in agents.items():
                await asyncio.to_thread(process.stop)
                text = process.log_text()
                if "task_died" in text or "Traceback" in text:
                    failures.append(f"health: {agent_id} logged a crash")
    finally:
        for process in agents.values():
            process.kill()
        for target in targets:
            await target.stop()
        await consumer.close()
        server.close()
    print(f"machine: {machine()}; load {loadavg()}")
    print(
        f"group soak: {args.members} agents, {args.services} services, {args.duration:.0f}s, "
        f"seed {args.seed}; faults {counts}"
    )
    print(f"converged in {converged_s:.1f}s after the faults stopped")
    print(
        f"events: {len(consumer.events)}; repeated announcements: {dict(repeats)} (a down "
        "service is not in Consul with on_down deregister: its new owner announces it again)"
    )
    for failure in failures:
        print(f"FAIL {failure}")
    print("invariants: " + ("FAIL" if failures else "ok"))
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--every", type=float, default=8.0)
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="keep the members' logs and state here")
    parser.add_argument("--smoke", action="store_true", help="a short run of few faults")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.services, args.every = 20.0, 8, 5.0
    raise SystemExit(run(soak(args)))


if __name__ == "__main__":
    main()
