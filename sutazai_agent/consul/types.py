"""What the Consul client answers and raises: typed values, errors, the agent-API role.

Pure data and parsing, no I/O, so the registrar's logic and its fakes can share them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sutazai_agent.core.model import bounded

CheckStatus = Literal["passing", "warning", "critical"]
CHECK_STATUSES: tuple[CheckStatus, ...] = ("passing", "warning", "critical")
MESSAGE_MAX = 200


class ConsulError(Exception):
    """A Consul call failed. ``status`` is the HTTP status, ``None`` when there was none."""

    def __init__(self, operation: str, message: str, status: int | None = None) -> None:
        self.operation = operation
        self.status = status
        self.message = bounded(message, MESSAGE_MAX)
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = "unreachable" if self.status is None else f"HTTP {self.status}"
        return f"{self.operation}: {where}: {self.message}" if self.message else where


class ConsulUnavailableError(ConsulError):
    """Consul cannot answer: refused, timed out, TLS failure, 5xx, no cluster leader."""


class ConsulRateLimitedError(ConsulUnavailableError):
    """429: Consul's rate limit refused the call for now; back off and try again."""


class ConsulPermissionError(ConsulError):
    """403: the ACL token is missing, unknown or lacks the permission."""


class ConsulNotFoundError(ConsulError):
    """The service or check named in the call does not exist on the agent."""


@dataclass(frozen=True, slots=True)
class AgentService:
    """One entry of ``GET /v1/agent/services``."""

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentCheck:
    """One entry of ``GET /v1/agent/checks``."""

    check_id: str
    name: str
    status: str
    output: str = ""
    service_id: str = ""
    service_name: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded Consul answer: the HTTP status, ``X-Consul-Index`` (0 if none), the JSON."""

    status: int
    index: int
    data: Any


class ConsulAgentApi(Protocol):
    """What the registrar needs from Consul (``ConsulClient`` in production, fakes in tests)."""

    async def register_service(self, payload: Mapping[str, Any]) -> None: ...

    async def deregister_service(self, service_id: str) -> None: ...

    async def update_ttl(self, check_id: str, status: CheckStatus, output: str = "") -> None: ...

    async def agent_services(self, filter_expr: str | None = None) -> dict[str, AgentService]: ...

    async def agent_service(self, service_id: str) -> AgentService | None: ...

    async def agent_checks(self, filter_expr: str | None = None) -> dict[str, AgentCheck]: ...

    async def health_service(
        self, name: str
    ) -> list[tuple[AgentService, tuple[AgentCheck, ...]]]: ...


def http_error(operation: str, status: int, text: str) -> ConsulError:
    if status == 403:
        return ConsulPermissionError(operation, text or "Permission denied", status)
    if status == 404:
        return ConsulNotFoundError(operation, text or "not found", status)
    if status == 429:
        return ConsulRateLimitedError(operation, text or "rate limit exceeded", status)
    if status >= 500:
        return ConsulUnavailableError(operation, text, status)
    return ConsulError(operation, text, status)


def parse_service(operation: str, value: Any) -> AgentService:
    try:
        return AgentService(
            id=str(value["ID"]),
            name=str(value["Service"]),
            address=str(value.get("Address") or ""),
            port=int(value.get("Port") or 0),
            tags=tuple(str(t) for t in value.get("Tags") or ()),
            meta={str(k): str(v) for k, v in (value.get("Meta") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConsulError(operation, "agent services: malformed entry") from None


def parse_check(operation: str, value: Any) -> AgentCheck:
    try:
        return AgentCheck(
            check_id=str(value["CheckID"]),
            name=str(value.get("Name") or ""),
            status=str(value["Status"]),
            output=str(value.get("Output") or ""),
            service_id=str(value.get("ServiceID") or ""),
            service_name=str(value.get("ServiceName") or ""),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConsulError(operation, "agent checks: malformed entry") from None
