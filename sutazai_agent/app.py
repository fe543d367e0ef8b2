"""Composition root and lifecycle: the only place concrete classes meet.

Phases, as in uvicorn: startup (open the outbox, clients and the HTTP server, schedule the
probes) → main loop (the scheduler, with the outbox writer, registrar and publisher running
beside it) → shutdown (stop probing, let in-flight probes finish within the grace period,
write their transitions, flush the outbox for a bounded time, close everything). Signal
handlers only set flags; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sqlite3
import time
from contextlib import AsyncExitStack
from typing import Any

import structlog
from prometheus_client import disable_created_metrics

from sutazai_agent import __version__
from sutazai_agent.config import AgentConfig, ServiceConfig
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.group import Membership
from sutazai_agent.consul.kv import ConsulKv
from sutazai_agent.consul.registrar import ConsulRegistrar
from sutazai_agent.core.model import ProbeResult, format_time, os_reason, utcnow
from sutazai_agent.core.protocols import Clock, Probe
from sutazai_agent.core.scheduler import Job, Scheduler
from sutazai_agent.events.outbox import SqliteOutbox
from sutazai_agent.events.publisher import RabbitPublisher
from sutazai_agent.logs import LoopExceptionLogger
from sutazai_agent.monitor import Monitor
from sutazai_agent.probes import build_probe, make_session, run_probe
from sutazai_agent.web.metrics import Metrics
from sutazai_agent.web.server import WebServer, make_app

log = structlog.get_logger(__name__)
STALL_S = 5.0
"""/healthz turns 503 when the scheduler has not ticked for this long."""


class StartupError(Exception):
    """The agent cannot start where it is configured to (``state_dir``, ``http``); the message
    names the setting. The CLI prints it as one line and exits 2, like a configuration error."""


class Agent:
    def __init__(self, config: AgentConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.metrics = Metrics(
            probe_buckets_s=config.metrics.probe_duration_buckets_s,
            per_service_histogram=config.metrics.per_service_histogram,
        )
        self.started_at = utcnow()
        self.scheduler = Scheduler(
            clock, config.max_concurrency, self.metrics.scheduler_lag.observe
        )
        self._signals = 0
        self._exit_code = 0
        self._monitor: Monitor | None = None
        self._registrar: ConsulRegistrar | None = None
        self._membership: Membership | None = None
        self._publisher: RabbitPublisher | None = None
        self._outbox: SqliteOutbox | None = None
        self.http_port: int | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def main(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(LoopExceptionLogger())
        try:
            await self.serve()
        finally:
            loop.set_exception_handler(previous_handler)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return self._exit_code

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.stop()

    def stop(self) -> None:
        self.scheduler.stop()

    async def serve(self) -> None:
        config = self.config
        disable_created_metrics()  # type: ignore[no-untyped-call]  # halves the series count
        async with AsyncExitStack() as stack:
            session = make_session(config.max_concurrency)
            stack.push_async_callback(session.close)
            try:
                outbox = await stack.enter_async_context(
                    SqliteOutbox(
                        config.state_dir, config.agent_id, config.outbox.max_events, self.metrics
                    )
                )
            except (OSError, sqlite3.Error, RuntimeError) as exc:
                raise StartupError(
                    f"state_dir: cannot open the outbox in {config.state_dir}: {os_reason(exc)}"
                ) from None
            consul = await stack.enter_async_context(ConsulClient(config.consul))
            membership = Membership(
                ConsulKv(consul),
                config.agent_id,
                config.group,
                config.consul.ttl_s,
                on_change=self._regroup,
            )
            self._membership = membership
            stack.push_async_callback(membership.close)
            registrar = ConsulRegistrar(
                consul,
                config.consul,
                config.agent_id,
                config.services,
                self.metrics,
                self._clock,
                ownership=membership,
            )
            publisher = await stack.enter_async_context(
                RabbitPublisher(config.rabbitmq, config.agent_id, outbox, self.metrics)
            )
            monitor = Monitor(config, outbox, registrar, publisher, self.metrics)
            self._outbox, self._registrar, self._publisher = outbox, registrar, publisher
            self._monitor = monitor
            for service in config.services:
                timeout_s = config.timeout_for(service)
                probe = build_probe(service, session, timeout_s)
                job = self._job(monitor, service, probe, timeout_s)
                self.scheduler.add(service.name, config.interval_for(service), job)
            listen = config.http
            try:
                web = await stack.enter_async_context(
                    WebServer(make_app(self, self.metrics.registry), listen.host, listen.port)
                )
            except OSError as exc:
                raise StartupError(
                    f"http: cannot listen on {listen.host}:{listen.port}: {os_reason(exc)}"
                ) from None
            self.http_port = web.port
            log.info(
                "agent_started",
                agent_id=config.agent_id,
                version=__version__,
                services=len(config.services),
            )
            # Everything built so far (configuration, probes, series, ledger) lives as long as
            # the process: out of the collector's way, so that a full collection walks only
            # what came after (at 20,000 services, a pause on the probes' loop otherwise).
            gc.freeze()
            await self._main_loop(monitor, registrar, publisher)
            await self._shutdown(monitor, publisher)
        log.info("agent_stopped", exit_code=self._exit_code)

    async def _main_loop(
        self, monitor: Monitor, registrar: ConsulRegistrar, publisher: RabbitPublisher
    ) -> None:
        scheduler = asyncio.create_task(self.scheduler.run(), name="scheduler")
        self._background = {
            asyncio.create_task(monitor.run(), name="outbox-writer"),
            asyncio.create_task(registrar.run(), name="registrar"),
            *(
                [asyncio.create_task(self._membership.run(), name="membership")]
                if self._membership is not None
                else []
            ),
            asyncio.create_task(publisher.run(), name="publisher"),
        }
        done, _ = await asyncio.wait(
            {scheduler, *self._background}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task is not scheduler or task.exception() is not None:
                log.error("task_died", task=task.get_name(), error=repr(task.exception()))
                self._exit_code = 1
        self.scheduler.stop()
        await asyncio.wait({scheduler})

    async def _shutdown(self, monitor: Monitor, publisher: RabbitPublisher) -> None:
        cancelled = await self.scheduler.drain(self.config.shutdown_grace_s)
        if cancelled:
            log.warning("probes_cancelled_at_shutdown", count=cancelled)
        if not await monitor.flush(self.config.shutdown_grace_s):
            log.error("transitions_not_written_at_shutdown")
        await publisher.flush(self.config.outbox.flush_on_shutdown_s)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _job(self, monitor: Monitor, service: ServiceConfig, probe: Probe, timeout_s: float) -> Job:
        name = service.name

        async def job() -> None:
            if self._membership is not None and not self._membership.owns(name):
                return  # another member's (or the holder's, as standby): probe nothing
            result: ProbeResult = await run_probe(probe, timeout_s)
            monitor.record(name, result)

        return job

    # --- what the endpoints show ---------------------------------------------------------
    def healthy(self) -> bool:
        tick = self.scheduler.last_tick
        return tick is not None and self._clock() - tick < STALL_S

    def _regroup(self) -> None:
        """The role or the group's members changed: act on what this agent owns now."""
        membership = self._membership
        if membership is None:
            return
        if self._registrar is not None:
            self._registrar.regroup()
        owned = sum(membership.owns(s.name) for s in self.config.services)
        self.metrics.group_members.set(len(membership.members))
        self.metrics.owned_services.set(owned)

    def ready(self) -> bool:
        membership, monitor = self._membership, self._monitor
        if monitor is None or membership is None:
            return False
        if membership.role == "standby":
            return False
        return all(
            view.last is not None for name, view in monitor.views.items() if membership.owns(name)
        )

    def _consul_status(self) -> dict[str, Any]:
        status = {} if self._registrar is None else self._registrar.status()
        if self._membership is not None and not status.get("last_error"):
            status["last_error"] = self._membership.last_error
        return status

    def _services(self) -> list[dict[str, Any]]:
        if self._monitor is None:
            return []
        services = self._monitor.snapshot()
        if self._membership is not None:
            for service in services:
                service["owner"] = self._membership.owner(service["name"])
        return services

    def status(self) -> dict[str, Any]:
        tick = self.scheduler.last_tick
        return {
            "agent": {
                "id": self.config.agent_id,
                "version": __version__,
                "started_at": format_time(self.started_at),
                **({} if self._membership is None else self._membership.status()),
            },
            "services": self._services(),
            "consul": self._consul_status(),
            "rabbitmq": {} if self._publisher is None else self._publisher.status(),
            "outbox": {}
            if self._outbox is None
            else {"pending": self._outbox.pending(), "max_events": self.config.outbox.max_events},
            "scheduler": {
                "dispatched": self.scheduler.dispatched,
                "skipped": self.scheduler.skipped,
                "last_tick_age_s": None if tick is None else round(self._clock() - tick, 3),
            },
        }


async def check_once(config: AgentConfig) -> list[tuple[ServiceConfig, ProbeResult]]:
    """Probe every service once, concurrently (the ``check`` command)."""
    async with make_session(config.max_concurrency) as session:

        async def one(service: ServiceConfig) -> tuple[ServiceConfig, ProbeResult]:
            timeout_s = config.timeout_for(service)
            return service, await run_probe(build_probe(service, session, timeout_s), timeout_s)

        return list(await asyncio.gather(*(one(s) for s in config.services)))
