"""Value objects shared by every component: states, probe results, transitions, events."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

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
