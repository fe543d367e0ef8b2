"""The grpc probe against an in-process ``grpc.aio`` server with the standard health service
on a free loopback port (plaintext, and TLS with a throwaway trustme CA)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
import trustme
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sutazai_agent.config import GrpcService
from sutazai_agent.core.model import Outcome
from sutazai_agent.core.protocols import Probe
from sutazai_agent.probes import build_probe, run_probe
from tests.component.conftest import HangingServer, RawServer
from tests.component.leaks import cancelled_once_connected, fd_growth

TIMEOUT_S = 2.0
Status = health_pb2.HealthCheckResponse


def probe_for(
    session: aiohttp.ClientSession, port: int, timeout_s: float = TIMEOUT_S, **fields: Any
) -> Probe:
    service = GrpcService(name="models", kind="grpc", host="127.0.0.1", port=port, **fields)
    return build_probe(service, session, timeout_s)


class HealthServer:
    """A gRPC server with the standard health servicer (or none, ``with_health=False``)."""

    def __init__(self, *, with_health: bool = True) -> None:
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        if with_health:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    async def start(self, credentials: grpc.ServerCredentials | None = None) -> int:
        if credentials is None:
            port: int = self.server.add_insecure_port("127.0.0.1:0")
        else:
            port = self.server.add_secure_port("127.0.0.1:0", credentials)
        await self.server.start()
        return port


@pytest.fixture
async def grpc_server() -> AsyncIterator[HealthServer]:
    server = HealthServer()
    yield server
    await server.server.stop(None)


@pytest.fixture
async def port(grpc_server: HealthServer) -> int:
    await grpc_server.health.set("", Status.SERVING)
    return await grpc_server.start()


async def test_serving_is_up(session: aiohttp.ClientSession, port: int) -> None:
    result = await probe_for(session, port).probe()

    assert result.outcome is Outcome.OK
    assert result.detail == "SERVING"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (Status.SERVING, Outcome.OK),
        (Status.NOT_SERVING, Outcome.FAIL),
        (Status.SERVICE_UNKNOWN, Outcome.DEGRADED),
        (Status.UNKNOWN, Outcome.DEGRADED),
    ],
)
async def test_status_of_the_named_service_decides(
    session: aiohttp.ClientSession,
    grpc_server: HealthServer,
    port: int,
    status: int,
    outcome: Outcome,
) -> None:
    await grpc_server.health.set("models.v1.Predict", status)

    result = await probe_for(session, port, grpc_service="models.v1.Predict").probe()

    assert result.outcome is outcome
    assert result.detail == Status.ServingStatus.Name(status)
    if outcome is not Outcome.OK:
        assert result.reason == Status.ServingStatus.Name(status)


async def test_service_the_server_does_not_know_is_degraded(
    session: aiohttp.ClientSession, port: int
) -> None:
    result = await probe_for(session, port, grpc_service="nope.v1.Nothing").probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "SERVICE_UNKNOWN: 'nope.v1.Nothing'"


async def test_server_without_the_health_service_is_down(
    session: aiohttp.ClientSession,
) -> None:
    server = HealthServer(with_health=False)
    port = await server.start()
    try:
        result = await probe_for(session, port).probe()
    finally:
        await server.server.stop(None)

    assert result.outcome is Outcome.FAIL
    assert result.reason == "no health service (UNIMPLEMENTED)"


async def test_refused(session: aiohttp.ClientSession, closed_port: int) -> None:
    result = await probe_for(session, closed_port).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "connection refused"


async def test_server_that_never_answers_times_out(
    session: aiohttp.ClientSession, hanging_server: HangingServer
) -> None:
    result = await run_probe(probe_for(session, hanging_server.port, 0.2), 0.2)

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.2s"
    assert result.latency_s >= 0.2


async def test_not_a_grpc_server_is_down_with_a_short_reason(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    result = await probe_for(session, port).probe()

    assert result.outcome is Outcome.FAIL
    assert re.match(r"[A-Z]+: ipv4:127\.0\.0\.1:\d+: Failed parsing HTTP/2", result.reason)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_port(grpc_server: HealthServer, ca: trustme.CA) -> int:
    cert = ca.issue_cert("models.internal")
    credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())]
    )
    await grpc_server.health.set("", Status.SERVING)
    return await grpc_server.start(credentials)


async def test_tls_with_the_servers_ca_is_up(
    session: aiohttp.ClientSession, tls_port: int, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    result = await probe_for(
        session, tls_port, tls=True, ca_file=ca_file, server_name="models.internal"
    ).probe()

    assert result.outcome is Outcome.OK


async def test_tls_with_an_untrusted_certificate_is_down(
    session: aiohttp.ClientSession, tls_port: int
) -> None:
    result = await probe_for(session, tls_port, tls=True, server_name="models.internal").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "TLS: handshake failed"


async def test_plaintext_to_a_tls_server_is_down(
    session: aiohttp.ClientSession, tls_port: int
) -> None:
    result = await probe_for(session, tls_port, timeout_s=0.5).probe()

    assert result.outcome in {Outcome.FAIL, Outcome.TIMEOUT}
    assert result.outcome is not Outcome.OK


async def test_no_descriptor_leaks_on_refusal_timeout_or_cancellation(
    session: aiohttp.ClientSession,
    closed_port: int,
    hanging_server: HangingServer,
    port: int,
) -> None:
    refused = probe_for(session, closed_port)
    hanging = probe_for(session, hanging_server.port, 0.05)
    up = probe_for(session, port)

    cancelled = cancelled_once_connected(hanging.probe, hanging_server)

    assert await fd_growth(refused.probe, 30) <= 0
    assert await fd_growth(hanging.probe, 20) <= 0
    assert await fd_growth(cancelled, 20) <= 0
    assert await fd_growth(up.probe, 30) <= 0
