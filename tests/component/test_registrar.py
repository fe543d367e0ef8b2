"""Contract tests of ``ConsulRegistrar``: against the fake Consul, and a real one if configured.

Tests parametrized with ``BACKENDS`` run against both (see ``consul_backends``); those that
need the fake's request counter, clock-driven reaping or ACL mode run against the fake only.
Time moves through ``backend.advance`` and ``registrar.sync_once()``: no test asserts on
wall-clock timing.
"""

from __future__ import annotations

import pytest

from sutazai_agent.config import ConsulService, TcpService
from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.registrar import APPLY_MAX, BEAT_EARLY_S, BEATS_PER_PASS, ConsulRegistrar
from sutazai_agent.consul.types import AgentService, CheckStatus, ConsulUnavailableError
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

CHECK_UPDATE = ("PUT", "/v1/agent/check/update/{check_id}")
REGISTER = ("PUT", "/v1/agent/service/register")


def puts(backend: Backend) -> dict[str, int]:
    assert backend.fake is not None
    return {route: n for (method, route), n in backend.fake.requests.items() if method == "PUT"}


async def up_and_registered(
    backend: Backend, client: ConsulClient, count: int
) -> tuple[list[TcpService], ConsulRegistrar]:
    """``count`` tcp services, all observed up and registered by one pass."""
    services = [tcp_service(f"svc-{i}") for i in range(count)]
    registrar = backend.registrar(client, services)
    for svc in services:
        registrar.observe(svc, State.UP)
    await registrar.sync_once()
    return services, registrar


@pytest.mark.parametrize("kind", BACKENDS)
async def test_up_registers_the_contract_payload_and_is_passing(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("kong"), tags=("gateway",), meta={"team": "core"})
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()

        assert await b.passing(svc.name, {svc.id}) == {svc.id}
        listed = (await b.services())[svc.id]
        assert (listed["Service"], listed["Address"], listed["Port"]) == (
            svc.name,
            "127.0.0.1",
            10000,
        )
        assert listed["Tags"] == ["gateway"]
        assert listed["Meta"] == {
            "team": "core",
            "managed-by": "sutazai-agent",
            "agent-id": b.agent_id,
            "kind": "tcp",
        }
        assert await b.check_status(f"sutazai:{svc.id}") == "passing"
        assert registrar.is_registered(svc.id)


async def test_registered_check_carries_ttl_and_deregister_after() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc], ttl_s=15.0, deregister_critical_after_s=90.0)
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        assert b.fake is not None
        check = b.fake.check("sutazai:kong")
        assert check is not None
        assert (check.ttl_s, check.deregister_after_s) == (15.0, 90.0)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_degraded_registers_with_a_warning_check(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("rabbitmq"))
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.DEGRADED)
        await registrar.sync_once()
        assert svc.id in await b.services()
        assert await b.check_status(f"sutazai:{svc.id}") == "warning"
        assert await b.passing(svc.name, set()) == set()


@pytest.mark.parametrize("kind", BACKENDS)
async def test_down_deregisters(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("backend"))
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        registrar.observe(svc, State.DOWN)
        await registrar.sync_once()
        assert svc.id not in await b.services()
        assert await b.check_status(f"sutazai:{svc.id}") is None
        assert not registrar.is_registered(svc.id)


async def test_passing_warning_flip_is_one_check_update_not_a_registration() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        assert b.fake is not None
        b.fake.requests.clear()
        registrar.observe(svc, State.DEGRADED)
        await registrar.sync_once()
        assert puts(b) == {CHECK_UPDATE[1]: 1}
        assert await b.check_status("sutazai:kong") == "warning"
        registrar.observe(svc, State.UP)
        registrar.observe(svc, State.UP)  # the same state again: nothing to do
        await registrar.sync_once()
        assert puts(b) == {CHECK_UPDATE[1]: 2}
        assert await b.check_status("sutazai:kong") == "passing"


@pytest.mark.parametrize("kind", BACKENDS)
async def test_heartbeats_keep_the_service_passing_across_several_ttls(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("kong"))
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        for _ in range(10):  # 10 * ttl/3: more than three TTLs
            await b.advance(b.ttl_s / 3)
            await registrar.sync_once()
            assert await b.passing(svc.name, {svc.id}) == {svc.id}


