"""Reload: how long the real ``sutazai-agent run`` takes to apply a new configuration.

The agent probes N http targets of ``bench.targets`` and registers them in the fake Consul
(a process of its own); RabbitMQ is the real broker. Once steady, each round rewrites the
configuration file with ``--churn`` services removed and as many new ones added, sends
SIGHUP and measures:

- ``apply_ms``: the agent's own figure (``config_reloaded.duration_ms``: from the reload's
  start — reading the file — to the new set scheduled, the removed ones forgotten), of
  which ``on_loop_ms`` (``apply_ms`` in the log) is the part on the event loop (diff and
  apply; the file is read and validated in a worker thread);
- ``seen_ms``: from the signal to /status listing exactly the new set (includes polling);

then waits one interval and checks that no probe was skipped (``/status`` scheduler
``skipped``), that every added service was probed and every removed one deregistered, and
reports the scheduler lag (p99 and max bucket) over the round.

    python -m bench.reload --services 1000 --churn 10 --rounds 5
    python -m bench.reload --smoke          # seconds; for CI
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import ConsulServer, delta, loadavg, machine, quantile, run, writes
from bench.targets import TargetFarm, raise_fd_limit
from bench.throughput import agent_config, scrape, sink, status, wait_steady
from tests.integration.agent_process import AgentProcess


def max_bucket(cumulative: dict[float, float]) -> float | None:
    """The upper bound of the bucket holding the largest observation (buckets cumulative)."""
    total = cumulative.get(float("inf"), 0.0)
    if not total:
        return None
    return min(le for le, n in cumulative.items() if n >= total)


def log_lines(agent: AgentProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in agent.logs() if line.get("event") == event]


async def one_round(
    session: aiohttp.ClientSession,
    agent: AgentProcess,
    consul: ConsulServer,
    services: list[dict[str, Any]],
    spare: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Swap ``--churn`` configured services for spare ones; ``services`` and ``spare`` are
    updated in place to the new sets."""
    removed, services[:] = services[: args.churn], services[args.churn :]
    added, spare[:] = spare[: args.churn], spare[args.churn :]
    services.extend(added)
    spare.extend(removed)
    agent.config_path.write_text(yaml.safe_dump({**agent.config, "services": services}))
    wanted = {s["name"] for s in services}
    before = await status(session, agent)
    c0 = await consul.stats(session)
    lag0 = (await scrape(session, agent)).lag
    reloads = len(log_lines(agent, "config_reloaded"))

    sent = time.monotonic()
    agent.signal(signal.SIGHUP)
    while True:
        now = await status(session, agent)
        if {s["name"] for s in now["services"]} == wanted:
            seen_s = time.monotonic() - sent
            break
        if time.monotonic() - sent > 60:
            raise RuntimeError(f"reload not applied after 60s\n{agent.log_tail()}")
        await asyncio.sleep(0.005)
    while len(log_lines(agent, "config_reloaded")) == reloads:  # noqa: ASYNC110 - a log file
        await asyncio.sleep(0.05)
    applied = log_lines(agent, "config_reloaded")[-1]

    # One interval and a little: every added service probed, nothing skipped.
    await asyncio.sleep(args.interval + args.timeout)
    after = await status(session, agent)
    c1 = await consul.stats(session)
    lag = delta((await scrape(session, agent)).lag, lag0)
    fresh = {s["name"]: s for s in after["services"] if s["name"] in {a["name"] for a in added}}
    deregistered = writes(c1["requests"])["deregister"] - writes(c0["requests"])["deregister"]
    return {
        "apply_s": applied["duration_ms"] / 1000,
        "on_loop_s": applied["apply_ms"] / 1000,
        "seen_s": seen_s,
        "skipped": after["scheduler"]["skipped"] - before["scheduler"]["skipped"],
        "added_probed": sum(1 for s in fresh.values() if s["last_probe"] is not None),
        "deregistered": deregistered,
        "still_listed": len(set(c1["services"]) & {r["name"] for r in removed}),
        "lag_p99_s": quantile(0.99, lag),
        "lag_max_le_s": max_bucket(lag),
    }


async def measure(
    args: argparse.Namespace, farm: TargetFarm, workdir: Path
) -> list[dict[str, Any]]:
    events = await sink(args.exchange)
    consul = ConsulServer()
    consul.start()
    config = agent_config(args, farm, consul.url)
    every = config["services"]
    services, spare = every[: args.services], every[args.services :]
    config["services"] = services
    agent = AgentProcess(config, workdir)
    try:
        agent.start()
        async with aiohttp.ClientSession() as session:
            await agent.wait_ready(60 + args.interval + args.services / 100)
            steady = await wait_steady(
                session, agent, args.services, 60 + args.services / 100, args
            )
            print(f"steady    {steady}")
            return [
                await one_round(session, agent, consul, services, spare, args)
                for _ in range(args.rounds)
            ]
    finally:
        agent.stop(60)
        consul.close()
        await events.close()


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f}"


async def amain(args: argparse.Namespace) -> int:
    raise_fd_limit()
    print(f"machine   {machine()}; load {loadavg()}")
    print(
        f"command   services={args.services} churn={args.churn} rounds={args.rounds} "
        f"interval_s={args.interval} timeout_s={args.timeout}"
    )
    farm = TargetFarm(args.services + args.churn, args.base_port, args.workers)
    farm.start()
    try:
        with tempfile.TemporaryDirectory(prefix="sutazai-bench-") as tmp:
            rounds = await measure(args, farm, Path(tmp))
    finally:
        farm.close()
    for i, r in enumerate(rounds, 1):
        print(
            f"round     {i} apply_ms={ms(r['apply_s'])} on_loop_ms={ms(r['on_loop_s'])} "
            f"seen_ms={ms(r['seen_s'])} "
            f"skipped={r['skipped']} added_probed={r['added_probed']}/{args.churn} "
            f"deregistered={r['deregistered']}/{args.churn} still_listed={r['still_listed']} "
            f"lag_p99_ms={ms(r['lag_p99_s'])} lag_max_bucket_ms={ms(r['lag_max_le_s'])}"
        )
    apply = [r["apply_s"] for r in rounds]
    seen = [r["seen_s"] for r in rounds]
    print(
        f"reload    services={args.services} added={args.churn} removed={args.churn} "
        f"apply_ms_median={ms(statistics.median(apply))} apply_ms_max={ms(max(apply))} "
        f"seen_ms_median={ms(statistics.median(seen))} seen_ms_max={ms(max(seen))} "
        f"skipped={sum(r['skipped'] for r in rounds)} "
        f"json={json.dumps({'apply_ms': [round(a * 1000, 1) for a in apply]})}"
    )
    print(f"load      {loadavg()}")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--churn", type=int, default=10, help="services removed and added per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--interval", type=float, default=10.0, help="probe interval, seconds")
    p.add_argument("--timeout", type=float, default=5.0, help="probe timeout, seconds")
    p.add_argument("--consul-ttl", type=float, default=30.0, help="consul.ttl_s of the agent")
    p.add_argument("--workers", type=int, default=2, help="target processes")
    p.add_argument("--base-port", type=int, default=21000)
    p.add_argument("--exchange", default="sutazai.bench.reload")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    args = p.parse_args()
    # What bench.throughput's agent_config reads.
    args.kind, args.register, args.agent_extra = "http", True, "{}"
    args.register_max = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.services, args.churn, args.rounds = 30, 3, 2
        args.interval, args.timeout = 1.0, 0.5
    sys.exit(run(amain(args)))


if __name__ == "__main__":
    main()
