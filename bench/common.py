"""What the benchmarks share: /proc sampling, Prometheus text parsing, helper processes."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
PREFIX = "sutazai_agent_"


# --- /proc ----------------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb, _ = line.split()
                values[key] = int(kb) / 1024
    return values["VmRSS:"], values["VmHWM:"]


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU {model}, Python {platform.python_version()}, {platform.system()}"


# --- Prometheus text ------------------------------------------------------------------------
@dataclass
class Scrape:
    """The few things the benchmarks read from one /metrics scrape of the agent."""

    size: int = 0
    seconds: float = 0.0
    series: int = 0
    probes: float = 0.0
    probes_by_result: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    lag: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    duration: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    kind_duration: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    beat_lag: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    consul_ops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    gauges: dict[str, float] = field(default_factory=dict)
    up: dict[str, float] = field(default_factory=dict)
    per_service: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in text.split('",'):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    return out


def parse_metrics(body: str, count_service: str | None = None) -> Scrape:
    s = Scrape(size=len(body.encode()))
    for line in body.splitlines():
        if not line or line[0] == "#":
            continue
        s.series += 1
        head, _, value_text = line.rpartition(" ")
        name, _, labels = head.partition("{")
        if count_service is not None and f'service="{count_service}"' in labels:
            s.per_service[name.rsplit("_bucket", 1)[0]] += 1
        if not name.startswith(PREFIX):
            continue
        short = name[len(PREFIX) :]
        value = float(value_text)
        if short == "probes_total":
            s.probes += value
            s.probes_by_result[_labels(labels.rstrip("}")).get("result", "?")] += value
        elif short == "scheduler_lag_seconds_bucket":
            s.lag[float(_labels(labels.rstrip("}"))["le"])] += value
        elif short == "probe_duration_seconds_bucket":
            s.duration[float(_labels(labels.rstrip("}"))["le"])] += value
        elif short == "probe_kind_duration_seconds_bucket":
            s.kind_duration[float(_labels(labels.rstrip("}"))["le"])] += value
        elif short == "consul_heartbeat_lag_seconds_bucket":
            s.beat_lag[float(_labels(labels.rstrip("}"))["le"])] += value
        elif short == "consul_operations_total":
            lab = _labels(labels.rstrip("}"))
            s.consul_ops[f"{lab.get('operation')}:{lab.get('outcome')}"] += value
        elif short == "service_up":
            s.up[_labels(labels.rstrip("}"))["service"]] = value
        elif not labels:
            s.gauges[short] = value
    return s


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile`` as Prometheus computes it, from cumulative bucket counts."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in items:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f}"


async def get(
    session: aiohttp.ClientSession, url: str, timeout_s: float = 30.0
) -> tuple[int, str, float]:
    start = time.perf_counter()
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        body = await response.text()
    return response.status, body, time.perf_counter() - start


# --- helper processes -----------------------------------------------------------------------
class ConsulServer:
    """bench.consul_server as a subprocess."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.stats_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.consul_server"],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"fake Consul did not start: {line}")
        self.port, self.stats_port = int(line[1]), int(line[2])

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        _, body, _ = await get(session, f"http://127.0.0.1:{self.stats_port}/stats")
        data: dict[str, Any] = json.loads(body)
        return data

    def close(self) -> None:
        stop_process(self.proc)


class RealConsul:
    """A Consul agent the caller started (``--consul-url``, ``--consul-pid``): nothing to
    start or stop; its CPU is read from /proc when its pid is known. It has no request
    counters: the writes come from the agent's own ``consul_operations_total``."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url.rstrip("/")
        self.pid = pid

    def start(self) -> None:
        pass

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        return {"requests": {}}

    async def critical_checks(self, session: aiohttp.ClientSession) -> int:
        """Checks of the bench's services that Consul holds critical right now."""
        url = f"{self.url}/v1/health/state/critical"
        _, body, _ = await get(session, url, 60)
        return sum(1 for check in json.loads(body) if check["CheckID"].startswith("sutazai:"))

    def close(self) -> None:
        pass


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def writes(requests: dict[str, int]) -> dict[str, int]:
    """Consul write calls by kind, from the fake's request counters."""
    out: dict[str, int] = defaultdict(int)
    for key, n in requests.items():
        method, route = key.split(" ", 1)
        if method != "PUT":
            continue
        if "service/register" in route:
            out["register"] += n
        elif "service/deregister" in route:
            out["deregister"] += n
        elif "/check/" in route:
            out["check_update"] += n
        else:
            out["other"] += n
    return out


def run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
