"""``/status``: the agent's own account of itself, from the parts the composition root holds.

It reads in-memory state only, so it answers while Consul, the broker or every target is down,
and it shows no secret (URLs are redacted by the parts themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sutazai_agent import __version__
from sutazai_agent.config import AgentConfig
from sutazai_agent.consul.group import Membership
from sutazai_agent.consul.registrar import ConsulRegistrar
from sutazai_agent.core.model import format_time
from sutazai_agent.core.protocols import Clock
from sutazai_agent.core.scheduler import Scheduler
from sutazai_agent.events.outbox import SqliteOutbox
from sutazai_agent.events.publisher import RabbitPublisher
from sutazai_agent.monitor import Monitor


@dataclass(frozen=True, slots=True)
class Parts:
    """The running components; each is None before the agent has started it."""

    membership: Membership | None
    monitor: Monitor | None
    registrar: ConsulRegistrar | None
    publisher: RabbitPublisher | None
    outbox: SqliteOutbox | None


def agent_status(
    config: AgentConfig, started_at: datetime, scheduler: Scheduler, clock: Clock, parts: Parts
) -> dict[str, Any]:
    tick = scheduler.last_tick
    return {
        "agent": {
            "id": config.agent_id,
            "version": __version__,
            "started_at": format_time(started_at),
            **({} if parts.membership is None else parts.membership.status()),
        },
        "services": _services(parts),
        "consul": _consul(parts),
        "rabbitmq": {} if parts.publisher is None else parts.publisher.status(),
        "outbox": {}
        if parts.outbox is None or parts.monitor is None
        else {
            "pending": parts.outbox.pending(),
            "max_events": config.outbox.max_events,
            "epoch": parts.outbox.epoch,
            **parts.monitor.outbox_status(),
        },
        "scheduler": {
            "dispatched": scheduler.dispatched,
            "skipped": scheduler.skipped,
            "last_tick_age_s": None if tick is None else round(clock() - tick, 3),
        },
    }


def _consul(parts: Parts) -> dict[str, Any]:
    status = {} if parts.registrar is None else parts.registrar.status()
    if parts.membership is not None:
        if not status.get("last_error"):
            status["last_error"] = parts.membership.last_error
        if parts.membership.role == "standby":  # its registrar writes nothing, asks nothing
            status["reachable"] = parts.membership.reachable
    return status


def _services(parts: Parts) -> list[dict[str, Any]]:
    if parts.monitor is None:
        return []
    services = parts.monitor.snapshot()
    if parts.membership is not None:
        for service in services:
            service["owner"] = parts.membership.owner(service["name"])
    return services
