"""Value objects shared by every component: states, probe results, transitions, events."""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from datetime import UTC, datetime

from sutazai_agent.core.secrets import scrub_urls

REASON_MAX = 200
"""Probe reasons are short and bounded: they end up in events, logs and /status."""


class State(enum.StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


class Outcome(enum.StrEnum):
    """The result of one probe, as counted in ``probes_total{result}``."""

    OK = "ok"
    DEGRADED = "degraded"
    FAIL = "fail"
    TIMEOUT = "timeout"

    @property
    def state(self) -> State:
        return _OUTCOME_STATE[self]


_OUTCOME_STATE = {
    Outcome.OK: State.UP,
    Outcome.DEGRADED: State.DEGRADED,
    Outcome.FAIL: State.DOWN,
    Outcome.TIMEOUT: State.DOWN,
}


def bounded(text: str, limit: int = REASON_MAX) -> str:
    """Collapse whitespace and cut ``text`` to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timed out",
    errno.EPIPE: "broken pipe",
}


def os_reason(exc: BaseException) -> str:
    """A short reason for an OS error: ``connection refused``, ``permission denied``.

    Anything else gives its message (URL passwords hidden), or its type's name.
    """
    if not isinstance(exc, OSError):
        return scrub_urls(str(exc)) or type(exc).__name__
    if exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if exc.strerror:
        return exc.strerror.lower()
    return scrub_urls(str(exc)) or type(exc).__name__


def format_time(at: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``: ``2026-11-26T10:00:00.123Z``.

    A naive datetime is taken to be UTC already.
    """
    utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def format_optional_time(at: datetime | None) -> str | None:
    return None if at is None else format_time(at)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    outcome: Outcome
    latency_s: float
    reason: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", bounded(self.reason))
        object.__setattr__(self, "detail", bounded(self.detail))

    @property
    def state(self) -> State:
        return self.outcome.state


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a service's health state, as decided by the health machine."""

    service: str
    kind: str
    previous: State
    current: State
    reason: str
    at: datetime
    result: ProbeResult


@dataclass(frozen=True, slots=True)
class KnownState:
    """A service's last announced state, as persisted across restarts."""

    state: State
    since: datetime
    sequence: int
