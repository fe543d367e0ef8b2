"""What a configuration reload changes: pure, no I/O.

``diff_config(old, new)`` compares two validated configurations and says which services are
added, removed, changed or unchanged, and which top-level keys changed, split into those a
running agent applies and those that need a restart.

A service is compared by its *effective* settings (``ServiceSpec``): its own fields plus the
interval, timeout, rise and fall it inherits, so changing the top-level ``interval_s`` changes
every service that does not set its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sutazai_agent.config.schema import AgentConfig
from sutazai_agent.config.services import ServiceConfig

RESTART_KEYS = (
    "agent_id",
    "group",
    "http",
    "state_dir",
    "consul",
    "rabbitmq",
    "outbox",
    "metrics",
    "max_concurrency",
)
"""Top-level keys a running agent cannot apply: its identity, its group (the membership and
its Consul session), its listener and its state directory (DESIGN.md), and what its
long-lived parts are built from at start (the Consul client and registrar, the RabbitMQ
publisher, the outbox, the metric buckets, the scheduler's concurrency bound). A reload
reports them and keeps the running values. A key not listed in either tuple (a new one)
needs a restart until someone makes it reloadable."""
APPLIED_KEYS = ("interval_s", "timeout_s", "rise", "fall", "services", "log", "shutdown_grace_s")
"""Top-level keys a reload applies."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Everything that decides how one service is probed and registered."""

    service: ServiceConfig
    interval_s: float
    timeout_s: float
    rise: int
    fall: int

    @property
    def name(self) -> str:
        return self.service.name

    def same_as(self, other: ServiceSpec) -> bool:
        """Equal effective settings: an interval set on the service or inherited from the
        top level is the same interval."""
        return (self.interval_s, self.timeout_s, self.rise, self.fall) == (
            other.interval_s,
            other.timeout_s,
            other.rise,
            other.fall,
        ) and (self.service == other.service or _own(self.service) == _own(other.service))


_INHERITED = {"interval_s": None, "timeout_s": None, "rise": None, "fall": None}


def _own(service: ServiceConfig) -> ServiceConfig:
    """``service`` without the settings it may inherit (compared as effective values)."""
    return service.model_copy(update=_INHERITED)


@dataclass(frozen=True, slots=True)
class ServiceDiff:
    """Service names, each list in the new configuration's order (removed: the old one's)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    services: ServiceDiff
    applied_keys: tuple[str, ...]
    """Top-level keys (other than ``services``) whose change the reload applies."""
    restart_keys: tuple[str, ...]
    """Top-level keys whose change needs a restart; their running values are kept."""


def service_specs(config: AgentConfig, services: Iterable[ServiceConfig]) -> dict[str, ServiceSpec]:
    """The effective settings of ``services`` (some or all of ``config.services``) by name."""
    return {
        s.name: ServiceSpec(
            s, config.interval_for(s), config.timeout_for(s), config.rise_for(s), config.fall_for(s)
        )
        for s in services
    }


def diff_services(old: Mapping[str, ServiceSpec], new: Mapping[str, ServiceSpec]) -> ServiceDiff:
    added, changed, unchanged = [], [], []
    for name, spec in new.items():
        before = old.get(name)
        if before is None:
            added.append(name)
        elif before.same_as(spec):
            unchanged.append(name)
        else:
            changed.append(name)
    removed = [name for name in old if name not in new]
    return ServiceDiff(tuple(added), tuple(removed), tuple(changed), tuple(unchanged))


def diff_config(old: AgentConfig, new: AgentConfig) -> ConfigDiff:
    """The difference between the running configuration and a new one (every service)."""
    changed_keys = [
        key for key in AgentConfig.model_fields if getattr(old, key) != getattr(new, key)
    ]
    return ConfigDiff(
        services=diff_services(service_specs(old, old.services), service_specs(new, new.services)),
        applied_keys=tuple(k for k in changed_keys if k in APPLIED_KEYS and k != "services"),
        restart_keys=tuple(k for k in changed_keys if k not in APPLIED_KEYS),
    )


def applicable(running: AgentConfig, new: AgentConfig, restart_keys: Iterable[str]) -> AgentConfig:
    """``new`` with the running values of the keys that need a restart: what the agent runs
    after a reload, so that a later reload still reports them until the restart."""
    return new.model_copy(update={key: getattr(running, key) for key in restart_keys})
