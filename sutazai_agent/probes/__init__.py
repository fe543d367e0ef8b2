"""Probes: one module per kind behind one ``Probe`` protocol, picked by ``kind``.

``PROBES`` maps each kind to its class (uvicorn-style string registry); ``build_probe`` makes
the probe for a configured service; ``run_probe`` is how the scheduler calls one: it adds a
hard backstop timeout and turns anything a buggy probe raises into a failed result, so a crash
inside a probe is a failed probe and never a dead agent.

The redis, postgres and grpc probes import their client library (an optional extra) when
the first probe of their kind is built, so the agent starts without them; the configuration
refuses such a kind when its extra is missing (``config.extras``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.probes.base import clock, elapsed_since, error_reason, make_session, seconds
from sutazai_agent.probes.consul import ConsulProbe
from sutazai_agent.probes.grpc import GrpcProbe
from sutazai_agent.probes.http import HttpProbe
from sutazai_agent.probes.kong import KongProbe
from sutazai_agent.probes.postgres import PostgresProbe
from sutazai_agent.probes.rabbitmq import RabbitmqProbe
from sutazai_agent.probes.redis import RedisProbe
from sutazai_agent.probes.tcp import TcpProbe

if TYPE_CHECKING:
    import aiohttp

    from sutazai_agent.config import ServiceConfig
    from sutazai_agent.core.protocols import Probe

__all__ = [
    "BACKSTOP_GRACE_S",
    "PROBES",
    "ProbeFactory",
    "build_probe",
    "make_session",
    "run_probe",
]

BACKSTOP_GRACE_S = 0.5
"""Each probe applies ``timeout_s`` itself; ``run_probe`` cancels it this much later."""


class ProbeFactory(Protocol):
    """What a registry entry is: ``cls(service, session, timeout_s)`` gives a ``Probe``."""

    def __call__(
        self, service: Any, session: aiohttp.ClientSession, timeout_s: float, /
    ) -> Probe: ...


PROBES: dict[str, ProbeFactory] = {
    "http": HttpProbe,
    "tcp": TcpProbe,
    "kong": KongProbe,
    "consul": ConsulProbe,
    "rabbitmq": RabbitmqProbe,
    "redis": RedisProbe,
    "postgres": PostgresProbe,
    "grpc": GrpcProbe,
}


def build_probe(service: ServiceConfig, session: aiohttp.ClientSession, timeout_s: float) -> Probe:
    """The probe for ``service``; ``timeout_s`` is the service's effective timeout."""
    try:
        factory = PROBES[service.kind]
    except KeyError:
        raise ValueError(f"no probe for kind {service.kind!r}") from None
    return factory(service, session, timeout_s)


async def run_probe(probe: Probe, timeout_s: float) -> ProbeResult:
    """Run ``probe`` once; never raises except ``CancelledError`` from outside.

    A probe that overruns ``timeout_s`` by ``BACKSTOP_GRACE_S`` is cancelled: TIMEOUT. An
    exception escaping the probe (a bug) is FAIL with a short reason.
    """
    start = clock()
    try:
        async with asyncio.timeout(timeout_s + BACKSTOP_GRACE_S):
            return await probe.probe()
    except TimeoutError:
        return ProbeResult(
            Outcome.TIMEOUT,
            max(elapsed_since(start), timeout_s),
            f"timeout after {seconds(timeout_s)}",
        )
    except Exception as exc:  # noqa: BLE001 - the probe boundary: a bug is a failed probe
        reason = f"probe error: {error_reason(exc, timeout_s)}"
        return ProbeResult(Outcome.FAIL, elapsed_since(start), reason)
