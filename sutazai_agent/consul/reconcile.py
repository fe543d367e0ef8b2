"""Anti-entropy and ownership: what Consul holds under this agent's service IDs, whose it is,
and what a new owner finds there.

``Reconciler.resync()`` lists the local agent's registrations, adopts this agent's own and
those it takes over (a dead member's of its group, or a live member's it no longer owns),
marks what is missing or differs, deregisters what is ours but no longer configured, and
leaves every other owner's registration alone (logged once, counted in ``consul_conflicts``).

A handover is not a health change: when an entry becomes this agent's (``Entry.seed``), the
next resync reads its TTL check (in the local agent, or, when the previous owner registered
it with the Consul agent of another host, in the cluster's health view) and reports what
Consul shows (``seed_state``) through ``on_seed``, so that the new owner's health machine
starts from it (provisionally: only a probe of this run makes the registrar write).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sutazai_agent.consul.ledger import (
    Entry,
    Ledger,
    check_id,
    claim,
    describe_owner,
    differs,
    seed_state,
)
from sutazai_agent.consul.types import (
    AgentCheck,
    AgentService,
    CheckStatus,
    ConsulAgentApi,
    ConsulError,
)
from sutazai_agent.core.health import RANK
from sutazai_agent.core.model import State

T = TypeVar("T")
Seed = Callable[[str, State | None], None]
"""``on_seed(service_name, state)``: what Consul shows of a service this agent now owns
(``None``: nothing to start from, the first probe decides)."""


class Ownership(Protocol):
    """Which services this agent owns and whether it may write (``Membership``)."""

    agent_id: str
    group: str

    def owner(self, service_name: str) -> str | None: ...

    def owns(self, service_name: str) -> bool: ...

    def can_write(self) -> bool: ...

    def is_live_member(self, agent_id: str) -> bool: ...


class SoleOwner:
    """An agent alone: it owns every service and always writes (no lock)."""

    group = ""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id

    def owner(self, service_name: str) -> str | None:
        return self.agent_id

    def owns(self, service_name: str) -> bool:
        return True

    def can_write(self) -> bool:
        return True

    def is_live_member(self, agent_id: str) -> bool:
        return agent_id == self.agent_id


class Op(Protocol):
    def __call__(self, operation: str, call: Awaitable[T]) -> Awaitable[T]: ...


class Reconciler:
    """The registrar's view of Consul's truth: claims, conflicts, anti-entropy, seeds."""

    def __init__(
        self,
        client: ConsulAgentApi,
        ledger: Ledger,
        owners: Ownership,
        op: Op,
        note: Callable[..., None],
        payload: Callable[[Entry, CheckStatus], dict[str, Any]],
        logger: Any,
        on_seed: Seed | None = None,
    ) -> None:
        self._client = client
        self._ledger = ledger
        self._owners = owners
        self._op = op
        self._note = note
        self._payload = payload
        self._log = logger
        self._on_seed = on_seed
        self.conflicts: dict[str, str] = {}

    def claim(self, listed: AgentService) -> str:
        owners = self._owners
        return claim(
            listed, owners.agent_id, owners.group, owners.is_live_member, owners.owner(listed.name)
        )

    def conflict(self, entry: Entry, listed: AgentService) -> None:
        owner = describe_owner(listed)
        entry.foreign = owner
        sid = entry.service.id
        if self.conflicts.get(sid) != owner:
            self._log.warning(
                "consul_registration_conflict",
                service_id=sid,
                owner=owner,
                action="left alone: another owner's registration is never written",
            )
        self.conflicts[sid] = owner

    def regroup(self) -> None:
        """Stop acting on what this agent no longer owns (its registrations stay for the new
        owner to take over); for what it now owns, report at the next resync what Consul
        shows (``on_seed``) and write nothing before a probe of this run (``observe``)."""
        for entry in list(self._ledger.entries.values()):
            owned = self._owners.owns(entry.service.name)
            if owned is entry.owned:
                continue
            entry.owned, entry.seed, entry.desired = owned, owned, State.UNKNOWN
            if not owned:
                self._ledger.set_registered(entry, False)
                entry.status = entry.next_beat_at = None
            self._ledger.settle(entry)
            self._ledger.drop_if_removed(entry)

    async def still_ours(self, entry: Entry) -> bool:
        """Look before a register or deregister: is the ID free, ours, or ours to take?"""
        listed = await self._op("get", self._client.agent_service(entry.service.id))
        if listed is None or self.claim(listed) != "foreign":
            return True
        self.conflict(entry, listed)
        self._ledger.set_registered(entry, False)
        entry.status = entry.next_beat_at = None
        return False

    async def resync(self) -> None:
        """One anti-entropy pass (see the module); Consul errors propagate."""
        entries = self._ledger.entries
        listed = await self._op("list", self._client.agent_services())
        found: dict[str, AgentService] = {}
        for sid, svc in listed.items():
            kind = self.claim(svc)
            entry = entries.get(sid)
            if kind == "foreign" or (entry is not None and not entry.owned):
                if entry is not None and entry.owned:
                    self.conflict(entry, svc)
                continue
            if entry is None:
                if kind == "ours":
                    await self._op("deregister", self._client.deregister_service(sid))
                    self._note("consul_deregistered", service_id=sid, reason="not configured")
                continue
            found[sid] = svc
        for sid, entry in list(entries.items()):
            entry.rejected = None
            if sid in found:
                if entry.foreign is not None:
                    entry.foreign = None
                    self.conflicts.pop(sid, None)
                self._ledger.set_registered(entry, True)
                status = entry.check_status()
                if status is not None and differs(found[sid], self._payload(entry, status)):
                    entry.fresh = False
            elif entry.registered:
                self._ledger.set_registered(entry, False)
                entry.next_beat_at = None
            if entry.foreign is not None and sid not in listed:
                entry.foreign = None
                self.conflicts.pop(sid, None)
            self._ledger.settle(entry)
            self._ledger.drop_if_removed(entry)
        await self._seed(found)

    async def _seed(self, found: dict[str, AgentService]) -> None:
        """Tell the new owner what Consul shows of each service it just came to own."""
        wanted = [e for e in self._ledger.entries.values() if e.seed and e.owned]
        if not wanted:
            return
        checks: dict[str, AgentCheck] = {}
        if any(e.service.id in found for e in wanted):
            checks = await self._op("checks", self._client.agent_checks())
        for entry in wanted:
            entry.seed = False
            sid = entry.service.id
            if sid in found:
                state = seed_state(checks.get(check_id(sid)))
            else:
                state = await self._seed_elsewhere(entry)
            if self._on_seed is not None:
                self._on_seed(entry.service.name, state)

    async def _seed_elsewhere(self, entry: Entry) -> State | None:
        """A member on another host registered it with its own Consul agent: ask the cluster
        (best effort: no answer, no seed)."""
        sid = entry.service.id
        try:
            instances = await self._op("health", self._client.health_service(entry.service.name))
        except ConsulError:
            return None
        seeds = [
            seed_state(check)
            for service, checks in instances
            if service.id == sid and self.claim(service) != "foreign"
            for check in checks
            if check.check_id == check_id(sid)
        ]
        known = [s for s in seeds if s is not None]
        return max(known, key=lambda s: RANK[s]) if known else None
