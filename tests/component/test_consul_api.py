"""``ConsulClient`` against the fake Consul and small misbehaving servers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from sutazai_agent.config import ConsulConfig
from sutazai_agent.consul.client import BODY_MAX, ConsulClient
from sutazai_agent.consul.types import (
    ConsulError,
    ConsulNotFoundError,
    ConsulPermissionError,
    ConsulUnavailableError,
)
from tests.fakes.consul import FakeConsul, ManualClock

WEB = {"ID": "web-1", "Name": "web", "Port": 80, "Check": {"CheckID": "c1", "TTL": "10s"}}
Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def app_answering(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
async def test_register_list_update_and_deregister(legacy: bool) -> None:
    fake = FakeConsul(ManualClock(), legacy=legacy)
    async with fake, ConsulClient(ConsulConfig(url=fake.url)) as client:
        await client.register_service(WEB)
        services = await client.agent_services('Service == "web"')
        assert services["web-1"].port == 80
        await client.update_ttl("c1", "warning", "slow")
        checks = await client.agent_checks()
        assert (checks["c1"].status, checks["c1"].output) == ("warning", "slow")
        await client.deregister_service("web-1")
        await client.deregister_service("web-1")  # unknown now: 404 or 200, both fine
        assert await client.agent_services() == {}
        with pytest.raises(ConsulNotFoundError):
            await client.update_ttl("c1", "passing")
        assert await client.leader() == "127.0.0.1:8300"


async def test_a_404_that_is_not_consuls_unknown_service_is_an_error(serve: Serve) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=404, text="no route")

    async with ConsulClient(ConsulConfig(url=await serve(app_answering(handler)))) as client:
        with pytest.raises(ConsulNotFoundError):
            await client.deregister_service("web-1")


async def test_token_is_sent_as_header_and_never_shown() -> None:
    async with FakeConsul(ManualClock(), acl_token="s3cret-token") as fake:
        async with ConsulClient(ConsulConfig(url=fake.url, token="s3cret-token")) as client:
            await client.register_service(WEB)
        async with ConsulClient(ConsulConfig(url=fake.url, token="wrong-token")) as client:
            with pytest.raises(ConsulPermissionError) as caught:
                await client.register_service(WEB)
        assert caught.value.status == 403
        assert "Permission denied" in str(caught.value)
        assert "wrong-token" not in str(caught.value)


async def test_a_token_echoed_in_an_error_body_is_scrubbed(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, text=f"bad token {request.headers['X-Consul-Token']}")

    url = await serve(app_answering(handler))
    async with ConsulClient(ConsulConfig(url=url, token="s3cret-token")) as client:
        with pytest.raises(ConsulError) as caught:
            await client.register_service(WEB)
    assert "s3cret-token" not in str(caught.value)
    assert caught.value.status == 400


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_an_error_and_the_token_stays_home(serve: Serve, status: int) -> None:
    seen: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Consul-Token"))
        return web.json_response({})

    other = await serve(app_answering(elsewhere))

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": other + request.path_qs})

    url = await serve(app_answering(handler))
    async with ConsulClient(ConsulConfig(url=url, token="s3cret-token")) as client:
        with pytest.raises(ConsulError) as caught:
            await client.agent_services()
        with pytest.raises(ConsulError):
            await client.register_service(WEB)
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    assert "redirect" in str(caught.value)
    assert seen == []


async def test_refused_connection_is_unavailable() -> None:
    fake = FakeConsul(ManualClock())
    await fake.start()
    url = fake.url
    await fake.stop()
    async with ConsulClient(ConsulConfig(url=url)) as client:
        with pytest.raises(ConsulUnavailableError) as caught:
            await client.agent_services()
    assert caught.value.status is None
    assert str(caught.value).startswith("list: unreachable:")


async def test_no_answer_within_timeout_is_unavailable(serve: Serve) -> None:
    never = asyncio.Event()

    async def handler(_: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    url = await serve(app_answering(handler))
    async with ConsulClient(ConsulConfig(url=url, timeout_s=0.2)) as client:
        with pytest.raises(ConsulUnavailableError, match=r"no answer within 0\.2s"):
            await client.agent_services()
    never.set()


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_unavailable(serve: Serve, status: int) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, text="No cluster leader")

    async with ConsulClient(ConsulConfig(url=await serve(app_answering(handler)))) as client:
        with pytest.raises(ConsulUnavailableError) as caught:
            await client.agent_services()
    assert (caught.value.status, caught.value.message) == (status, "No cluster leader")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_response_bodies_are_bounded(serve: Serve, chunked: bool) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=b"x" * (BODY_MAX + 1))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(BODY_MAX // (1 << 20) + 1):
            await response.write(b"x" * (1 << 20))
        await response.write_eof()
        return response

    async with ConsulClient(ConsulConfig(url=await serve(app_answering(handler)))) as client:
        with pytest.raises(ConsulError, match="response body over"):
            await client.agent_services()


async def test_error_messages_are_short(serve: Serve) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=400, text="y" * 10_000)

    async with ConsulClient(ConsulConfig(url=await serve(app_answering(handler)))) as client:
        with pytest.raises(ConsulError) as caught:
            await client.register_service(WEB)
    assert len(caught.value.message) <= 200


async def test_unexpected_json_is_an_error(serve: Serve) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response({"web": {"no": "id"}})

    async with ConsulClient(ConsulConfig(url=await serve(app_answering(handler)))) as client:
        with pytest.raises(ConsulError, match="malformed"):
            await client.agent_services()


async def test_calls_before_open_are_a_programming_error() -> None:
    client = ConsulClient(ConsulConfig(url="http://127.0.0.1:1"))
    with pytest.raises(RuntimeError, match="not open"):
        await client.agent_services()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_fake(ca: trustme.CA) -> AsyncIterator[FakeConsul]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with FakeConsul(ManualClock(), ssl_context=context) as fake:
        yield fake


async def test_tls_with_the_ca_file(tls_fake: FakeConsul, ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with ConsulClient(ConsulConfig(url=tls_fake.url, ca_file=ca_file)) as client:
        await client.register_service(WEB)
        assert list(await client.agent_services()) == ["web-1"]


async def test_tls_verification_is_on_by_default(tls_fake: FakeConsul) -> None:
    async with ConsulClient(ConsulConfig(url=tls_fake.url)) as client:
        with pytest.raises(ConsulUnavailableError, match="certificate"):
            await client.agent_services()


async def test_tls_verification_can_be_turned_off(tls_fake: FakeConsul) -> None:
    async with ConsulClient(ConsulConfig(url=tls_fake.url, tls_verify=False)) as client:
        assert await client.agent_services() == {}


async def test_updates_are_json_on_one_kept_alive_connection(serve: Serve) -> None:
    seen: list[tuple[str, str, str, object, str | None]] = []
    ports: set[int] = set()

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        token = request.headers.get("X-Consul-Token")
        seen.append((request.method, request.raw_path, request.content_type, body, token))
        assert request.transport is not None
        ports.add(request.transport.get_extra_info("peername")[1])
        return web.Response()  # 200, Content-Length: 0: the client reads nothing

    url = await serve(app_answering(handler))
    outputs = [f"up #{i}" for i in range(100)]  # more than the client keeps encoded
    async with ConsulClient(ConsulConfig(url=f"{url}/consul/", token="t0ken")) as client:
        for output in outputs:
            await client.update_ttl("sutazai:web 1/a", "passing", output)
        await client.update_ttl("sutazai:web-2", "warning")
    path = "/consul/v1/agent/check/update/"
    expected = [
        (f"{path}sutazai:web%201%2Fa", {"Status": "passing", "Output": output})
        for output in outputs
    ] + [(f"{path}sutazai:web-2", {"Status": "warning", "Output": ""})]
    assert [(path, body) for _, path, _, body, _ in seen] == expected
    assert {(method, ctype, token) for method, _, ctype, _, token in seen} == {
        ("PUT", "application/json", "t0ken")
    }
    assert len(ports) == 1


async def test_an_empty_404_on_update_is_not_found(serve: Serve) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=404)

    async with ConsulClient(ConsulConfig(url=await serve(app_answering(handler)))) as client:
        with pytest.raises(ConsulNotFoundError) as caught:
            await client.update_ttl("sutazai:web-1", "passing")
    assert (caught.value.status, caught.value.message) == (404, "not found")


async def test_an_invalid_status_is_refused_before_any_call() -> None:
    async with ConsulClient(ConsulConfig(url="http://127.0.0.1:1")) as client:
        with pytest.raises(ValueError, match="invalid check status"):
            await client.update_ttl("c1", "ok")  # type: ignore[arg-type]
