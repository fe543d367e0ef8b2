"""Throughput: the real ``sutazai-agent run`` against N targets, then blackbox_exporter.

One run, same targets, same probe rate (N / interval), one after the other so that neither
steals the other's CPU:

1. the agent (a process of its own) probes N targets of ``bench.targets``; Consul is the
   strict fake in a process of its own, RabbitMQ the real broker. Once every service is
   registered and every startup event published, a window of ``--window`` seconds is
   measured: CPU from /proc/<pid>/stat, RSS from /proc/<pid>/status, probes, scheduler lag
   and probe latency (histogram quantiles) from the agent's own /metrics, skipped probes from
   /status, Consul writes from the fake. /metrics is scraped every ``--scrape-every``
   seconds during the window, as Prometheus would, so its cost is in the agent's figures;
2. blackbox_exporter probes the same targets through ``bench.blackbox drive`` at the same
   rate; its CPU (not the driver's) over the same length of window.

    python -m bench.throughput --services 1000 --interval 10
    python -m bench.throughput --services 10000 --interval 10 --window 60
    python -m bench.throughput --idle           # RSS with the 3 default services
    python -m bench.throughput --smoke          # seconds; for CI
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import aiohttp
from aio_pika.abc import ExchangeType

from bench.blackbox import Driver, Exporter, exporter_path
from bench.common import (
    RABBITMQ_URL,
    ConsulServer,
    RealConsul,
    Scrape,
    cpu_s,
    delta,
    get,
    loadavg,
    machine,
    ms,
    parse_metrics,
    quantile,
    rss_mb,
    run,
    writes,
)
from bench.targets import TargetFarm, raise_fd_limit
from tests.integration.agent_process import AgentProcess


def agent_config(
    args: argparse.Namespace, farm: TargetFarm | None, consul_url: str
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "agent_id": "bench",
        "interval_s": args.interval,
        "timeout_s": args.timeout,
        "consul": {"url": consul_url, "ttl_s": args.consul_ttl},
        "rabbitmq": {"url": RABBITMQ_URL, "exchange": args.exchange},
        "log": {"level": "info", "format": "json"},
        **json.loads(args.agent_extra),
    }
    if farm is not None:
        services: list[dict[str, Any]] = []
        for i, port in enumerate(farm.ports):
            register = args.register and (args.register_max is None or i < args.register_max)
            extra = {} if register else {"register": False}
            if args.kind == "http":
                services.append({"name": f"t-{port}", "kind": "http", "url": farm.url(port)})
            else:
                services.append(
                    {"name": f"t-{port}", "kind": "tcp", "host": "127.0.0.1", "port": port}
                )
            services[-1].update(extra)
        config["services"] = services
    return config


def registering(args: argparse.Namespace, n: int) -> int:
    """How many of the ``n`` services register in Consul."""
    if not args.register:
        return 0
    return n if args.register_max is None else min(n, args.register_max)


async def scrape(session: aiohttp.ClientSession, agent: AgentProcess, one: str = "") -> Scrape:
    _, body, seconds = await get(session, agent.base + "/metrics", 60)
    result = parse_metrics(body, one or None)
    result.seconds = seconds
    return result


async def status(session: aiohttp.ClientSession, agent: AgentProcess) -> dict[str, Any]:
    _, body, _ = await get(session, agent.base + "/status", 60)
    data: dict[str, Any] = json.loads(body)
    return data


async def wait_steady(
    session: aiohttp.ClientSession,
    agent: AgentProcess,
    n: int,
    timeout_s: float,
    args: argparse.Namespace,
) -> str:
    """Every service registered in Consul and every startup event confirmed."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert agent.proc is not None
        if agent.proc.poll() is not None:
            raise RuntimeError(f"agent exited: {agent.proc.returncode}\n{agent.log_tail()}")
        s = await scrape(session, agent)
        registered = s.gauges.get("consul_registered_services", 0)
        pending = s.gauges.get("events_pending", 0)
        if registered >= registering(args, n) and pending == 0:
            return "steady"
        if time.monotonic() > deadline:
            return f"NOT steady after {timeout_s:.0f}s: registered={registered} pending={pending}"
        await asyncio.sleep(min(5.0, 1.0 + n / 2000))


