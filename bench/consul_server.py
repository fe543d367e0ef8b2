"""The strict fake Consul (tests/fakes/consul.py) in a process of its own.

The benchmarks run it apart from the agent so that its CPU is not charged to the agent.
It prints ``READY <consul_port> <stats_port>``; ``GET /stats`` on the stats port answers
``{"requests": {"PUT /v1/agent/service/register": n, ...}, "writes": n, "services": [ids],
"owners": {id: agent-id}, "checks": {check id: status}}``.

    python -m bench.consul_server
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.consul import FakeConsul  # noqa: E402


def stats(consul: FakeConsul) -> dict[str, Any]:
    consul.evaluate()
    return {
        "requests": {f"{m} {route}": n for (m, route), n in consul.requests.items()},
        "writes": consul.writes(),
        "services": sorted(consul.services),
        "owners": {sid: s.meta.get("agent-id", "") for sid, s in consul.services.items()},
        "checks": {cid: c.status for cid, c in consul.checks.items()},
        "at": time.monotonic(),
    }


async def serve() -> None:
    # evaluate() (TTL expiry, reaping) walks every check: at 10,000 services, on every
    # request, the fake could not keep up with the heartbeats. 0.1 s is far below any TTL.
    consul = FakeConsul(evaluate_every_s=0.1)
    await consul.start()

    async def handler(_: web.Request) -> web.Response:
        return web.json_response(stats(consul))

    app = web.Application()
    app.router.add_get("/stats", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stats_port = runner.addresses[0][1]
    print(f"READY {consul.port} {stats_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    await consul.stop()


def main() -> None:
    argparse.ArgumentParser(
        prog="python -m bench.consul_server",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        epilog="Prints READY <consul_port> <stats_port> once serving; SIGTERM stops it.",
    ).parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
