"""Pure parts of Consul registration: payloads, ownership, drift, and the per-service
state and heartbeat schedule the registrar keeps. No I/O here.

The payload is the contract in DESIGN.md ("Consul contract"): ``ID``, ``Name``, ``Address``,
``Port``, ``Tags``, ``Meta`` (``managed-by``, ``agent-id``, ``kind`` plus the user's) and one
TTL check ``sutazai:<service_id>``.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sutazai_agent.config import ConsulConfig, ServiceConfig, registration_address
from sutazai_agent.consul.types import (
    AgentCheck,
    AgentService,
    CheckStatus,
    ConsulError,
    ConsulPermissionError,
    ConsulRateLimitedError,
    ConsulUnavailableError,
)
from sutazai_agent.core.model import State

MANAGED_BY = "sutazai-agent"
CHECK_PREFIX = "sutazai:"
CONSUL_DEREGISTER_FLOOR_S = 60.0
"""Consul raises any ``DeregisterCriticalServiceAfter`` below one minute to one minute."""


def check_id(service_id: str) -> str:
    return f"{CHECK_PREFIX}{service_id}"


def check_status(state: State, keep_down: bool = False) -> CheckStatus | None:
    """The TTL check status for a health state; ``None`` when it must not be registered.
    ``keep_down`` (``consul.on_down: critical``): a down service stays, critical."""
    if state is State.UP:
        return "passing"
    if state is State.DEGRADED:
        return "warning"
    if state is State.DOWN and keep_down:
        return "critical"
    return None


EXPIRED_PREFIX = "TTL expired (last output before timeout follows): "
"""Consul keeps a TTL check's last output when the TTL expires, after this prefix."""
_STATE_WORDS = {"up": State.UP, "degraded": State.DEGRADED, "down": State.DOWN}


def check_output(state: State, agent_id: str) -> str:
    """The output written with a check's status: the state first, then who wrote it."""
    return f"{state.value} (sutazai-agent {agent_id})"


def seed_state(check: AgentCheck | None) -> State | None:
    """What a new owner starts from: the state Consul shows of a service's TTL check.

    ``passing`` → up, ``warning`` → degraded. ``critical`` → the state in the output an agent
    wrote (``check_output``), which Consul keeps after a TTL expiry: a member killed while
    its service was up leaves ``up`` there. Anything else (no check, a critical check with no
    output of ours): ``None``, the first probe decides.
    """
    if check is None:
        return None
    if check.status == "passing":
        return State.UP
    if check.status == "warning":
        return State.DEGRADED
    output = check.output.removeprefix(EXPIRED_PREFIX)
    word, _, rest = output.partition(" ")
    if rest.startswith(f"({MANAGED_BY} "):
        return _STATE_WORDS.get(word)
    return None


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string: ``30.0`` → ``"30s"``, ``2.5`` → ``"2500ms"``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def managed_meta(service: ServiceConfig, agent_id: str, group: str = "") -> dict[str, str]:
    meta = {**service.meta, "managed-by": MANAGED_BY, "agent-id": agent_id, "kind": service.kind}
    if group:
        meta["group"] = group
    return meta


Claim = Literal["ours", "takeover", "foreign"]


def claim(
    listed: AgentService,
    agent_id: str,
    group: str,
    live: Callable[[str], bool],
    owner: str | None,
) -> Claim:
    """Whose registration ``listed`` is, to ``agent_id``; ``owner`` is the member owning
    the service by the group's hashing (``live`` tells a live member from a dead one).

    ``ours``: made by this agent id. ``takeover``: made by a member of this agent's group
    that is dead (``live`` says no) or, being live, no longer owns the service (a handover
    after a join): the new owner re-registers it under its own id. ``foreign``: anyone
    else's (no ``managed-by``, another agent or group): never written nor deregistered.
    """
    meta = listed.meta
    if meta.get("managed-by") != MANAGED_BY:
        return "foreign"
    other = meta.get("agent-id", "")
    if other == agent_id:
        return "ours"
    if group and meta.get("group") == group and other:
        return "takeover" if not live(other) or owner != other else "foreign"
    return "foreign"


