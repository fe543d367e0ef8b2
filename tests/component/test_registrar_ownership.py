"""Ownership: a registration another owner made under our ID is never overwritten or
deregistered; a dead member's is taken over; nothing is written without the lock."""

from __future__ import annotations

import pytest

from sutazai_agent.config import ConsulConfig
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.registrar import ConsulRegistrar
from sutazai_agent.consul.types import AgentCheck, AgentService
from sutazai_agent.core.model import State
from sutazai_agent.web.metrics import Metrics
from tests.component.consul_backends import (
    BACKENDS,
    Backend,
    capturing_logger,
    consul_backend,
    events,
    tcp_service,
)
from tests.fakes.consul import FakeConsul, ManualClock


class GroupView:
    """An ``Ownership`` with members set by the test."""

    def __init__(self, agent_id: str, group: str, members: set[str]) -> None:
        self.agent_id, self.group, self.members = agent_id, group, members
        self.writable = True

    def owner(self, service_name: str) -> str | None:
        return self.agent_id

    def owns(self, service_name: str) -> bool:
        return True

    def can_write(self) -> bool:
        return self.writable

    def is_live_member(self, agent_id: str) -> bool:
        return agent_id in self.members


def registrar(
    b: Backend, client: ConsulClient, services: list, view: GroupView | None = None, **kw: object
) -> tuple[ConsulRegistrar, Metrics, object]:
    logger, capture = capturing_logger()
    metrics = Metrics()
    found = ConsulRegistrar(
        client,
        b.consul_config(),
        b.agent_id,
        services,
        metrics,
        b.clock,
        logger,
        ownership=view,
    )
    return found, metrics, capture


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize(
    "meta",
    [
        {"owner": "platform-team"},
        {"managed-by": "sutazai-agent", "agent-id": "someone-else"},
    ],
)
async def test_another_owners_registration_is_neither_overwritten_nor_deregistered(
    kind: str, meta: dict[str, str]
) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("api"))
        await b.register_foreign(svc.id, svc.name, meta)
        reg, metrics, capture = registrar(b, client, [svc])
        reg.observe(svc, State.UP)
        await reg.sync_once()
        listed = (await b.services())[svc.id]
        assert (listed["Port"], listed["Meta"]) == (9999, meta), "not overwritten on up"
        reg.observe(svc, State.DOWN)
        await reg.sync_once()
        await b.advance(61)  # past a resync
        await reg.sync_once()
        assert svc.id in await b.services(), "not deregistered on down"
        assert (await b.services())[svc.id]["Port"] == 9999
        assert metrics.consul_conflicts._value.get() == 1
        conflicts = events(capture, "consul_registration_conflict")  # type: ignore[arg-type]
        assert len(conflicts) == 1, "logged once"
        assert not reg.is_registered(svc.id)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_registration_appearing_between_resyncs_is_seen_before_writing(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("api"))
        reg, _, _ = registrar(b, client, [svc])
        await reg.sync_once()  # resync: the ID is free
        await b.register_foreign(svc.id, svc.name, {"owner": "platform-team"})
        reg.observe(svc, State.UP)
        await reg.sync_once()
        assert (await b.services())[svc.id]["Port"] == 9999


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_dead_group_members_registration_is_taken_over(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("api"))
        dead = {"managed-by": "sutazai-agent", "agent-id": "dead-1", "group": "g"}
        live = {"managed-by": "sutazai-agent", "agent-id": "live-1", "group": "other"}
        other = tcp_service(b.name("web"))
        await b.register_foreign(svc.id, svc.name, dead)
        await b.register_foreign(other.id, other.name, live)
        view = GroupView(b.agent_id, "g", {b.agent_id, "live-1"})
        reg, _, _ = registrar(b, client, [svc, other], view)
        reg.observe(svc, State.UP)
        reg.observe(other, State.UP)
        await reg.sync_once()
        listed = await b.services()
        assert listed[svc.id]["Meta"]["agent-id"] == b.agent_id
        assert listed[svc.id]["Meta"]["group"] == "g"
        assert listed[other.id]["Meta"] == live, "another group's registration stays"


@pytest.mark.parametrize("kind", BACKENDS)
async def test_nothing_is_written_without_the_lock(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("api"))
        view = GroupView(b.agent_id, "", {b.agent_id})
        view.writable = False
        reg, _, _ = registrar(b, client, [svc], view)
        reg.observe(svc, State.UP)
        await reg.sync_once()
        assert svc.id not in await b.services()
        view.writable = True
        await reg.sync_once()
        assert svc.id in await b.services()


class Handover(GroupView):
    """A view whose ownership the test hands over (``owned``)."""

    def __init__(self, agent_id: str, members: set[str]) -> None:
        super().__init__(agent_id, "g", members)
        self.owned = False

    def owns(self, service_name: str) -> bool:
        return self.owned


class OtherHost(ConsulClient):
    """This host's Consul agent, whose cluster view (``/v1/health``) is another host's: the
    fake is one node, two fakes stand for two hosts of one cluster."""

    def __init__(self, config: ConsulConfig, cluster: ConsulClient) -> None:
        super().__init__(config)
        self._cluster = cluster

    async def health_service(self, name: str) -> list[tuple[AgentService, tuple[AgentCheck, ...]]]:
        return await self._cluster.health_service(name)


@pytest.mark.parametrize("on_other_host", [False, True])
async def test_a_new_owner_is_told_what_consul_shows_and_writes_nothing_before_a_probe(
    on_other_host: bool,
) -> None:
    """A member killed while its service was up: its check expires (``TTL expired (last
    output ...): up (...)``); the new owner is seeded ``up`` from it, whether the dead member
    used the same Consul agent or another host's, and registers only once observed."""
    clock = ManualClock()
    async with FakeConsul(clock=clock) as host1, FakeConsul(clock=clock) as host2:
        dead_host = host2 if on_other_host else host1
        svc = tcp_service("api")
        config = ConsulConfig(url=dead_host.url, ttl_s=10.0)
        async with ConsulClient(config) as dead_client:
            dead = ConsulRegistrar(
                dead_client, config, "m3", [svc], Metrics(), clock, ownership=_owning("m3")
            )
            dead.observe(svc, State.UP)
            await dead.sync_once()
        clock.advance(11)  # m3 was SIGKILLed: its TTL expires
        check = dead_host.check("sutazai:api")
        assert check is not None
        assert check.output.startswith("TTL expired (last output before timeout follows): up")
        seeds: list[tuple[str, State | None]] = []
        view = Handover("m1", {"m1"})
        mine = ConsulConfig(url=host1.url, ttl_s=10.0)
        async with ConsulClient(config) as cluster, OtherHost(mine, cluster) as client:
            reg = ConsulRegistrar(
                client,
                mine,
                "m1",
                [svc],
                Metrics(),
                clock,
                ownership=view,
                on_seed=lambda name, state: seeds.append((name, state)),
            )
            await reg.sync_once()
            assert seeds == [], "not owned: nothing to seed"
            view.owned = True
            reg.regroup()
            writes = host1.writes()
            await reg.sync_once()
            assert seeds == [("api", State.UP)]
            assert host1.writes() == writes, "nothing written before a probe of this run"
            reg.observe(svc, State.UP)
            await reg.sync_once()
            assert host1.passing("api") == ["api"]
            assert host1.services["api"].meta["agent-id"] == "m1"


def _owning(agent_id: str) -> Handover:
    view = Handover(agent_id, {agent_id})
    view.owned = True
    return view
