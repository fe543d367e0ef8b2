"""``Membership`` on the fake Consul with a manual clock: the session is renewed, the lock is
given up when renewal has failed for a TTL and taken again, members split the services, and
a member of a group owns nothing before it knows the members."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from sutazai_agent.config import ConsulConfig
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.group import LOCK_DELAY_S, Membership, identity_key
from sutazai_agent.consul.kv import ConsulKv
from sutazai_agent.core.rendezvous import owner
from tests.fakes.consul import FakeConsul, ManualClock

TTL_S = 10.0
NAMES = [f"svc-{i}" for i in range(20)]


@pytest.fixture
async def env() -> AsyncIterator[tuple[FakeConsul, ManualClock, ConsulKv]]:
    clock = ManualClock()
    async with FakeConsul(clock=clock) as consul:
        config = ConsulConfig(url=consul.url, timeout_s=2.0)
        async with ConsulClient(config) as client:
            yield consul, clock, ConsulKv(client)


def member(kv: ConsulKv, clock: ManualClock, agent_id: str, group: str = "") -> Membership:
    return Membership(kv, agent_id, group, TTL_S, clock)


async def test_a_member_renews_its_session_and_keeps_its_lock(
    env: tuple[FakeConsul, ManualClock, ConsulKv],
) -> None:
    consul, clock, kv = env
    m = member(kv, clock, "node-1")
    assert m.role == "starting"
    assert m.owns("svc-0"), "alone, it probes while starting"
    assert not m.can_write()
    await m.step()
    assert m.role == "active"
    assert m.can_write()
    for _ in range(6):  # a minute of renewals every TTL/3: the session never lapses
        clock.advance(TTL_S / 3)
        await m.step()
        assert m.can_write()
    entries, _ = await kv.read(identity_key("node-1"))
    assert entries[0].session is not None
    assert consul.requests[("PUT", "/v1/session/renew/{session_id}")] >= 6


async def test_the_lock_is_given_up_after_a_ttl_without_renewal_and_taken_again(
    env: tuple[FakeConsul, ManualClock, ConsulKv],
) -> None:
    consul, clock, kv = env
    m = member(kv, clock, "node-1")
    await m.step()
    assert m.can_write()
    await consul.stop()  # state kept, same port
    clock.advance(TTL_S / 3)
    await m.step()
    assert m.can_write(), "within one TTL of the last renewal it still writes"
    clock.advance(TTL_S * 2 / 3)
    with capture_logs() as logs:
        await m.step()
    assert not m.can_write(), "renewal failed for a whole TTL: the session may be gone"
    assert "consul_lock_may_be_lost" in [e["event"] for e in logs]
    clock.advance(2 * TTL_S)  # the fake invalidates the session at 2 x TTL
    await consul.start()
    with capture_logs() as logs:
        for _ in range(8):
            await m.step()
            if m.can_write():
                break
            clock.advance(LOCK_DELAY_S / 4)  # our old session's lock delay
    assert m.can_write()
    assert m.role == "active", "its own old key in its lock delay: not a standby"
    assert "consul_session_lost" in [e["event"] for e in logs]
    assert "agent_standby" not in [e["event"] for e in logs]
    entries, _ = await kv.read(identity_key("node-1"))
    assert entries[0].session is not None, "held again, by the new session"


async def test_a_group_member_owns_nothing_until_it_knows_the_members(
    env: tuple[FakeConsul, ManualClock, ConsulKv],
) -> None:
    consul, clock, kv = env
    m1, m2 = member(kv, clock, "m1", "g"), member(kv, clock, "m2", "g")
    assert not any(m1.owns(n) for n in NAMES), "starting in a group: announce nothing"
    assert m1.owner(NAMES[0]) is None
    await consul.stop()
    await m1.step()  # Consul unreachable at start
    assert m1.role == "starting"
    assert not any(m1.owns(n) for n in NAMES)
    await consul.start()
    await m1.step()
    await m2.step()
    await m1.step()  # sees m2
    both = ["m1", "m2"]
    assert m1.members == frozenset(both) == m2.members
    for n in NAMES:
        assert m1.owns(n) is (owner(n, both) == "m1")
        assert m2.owns(n) is (owner(n, both) == "m2")
    # m2 dies (no more renewals): its key goes with its session, m1 owns everything.
    clock.advance(TTL_S / 3)
    await m1.step()
    clock.advance(2 * TTL_S)
    for _ in range(6):
        await m1.step()
        if m1.members == frozenset({"m1"}):
            break
        clock.advance(TTL_S / 3)
    assert m1.members == frozenset({"m1"})
    assert all(m1.owns(n) for n in NAMES)
