"""Consul write rate and deregistration latency of the registrar, against the fake Consul.

    .venv/bin/python bench/consul_write_rate.py [--services 100] [--minutes 10]

1. Steady-state write rate: N healthy services registered, then ``--minutes`` of simulated
   time on a manual clock (1 s steps, the monitor re-observing every state each step); the
   fake's request counter gives the writes (PUTs) per minute, by endpoint.
2. Down → deregistered: the registrar's real ``run()`` task on the real clock; a service is
   observed down and the time until the fake receives its deregistration is measured
   (``--samples`` services, one at a time).
3. For reference, when the agent itself dies: when the fake's clock says the check turns
   critical and when Consul reaps the registration.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from sutazai_agent.config import ConsulConfig, TcpService
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.registrar import ConsulRegistrar
from sutazai_agent.core.model import State
from sutazai_agent.web.metrics import Metrics
from tests.fakes.consul import FakeConsul, ManualClock


class _Quiet:
    """A logger that drops everything (the benchmark prints its own figures)."""

    def __getattr__(self, _: str) -> Any:
        return lambda *args, **kwargs: None


class TimedFake(FakeConsul):
    """Records when each service is removed (deregistered or reaped)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.removed_at: dict[str, float] = {}
        self.removed = asyncio.Event()

    def _remove_service(self, service_id: str) -> None:
        if service_id in self.services:
            self.removed_at[service_id] = time.perf_counter()
            self.removed.set()
        super()._remove_service(service_id)


def services(count: int) -> list[TcpService]:
    return [
        TcpService(name=f"svc-{i:03d}", kind="tcp", host="127.0.0.1", port=20000 + i)
        for i in range(count)
    ]


async def write_rate(count: int, minutes: int) -> None:
    clock = ManualClock()
    async with TimedFake(clock=clock) as fake:
        config = ConsulConfig(url=fake.url)
        async with ConsulClient(config) as client:
            configured = services(count)
            registrar = ConsulRegistrar(
                client, config, "bench", configured, Metrics(), clock, _Quiet()
            )
            for svc in configured:
                registrar.observe(svc, State.UP)
            started = time.perf_counter()
            await registrar.sync_once()
            startup_s = time.perf_counter() - started
            startup_writes = fake.writes()
            clock.advance(config.ttl_s)  # let the first heartbeats settle their phases
            await registrar.sync_once()
            fake.requests.clear()
            for _ in range(minutes * 60):
                clock.advance(1.0)
                for svc in configured:
                    registrar.observe(svc, State.UP)
                await registrar.sync_once()
            writes = fake.writes()
            by_route = {r: n for (m, r), n in sorted(fake.requests.items()) if m == "PUT"}
            reads = {r: n for (m, r), n in sorted(fake.requests.items()) if m == "GET"}
            passing = sum(1 for svc in configured if fake.passing(svc.name) == [svc.id])
            print(f"services: {count}, ttl_s: {config.ttl_s:g}, "
                  f"resync_interval_s: {config.resync_interval_s:g}")  # fmt: skip
            print(f"startup: {startup_writes} writes for {count} registrations "
                  f"(register + check update each) in {startup_s * 1000:.0f} ms")  # fmt: skip
            print(f"steady state over {minutes} simulated minutes:")
            print(f"  writes/min: {writes / minutes:.1f}  ({by_route})")
            print(f"  reads/min:  {sum(reads.values()) / minutes:.1f}  ({reads})")
            print(f"  still passing at the end: {passing}/{count}")


async def deregistration_latency(count: int, samples: int) -> None:
    async with TimedFake() as fake:
        config = ConsulConfig(url=fake.url)
        async with ConsulClient(config) as client:
            configured = services(count)
            registrar = ConsulRegistrar(
                client, config, "bench", configured, Metrics(), time.monotonic, _Quiet()
            )
            for svc in configured:
                registrar.observe(svc, State.UP)
            task = asyncio.create_task(registrar.run())
            try:
                for _ in range(1000):  # wait (bounded) for the initial registrations
                    if len(fake.services) == count:
                        break
                    await asyncio.sleep(0.01)
                latencies_ms = []
                for svc in configured[:samples]:
                    fake.removed.clear()
                    observed_at = time.perf_counter()
                    registrar.observe(svc, State.DOWN)
                    await asyncio.wait_for(fake.removed.wait(), timeout=10)
                    latencies_ms.append((fake.removed_at[svc.id] - observed_at) * 1000)
                latencies_ms.sort()
                p95 = latencies_ms[max(0, int(len(latencies_ms) * 0.95) - 1)]
                print(f"down -> deregistered (real run() loop, {count} services registered, "
                      f"{samples} samples): median {statistics.median(latencies_ms):.2f} ms, "
                      f"p95 {p95:.2f} ms, max {latencies_ms[-1]:.2f} ms")  # fmt: skip
            finally:
                await registrar.close()
                await task


async def dead_agent() -> None:
    clock = ManualClock()
    async with TimedFake(clock=clock) as fake:
        config = ConsulConfig(url=fake.url)
        async with ConsulClient(config) as client:
            svc = services(1)[0]
            registrar = ConsulRegistrar(client, config, "bench", [svc], Metrics(), clock, _Quiet())
            registrar.observe(svc, State.UP)
            await registrar.sync_once()
        killed_at = clock()
        critical_at = reaped_at = None
        while reaped_at is None:
            clock.advance(1.0)
            check = fake.check(f"sutazai:{svc.id}")
            if critical_at is None and check is not None and check.status == "critical":
                critical_at = clock() - killed_at
            if fake.service(svc.id) is None:
                reaped_at = clock() - killed_at
        print(f"agent killed -> check critical (off ?passing/DNS) after {critical_at:.0f} s "
              f"(<= ttl_s {config.ttl_s:g} after the last heartbeat); reaped after "
              f"{reaped_at:.0f} s (ttl + deregister_critical_after_s + "
              "Consul's 30 s reaper)")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    await write_rate(args.services, args.minutes)
    await deregistration_latency(args.services, args.samples)
    await dead_agent()


if __name__ == "__main__":
    asyncio.run(main())
