"""gRPC probe: the standard health check, ``grpc.health.v1.Health/Check``.

``SERVING`` is up; ``SERVICE_UNKNOWN``/``UNKNOWN`` (and ``NOT_FOUND``, which is how a health
server answers ``Check`` for a service it does not know) degraded; ``NOT_SERVING``, a
connection error, the deadline or a server without the health service (``UNIMPLEMENTED``)
down. Each probe opens its own channel (no retries, no proxy from the environment, the call's
deadline is the probe's timeout) and closes it on every path.

grpcio and grpcio-health-checking are the optional ``grpc`` extra, imported when the first
grpc probe is built.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import TYPE_CHECKING, Any

from sutazai_agent.core.model import Outcome, ProbeResult
from sutazai_agent.probes.base import clock, elapsed_since, failure, seconds

if TYPE_CHECKING:
    import aiohttp

    from sutazai_agent.config import GrpcService

_STATUS_PREFIX = re.compile(r"[A-Z_]+: ")
REPLY_LIMIT = 64 * 1024
"""A health reply is a few bytes; anything larger is refused by the channel."""


class GrpcProbe:
    kind = "grpc"

    def __init__(
        self,
        service: GrpcService,
        session: aiohttp.ClientSession,  # unused: one constructor signature for every kind
        timeout_s: float,
    ) -> None:
        import grpc
        import grpc.aio
        from grpc_health.v1 import health_pb2

        self._grpc: Any = grpc
        self._timeout_s = timeout_s
        host = f"[{service.host}]" if ":" in service.host else service.host
        self._target = f"{host}:{service.port}"
        self._request = health_pb2.HealthCheckRequest(service=service.grpc_service)
        self._decode: Any = health_pb2.HealthCheckResponse.FromString
        self._statuses: dict[int, str] = {
            value: name for name, value in health_pb2.HealthCheckResponse.ServingStatus.items()
        }
        self._service = service.grpc_service
        self._options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 0),
            # Its own subchannels, gone with the channel: no connection outlives a probe.
            ("grpc.use_local_subchannel_pool", 1),
            # gRPC bounds a connection attempt (TCP + TLS + HTTP/2 handshake) by this, 20 s by
            # default, even after the channel is closed: bound it by the probe's timeout.
            ("grpc.min_reconnect_backoff_ms", max(1, math.ceil(timeout_s * 1000))),
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_receive_message_length", REPLY_LIMIT),
        ]
        if service.server_name:
            self._options.append(("grpc.ssl_target_name_override", service.server_name))
        self._credentials: Any = None
        if service.tls:
            ca = service.ca_file.read_bytes() if service.ca_file else None
            self._credentials = grpc.ssl_channel_credentials(root_certificates=ca)

    def _channel(self) -> Any:
        aio = self._grpc.aio
        if self._credentials is None:
            return aio.insecure_channel(self._target, options=self._options)
        return aio.secure_channel(self._target, self._credentials, options=self._options)

    async def probe(self) -> ProbeResult:
        start = clock()
        channel: Any = None
        try:
            channel = self._channel()
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=type(self._request).SerializeToString,
                response_deserializer=self._decode,
            )
            async with asyncio.timeout(self._timeout_s):
                reply = await check(self._request, timeout=self._timeout_s)
        except self._grpc.aio.AioRpcError as exc:
            return self._rpc_failed(exc, start)
        except Exception as exc:  # noqa: BLE001 - a probe never raises
            return failure(exc, start, self._timeout_s)
        finally:
            if channel is not None:
                await channel.close()
        latency_s = elapsed_since(start)
        status = self._statuses.get(reply.status, str(reply.status))
        if status == "SERVING":
            return ProbeResult(Outcome.OK, latency_s, "", status)
        if status in {"SERVICE_UNKNOWN", "UNKNOWN"}:
            return ProbeResult(Outcome.DEGRADED, latency_s, status, status)
        return ProbeResult(Outcome.FAIL, latency_s, status, status)

    def _rpc_failed(self, exc: Any, start: float) -> ProbeResult:
        code = exc.code()
        codes = self._grpc.StatusCode
        latency_s = elapsed_since(start)
        if code == codes.DEADLINE_EXCEEDED:
            latency_s = max(latency_s, self._timeout_s)
            reason = f"timeout after {seconds(self._timeout_s)}"
            return ProbeResult(Outcome.TIMEOUT, latency_s, reason)
        if code == codes.NOT_FOUND:
            return ProbeResult(Outcome.DEGRADED, latency_s, f"SERVICE_UNKNOWN: {self._service!r}")
        if code == codes.UNIMPLEMENTED:
            return ProbeResult(Outcome.FAIL, latency_s, "no health service (UNIMPLEMENTED)")
        return ProbeResult(Outcome.FAIL, latency_s, grpc_reason(code.name, exc.details() or ""))


def grpc_reason(code: str, details: str) -> str:
    """A short reason from a failed call's status code and details."""
    lowered = details.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "handshake" in lowered or "ssl" in lowered or "certificate" in lowered:
        return "TLS: handshake failed"
    if "dns resolution failed" in lowered:
        return "DNS: cannot resolve the host"
    details = details.rpartition("last error: ")[2]
    if _STATUS_PREFIX.match(details):
        return details  # the last attempt's own status ("UNAVAILABLE: ipv4:...") says more
    return f"{code}: {details}" if details else code
