"""``Membership``: the agent's Consul session, identity lock and group membership.

Consul is the distributed engine here; this module only holds what Consul grants:

- one session (TTL ``consul.ttl_s``, at least 10 s; ``LockDelay`` 1 s; behavior ``delete``),
  renewed every ``ttl / 3``;
- the identity lock ``sutazai-agent/agents/<agent_id>``: the holder is ``active``, a second
  agent with the same id is ``standby`` and watches the key (a blocking query) until the
  holder's session ends, then takes it;
- with a ``group``, the key ``sutazai-agent/groups/<group>/members/<agent_id>`` held with the
  same session: the live members are the keys of that prefix, watched with a blocking query.
  A member's session ending (SIGKILL, host lost) deletes its key within two TTLs.

Before the lock is first held the role is ``starting``: an agent alone (no ``group``) probes
and publishes as without Consul and writes nothing to it; a member of a group owns nothing
yet (it probes and announces nothing until it knows the members, or each member would
announce every service while Consul is unreachable at start).

When renewal has failed for a whole TTL the session may be gone: ``can_write()`` turns
false until the lock is held again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Literal

import structlog

from sutazai_agent.consul.kv import SESSION_TTL_MIN_S, LockApi
from sutazai_agent.consul.ledger import OUTAGE_LOG, outage_kind
from sutazai_agent.consul.types import ConsulError
from sutazai_agent.core import rendezvous
from sutazai_agent.core.backoff import Backoff
from sutazai_agent.core.protocols import Clock

Role = Literal["starting", "standby", "active"]
PREFIX = "sutazai-agent"
LOCK_DELAY_S = 1.0


def identity_key(agent_id: str) -> str:
    return f"{PREFIX}/agents/{agent_id}"


def members_prefix(group: str) -> str:
    return f"{PREFIX}/groups/{group}/members/"


class Membership:
    """Who this agent is to its peers: its role and the live members of its group."""

    def __init__(
        self,
        api: LockApi,
        agent_id: str,
        group: str,
        ttl_s: float,
        clock: Clock = time.monotonic,
        logger: Any = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._api = api
        self.agent_id = agent_id
        self.group = group
        self.ttl_s = max(ttl_s, SESSION_TTL_MIN_S)
        self._renew_every_s = self.ttl_s / 3
        self._clock = clock
        self._log = logger if logger is not None else structlog.get_logger("sutazai_agent.group")
        self._on_change = on_change
        self.role: Role = "starting"
        self.members: frozenset[str] = frozenset({agent_id})
        self._session: str | None = None
        self._renewed_at = 0.0
        self._held = False
        self._member_held = False
        self._backoff = Backoff(cap_s=self.ttl_s / 2)
        self._outage = False
        self.last_error: str | None = None
        self.reachable = False
        """Consul answered this agent's last call (a standby writes nothing, so its registrar
        never calls Consul: this is what ``/status`` shows for it)."""
        self._closed = asyncio.Event()
        self._members_index = 0
        self._members_known = False

    # --- what the rest of the agent asks ------------------------------------------------------
    def owner(self, service_name: str) -> str | None:
        """The member that owns ``service_name`` (this agent when not in a group)."""
        if not self.group:
            return self.agent_id
        if not self._members_known:
            return None  # starting, or the first read of the members is still to come
        return rendezvous.owner(service_name, self.members)

    def owns(self, service_name: str) -> bool:
        """Whether this agent probes and announces ``service_name`` now."""
        if self.role == "standby":
            return False
        if self.role == "starting" and not self.group:
            return True
        return self.owner(service_name) == self.agent_id

    def knows_members(self) -> bool:
        """Whether this agent knows what it owns: alone, always; in a group, once it has
        read the members."""
        return not self.group or self._members_known

    def can_write(self) -> bool:
        """Whether this agent may write to Consul: it holds its lock, and its session is
        surely alive (renewed within one TTL)."""
        return self._held and self._clock() - self._renewed_at < self.ttl_s

    def is_live_member(self, agent_id: str) -> bool:
        return agent_id in self.members

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "group": self.group,
            "members": sorted(self.members) if self.group else [self.agent_id],
        }

    # --- the loop ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop, and end the session so that a standby or the group takes over at once."""
        self._closed.set()
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(ConsulError):
                await self._api.destroy_session(session)

    async def run(self) -> None:
        while not self._closed.is_set():
            wait_s = await self.step()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._closed.wait()

    async def step(self) -> float:
        """One round of the loop (create or renew the session, take the locks, watch the
        members); returns the seconds to wait before the next. Consul errors are handled
        here (logged once per outage, backed off)."""
        try:
            wait_s = await self._step()
        except ConsulError as exc:
            return self._failed(exc)
        self._recovered()
        return wait_s

    async def _step(self) -> float:
        now = self._clock()
        if self._session is None:
            self._session = await self._api.create_session(
                f"sutazai-agent {self.agent_id}", self.ttl_s, LOCK_DELAY_S, "delete"
            )
            self._renewed_at = now
        elif now - self._renewed_at >= self._renew_every_s:
            if not await self._api.renew_session(self._session):
                self._log.warning("consul_session_lost", agent_id=self.agent_id)
                self._session, self._held, self._member_held = None, False, False
                return 0.0
            self._renewed_at = now
        self.reachable = True  # before a standby's watch blocks; ``_recovered`` after a step
        session = self._session
        if not self._held:
            if not await self._acquire(identity_key(self.agent_id), session):
                if not await self._watch_identity():
                    return LOCK_DELAY_S / 4  # free, in a lock delay (ours, after a restart)
                return 0.0
            self._held = True
            self._set_role("active")
        if self.group and not self._member_held:
            key = members_prefix(self.group) + self.agent_id
            self._member_held = await self._acquire(key, session)
            if not self._member_held:
                return LOCK_DELAY_S / 4  # our previous session's key, in its lock delay
        if self.group:
            await self._watch_members()
            return 0.0
        return max(self._renewed_at + self._renew_every_s - self._clock(), 0.0)

    async def _acquire(self, key: str, session: str) -> bool:
        try:
            return await self._api.acquire(key, session, self.agent_id.encode())
        except ConsulError as exc:
            if "invalid session" in exc.message:
                self._session, self._held, self._member_held = None, False, False
                return False
            raise

    def _wait_s(self) -> float:
        return max(self._renewed_at + self._renew_every_s - self._clock(), 0.5)

    async def _watch_identity(self) -> bool:
        """If another agent holds this agent's id, be its standby: wait until the holder's
        session ends (or renewal is due). False when nobody holds it."""
        key = identity_key(self.agent_id)
        entries, index = await self._api.read(key)
        if not entries or entries[0].session is None:
            return False
        self._set_role("standby")
        await self._api.read(key, index=index, wait_s=self._wait_s())
        return True

    async def _watch_members(self) -> None:
        prefix = members_prefix(self.group)
        entries, index = await self._api.read(
            prefix, recurse=True, index=self._members_index, wait_s=self._wait_s()
        )
        self._members_index = index
        live = {e.key[len(prefix) :] for e in entries if e.session is not None}
        live.add(self.agent_id)
        if not self._members_known:
            self._members_known = True
            self.members = frozenset(live)
            self._log.info("group_members_known", group=self.group, members=sorted(live))
            self._on_change()
        elif live != self.members:
            self._log.info(
                "group_members_changed",
                group=self.group,
                members=sorted(live),
                joined=sorted(live - self.members),
                left=sorted(self.members - live),
            )
            self.members = frozenset(live)
            self._on_change()

    def _set_role(self, role: Role) -> None:
        if role != self.role:
            self._log.info(f"agent_{role}", agent_id=self.agent_id, previous=self.role)
            self.role = role
            self._on_change()

    def _recovered(self) -> None:
        self.reachable = True
        if self._outage:
            self._outage = False
            self.last_error = None
            self._backoff.reset()

    def _failed(self, exc: ConsulError) -> float:
        self.last_error = str(exc)
        self.reachable = outage_kind(exc) != "unreachable"  # a 403 or a 400 is an answer
        if not self._outage:
            self._outage = True
            level, event, extra = OUTAGE_LOG[outage_kind(exc)]  # one line per outage
            getattr(self._log, level)(event, error=str(exc), part="identity lock", **extra)
        if self._held and self._clock() - self._renewed_at >= self.ttl_s:
            # The session may be gone: write nothing until the lock is held again.
            self._held = self._member_held = False
            self._log.warning("consul_lock_may_be_lost", agent_id=self.agent_id)
        self._members_index = 0
        return self._backoff.next()
