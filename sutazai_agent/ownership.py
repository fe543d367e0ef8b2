"""Which of its configured services this agent owns now (alone, standby, or in a group).

The group membership (``consul.group``) answers who owns a service; this keeps the agent's
side of it: the monitor stops recording a service it gave away and, for one it took over,
waits for the state Consul shows (a handover is not a health change). Each change of a
service's ownership is a new turn: a probe started in an earlier turn is not recorded.
``/metrics`` carries the per-service series of the services it owns only.
"""

from __future__ import annotations

from collections.abc import Iterable

from sutazai_agent.config import ServiceConfig
from sutazai_agent.consul.group import Membership
from sutazai_agent.monitor import Monitor
from sutazai_agent.web.metrics import Metrics


class OwnedServices:
    def __init__(self, membership: Membership, monitor: Monitor, metrics: Metrics) -> None:
        self._membership = membership
        self._monitor = monitor
        self._metrics = metrics
        self._owned: frozenset[str] = frozenset()
        self._turns: dict[str, int] = {}

    @property
    def standby(self) -> bool:
        return self._membership.role == "standby"

    def start(self, names: Iterable[str]) -> None:
        """At start: a group member owns nothing before it knows the members."""
        self._turns = dict.fromkeys(names, 0)
        self._owned = frozenset(n for n in self._turns if self._membership.owns(n))
        for name in self._turns:
            if name not in self._owned:
                self._monitor.release(name, await_seed=False)
        self._metrics.hide(n for n in self._turns if n not in self._owned)

    def turn(self, name: str) -> int | None:
        return self._turns.get(name)

    def regroup(self, services: Iterable[ServiceConfig]) -> None:
        """Ownership may have moved: release what was given away, await a seed for what was
        taken over, and count what is owned now."""
        membership, monitor = self._membership, self._monitor
        services = list(services)
        owned = frozenset(s.name for s in services if membership.owns(s.name))
        for service in services:
            name = service.name
            if name not in self._turns:  # added by a reload: its first probe decides
                self._turns[name] = 0
                if name not in owned:
                    monitor.release(name, await_seed=False)
                continue
            if (name in owned) is (name in self._owned):
                continue
            self._turns[name] += 1
            monitor.release(name, await_seed=name in owned)
            if name in owned and not service.register_service:
                monitor.seed(name, None)  # never in Consul: nothing to start from
        self._owned = owned
        # A service a reload removed is forgotten: added back later, it starts afresh.
        configured = {s.name for s in services}
        self._turns = {name: n for name, n in self._turns.items() if name in configured}
        self._metrics.hide(configured - owned)
        self._metrics.group_members.set(len(membership.members))
        self._metrics.owned_services.set(len(owned))