def describe_owner(listed: AgentService) -> str:
    meta = listed.meta
    if meta.get("managed-by") != MANAGED_BY:
        owner = meta.get("owner") or meta.get("managed-by") or "unmanaged"
        return f"{owner} (port {listed.port})"
    return f"sutazai-agent {meta.get('agent-id', '?')}"


def registration_payload(
    service: ServiceConfig,
    agent_id: str,
    consul: ConsulConfig,
    status: CheckStatus,
    group: str = "",
) -> dict[str, Any]:
    """The body of ``PUT /v1/agent/service/register`` for ``service``."""
    address, port = registration_address(service)
    return {
        "ID": service.id,
        "Name": service.name,
        "Address": address,
        "Port": port,
        "Tags": list(service.tags),
        "Meta": managed_meta(service, agent_id, group),
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


@dataclass(slots=True)
class Entry:
    """What the registrar wants for one service and what it believes Consul holds."""

    service: ServiceConfig
    desired: State = State.UNKNOWN
    registered: bool = False
    """Consul holds a registration of ours under this id."""
    fresh: bool = False
    """Registered (or re-registered) by this process with this configuration."""
    status: CheckStatus | None = None
    """Check status last written."""
    next_beat_at: float | None = None
    rejected: str | None = None
    """Consul refused this service's registration (4xx): retried at the next anti-entropy."""
    owned: bool = True
    """This agent owns the service now (its group's hashing; always when not in a group)."""
    foreign: str | None = None
    """Another owner's registration holds this ID: it is never written nor deregistered."""
    seed: bool = False
    """This agent just came to own the service: the next resync reports what Consul shows."""
    keep_down: bool = False
    """``consul.on_down: critical``: a down service stays registered, its check critical."""
    removed: bool = False
    """No longer configured (a reload): deregistered if registered (and so ours), then
    dropped."""

    def change(self) -> Literal["register", "check_update", "deregister"] | None:
        """The write that brings Consul to the desired state, if any."""
        if self.removed:
            return "deregister" if self.registered else None
        if not self.owned or self.foreign is not None:
            return None
        status = self.check_status()
        if status is not None and not (self.registered and self.fresh):
            return "register"  # always followed by a check update
        if status is not None and self.status != status:
            return "check_update"
        if status is None and self.desired is State.DOWN and self.registered:
            return "deregister"
        return None

    def check_status(self) -> CheckStatus | None:
        return check_status(self.desired, self.keep_down)

    def pending(self) -> bool:
        """Whether the registrar has a change to apply (a rejected entry waits for the next
        anti-entropy)."""
        return self.rejected is None and self.change() is not None

    def beat_due(self) -> float | None:
        """When this service's next heartbeat is due; ``None`` when it has none."""
        if not self.registered or self.status is None:
            return None
        return self.next_beat_at


def next_beat_at(
    due: float | None, now: float, interval_s: float, heartbeat: bool, rng: random.Random
) -> float:
    """When the next heartbeat is due after a check write at ``now``.

    After a heartbeat the phase is kept (``due + interval``: no drift) unless that is already
    past (skip, don't burst); the first beat of a new registration is spread over half an
    interval; after any other write, one interval from now.
    """
    if heartbeat and due is not None and due + interval_s > now:
        return due + interval_s
    if due is None:
        return now + interval_s * rng.uniform(0.5, 1.0)
    return now + interval_s


class BeatSchedule:
    """Heartbeat due times: a heap of ``(due, service_id)``, invalidated lazily.

    A rescheduled or cancelled service leaves its old item in the heap; ``current(id)`` (the
    service's due time now, or ``None``) tells a live item from a stale one, which is dropped
    when it reaches the top. Each service is pushed once per check write, so the heap holds
    about one item per registered service plus the writes of the last interval.
    """

    def __init__(self, current: Callable[[str], float | None]) -> None:
        self._heap: list[tuple[float, str]] = []
        self._current = current

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, service_id: str) -> None:
        heapq.heappush(self._heap, (due, service_id))

    def first(self) -> float | None:
        """The earliest live due time (stale items on top are dropped)."""
        heap = self._heap
        while heap:
            due, service_id = heap[0]
            if self._current(service_id) == due:
                return due
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` distinct services whose beat is due at ``now``, earliest first."""
        out: list[str] = []
        heap = self._heap
        while heap and len(out) < limit and heap[0][0] <= now:
            due, service_id = heapq.heappop(heap)
            if self._current(service_id) == due and service_id not in out:
                out.append(service_id)
        return out


class Ledger:
    """The registrar's entries, with the indexes that keep a pass proportional to its work: the
    ids with a pending change (in marking order), the heartbeat schedule, the registered count.
    Whoever changes an entry's fields calls ``settle`` (and ``set_registered`` for
    ``registered``) so that the indexes stay true."""

    def __init__(self, services: Iterable[ServiceConfig], keep_down: bool = False) -> None:
        self.keep_down = keep_down
        self.entries = {s.id: Entry(s, keep_down=keep_down) for s in services if s.register_service}
        self.pending: dict[str, None] = {}
        self.beats = BeatSchedule(self._beat_due)
        self.registered = 0

    def _beat_due(self, service_id: str) -> float | None:
        entry = self.entries.get(service_id)
        return None if entry is None else entry.beat_due()

    def entry(self, service: ServiceConfig) -> Entry:
        found = self.entries.get(service.id)
        if found is None or found.removed:
            # A removed entry still waiting for its deregistration is replaced: the service
            # is configured again, so its registration is wanted after all.
            registered = found is not None and found.registered  # already counted
            found = self.entries[service.id] = Entry(
                service, registered=registered, keep_down=self.keep_down
            )
        return found

    def remove(self, service_id: str) -> None:
        """Mark an entry removed: it is deregistered when registered, and dropped once it is
        not (``drop_if_removed``)."""
        entry = self.entries.get(service_id)
        if entry is None:
            return
        entry.removed, entry.status, entry.next_beat_at = True, None, None
        self.settle(entry)
        self.drop_if_removed(entry)

    def drop_if_removed(self, entry: Entry) -> None:
        if entry.removed and not entry.registered:
            self.pending.pop(entry.service.id, None)
            if self.entries.get(entry.service.id) is entry:
                del self.entries[entry.service.id]

    def settle(self, entry: Entry) -> None:
        """File ``entry`` under pending changes, or take it out, after it changed."""
        if entry.pending():
            self.pending[entry.service.id] = None
        else:
            self.pending.pop(entry.service.id, None)

    def set_registered(self, entry: Entry, registered: bool) -> None:
        if entry.registered is not registered:
            self.registered += 1 if registered else -1
        entry.registered = registered
        if not registered:
            entry.fresh = False

    def schedule_beat(self, entry: Entry, due: float) -> None:
        entry.next_beat_at = due
        self.beats.push(due, entry.service.id)


OUTAGE_LOG: dict[str, tuple[str, str, dict[str, str]]] = {
    "forbidden": (
        "error",
        "consul_permission_denied",
        {
            "hint": "check consul.token (sent as X-Consul-Token) and its ACL policy",
            "action": "will retry",
        },
    ),
    "unreachable": ("warning", "consul_unreachable", {"action": "will retry"}),
    "rate_limited": ("warning", "consul_rate_limited", {"action": "backing off, will retry"}),
    "error": ("error", "consul_sync_error", {"action": "will retry"}),
}
"""How the start of an outage of each kind is logged: ``(level, event, extra fields)``."""


def outage_kind(exc: ConsulError) -> str:
    """``forbidden`` (403), ``rate_limited`` (429), ``unreachable`` (no answer, 5xx) or
    ``error`` (an unusable answer). All but ``error`` hold every change until Consul takes
    writes again; ``error`` rejects only the one registration until the next resync."""
    if isinstance(exc, ConsulPermissionError):
        return "forbidden"
    if isinstance(exc, ConsulRateLimitedError):
        return "rate_limited"
    if isinstance(exc, ConsulUnavailableError):
        return "unreachable"
    return "error"
