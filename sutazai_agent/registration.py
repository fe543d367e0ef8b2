"""Pure parts of Consul registration: payloads, ownership, drift, backoff. No I/O here.

The payload is the contract in DESIGN.md ("Consul contract"): ``ID``, ``Name``, ``Address``,
``Port``, ``Tags``, ``Meta`` (``managed-by``, ``agent-id``, ``kind`` plus the user's) and one
TTL check ``sutazai:<service_id>``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from sutazai_agent.config import ConsulConfig, ServiceConfig, registration_address
from sutazai_agent.consul_api import AgentService, CheckStatus
from sutazai_agent.model import State

MANAGED_BY = "sutazai-agent"
CHECK_PREFIX = "sutazai:"
CONSUL_DEREGISTER_FLOOR_S = 60.0
"""Consul raises any ``DeregisterCriticalServiceAfter`` below one minute to one minute."""


def check_id(service_id: str) -> str:
    return f"{CHECK_PREFIX}{service_id}"


def check_status(state: State) -> CheckStatus | None:
    """The TTL check status for a health state; ``None`` when it must not be registered."""
    if state is State.UP:
        return "passing"
    if state is State.DEGRADED:
        return "warning"
    return None


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string: ``30.0`` → ``"30s"``, ``2.5`` → ``"2500ms"``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def managed_meta(service: ServiceConfig, agent_id: str) -> dict[str, str]:
    return {**service.meta, "managed-by": MANAGED_BY, "agent-id": agent_id, "kind": service.kind}


def registration_payload(
    service: ServiceConfig, agent_id: str, consul: ConsulConfig, status: CheckStatus
) -> dict[str, Any]:
    """The body of ``PUT /v1/agent/service/register`` for ``service``."""
    address, port = registration_address(service)
    return {
        "ID": service.id,
        "Name": service.name,
        "Address": address,
        "Port": port,
        "Tags": list(service.tags),
        "Meta": managed_meta(service, agent_id),
        "Check": {
            "CheckID": check_id(service.id),
            "Name": f"sutazai-agent: {service.name}",
            "Notes": f"TTL check kept alive by sutazai-agent {agent_id}",
            "TTL": go_duration(consul.ttl_s),
            "DeregisterCriticalServiceAfter": go_duration(consul.deregister_critical_after_s),
            "Status": status,
        },
    }


def differs(listed: AgentService, payload: Mapping[str, Any]) -> bool:
    """Whether the registration found in Consul differs from the one we would make."""
    return (
        listed.name != payload["Name"]
        or listed.address != payload["Address"]
        or listed.port != payload["Port"]
        or list(listed.tags) != list(payload["Tags"])
        or dict(listed.meta) != dict(payload["Meta"])
    )


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ownership_filter(agent_id: str) -> str:
    """The ``filter`` expression selecting this agent's registrations and nothing else."""
    return (
        f'Meta["managed-by"] == {_quoted(MANAGED_BY)} and Meta["agent-id"] == {_quoted(agent_id)}'
    )


def is_ours(listed: AgentService, agent_id: str) -> bool:
    """Double-check of the filter: never act on a registration another owner made."""
    return listed.meta.get("managed-by") == MANAGED_BY and listed.meta.get("agent-id") == agent_id


class Backoff:
    """Exponential backoff with jitter: each delay is drawn from [50 %, 100 %] of the step."""

    def __init__(
        self,
        initial_s: float = 1.0,
        cap_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.failures = 0

    MAX_EXPONENT = 32
    """``2.0 ** n`` overflows a float past n = 1023, i.e. after some 8 hours of a Consul
    outage at a 30 s cap; the step has long reached the cap by 2 ** 32 anyway."""

    def next(self) -> float:
        exponent = min(self.failures, self.MAX_EXPONENT)
        step = min(self.cap_s, self.initial_s * 2.0**exponent)
        self.failures += 1
        return step * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0