def profile(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy (``pip install py-spy``) samples the agent during the window, if asked to."""
    if not args.profile:
        return None
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "--nonblocking", "--format", "raw", "-r", "50",
         "-d", str(int(args.window) - 1), "-p", str(pid), "-o", args.profile],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def sink(exchange: str) -> aio_pika.abc.AbstractConnection:
    """A bounded queue bound to every routing key, so events are routable (a consumer's
    normal case); it keeps the newest 1,000 and drops the rest."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    channel = await connection.channel()
    target = await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(
        exclusive=True,
        auto_delete=True,
        arguments={"x-max-length": 1000, "x-overflow": "drop-head"},
    )
    await queue.bind(target, routing_key="#")
    return connection


async def measure_agent(
    args: argparse.Namespace, farm: TargetFarm, workdir: Path
) -> dict[str, Any]:
    events = await sink(args.exchange)
    consul: ConsulServer | RealConsul = (
        RealConsul(args.consul_url, args.consul_pid) if args.consul_url else ConsulServer()
    )
    consul.start()
    n = len(farm.ports)
    one = f"t-{farm.ports[0]}"
    agent = None
    try:
        agent = AgentProcess(agent_config(args, farm, consul.url), workdir)
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            await agent.wait_ready(60 + args.interval + n / 100)
            ready_s = time.monotonic() - started
            steady_timeout = args.steady_timeout or 60 + n / 100
            steady = await wait_steady(session, agent, n, steady_timeout, args)
            steady_s = time.monotonic() - started
            await asyncio.sleep(args.settle)
            status0 = await status(session, agent)
            c0 = await consul.stats(session)
            scrapes = [await scrape(session, agent)]
            consul_pid = getattr(consul, "pid", None)
            t0, cpu0 = time.monotonic(), cpu_s(pid)
            consul_cpu0 = cpu_s(consul_pid) if consul_pid else 0.0
            profiler = profile(args, pid)
            while time.monotonic() - t0 < args.window - 1e-3:
                await asyncio.sleep(min(args.scrape_every, args.window - (time.monotonic() - t0)))
                if time.monotonic() - t0 < args.window - 1e-3:
                    scrapes.append(await scrape(session, agent))
            t1, cpu1 = time.monotonic(), cpu_s(pid)
            consul_cpu1 = cpu_s(consul_pid) if consul_pid else 0.0
            if profiler is not None:
                profiler.wait()
            rss, hwm = rss_mb(pid)
            scrapes.append(await scrape(session, agent, one))
            c1 = await consul.stats(session)
            critical = (
                await consul.critical_checks(session) if isinstance(consul, RealConsul) else None
            )
            status1 = await status(session, agent)
            timing = [scrapes[-1].seconds]
            timing += [(await scrape(session, agent)).seconds for _ in range(2)]
        first, last = scrapes[0], scrapes[-1]
        seconds = t1 - t0
        probes = last.probes - first.probes
        lag = delta(last.lag, first.lag)
        duration = delta(last.duration, first.duration) or delta(
            last.kind_duration, first.kind_duration
        )
        beat_lag = delta(last.beat_lag, first.beat_lag)
        if isinstance(consul, RealConsul):  # no counters there: the agent's own, successes
            ops = delta(last.consul_ops, first.consul_ops)
            consul_writes = {
                "register": ops.get("register:ok", 0),
                "deregister": ops.get("deregister:ok", 0),
                "check_update": ops.get("check_update:ok", 0) + ops.get("heartbeat:ok", 0),
                "other": 0,
            }
        else:
            w0, w1 = writes(c0["requests"]), writes(c1["requests"])
            consul_writes = {
                k: w1.get(k, 0) - w0.get(k, 0)
                for k in ("register", "deregister", "check_update", "other")
            }
        registered = last.gauges.get("consul_registered_services", 0)
        consul_cpu_s = consul_cpu1 - consul_cpu0
        return {
            "services": n,
            "ready_s": ready_s,
            "steady": steady,
            "steady_s": steady_s,
            "registered": registered,
            "backlog": last.gauges.get("consul_registration_backlog", 0),
            "beat_lag_p99_s": quantile(0.99, beat_lag),
            "beat_lag_max_bucket_s": _top_bucket(beat_lag),
            "consul_cpu_pct": consul_cpu_s / seconds * 100 if consul_pid else None,
            "consul_critical": critical,
            "seconds": seconds,
            "probes": probes,
            "rate": probes / seconds,
            "cpu_s": cpu1 - cpu0,
            "cpu_ms_per_probe": (cpu1 - cpu0) * 1000 / probes if probes else None,
            "cpu_pct": (cpu1 - cpu0) / seconds * 100,
            "rss_mb": rss,
            "hwm_mb": hwm,
            "lag_p50_s": quantile(0.5, lag),
            "lag_p99_s": quantile(0.99, lag),
            "probe_p50_s": quantile(0.5, duration),
            "probe_p99_s": quantile(0.99, duration),
            "results": {
                k: v - first.probes_by_result.get(k, 0) for k, v in last.probes_by_result.items()
            },
            "skipped": status1["scheduler"]["skipped"] - status0["scheduler"]["skipped"],
            "skipped_total": status1["scheduler"]["skipped"],
            "scrape_s": statistics.median(timing),
            "scrape_max_s": max(timing),
            "metrics_bytes": last.size,
            "series": last.series,
            "series_per_service": sum(last.per_service.values()),
            "per_service": dict(last.per_service),
            "consul_writes": consul_writes,
            "heartbeats_expected": registered * seconds / (args.consul_ttl / 3),
            "services_down": sum(1 for v in last.up.values() if v == 0),
        }
    finally:
        try:
            code = 0 if agent is None or agent.proc is None else agent.stop(60)
            if code != 0 and agent is not None:
                print(f"# agent exited {code}; log tail:\n{agent.log_tail()}", file=sys.stderr)
        finally:
            consul.close()
            await events.close()


async def measure_blackbox(
    args: argparse.Namespace, farm: TargetFarm, workdir: Path
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        exporter = Exporter(workdir, args.timeout)
        await exporter.start(session)
        try:
            if args.kind == "http":
                targets, module = [farm.url(p) for p in farm.ports], "http_2xx"
            else:
                targets, module = [f"127.0.0.1:{p}" for p in farm.ports], "tcp_connect"
            driver = Driver()
            await driver.start(
                exporter.url,
                module,
                targets,
                interval=args.interval,
                warmup=args.settle + min(args.interval, 5),
                window=args.window,
                concurrency=256,
                timeout=args.timeout,
            )
            await driver.line("WINDOW_START")
            t0, cpu0 = time.monotonic(), cpu_s(exporter.pid)
            result: dict[str, Any] = json.loads(await driver.line("WINDOW_END"))
            t1, cpu1 = time.monotonic(), cpu_s(exporter.pid)
            rss, hwm = rss_mb(exporter.pid)
            await driver.wait()
        finally:
            exporter.close()
    probes = result["probes"]
    result.update(
        {
            "cpu_s": cpu1 - cpu0,
            "cpu_seconds_window": t1 - t0,
            "cpu_ms_per_probe": (cpu1 - cpu0) * 1000 / probes if probes else None,
            "cpu_pct": (cpu1 - cpu0) / result["seconds"] * 100,
            "rss_mb": rss,
            "hwm_mb": hwm,
        }
    )
    return result


async def measure_idle(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    consul = ConsulServer()
    consul.start()
    agent = AgentProcess(agent_config(args, None, consul.url), workdir)
    try:
        agent.start()
        assert agent.proc is not None
        async with aiohttp.ClientSession() as session:
            await agent.wait_ready(60)
            await asyncio.sleep(args.window)
            rss, hwm = rss_mb(agent.proc.pid)
            s = await scrape(session, agent)
            _, body, _ = await get(session, agent.base + "/status")
        return {
            "rss_mb": rss,
            "hwm_mb": hwm,
            "services": len(json.loads(body)["services"]),
            "series": s.series,
            "metrics_bytes": s.size,
        }
    finally:
        agent.stop(30)
        consul.close()


def _top_bucket(cumulative: dict[float, float]) -> float | None:
    """The lowest bucket bound that holds every observation (how late the latest went)."""
    items = sorted(cumulative.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    return next(bound for bound, count in items if count >= total)


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_agent(a: dict[str, Any]) -> None:
    print(
        f"agent     services={a['services']} probes/s={a['rate']:.1f} "
        f"cpu_ms_per_probe={fmt(a['cpu_ms_per_probe'])} cpu={a['cpu_pct']:.1f}% "
        f"rss_mb={a['rss_mb']:.1f} hwm_mb={a['hwm_mb']:.1f} "
        f"lag_p50_ms={ms(a['lag_p50_s'])} lag_p99_ms={ms(a['lag_p99_s'])} "
        f"probe_p50_ms={ms(a['probe_p50_s'])} probe_p99_ms={ms(a['probe_p99_s'])} "
        f"skipped={a['skipped']} down={a['services_down']}"
    )
    print(
        f"metrics   bytes={a['metrics_bytes']} series={a['series']} "
        f"series_per_service={a['series_per_service']} scrape_ms={a['scrape_s'] * 1000:.0f} "
        f"scrape_max_ms={a['scrape_max_s'] * 1000:.0f} {json.dumps(a['per_service'])}"
    )
    w = a["consul_writes"]
    print(
        f"consul    window_s={a['seconds']:.1f} register={w['register']} "
        f"deregister={w['deregister']} check_update={w['check_update']} "
        f"heartbeats_expected={a['heartbeats_expected']:.0f} ({a['steady']}, "
        f"ready after {a['ready_s']:.1f}s, steady after {a['steady_s']:.1f}s) "
        f"results={json.dumps(a['results'])}"
    )
    per_1000 = (
        a["consul_cpu_pct"] / (a["registered"] / 1000)
        if a["consul_cpu_pct"] is not None and a["registered"]
        else None
    )
    print(
        f"registrar registered={a['registered']:.0f} backlog={a['backlog']:.0f} "
        f"beat_lag_p99_ms={ms(a['beat_lag_p99_s'])} "
        f"beat_lag_all_within_s={fmt(a['beat_lag_max_bucket_s'], 'g')} "
        f"consul_cpu={fmt(a['consul_cpu_pct'], '.1f')}% "
        f"consul_cpu_pct_per_1000_services={fmt(per_1000, '.2f')} "
        f"consul_critical_checks={a['consul_critical']}"
    )


def print_blackbox(b: dict[str, Any]) -> None:
    print(
        f"blackbox  probes/s={b['rate']:.1f} cpu_ms_per_probe={fmt(b['cpu_ms_per_probe'])} "
        f"cpu={b['cpu_pct']:.1f}% rss_mb={b['rss_mb']:.1f} "
        f"probe_p50_ms={ms(b['latency_p50_s'])} probe_p99_ms={ms(b['latency_p99_s'])} "
        f"failed={b['failed']} driver_start_lag_max_ms={ms(b['start_lag_max_s'])}"
    )


async def amain(args: argparse.Namespace) -> int:
    raise_fd_limit()
    print(f"machine   {machine()}; load {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="sutazai-bench-") as tmp:
        workdir = Path(tmp)
        if args.idle:
            i = await measure_idle(args, workdir)
            print(
                f"idle      services={i['services']} rss_mb={i['rss_mb']:.1f} "
                f"hwm_mb={i['hwm_mb']:.1f} series={i['series']} bytes={i['metrics_bytes']}"
            )
            return 0
        print(
            f"command   services={args.services} kind={args.kind} interval_s={args.interval} "
            f"timeout_s={args.timeout} window_s={args.window} consul_ttl_s={args.consul_ttl}"
        )
        farm = TargetFarm(args.services, args.base_port, args.workers)
        farm.start()
        try:
            agent = blackbox = None
            if not args.blackbox_only:
                (workdir / "agent").mkdir()
                agent = await measure_agent(args, farm, workdir / "agent")
                print_agent(agent)
            if args.agent_only:
                pass
            elif exporter_path() is None:
                print("blackbox  skipped: prometheus-blackbox-exporter is not installed")
            else:
                (workdir / "blackbox").mkdir()
                blackbox = await measure_blackbox(args, farm, workdir / "blackbox")
                print_blackbox(blackbox)
            if agent and blackbox and agent["cpu_ms_per_probe"] and blackbox["cpu_ms_per_probe"]:
                ratio = agent["cpu_ms_per_probe"] / blackbox["cpu_ms_per_probe"]
                print(f"ratio     cpu_per_probe agent/blackbox={ratio:.2f}")
            print(f"load      {loadavg()}")
        finally:
            farm.close()
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--kind", choices=("http", "tcp"), default="http")
    p.add_argument("--interval", type=float, default=10.0, help="probe interval, seconds")
    p.add_argument("--timeout", type=float, default=5.0, help="probe timeout, seconds")
    p.add_argument("--window", type=float, default=30.0, help="measured seconds")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after steady state")
    p.add_argument("--scrape-every", type=float, default=15.0, help="/metrics during window")
    p.add_argument("--consul-ttl", type=float, default=30.0, help="consul.ttl_s of the agent")
    p.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="services with register: false (isolates the Consul registrar's cost)",
    )
    p.add_argument(
        "--register-max",
        type=int,
        metavar="N",
        help="only the first N services register (the rest: register: false)",
    )
    p.add_argument(
        "--consul-url",
        metavar="URL",
        help="a real Consul agent instead of the fake (start it fresh: the bench leaves its "
        "registrations there)",
    )
    p.add_argument("--consul-pid", type=int, metavar="PID", help="its pid, to read its CPU")
    p.add_argument(
        "--steady-timeout", type=float, default=0.0, help="seconds (default 60 + N / 100)"
    )
    p.add_argument("--workers", type=int, default=2, help="target processes")
    p.add_argument("--base-port", type=int, default=21000)
    p.add_argument("--exchange", default="sutazai.bench")
    p.add_argument("--agent-extra", default="{}", help="JSON merged into the agent's config")
    p.add_argument("--agent-only", action="store_true")
    p.add_argument("--blackbox-only", action="store_true")
    p.add_argument("--idle", action="store_true", help="RSS with the 3 default services")
    p.add_argument("--profile", metavar="FILE", help="py-spy raw profile of the agent's window")
    p.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    args = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the agent, targets and fakes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.services, args.interval, args.timeout = 30, 1.0, 0.5
        args.window, args.settle, args.scrape_every = 3.0, 0.5, 1.5
        if args.idle:
            args.window = 1.0
    sys.exit(run(amain(args)))


if __name__ == "__main__":
    main()
