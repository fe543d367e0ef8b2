"""The probe boundary: registry, ``run_probe``'s backstop, and failure reasons."""

from __future__ import annotations

import asyncio
import errno
import ssl

import aiohttp
import pytest

from sutazai_agent.config import (
    ConsulService,
    HttpService,
    KongService,
    RabbitmqService,
    TcpService,
)
from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.probes import BACKSTOP_GRACE_S, PROBES, build_probe, make_session, run_probe
from sutazai_agent.probes.base import clock, error_reason, failure
from sutazai_agent.probes.consul import ConsulProbe
from sutazai_agent.probes.http import HttpProbe
from sutazai_agent.probes.kong import KongProbe
from sutazai_agent.probes.rabbitmq import RabbitmqProbe
from sutazai_agent.probes.tcp import TcpProbe


class CrashingProbe:
    async def probe(self) -> ProbeResult:
        raise KeyError("status")


class HangingProbe:
    def __init__(self) -> None:
        self.cancelled = False

    async def probe(self) -> ProbeResult:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


class LeakyProbe:
    async def probe(self) -> ProbeResult:
        raise RuntimeError("cannot reach amqp://guest:hunter2@rabbit:5672/")


async def test_crash_inside_a_probe_is_a_failed_probe() -> None:
    result = await run_probe(CrashingProbe(), timeout_s=1)

    assert result.outcome is Outcome.FAIL
    assert result.reason == "probe error: KeyError: 'status'"
    assert result.latency_s >= 0


async def test_probe_that_hangs_forever_is_cancelled_as_a_timeout() -> None:
    probe = HangingProbe()

    result = await run_probe(probe, timeout_s=0.1)

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.1s"
    assert 0.1 + BACKSTOP_GRACE_S <= result.latency_s < 0.1 + BACKSTOP_GRACE_S + 0.3
    assert probe.cancelled


async def test_cancellation_from_outside_propagates() -> None:
    probe = HangingProbe()
    task = asyncio.create_task(run_probe(probe, timeout_s=10))
    await asyncio.sleep(0.01)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.cancelled


async def test_crash_reason_never_shows_a_url_password() -> None:
    result = await run_probe(LeakyProbe(), timeout_s=1)

    assert result.outcome is Outcome.FAIL
    assert "hunter2" not in result.reason
    assert "amqp://guest:***@rabbit:5672/" in result.reason


@pytest.mark.parametrize(
    ("service", "probe_class"),
    [
        (HttpService(name="a", kind="http", url="http://x/health"), HttpProbe),
        (TcpService(name="a", kind="tcp", host="x", port=1), TcpProbe),
        (KongService(name="a", kind="kong", admin_url="http://x", proxy_url="http://y"), KongProbe),
        (ConsulService(name="a", kind="consul", url="http://x"), ConsulProbe),
        (RabbitmqService(name="a", kind="rabbitmq", amqp_url="amqp://x/"), RabbitmqProbe),
    ],
)
async def test_build_probe_picks_the_class_registered_for_the_kind(
    service: HttpService, probe_class: type
) -> None:
    async with make_session(limit=1) as session:
        probe = build_probe(service, session, 1.0)

    assert type(probe) is probe_class
    assert PROBES[service.kind] is probe_class


def test_every_configurable_kind_has_a_probe() -> None:
    from sutazai_agent.config import KINDS

    assert set(PROBES) == set(KINDS)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError(), "timeout after 5s"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "connection refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "host unreachable"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS: "),
        (aiohttp.ServerDisconnectedError(), "server closed the connection without a response"),
        (ValueError("bad http://u:pw@h/ value"), "ValueError: bad http://u:***@h/ value"),
    ],
)
def test_error_reasons_are_short_and_say_what_happened(exc: BaseException, reason: str) -> None:
    assert error_reason(exc, 5.0).startswith(reason)


def test_a_timed_out_probe_took_its_timeout_at_least() -> None:
    # The loop's timer runs on a coarser clock (uvloop: 1 ms, read once per iteration) and
    # may fire a hair before perf_counter says the timeout passed.
    timed_out = failure(TimeoutError(), clock(), 5.0)
    refused = failure(ConnectionRefusedError(111, "refused"), clock(), 5.0)

    assert timed_out.latency_s == 5.0
    assert refused.latency_s < 1.0
