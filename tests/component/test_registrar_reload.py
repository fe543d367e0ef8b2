"""The registrar during a configuration reload: a service no longer configured is deregistered
and forgotten, a changed one is re-registered only when its registration differs, and one
configured again is taken back. Against the fake Consul, and a real one if configured."""

from __future__ import annotations

import pytest

from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.core.model import State
from tests.component.consul_backends import BACKENDS, consul_backend, tcp_service
from tests.component.test_registrar import REGISTER, puts, up_and_registered


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_forgotten_service_is_deregistered_and_no_longer_heartbeated(kind: str) -> None:
    async with consul_backend(kind) as b, ConsulClient(b.consul_config()) as client:
        kept, gone = tcp_service(b.name("kept")), tcp_service(b.name("gone"))
        registrar = b.registrar(client, [kept, gone])
        for svc in (kept, gone):
            registrar.observe(svc, State.UP)
        await registrar.sync_once()
        assert {kept.id, gone.id} <= set(await b.services())

        registrar.forget(gone)
        await registrar.sync_once()
        listed = await b.services()
        assert kept.id in listed
        assert gone.id not in listed
        assert not registrar.is_registered(gone.id)
        assert registrar.status()["registered"] == 1
        # Several TTLs later the kept one is still passing and the gone one never came back.
        for _ in range(4):
            await b.advance(b.ttl_s / 2)
            await registrar.sync_once()
        assert gone.id not in await b.services()
        assert await b.check_status(f"sutazai:{kept.id}") == "passing"


async def test_forgetting_an_unregistered_service_writes_nothing() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        down = tcp_service("down")
        registrar = b.registrar(client, [down])
        registrar.observe(down, State.DOWN)
        await registrar.sync_once()
        before = puts(b)
        registrar.forget(down)
        await registrar.sync_once()
        assert puts(b) == before


async def test_a_service_configured_again_before_its_deregistration_is_kept() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        (svc,), registrar = await up_and_registered(b, client, 1)
        registrar.forget(svc)
        registrar.observe(svc, State.UP)  # added back by the next reload, state restored
        await registrar.sync_once()
        assert svc.id in await b.services()
        assert registrar.is_registered(svc.id)
        assert registrar.status()["registered"] == 1
        assert await b.check_status(f"sutazai:{svc.id}") == "passing"


async def test_changed_settings_re_register_only_when_the_registration_differs() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        (svc,), registrar = await up_and_registered(b, client, 1)
        registrations = puts(b)[REGISTER[1]]

        slower = svc.model_copy(update={"interval_s": 30.0})  # probe setting only
        registrar.observe(slower, State.UP)
        await registrar.sync_once()
        assert puts(b)[REGISTER[1]] == registrations

        tagged = svc.model_copy(update={"tags": ("v2",)})
        registrar.observe(tagged, State.UP)
        await registrar.sync_once()
        assert puts(b)[REGISTER[1]] == registrations + 1
        assert (await b.services())[svc.id]["Tags"] == ["v2"]
        assert await b.check_status(f"sutazai:{svc.id}") == "passing"
