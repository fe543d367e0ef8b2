"""``ConsulRegistrar.run()``: the long-running task, its wake-ups, its boundary and its end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.types import AgentService, ConsulError
from sutazai_agent.core.model import State
from tests.component.consul_backends import capturing_logger, consul_backend, events, tcp_service


async def until(condition: Callable[[], bool]) -> None:
    """Let the registrar's task run until ``condition`` holds (bounded: fails after ~10 s)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


class FlakyClient(ConsulClient):
    """Fails its first listing with an error no Consul call should ever raise."""

    failures = 1

    async def agent_services(self, filter_expr: str | None = None) -> dict[str, AgentService]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("bug")
        return await super().agent_services(filter_expr)


async def test_observe_wakes_the_loop_and_close_ends_it() -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        fake = b.fake
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc])
        task = asyncio.create_task(registrar.run())
        await until(lambda: registrar.status()["last_sync_at"] is not None)
        registrar.observe(svc, State.UP)  # no clock movement: only the wake-up runs it
        await until(lambda: fake.passing("kong") == ["kong"])
        registrar.observe(svc, State.DOWN)
        await until(lambda: fake.service("kong") is None)
        await registrar.close()
        await asyncio.wait_for(task, timeout=5)
        assert task.exception() is None


async def test_an_unexpected_error_is_logged_and_survived() -> None:
    async with consul_backend("fake") as b, FlakyClient(b.consul_config()) as client:
        assert b.fake is not None
        fake = b.fake
        logger, capture = capturing_logger()
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc], logger)
        registrar.observe(svc, State.UP)
        task = asyncio.create_task(registrar.run())
        await until(lambda: bool(events(capture, "consul_sync_failed")))
        failed = events(capture, "consul_sync_failed")[0]
        assert (failed["action"], failed["log_level"]) == ("will retry", "error")
        assert not task.done()
        await b.advance(31.0)  # the fake clock moves past the backoff
        registrar.wake()
        await until(lambda: fake.passing("kong") == ["kong"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancellation_mid_call_is_never_swallowed() -> None:
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept, read nothing, answer nothing
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, consul_backend("fake") as b:
        config = b.consul_config(url=f"http://127.0.0.1:{port}", timeout_s=60.0)
        async with ConsulClient(config) as client:
            registrar = b.registrar(client, [], url=config.url, timeout_s=60.0)
            task = asyncio.create_task(registrar.run())
            await connected.wait()  # the listing is in flight
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        for writer in writers:
            writer.close()


class GarbageListingClient(ConsulClient):
    """The agent answers the listing with something that is not a services map."""

    broken = True

    async def agent_services(self, filter_expr: str | None = None) -> dict[str, AgentService]:
        if self.broken:
            raise ConsulError("list", "agent services: expected a JSON object", 200)
        return await super().agent_services(filter_expr)


async def test_an_unusable_answer_backs_off_and_is_logged_once() -> None:
    async with consul_backend("fake") as b, GarbageListingClient(b.consul_config()) as client:
        assert b.fake is not None
        logger, capture = capturing_logger()
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc], logger)
        registrar.observe(svc, State.UP)
        for _ in range(5):
            await b.advance(31.0)
            assert await registrar.sync_once() > 0
        assert len(events(capture, "consul_sync_error")) == 1
        assert b.fake.service("kong") is None  # nothing written on a listing it cannot read
        client.broken = False
        await b.advance(31.0)
        await registrar.sync_once()
        assert b.fake.passing("kong") == ["kong"]
        assert len(events(capture, "consul_recovered")) == 1


@pytest.mark.parametrize("write", ["register", "heartbeat"])
async def test_a_rate_limited_write_backs_off_and_is_retried(write: str) -> None:
    async with consul_backend("fake") as b, ConsulClient(b.consul_config()) as client:
        assert b.fake is not None
        fake = b.fake
        logger, capture = capturing_logger()
        svc = tcp_service("kong")
        registrar = b.registrar(client, [svc], logger)
        registrar.observe(svc, State.UP)
        if write == "heartbeat":
            await registrar.sync_once()
            assert fake.passing("kong") == ["kong"]
            await b.advance(b.ttl_s / 3 + 1)  # a heartbeat is due
        fake.rate_limited_writes = 1
        delay_s = await registrar.sync_once()
        assert 0 < delay_s <= 31.0  # the backoff, not the next resync
        assert events(capture, "consul_rate_limited")
        assert not events(capture, "consul_registration_rejected")
        await b.advance(delay_s)
        await registrar.sync_once()
        assert fake.passing("kong") == ["kong"]
        assert fake.rate_limited_writes == 0
        assert len(events(capture, "consul_recovered")) == 1