@pytest.mark.parametrize("kind", BACKENDS)
async def test_without_heartbeats_the_check_goes_critical_after_the_ttl(kind: str) -> None:
    """The dead-man check: an agent that stops (is killed) stops answering ?passing."""
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("kong"))
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        await b.advance(b.ttl_s + 1)
        assert await b.passing(svc.name, set()) == set()
        assert await b.check_status(f"sutazai:{svc.id}") == "critical"


async def test_a_dead_agents_registration_is_reaped_by_consul() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        await b.advance(b.ttl_s + 60 + 30)  # TTL, deregister_critical_after_s, one reap tick
        assert b.fake is not None
        assert b.fake.service("kong") is None


@pytest.mark.parametrize("kind", BACKENDS)
async def test_wiped_consul_gets_everything_back_within_one_resync(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        services = [tcp_service(b.name(n)) for n in ("kong", "rabbitmq", "backend")]
        registrar = b.registrar(client, services)
        for svc in services:
            registrar.observe(svc, State.UP)
        registrar.observe(services[2], State.DEGRADED)
        await registrar.sync_once()
        await b.wipe()
        await b.advance(b.resync_interval_s)
        await registrar.sync_once()
        for svc in services[:2]:
            assert await b.passing(svc.name, {svc.id}) == {svc.id}
        assert await b.check_status(f"sutazai:{services[2].id}") == "warning"


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
async def test_a_heartbeat_on_a_lost_check_re_registers_before_the_resync(legacy: bool) -> None:
    async with consul_backend("fake", legacy=legacy) as b, ConsulClient(b.consul_config()) as c:
        svc = tcp_service("kong")
        registrar = b.registrar(c, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        assert b.fake is not None
        b.fake.restart()
        b.fake.requests.clear()
        await b.advance(b.ttl_s / 3 + 0.1)  # a heartbeat is due; the periodic resync is not
        await registrar.sync_once()
        assert b.fake.passing("kong") == ["kong"]
        # Re-registered by the heartbeat path (the lost check is re-registered at once), then
        # one listing checks whether Consul lost the others too.
        assert b.fake.requests[("GET", "/v1/agent/services")] == 1


@pytest.mark.parametrize("kind", BACKENDS)
async def test_manual_deregistration_of_a_healthy_service_is_restored(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("kong"))
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        await b.deregister(svc.id)
        assert svc.id not in await b.services()
        await b.advance(b.resync_interval_s)
        await registrar.sync_once()
        assert await b.passing(svc.name, {svc.id}) == {svc.id}


@pytest.mark.parametrize("kind", BACKENDS)
async def test_foreign_registrations_with_the_same_name_are_never_touched(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("kong"))
        other_id, peer_id = f"{svc.id}-manual", f"{svc.id}-node-2"
        await b.register_foreign(other_id, svc.name, {})
        peer_meta = {"managed-by": "sutazai-agent", "agent-id": "node-2", "kind": "tcp"}
        await b.register_foreign(peer_id, svc.name, peer_meta)
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        registrar.observe(svc, State.DOWN)
        await registrar.sync_once()
        await b.advance(b.resync_interval_s)
        await registrar.sync_once()
        listed = await b.services()
        assert svc.id not in listed
        assert {other_id, peer_id} <= set(listed)
        assert await b.passing(svc.name, {other_id, peer_id}) == {other_id, peer_id}


@pytest.mark.parametrize("kind", BACKENDS)
async def test_services_no_longer_configured_are_deregistered_at_the_next_start(
    kind: str,
) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        kept, removed, opted_out = (tcp_service(b.name(n)) for n in ("kong", "old", "quiet"))
        first = b.registrar(client, [kept, removed, opted_out])
        for svc in (kept, removed, opted_out):
            first.observe(svc, State.UP)
        await first.sync_once()
        assert {kept.id, removed.id, opted_out.id} <= set(await b.services())

        # The next start: "old" left the configuration, "quiet" says register: false.
        quiet = tcp_service(opted_out.name, register=False)
        second = b.registrar(client, [kept, quiet])
        await second.sync_once()
        listed = await b.services()
        assert kept.id in listed
        assert removed.id not in listed
        assert quiet.id not in listed
        assert second.is_registered(kept.id)  # adopted, left alone until its state is known


async def test_restart_with_changed_configuration_re_registers_and_restores_the_status() -> None:
    """Consul keeps a check's status on re-registration: the registrar must set it after."""
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        first = b.registrar(client, [tcp_service("kong", tags=("v1",))])
        first.observe(tcp_service("kong", tags=("v1",)), State.UP)
        await first.sync_once()
        await b.advance(b.ttl_s + 1)  # the agent was down for a while: the check is critical
        assert await b.check_status("sutazai:kong") == "critical"

        svc = tcp_service("kong", tags=("v2",))
        second = b.registrar(client, [svc])
        second.observe(svc, State.UP)
        await second.sync_once()
        assert (await b.services())["kong"]["Tags"] == ["v2"]
        assert await b.check_status("sutazai:kong") == "passing"


async def test_register_false_services_are_never_registered() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        consul = ConsulService(name="consul", kind="consul", url="http://127.0.0.1:8500")
        registrar = b.registrar(client, [consul])  # type: ignore[list-item]
        registrar.observe(consul, State.UP)
        await registrar.sync_once()
        assert await b.services() == {}
        assert puts(b) == {}
        assert not registrar.is_registered("consul")


@pytest.mark.parametrize("kind", BACKENDS)
async def test_consul_down_for_a_while_then_back_converges(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        logger, capture = capturing_logger()
        a, c, d = (tcp_service(b.name(n)) for n in ("a", "c", "d"))
        registrar = b.registrar(client, [a, c, d], logger)
        registrar.observe(a, State.UP)
        registrar.observe(c, State.UP)
        await registrar.sync_once()

        await b.proxy.cut()
        registrar.observe(a, State.DOWN)  # changes while Consul is away are kept
        registrar.observe(d, State.UP)
        for _ in range(6):
            await b.advance(1.0)
            await registrar.sync_once()
        status = registrar.status()
        assert status["reachable"] is False
        assert "unreachable" in status["last_error"]
        assert registrar.is_registered(a.id)  # as far as we know: nothing forgotten

        await b.proxy.restore()
        await b.advance(await registrar.sync_once())  # wait out the backoff
        await registrar.sync_once()
        listed = await b.services()
        assert a.id not in listed
        assert await b.passing(c.name, {c.id}) == {c.id}
        assert await b.passing(d.name, {d.id}) == {d.id}
        assert registrar.status()["reachable"] is True
        assert registrar.status()["last_error"] is None
        assert len(events(capture, "consul_unreachable")) == 1
        assert events(capture, "consul_unreachable")[0]["action"] == "will retry"
        assert len(events(capture, "consul_recovered")) == 1


async def test_wrong_token_logs_one_clear_error_per_outage() -> None:
    async with consul_backend("fake", acl_token="right-token") as b:
        assert b.fake is not None
        logger, capture = capturing_logger()
        config = b.consul_config(token="wrong-token")
        async with ConsulClient(config) as client:
            svc = tcp_service("kong")
            registrar = b.registrar(client, [svc], logger, token="wrong-token")
            registrar.observe(svc, State.UP)
            for _ in range(20):
                await b.advance(31.0)
                await registrar.sync_once()
            denied = events(capture, "consul_permission_denied")
            assert len(denied) == 1
            assert denied[0]["log_level"] == "error"
            assert "X-Consul-Token" in denied[0]["hint"]
            assert "Permission denied" in registrar.status()["last_error"]

            b.fake.acl_token = "wrong-token"  # the operator fixes the ACL
            await b.advance(31.0)
            await registrar.sync_once()
            assert b.fake.passing("kong") == ["kong"]
            assert len(events(capture, "consul_recovered")) == 1

            b.fake.acl_token = "rotated"  # a second outage: a second error, still only one
            for _ in range(5):
                await b.advance(31.0)
                await registrar.sync_once()
            assert len(events(capture, "consul_permission_denied")) == 2
            assert "wrong-token" not in repr(capture.entries)


async def test_steady_state_writes_only_heartbeats() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        services, registrar = await up_and_registered(b, client, 5)
        b.fake.requests.clear()
        for _ in range(600):  # ten minutes in 1 s steps, ten resyncs
            await b.advance(1.0)
            for svc in services:
                registrar.observe(svc, State.UP)  # the monitor repeating unchanged states
            await registrar.sync_once()
        beats = 5 * 600 / (b.ttl_s / 3)
        assert set(puts(b)) == {CHECK_UPDATE[1]}
        assert beats - 5 <= b.fake.requests[CHECK_UPDATE] <= beats + 5
        assert b.fake.requests[("GET", "/v1/agent/services")] == 10
        assert all(b.fake.passing(s.name) == [s.id] for s in services)


async def test_registrar_works_while_the_cluster_has_no_leader() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        b.fake.no_leader = True
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        assert registrar.status()["reachable"] is True
        assert b.fake.service("kong") is not None


async def test_status_and_metrics() -> None:
    async with consul_backend("fake") as b:
        metrics = Metrics()
        url = b.url.replace("http://", "http://user:secret-pw@")
        async with ConsulClient(b.consul_config(url=url, token="tok-123")) as client:
            svc = tcp_service("kong")
            registrar = b.registrar(client, [svc], metrics=metrics, url=url, token="tok-123")
            before = registrar.status()
            assert (before["reachable"], before["registered"], before["last_sync_at"]) == (
                False,
                0,
                None,
            )
            registrar.observe(svc, State.UP)
            await registrar.sync_once()
            status = registrar.status()
        assert status["reachable"] is True
        assert status["registered"] == 1
        assert status["last_sync_at"].endswith("Z")
        assert "secret-pw" not in repr(status)
        assert "tok-123" not in repr(status)
        assert "***" in status["url"]

        def ops(operation: str, outcome: str) -> float | None:
            return metrics.registry.get_sample_value(
                "sutazai_agent_consul_operations_total",
                {"operation": operation, "outcome": outcome},
            )

        assert ops("list", "ok") == 1
        assert ops("register", "ok") == 1
        assert ops("check_update", "ok") == 1
        assert metrics.registry.get_sample_value("sutazai_agent_consul_registered_services") == 1


async def test_a_deregister_after_below_consuls_floor_is_warned_about_once() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        logger, capture = capturing_logger()
        registrar = b.registrar(client, [], logger, deregister_critical_after_s=30.0)
        await registrar.sync_once()
        await registrar.sync_once()
        warnings = events(capture, "consul_deregister_after_below_floor")
        assert [(w["configured_s"], w["effective_s"]) for w in warnings] == [(30.0, 60.0)]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_hand_edited_registration_of_ours_is_repaired_at_resync(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        svc = tcp_service(b.name("kong"))
        registrar = b.registrar(client, [svc])
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        edited = (await b.services())[svc.id]
        body = {"ID": svc.id, "Name": svc.name, "Port": 1, "Meta": edited["Meta"]}
        assert await b.put("/v1/agent/service/register", body) == 200
        await b.advance(b.resync_interval_s)
        await registrar.sync_once()
        assert (await b.services())[svc.id]["Port"] == 10000
        assert await b.passing(svc.name, {svc.id}) == {svc.id}


class FilterIgnoringClient(ConsulClient):
    """An agent that ignores ``filter`` (Consul before 1.5) lists everybody's services."""

    async def agent_services(self, filter_expr: str | None = None) -> dict[str, AgentService]:
        return await super().agent_services(None)


async def test_ownership_is_checked_even_when_the_agent_ignores_the_filter() -> None:
    async with consul_backend("fake") as b, FilterIgnoringClient(b.consul_config()) as client:
        await b.register_foreign("manual", "kong", {})
        await b.register_foreign("peer", "kong", {"managed-by": "sutazai-agent", "agent-id": "n2"})
        registrar = b.registrar(client, [tcp_service("kong")])
        await registrar.sync_once()
        assert {"manual", "peer"} <= set(await b.services())
        assert not registrar.is_registered("manual")


async def test_consul_losing_many_registrations_is_one_line_not_one_per_service() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        logger, capture = capturing_logger()
        services = [tcp_service(f"svc-{i}") for i in range(30)]
        registrar = b.registrar(client, services, logger)
        for svc in services:
            registrar.observe(svc, State.UP)
        await registrar.sync_once()
        assert len(b.fake.services) == 30
        b.fake.restart()
        capture.entries.clear()
        for _ in range(100):  # until the first heartbeat comes due and finds its check gone
            await b.advance(0.25)
            await registrar.sync_once()
            if b.fake.services:
                break
        assert len(b.fake.services) == 30  # all back in that same pass
        lost = events(capture, "consul_registration_lost")
        assert 1 <= len(lost) <= 10  # the heartbeats that found out; the resync did the rest
        assert all(e["log_level"] == "warning" for e in lost)
        registered = [e for e in events(capture, "consul_registered") if e["log_level"] == "info"]
        assert len(registered) == 1
        assert registered[0]["count"] == 30


async def test_a_few_changes_are_still_logged_one_line_each() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        logger, capture = capturing_logger()
        services = [tcp_service(f"svc-{i}") for i in range(3)]
        registrar = b.registrar(client, services, logger)
        for svc in services:
            registrar.observe(svc, State.UP)
        await registrar.sync_once()
        registered = events(capture, "consul_registered")
        assert sorted(e["service_id"] for e in registered) == ["svc-0", "svc-1", "svc-2"]


class FailingUpdates(ConsulClient):
    """Lets ``allowed`` check updates through, then fails the next ``failures`` with ``error``."""

    allowed: int | None = None
    failures = 0
    error: Exception = ConsulUnavailableError("heartbeat", "connection reset")

    async def update_ttl(self, check_id: str, status: CheckStatus, output: str = "") -> None:
        if self.allowed is not None:
            if self.allowed == 0 and self.failures:
                self.failures -= 1
                raise self.error
            self.allowed -= 1
        await super().update_ttl(check_id, status, output)


@pytest.mark.parametrize("failure", ["unavailable", "bug"])
async def test_heartbeats_cut_short_mid_batch_are_sent_by_the_next_pass(failure: str) -> None:
    """40 heartbeats due at once go out 16 at a time; a failure after 20 leaves the other 20
    due (none lost from the schedule), and they keep every check passing after."""
    async with consul_backend("fake") as b, FailingUpdates(b.consul_config()) as client:
        assert b.fake is not None
        services, registrar = await up_and_registered(b, client, 40)
        await b.advance(b.ttl_s / 3)  # every first beat is due (spread over half an interval)
        client.allowed, client.failures = 20, 12
        if failure == "bug":
            client.error = RuntimeError("bug")
            with pytest.raises(RuntimeError):  # run()'s loop boundary logs and retries it
                await registrar.sync_once()
        else:
            await b.advance(await registrar.sync_once())  # wait out the backoff
        client.allowed = None
        b.fake.requests.clear()
        await registrar.sync_once()
        assert b.fake.requests[CHECK_UPDATE] == 20
        for _ in range(int(3 * b.ttl_s)):
            await b.advance(1.0)
            await registrar.sync_once()
        assert all(b.fake.passing(s.name) == [s.id] for s in services)


async def test_a_burst_of_changes_does_not_hold_up_the_heartbeats() -> None:
    """Hundreds of services coming up at once are applied APPLY_MAX per pass, with the due
    heartbeats between passes; the next pass follows at once."""
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        early = [tcp_service(f"early-{i}") for i in range(3)]
        burst = [tcp_service(f"burst-{i}") for i in range(APPLY_MAX + 44)]
        registrar = b.registrar(client, early + burst)
        for svc in early:
            registrar.observe(svc, State.UP)
        await registrar.sync_once()
        await b.advance(b.ttl_s / 3)  # the early services' first heartbeats are due
        for svc in burst:
            registrar.observe(svc, State.UP)
        b.fake.requests.clear()
        assert await registrar.sync_once() == 0.0  # more to apply: run again at once
        assert b.fake.requests[REGISTER] == APPLY_MAX
        assert b.fake.requests[CHECK_UPDATE] == APPLY_MAX + 3  # and the three heartbeats
        await registrar.sync_once()
        assert b.fake.requests[REGISTER] == APPLY_MAX + 44
        assert all(b.fake.passing(s.name) == [s.id] for s in early + burst)
        assert registrar.status()["registered"] == 3 + APPLY_MAX + 44


async def test_heartbeats_falling_due_within_a_second_share_one_wake_up() -> None:
    """100 services beat every 10 s at spread phases: the registrar wakes about once per
    BEAT_EARLY_S, not once per beat, and sends each service's beats no more often (early
    beats keep their phase)."""
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        services, registrar = await up_and_registered(b, client, 100)
        delay = await registrar.sync_once()  # nothing due yet: the wait for the first beat
        b.fake.requests.clear()
        duration = 10 * (b.ttl_s / 3)  # ten heartbeat intervals
        elapsed, wake_ups_with_beats = 0.0, 0
        while elapsed < duration:
            step = max(delay, 0.01)  # run()'s shortest sleep
            await b.advance(step)
            elapsed += step
            before = b.fake.requests[CHECK_UPDATE]
            delay = await registrar.sync_once()
            wake_ups_with_beats += b.fake.requests[CHECK_UPDATE] > before
        assert 100 * 9 <= b.fake.requests[CHECK_UPDATE] <= 100 * 11
        assert wake_ups_with_beats <= duration / BEAT_EARLY_S + 2  # one per beat would be ~1,000
        assert all(b.fake.passing(s.name) == [s.id] for s in services)


async def test_a_backlog_of_heartbeats_goes_out_a_bounded_number_per_pass() -> None:
    """150 beats due at once: BEATS_PER_PASS per pass, each pass asking for the next at once,
    so a backlog never holds the loop for one long burst."""
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        services, registrar = await up_and_registered(b, client, 150)
        await b.advance(b.ttl_s / 3)  # every first beat is due
        sent = []
        for _ in range(3):
            b.fake.requests.clear()
            delay = await registrar.sync_once()
            sent.append(b.fake.requests[CHECK_UPDATE])
        assert sent == [BEATS_PER_PASS, BEATS_PER_PASS, 150 - 2 * BEATS_PER_PASS]
        assert delay > 0  # nothing due any more: the next pass waits for the next beat
        assert all(b.fake.passing(s.name) == [s.id] for s in services)


async def test_on_down_critical_keeps_a_down_service_registered_and_critical() -> None:
    """``consul.on_down: critical``: a down service stays in the catalog with its check
    critical (out of DNS); heartbeats keep it critical; when Consul reaps it (critical for
    longer than DeregisterCriticalServiceAfter) the next heartbeat puts it back, quietly."""
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        svc, first_down = tcp_service("kong"), tcp_service("cache")
        logger, capture = capturing_logger()
        registrar = b.registrar(client, [svc, first_down], logger, on_down="critical")
        registrar.observe(svc, State.UP)
        registrar.observe(first_down, State.DOWN)
        await registrar.sync_once()
        assert await b.check_status("sutazai:kong") == "passing"
        assert await b.check_status("sutazai:cache") == "critical", "registered, critical"
        registrar.observe(svc, State.DOWN)
        await registrar.sync_once()
        check = b.fake.check("sutazai:kong")
        assert check is not None
        assert (check.status, check.output) == ("critical", "down (sutazai-agent node-1)")
        assert b.fake.passing("kong") == []
        assert ("PUT", "/v1/agent/service/deregister/{service_id}") not in b.fake.requests
        for _ in range(40):  # 40 * ttl/3 = 400 s: past 60 s critical plus a reap tick, twice
            await b.advance(b.ttl_s / 3)
            await registrar.sync_once()
            assert b.fake.service("kong") is not None or "kong" in b.fake.reaped
        assert "kong" in b.fake.reaped, "Consul reaped it meanwhile"
        assert b.fake.check("sutazai:kong") is not None, "and it was put back"
        assert await b.check_status("sutazai:kong") == "critical"
        warnings = [e for e in capture.entries if e["log_level"] in ("warning", "error")]
        assert warnings == []
        registrar.observe(svc, State.UP)
        await registrar.sync_once()
        assert b.fake.passing("kong") == ["kong"]
