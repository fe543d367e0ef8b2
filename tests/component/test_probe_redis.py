"""The redis probe against the real Redis on 127.0.0.1:6379, throwaway redis-servers started
by the test (one with a password, one replica of a dead master) and small fake servers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from sutazai_agent.config import RedisService
from sutazai_agent.core.model import Outcome
from sutazai_agent.core.protocols import Probe
from sutazai_agent.probes import build_probe, run_probe
from tests.component.conftest import HangingServer, RawServer
from tests.component.leaks import cancelled_once_connected, fd_growth

REDIS = "redis://127.0.0.1:6379"
PASSWORD = "probe-secret-7"
TIMEOUT_S = 1.0

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


StartRedis = Callable[..., int]


def probe_for(session: aiohttp.ClientSession, url: str, timeout_s: float = TIMEOUT_S) -> Probe:
    return build_probe(RedisService(name="cache", kind="redis", url=url), session, timeout_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "redis-server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"redis-server did not listen on {port}")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartRedis]:
    """``start(*args)`` → the port of a new redis-server run with ``args``."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, tls: trustme.CA | None = None) -> int:
        port = free_port()
        workdir: Path = tmp_path_factory.mktemp("redis")
        listen = ["--port", str(port)]
        if tls is not None:
            cert = tls.issue_cert("127.0.0.1")
            cert.private_key_and_cert_chain_pem.write_to_path(str(workdir / "server.pem"))
            server_pem = str(workdir / "server.pem")
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", server_pem,
                      "--tls-key-file", server_pem, "--tls-auth-clients", "no"]  # fmt: skip
        process = subprocess.Popen(
            ["redis-server", *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
        wait_for_port(port, process)
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def protected_port(redis_server: StartRedis) -> int:
    return redis_server("--requirepass", PASSWORD)


async def test_real_redis_is_up(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, f"{REDIS}/0").probe()

    assert result.outcome is Outcome.OK
    assert result.detail == "PONG, role master"


async def test_selects_the_database_from_the_url(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, f"{REDIS}/99").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "error reply: DB index is out of range"


async def test_refused(session: aiohttp.ClientSession, closed_port: int) -> None:
    result = await probe_for(session, f"redis://127.0.0.1:{closed_port}/0").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "connection refused"


@needs_redis_server
async def test_right_password_is_up(session: aiohttp.ClientSession, protected_port: int) -> None:
    result = await probe_for(session, f"redis://:{PASSWORD}@127.0.0.1:{protected_port}/0").probe()

    assert result.outcome is Outcome.OK


@needs_redis_server
async def test_wrong_password_is_down_without_the_password(
    session: aiohttp.ClientSession, protected_port: int
) -> None:
    result = await probe_for(session, f"redis://:wrong-pw-1@127.0.0.1:{protected_port}/0").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("authentication failed: ")
    assert "wrong-pw-1" not in result.reason


@needs_redis_server
async def test_no_password_for_a_protected_server_is_down(
    session: aiohttp.ClientSession, protected_port: int
) -> None:
    result = await probe_for(session, f"redis://127.0.0.1:{protected_port}/0").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "authentication failed: Authentication required."


@needs_redis_server
async def test_replica_whose_master_is_gone_is_degraded(
    session: aiohttp.ClientSession, redis_server: StartRedis, closed_port: int
) -> None:
    port = redis_server("--replicaof", "127.0.0.1", str(closed_port))

    result = await probe_for(session, f"redis://127.0.0.1:{port}/0").probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "replica: link to master down"
    assert result.detail == "PONG, role replica"


@pytest.fixture(scope="module")
def tls_port(redis_server: StartRedis, untrusted_ca: trustme.CA) -> int:
    return redis_server(tls=untrusted_ca)


@needs_redis_server
async def test_rediss_verifies_the_certificate(
    session: aiohttp.ClientSession, tls_port: int
) -> None:
    result = await probe_for(session, f"rediss://127.0.0.1:{tls_port}/0").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("TLS: certificate verify failed"), result.reason


@needs_redis_server
async def test_rediss_without_verification_is_up(
    session: aiohttp.ClientSession, tls_port: int
) -> None:
    service = RedisService(
        name="cache", kind="redis", url=f"rediss://127.0.0.1:{tls_port}/0", tls_verify=False
    )

    result = await build_probe(service, session, TIMEOUT_S).probe()

    assert result.outcome is Outcome.OK


async def test_server_loading_its_dataset_is_degraded(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"-LOADING Redis is loading the dataset in memory\r\n")

    result = await probe_for(session, f"redis://127.0.0.1:{port}/0").probe()

    assert result.outcome is Outcome.DEGRADED
    assert result.reason == "loading the dataset into memory"


async def test_server_that_refuses_info_is_judged_by_ping(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"+PONG\r\n-NOPERM User probe has no permissions to run 'info'\r\n")

    result = await probe_for(session, f"redis://127.0.0.1:{port}/0").probe()

    assert result.outcome is Outcome.OK
    assert result.detail == "PONG"


async def test_unexpected_ping_reply_is_down(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"+HELLO\r\n$0\r\n\r\n")

    result = await probe_for(session, f"redis://127.0.0.1:{port}/0").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "unexpected reply to PING: b'HELLO'"


async def test_server_that_never_answers_times_out(
    session: aiohttp.ClientSession, hanging_server: HangingServer
) -> None:
    result = await run_probe(
        probe_for(session, f"redis://127.0.0.1:{hanging_server.port}/0", 0.2), 0.2
    )

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.2s"
    assert result.latency_s >= 0.2


async def test_not_a_redis_server_is_down(
    session: aiohttp.ClientSession, raw_server: RawServer
) -> None:
    port = await raw_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    result = await probe_for(session, f"redis://127.0.0.1:{port}/0").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason


async def test_no_descriptor_leaks_on_refusal_timeout_or_cancellation(
    session: aiohttp.ClientSession, closed_port: int, hanging_server: HangingServer
) -> None:
    refused = probe_for(session, f"redis://127.0.0.1:{closed_port}/0")
    hanging = probe_for(session, f"redis://127.0.0.1:{hanging_server.port}/0", 0.05)
    up = probe_for(session, f"{REDIS}/0")

    cancelled = cancelled_once_connected(hanging.probe, hanging_server)

    assert await fd_growth(refused.probe, 50) <= 0
    assert await fd_growth(hanging.probe, 20) <= 0
    assert await fd_growth(cancelled, 20) <= 0
    assert await fd_growth(up.probe, 50) <= 0
