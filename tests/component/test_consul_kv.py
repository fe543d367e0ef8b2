"""Contract of sessions, KV locks and blocking queries: the fake Consul and ``ConsulKv``
agree with a real Consul (run with ``CONSUL_HTTP_ADDR`` set to check the real one)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.kv import ConsulKv
from sutazai_agent.consul.types import ConsulError
from tests.component.consul_backends import BACKENDS, Backend, consul_backend

pytestmark = pytest.mark.parametrize("kind", BACKENDS)


@pytest.fixture
async def backend(kind: str) -> AsyncIterator[Backend]:
    async with consul_backend(kind) as found:
        yield found


@pytest.fixture
async def kv(backend: Backend) -> AsyncIterator[ConsulKv]:
    async with ConsulClient(backend.consul_config(url=backend.direct_url)) as client:
        yield ConsulKv(client)


def key(name: str) -> str:
    return f"sutazai-agent-test/{uuid.uuid4().hex[:8]}/{name}"


async def wait_until_gone(kv: ConsulKv, backend: Backend, path: str, ttl_s: float) -> float:
    """Let the session behind ``path`` expire; returns the seconds of clock it took."""
    if backend.fake is not None:
        await backend.advance(2 * ttl_s - 0.5)
        entries, _ = await kv.read(path)
        assert [e.session is not None for e in entries] == [True], "alive until 2 x TTL"
        await backend.advance(0.5)
        return 2 * ttl_s
    start = time.monotonic()
    while (await kv.read(path))[0] and (await kv.read(path))[0][0].session:
        assert time.monotonic() - start < 2 * ttl_s + 15, "session never invalidated"
        await asyncio.sleep(0.2)
    return time.monotonic() - start


async def test_one_session_holds_a_key(kv: ConsulKv) -> None:
    path = key("lock")
    first = await kv.create_session("a", 10, 1, "release")
    second = await kv.create_session("b", 10, 1, "release")
    assert await kv.acquire(path, first, b"node-1")
    assert await kv.acquire(path, first, b"node-1"), "re-acquiring one's own lock is fine"
    assert not await kv.acquire(path, second, b"node-2")
    entries, index = await kv.read(path)
    assert [(e.value, e.session, e.lock_index) for e in entries] == [(b"node-1", first, 1)]
    assert index > 0
    assert await kv.release(path, first)
    entries, _ = await kv.read(path)
    assert entries[0].session is None
    await kv.destroy_session(first)
    await kv.destroy_session(second)


async def test_acquire_with_an_unknown_session_is_refused(kv: ConsulKv) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(ConsulError) as caught:
        await kv.acquire(key("lock"), unknown)
    assert caught.value.status == 500
    assert caught.value.message == f'invalid session "{unknown}"'


async def test_a_missing_key_reads_as_nothing(kv: ConsulKv) -> None:
    entries, index = await kv.read(key("nothing"))
    assert entries == []
    assert index > 0


@pytest.mark.parametrize("behavior", ["release", "delete"])
async def test_destroying_a_session_frees_its_keys_after_the_lock_delay(
    kv: ConsulKv, backend: Backend, behavior: str
) -> None:
    path = key("lock")
    holder = await kv.create_session("a", 10, 1, behavior)  # type: ignore[arg-type]
    waiter = await kv.create_session("b", 10, 1, "delete")
    assert await kv.acquire(path, holder)
    await kv.destroy_session(holder)
    entries, _ = await kv.read(path)
    assert [e.session for e in entries] == ([None] if behavior == "release" else [])
    assert not await kv.acquire(path, waiter), "refused during the lock delay"
    await backend.advance(1.1)
    assert await kv.acquire(path, waiter)
    assert not await kv.renew_session(holder), "a destroyed session cannot be renewed"
    await kv.destroy_session(waiter)


async def test_a_session_not_renewed_ends_within_two_ttls(kv: ConsulKv, backend: Backend) -> None:
    path = key("member")
    session = await kv.create_session("a", 10, 0, "delete")
    assert await kv.acquire(path, session)
    if backend.fake is not None:
        await backend.advance(15)
        assert await kv.renew_session(session), "renewal restarts the TTL"
    took_s = await wait_until_gone(kv, backend, path, 10)
    assert took_s <= 2 * 10 + 1
    assert (await kv.read(path))[0] == []
    assert not await kv.renew_session(session)


async def test_a_session_ttl_under_ten_seconds_is_refused(kv: ConsulKv, backend: Backend) -> None:
    config = backend.consul_config(url=backend.direct_url)
    async with ConsulClient(config) as client:
        with pytest.raises(ConsulError) as caught:
            await client.request("session_create", "PUT", "/v1/session/create", body={"TTL": "5s"})
    assert caught.value.status == 500
    assert caught.value.message == "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
    del kv


async def test_a_blocking_read_returns_early_on_a_change(kv: ConsulKv) -> None:
    prefix = key("members/")
    session = await kv.create_session("a", 10, 0, "delete")
    _, index = await kv.read(prefix, recurse=True)
    waiting = asyncio.create_task(kv.read(prefix, recurse=True, index=index, wait_s=30))
    await asyncio.sleep(0.2)
    assert not waiting.done(), "nothing changed yet: the read blocks"
    started = time.monotonic()
    assert await kv.acquire(prefix + "node-1", session)
    entries, new_index = await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 5
    assert [e.key for e in entries] == [prefix + "node-1"]
    assert new_index > index
    await kv.destroy_session(session)


async def test_a_blocking_read_without_change_returns_after_wait(kv: ConsulKv) -> None:
    prefix = key("quiet/")
    _, index = await kv.read(prefix, recurse=True)
    started = time.monotonic()
    entries, same = await kv.read(prefix, recurse=True, index=index, wait_s=1)
    assert entries == []
    assert same >= index
    assert 0.9 <= time.monotonic() - started < 4
