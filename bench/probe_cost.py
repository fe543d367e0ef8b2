"""CPU-ms per probe of one probe kind in a tight loop, without the rest of the agent.

Starts a target farm (``bench/targets.py``, separate processes), builds probes the way the
agent does and runs them back to back with ``--concurrency`` in flight, on uvloop when it is
installed. It prints the probing process's CPU per probe (``time.process_time``; the targets'
CPU is not counted) and the probes per second, for each variant asked for:

- ``http``: the ``http`` probe as configured by default (the lean HTTP/1.1 exchange);
- ``http-aiohttp``: the same probe through the aiohttp session (what ``follow_redirects``
  uses, and what every ``http`` probe used before the lean exchange);
- ``tcp``: the ``tcp`` probe;
- ``redis``, ``postgres``: the data-layer probes against the real servers on loopback
  (``--redis-url``, ``--postgres-dsn``), every probe a new connection, authenticated;
- ``grpc``: the ``grpc`` probe against a health server in its own process
  (``bench/grpc_target.py``).

The data-layer variants run ``--data-probes`` probes with at most ``--data-concurrency`` in
flight: each postgres probe is a server backend, and the servers are shared.

    python -m bench.probe_cost --targets 200 --probes 20000
    python -m bench.probe_cost --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import run
from bench.grpc_target import GrpcTarget
from bench.targets import TargetFarm, raise_fd_limit
from sutazai_agent.config import (
    GrpcService,
    HttpService,
    PostgresService,
    RedisService,
    TcpService,
)
from sutazai_agent.core.model import Outcome
from sutazai_agent.probes import build_probe, make_session, run_probe

VARIANTS = ("http", "http-aiohttp", "tcp", "redis", "postgres", "grpc")
DATA_VARIANTS = ("redis", "postgres", "grpc")


def _service(variant: str, url: str, port: int, index: int, args: argparse.Namespace) -> Any:
    name = f"t{index}"
    if variant == "tcp":
        return TcpService(name=name, kind="tcp", host="127.0.0.1", port=port)
    if variant == "redis":
        return RedisService(name=name, kind="redis", url=args.redis_url)
    if variant == "postgres":
        return PostgresService(name=name, kind="postgres", dsn=args.postgres_dsn)
    if variant == "grpc":
        return GrpcService(name=name, kind="grpc", host="127.0.0.1", port=args.grpc_port)
    # follow_redirects sends the probe through aiohttp; the targets never redirect.
    return HttpService(name=name, kind="http", url=url, follow_redirects=variant == "http-aiohttp")


async def measure(
    farm: TargetFarm, variant: str, probes: int, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    async with make_session(concurrency) as session:
        built = [
            build_probe(_service(variant, farm.url(port), port, i, args), session, 5.0)
            for i, port in enumerate(farm.ports)
        ]
        failed = 0
        next_index = 0

        async def worker() -> None:
            nonlocal failed, next_index
            while next_index < probes:
                probe = built[next_index % len(built)]
                next_index += 1
                result = await run_probe(probe, 5.0)
                if result.outcome is not Outcome.OK:
                    failed += 1

        # Warm up (imports, first connections), then measure.
        await asyncio.gather(*(run_probe(p, 5.0) for p in built[:concurrency]))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "variant": variant,
        "probes": probes,
        "failed": failed,
        "cpu_ms_per_probe": round(cpu * 1000 / probes, 3),
        "probes_per_s": round(probes / wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--probes", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--data-probes", type=int, default=4000)
    parser.add_argument("--data-concurrency", type=int, default=16)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--smoke", action="store_true", help="a few hundred probes, to check it runs"
    )
    args = parser.parse_args()
    if args.smoke:
        args.targets, args.probes, args.concurrency = 10, 300, 8
        args.data_probes, args.data_concurrency = 100, 4
    raise_fd_limit()
    with TargetFarm(args.targets) as farm, GrpcTarget() as grpc_target:
        args.grpc_port = grpc_target.port
        run(measure_all(farm, args))


async def measure_all(farm: TargetFarm, args: argparse.Namespace) -> None:
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # uvloop or asyncio
    print(
        f"{args.targets} targets, {args.probes} probes per variant "
        f"({args.data_probes} for redis, postgres, grpc), {loop}"
    )
    for variant in args.variants.split(","):
        if variant in DATA_VARIANTS:
            probes, concurrency = args.data_probes, min(args.concurrency, args.data_concurrency)
        else:
            probes, concurrency = args.probes, args.concurrency
        row = await measure(farm, variant, probes, concurrency, args)
        print(
            f"{row['variant']}: {row['cpu_ms_per_probe']:.3f} CPU-ms/probe, "
            f"{row['probes_per_s']} probes/s, {concurrency} in flight, {row['failed']} failed"
        )


if __name__ == "__main__":
    main()
