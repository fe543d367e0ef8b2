"""The registrar paces registrations by Consul's latency and reports heartbeats running late."""

from __future__ import annotations

from typing import Any

from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.pacing import BUDGET_S, WINDOW_START
from sutazai_agent.consul.registrar import IN_FLIGHT_MAX
from sutazai_agent.core.model import State
from sutazai_agent.web.metrics import Metrics
from tests.component.consul_backends import consul_backend, tcp_service
from tests.fakes.consul import ManualClock

CHECK_UPDATE = ("PUT", "/v1/agent/check/update/{check_id}")
REGISTER = ("PUT", "/v1/agent/service/register")


class SlowRegistrations(ConsulClient):
    """Each registration takes ``cost_s`` of the manual clock: a Consul that slows down."""

    clock: ManualClock
    cost_s = 0.0
    in_flight = 0
    most_in_flight = 0

    async def register_service(self, payload: Any) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.clock.advance(self.cost_s)
        try:
            await super().register_service(payload)
        finally:
            self.in_flight -= 1


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_a_slow_consul_gets_few_registrations_at_a_time_and_heartbeats_between() -> None:
    async with consul_backend("fake") as b, SlowRegistrations(b.consul_config()) as client:
        assert b.fake is not None
        assert isinstance(b.clock, ManualClock)
        client.clock = b.clock
        metrics = Metrics()
        early = [tcp_service(f"early-{i}") for i in range(3)]
        burst = [tcp_service(f"burst-{i}") for i in range(200)]
        registrar = b.registrar(client, early + burst, metrics=metrics)
        for svc in early:
            registrar.observe(svc, State.UP)
        await registrar.sync_once()
        await b.advance(b.ttl_s / 3)  # the early services' first heartbeats are due
        client.cost_s = 0.15  # a group of 4 takes 0.6 s: past the 0.2 s "slow" of timeout 2 s
        for svc in burst:
            registrar.observe(svc, State.UP)
        b.fake.requests.clear()
        assert await registrar.sync_once() == 0.0  # more to apply: the next pass at once
        # One group (the window grew by one in the fast first pass) used up the pass's time
        # budget; the due heartbeats went all the same.
        first = WINDOW_START + 1
        assert b.fake.requests[REGISTER] == first
        assert b.fake.requests[CHECK_UPDATE] == first + 3
        assert sample(metrics, "sutazai_agent_consul_registration_backlog") == 200 - first
        passes = 1
        while sample(metrics, "sutazai_agent_consul_registration_backlog"):
            before = b.clock()
            await registrar.sync_once()
            passes += 1
            # A pass stops at its budget, overshooting by one group at most.
            assert b.clock() - before <= BUDGET_S + IN_FLIGHT_MAX * client.cost_s
            assert passes < 200
        assert client.most_in_flight <= 2 * WINDOW_START  # slowed down, never the full 16
        assert passes > 200 / IN_FLIGHT_MAX  # paced, not 16 at a time
        assert all(b.fake.passing(s.name) == [s.id] for s in early + burst)


async def test_a_fast_consul_gets_up_to_the_full_window() -> None:
    async with consul_backend("fake") as b, SlowRegistrations(b.consul_config()) as client:
        assert b.fake is not None
        client.clock = b.clock  # type: ignore[assignment]
        services = [tcp_service(f"svc-{i}") for i in range(200)]
        metrics = Metrics()
        registrar = b.registrar(client, services, metrics=metrics)
        for svc in services:
            registrar.observe(svc, State.UP)
        await registrar.sync_once()  # no time passes: every group is fast
        assert b.fake.requests[REGISTER] == 200
        assert client.most_in_flight == IN_FLIGHT_MAX
        assert sample(metrics, "sutazai_agent_consul_registration_backlog") == 0


async def test_late_heartbeats_show_in_the_lag_histogram() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        metrics = Metrics()
        services = [tcp_service(f"svc-{i}") for i in range(3)]
        registrar = b.registrar(client, services, metrics=metrics)
        for svc in services:
            registrar.observe(svc, State.UP)
        await registrar.sync_once()
        lag = "sutazai_agent_consul_heartbeat_lag_seconds"
        assert sample(metrics, f"{lag}_count") == 0
        await b.advance(b.ttl_s / 3 + 3.0)  # every first beat is due, 3 to 8 s ago
        await registrar.sync_once()
        assert sample(metrics, f"{lag}_count") == 3
        assert metrics.registry.get_sample_value(f"{lag}_bucket", {"le": "2.5"}) == 0
        assert sample(metrics, f"{lag}_sum") >= 9.0
        for _ in range(20):  # on time now: passes every 0.5 s for one heartbeat interval
            await b.advance(0.5)
            await registrar.sync_once()
        assert sample(metrics, f"{lag}_count") == 6
        assert metrics.registry.get_sample_value(f"{lag}_bucket", {"le": "0.1"}) == 3
