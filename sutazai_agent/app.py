"""Composition root and lifecycle: the only place concrete classes meet.

Phases, as in uvicorn: startup (open the outbox, clients and the HTTP server, schedule the
probes) → main loop (the scheduler, with the outbox writer, registrar and publisher running
beside it) → shutdown (stop probing, let in-flight probes finish within the grace period,
write their transitions, flush the outbox for a bounded time, close everything). Signal
handlers only set flags; a second signal exits at once.

SIGHUP and ``POST /-/reload`` reload the configuration (``reload.Reloader``); the agent
applies the difference (``apply_config``). The services it runs come from one function,
``select`` (all configured services by default), so that a layer deciding which services
this agent owns can narrow them and call ``apply_services`` when that changes.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import structlog
from prometheus_client import disable_created_metrics

from sutazai_agent import __version__
from sutazai_agent.config import (
    AgentConfig,
    ConfigDiff,
    ConfigError,
    ServiceConfig,
    ServiceDiff,
    ServiceSpec,
    applicable,
    diff_config,
    diff_services,
    service_specs,
)
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.group import Membership
from sutazai_agent.consul.kv import ConsulKv
from sutazai_agent.consul.registrar import ConsulRegistrar
from sutazai_agent.core.model import ProbeResult, State, os_reason, utcnow
from sutazai_agent.core.protocols import Clock, Probe
from sutazai_agent.core.scheduler import Job, Scheduler
from sutazai_agent.events.outbox import SqliteOutbox
from sutazai_agent.events.publisher import RabbitPublisher
from sutazai_agent.logs import LoopExceptionLogger
from sutazai_agent.monitor import Monitor
from sutazai_agent.ownership import OwnedServices
from sutazai_agent.probes import build_probe, make_session, run_probe
from sutazai_agent.reload import Reloader
from sutazai_agent.status import Parts, agent_status
from sutazai_agent.web.metrics import Metrics
from sutazai_agent.web.server import WebServer, make_app

log = structlog.get_logger(__name__)
STALL_S = 5.0
"""/healthz turns 503 when the scheduler has not ticked for this long."""


class StartupError(Exception):
    """The agent cannot start where it is configured to (``state_dir``, ``http``); the message
    names the setting. The CLI prints it as one line and exits 2, like a configuration error."""


def all_services(config: AgentConfig) -> Sequence[ServiceConfig]:
    return config.services


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        clock: Clock = time.monotonic,
        *,
        load: Callable[[], AgentConfig] | None = None,
        on_config: Callable[[AgentConfig], None] | None = None,
        select: Callable[[AgentConfig], Sequence[ServiceConfig]] = all_services,
    ) -> None:
        """``load`` reads the configuration again for a reload (without it, a reload finds
        the configuration in use, so nothing changes); ``on_config`` sees each configuration
        applied (the CLI re-configures logging with it); ``select`` picks the services this
        agent runs."""
        self.config = config
        self._clock = clock
        self._load = load
        self._on_config = on_config
        self._select = select
        self._specs: dict[str, ServiceSpec] = {}
        self._session: aiohttp.ClientSession | None = None
        self._reload_tasks: set[asyncio.Task[Any]] = set()
        self._started = asyncio.Event()
        self._ready = False
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
        self._owners: OwnedServices | None = None
        self.http_port: int | None = None
        self.reloader = Reloader(self._load_config, self.apply_config, self.metrics)

    # --- lifecycle ---------------------------------------------------------------------
    async def main(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(LoopExceptionLogger())
        try:
            await self.serve()
        finally:
            loop.set_exception_handler(previous_handler)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            for task in self._reload_tasks:  # a SIGHUP during a failed start
                task.cancel()
            await asyncio.gather(*self._reload_tasks, return_exceptions=True)
        return self._exit_code

    def _on_reload_signal(self) -> None:
        task = asyncio.create_task(self.reload("SIGHUP"), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

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
            session = self._session = make_session(config.max_concurrency)
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
            selected = self._select(config)
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
                selected,
                self.metrics,
                self._clock,
                ownership=membership,
                on_seed=self._seed,
            )
            publisher = await stack.enter_async_context(
                RabbitPublisher(config.rabbitmq, config.agent_id, outbox, self.metrics)
            )
            monitor = Monitor(
                config,
                outbox,
                registrar,
                publisher,
                self.metrics,
                seed_wait_s=config.consul.ttl_s,
                services=selected,
            )
            self._outbox, self._registrar, self._publisher = outbox, registrar, publisher
            self._monitor = monitor
            self._specs = service_specs(config, selected)
            self._owners = OwnedServices(membership, monitor, self.metrics)
            self._owners.start(self._specs)
            for spec in self._specs.values():
                self.scheduler.add(spec.name, spec.interval_s, self._job(spec))
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
            self._started.set()
            await self._main_loop(monitor, registrar, publisher)
            await self._shutdown(monitor, publisher)
        log.info("agent_stopped", exit_code=self._exit_code)

    async def _main_loop(
        self, monitor: Monitor, registrar: ConsulRegistrar, publisher: RabbitPublisher
    ) -> None:
        scheduler = asyncio.create_task(self.scheduler.run(), name="scheduler")
        self._reported: set[asyncio.Task[Any]] = set()
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
                self._died(task)
        self.scheduler.stop()
        await asyncio.wait({scheduler})

    def _died(self, task: asyncio.Task[Any]) -> None:
        """A long-running task ended: log it with its whole traceback; the agent exits 1."""
        self._reported.add(task)
        exc = None if task.cancelled() else task.exception()
        log.error(
            "task_died",
            task=task.get_name(),
            error=repr(exc) if exc is not None else "returned",
            exc_info=exc,
        )
        self._exit_code = 1

    def _alive(self, name: str) -> bool:
        return any(t.get_name() == name and not t.done() for t in self._background)

    async def _shutdown(self, monitor: Monitor, publisher: RabbitPublisher) -> None:
        cancelled = await self.scheduler.drain(self.config.shutdown_grace_s)
        if cancelled:
            log.warning("probes_cancelled_at_shutdown", count=cancelled)
        # A dead task is not waited for: nothing would ever finish its work.
        if not self._alive("outbox-writer"):
            log.error("transitions_not_written_at_shutdown", reason="the outbox writer died")
        elif not await monitor.flush(self.config.shutdown_grace_s):
            log.error("transitions_not_written_at_shutdown")
        if self._alive("publisher"):
            await publisher.flush(self.config.outbox.flush_on_shutdown_s)
        else:
            log.error("outbox_not_flushed_at_shutdown", reason="the publisher died")
        for task in (*self._background, *self._reload_tasks):
            task.cancel()
        await asyncio.gather(*self._background, *self._reload_tasks, return_exceptions=True)
        for task in self._background:
            if task not in self._reported and not task.cancelled() and task.exception():
                self._died(task)

    def _job(self, spec: ServiceSpec) -> Job:
        if self._monitor is None or self._session is None:
            raise RuntimeError("the agent has not started")
        monitor, service, timeout_s = self._monitor, spec.service, spec.timeout_s
        probe: Probe = build_probe(service, self._session, timeout_s)
        name = service.name

        async def job() -> None:
            if self._membership is not None and not self._membership.owns(name):
                return  # another member's (or the holder's, as standby): probe nothing
            if monitor.awaiting_seed(name):
                return  # just taken over: start from what Consul shows
            owners = self._owners
            turn = None if owners is None else owners.turn(name)
            result: ProbeResult = await run_probe(probe, timeout_s)
            if owners is None or owners.turn(name) == turn:
                monitor.record(name, result, service)

        return job

    # --- live configuration ----------------------------------------------------------------
    async def reload(self, trigger: str) -> tuple[bool, dict[str, Any]]:
        """Reload the configuration once the agent has started; ``(applied, summary)``."""
        await self._started.wait()
        result = await self.reloader.reload(trigger)
        return result.ok, result.summary()

    def _load_config(self) -> AgentConfig:
        if self._load is None:
            return self.config
        return self._load()

    def apply_config(self, new: AgentConfig) -> ConfigDiff:
        """Run ``new`` from now on, except the keys that need a restart (reported). Raises
        ``ConfigError``, having changed nothing, when a service's probe cannot be built."""
        keys = diff_config(self.config, new)
        effective = applicable(self.config, new, keys.restart_keys)
        services = self.apply_services(effective)
        self.config = effective
        if self._on_config is not None:
            self._on_config(effective)
        return ConfigDiff(services, keys.applied_keys, keys.restart_keys)

    def apply_services(self, config: AgentConfig | None = None) -> ServiceDiff:
        """Bring the probed services in line with ``select(config)``: start the new ones
        (splayed within their interval), forget the removed ones, apply changed settings.
        Unchanged services keep their state, sequence and schedule. Every new probe is
        built before anything changes, so a probe that cannot be built changes nothing."""
        monitor = self._monitor
        if monitor is None:
            raise RuntimeError("the agent has not started")
        wanted = service_specs(config or self.config, self._select(config or self.config))
        diff = diff_services(self._specs, wanted)
        jobs = {}
        for name in (*diff.changed, *diff.added):
            try:
                jobs[name] = self._job(wanted[name])
            except (ValueError, ConfigError) as exc:
                raise ConfigError(f"services.{name}: {exc}") from None
        for name in diff.removed:
            self.scheduler.remove(name)
        monitor.remove(diff.removed)
        monitor.update(wanted[name] for name in diff.changed)
        monitor.add(wanted[name] for name in diff.added)
        for name, job in jobs.items():
            self.scheduler.replace(name, wanted[name].interval_s, job)
        self._specs = wanted
        self._regroup()  # who owns the added services, and the owned count
        return diff

    # --- what the endpoints show ---------------------------------------------------------
    def healthy(self) -> bool:
        tick = self.scheduler.last_tick
        return tick is not None and self._clock() - tick < STALL_S

    def _regroup(self) -> None:
        """The role or the group's members changed: act on what this agent owns now."""
        if self._owners is None:
            return
        self._owners.regroup(spec.service for spec in self._specs.values())
        if self._registrar is not None:
            self._registrar.regroup()
        if self._owners.standby:
            self._ready = False

    def _seed(self, service_name: str, state: State | None) -> None:
        if self._monitor is not None:
            self._monitor.seed(service_name, state)

    def ready(self) -> bool:
        membership, monitor = self._membership, self._monitor
        if monitor is None or membership is None:
            return False
        if membership.role == "standby":
            self._ready = False  # taking over later needs a probe cycle again
            return False
        if not membership.knows_members():
            return False  # a group member that does not know what it owns yet
        if not self._ready:
            # Once every owned service has had a result; a service a reload (or a handover)
            # adds later does not make a running agent unready.
            self._ready = all(
                view.last is not None
                for name, view in monitor.views.items()
                if membership.owns(name)
            )
        return self._ready

    def status(self) -> dict[str, Any]:
        return agent_status(
            self.config,
            self.started_at,
            self.scheduler,
            self._clock,
            Parts(self._membership, self._monitor, self._registrar, self._publisher, self._outbox),
        )
