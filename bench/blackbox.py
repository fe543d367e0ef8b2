"""Debian's prometheus-blackbox-exporter, and a driver that probes through it at a fixed rate.

The exporter runs on a free loopback port with a config file of our own. The driver is a
process of its own (its CPU is not the exporter's): every target once per interval, phases
spread evenly over the interval (as the agent's splay does), at most ``--concurrency``
requests in flight, keep-alive to the exporter (as Prometheus scrapes it). It prints
``WINDOW_START`` when the measuring window opens and ``WINDOW_END {json}`` when it closes,
so that the caller can read the exporter's CPU from /proc at those moments.

    python -m bench.blackbox drive --exporter http://127.0.0.1:9115 --module http_2xx \\
        --interval 10 --warmup 5 --window 30 < targets.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ROOT, get, quantile, run, stop_process
from tests.integration.agent_process import free_port

EXPORTER = "/usr/bin/prometheus-blackbox-exporter"
CONFIG = """\
modules:
  http_2xx:
    prober: http
    timeout: {timeout_s}s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
  tcp_connect:
    prober: tcp
    timeout: {timeout_s}s
    tcp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
"""
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 10.0)


def exporter_path() -> str | None:
    return shutil.which("prometheus-blackbox-exporter") or (
        EXPORTER if Path(EXPORTER).exists() else None
    )


class Exporter:
    def __init__(self, workdir: Path, timeout_s: float) -> None:
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, session: aiohttp.ClientSession) -> None:
        binary = exporter_path()
        if binary is None:
            raise FileNotFoundError("prometheus-blackbox-exporter is not installed")
        self.port = free_port()
        self.proc = self._spawn(binary)
        for _ in range(200):
            try:
                status, _, _ = await get(session, self.url + "/-/healthy", 1.0)
                if status == 200:
                    return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"blackbox_exporter did not start; see {self.workdir}/blackbox.log")

    def _spawn(self, binary: str) -> subprocess.Popen[bytes]:
        config = self.workdir / "blackbox.yml"
        config.write_text(CONFIG.format(timeout_s=self.timeout_s))
        with (self.workdir / "blackbox.log").open("wb") as log:
            return subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def close(self) -> None:
        stop_process(self.proc)


class Driver:
    """``python -m bench.blackbox drive`` as a subprocess, read line by line."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, exporter: str, module: str, targets: list[str], **opts: float) -> None:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.blackbox",
            "drive",
            f"--exporter={exporter}",
            f"--module={module}",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(targets).encode())
        await self.proc.stdin.drain()
        self.proc.stdin.close()

    async def line(self, prefix: str) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"blackbox driver exited before {prefix}")
            text = raw.decode().strip()
            if text.startswith(prefix):
                return text[len(prefix) :].strip()

    async def wait(self) -> None:
        if self.proc is not None:
            await self.proc.wait()


async def drive(
    exporter: str,
    module: str,
    targets: list[str],
    interval_s: float,
    warmup_s: float,
    window_s: float,
    concurrency: int,
    timeout_s: float,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    n = len(targets)
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    done = ok = failed = 0
    lag_max = 0.0
    latency: list[float] = []
    start = loop.time() + 0.05
    window_start = start + warmup_s
    window_end = window_start + window_s
    tasks: set[asyncio.Task[None]] = set()
    http_timeout = aiohttp.ClientTimeout(total=timeout_s + 5)

    async def probe(session: aiohttp.ClientSession, target: str, due: float) -> None:
        nonlocal done, ok, failed, lag_max
        async with slots:
            began = loop.time()
            try:
                params = {"target": target, "module": module}
                async with session.get(
                    exporter + "/probe", params=params, timeout=http_timeout
                ) as response:
                    body = await response.read()
                success = b"\nprobe_success 1" in body
            except (aiohttp.ClientError, TimeoutError):
                success = False
            ended = loop.time()
        if window_start <= ended < window_end:
            done += 1
            ok += success
            failed += not success
            latency.append(ended - began)
            lag_max = max(lag_max, began - due)

    async def mark() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        print("WINDOW_START", flush=True)

    async with aiohttp.ClientSession(connector=connector) as session:
        marker = asyncio.create_task(mark())
        k = 0
        step = interval_s / n
        while True:
            due = start + k * step
            if due >= window_end:
                break
            now = loop.time()
            if due > now:
                await asyncio.sleep(max(due - now, 0.001))
                continue
            while due <= now and due < window_end:
                task = asyncio.create_task(probe(session, targets[k % n], due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                k += 1
                due = start + k * step
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        await marker
        seconds = window_s
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    buckets: dict[float, float] = {}
    for bound in (*LATENCY_BUCKETS_S, float("inf")):
        buckets[bound] = sum(1 for x in latency if x <= bound)
    return {
        "probes": done,
        "ok": ok,
        "failed": failed,
        "seconds": seconds,
        "rate": done / seconds,
        "latency_p50_s": _exact(latency, 0.5) if latency else quantile(0.5, buckets),
        "latency_p99_s": _exact(latency, 0.99) if latency else quantile(0.99, buckets),
        "start_lag_max_s": lag_max,
    }


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drive", help="probe the targets on stdin (JSON list) through the exporter")
    d.add_argument("--exporter", required=True)
    d.add_argument("--module", default="http_2xx")
    d.add_argument("--interval", type=float, default=10.0)
    d.add_argument("--warmup", type=float, default=5.0)
    d.add_argument("--window", type=float, default=30.0)
    d.add_argument("--concurrency", type=int, default=256)
    d.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    targets = json.loads(sys.stdin.read())
    began = time.monotonic()
    result = run(
        drive(
            args.exporter,
            args.module,
            targets,
            args.interval,
            args.warmup,
            args.window,
            args.concurrency,
            args.timeout,
        )
    )
    result["wall_s"] = time.monotonic() - began
    print("WINDOW_END " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
