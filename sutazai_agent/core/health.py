"""The health state machine: pure, no I/O, no clock of its own.

``unknown`` moves straight to the first result's state. After that a move needs ``rise``
consecutive results better than the current state, or ``fall`` consecutive results worse
than it. A streak mixing results (e.g. degraded then down while up) moves only as far as
every result in it agrees: up → degraded after [degraded, down]; down → degraded after
[degraded, up]. A result equal to the current state, or one in the other direction, breaks
the streak. That damping is what keeps a flapping target from flapping its registration.
A move reports the reason (and probe) of the streak's latest result in the state it moves to,
never that of a result pointing further.

A state restored from disk (``restore``) is provisional: it is the ``previous`` of the next
transition, so an unchanged service is not re-announced, but it is no evidence. The first
result of this run decides directly, as from ``unknown``, and until then ``confirmed`` is
False (nothing may be registered or reported from stored state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sutazai_agent.core.model import ProbeResult, State, Transition

RANK = {State.DOWN: 0, State.DEGRADED: 1, State.UP: 2}
DEFAULT_REASON = {State.UP: "probe ok", State.DEGRADED: "degraded", State.DOWN: "probe failed"}


@dataclass(slots=True)
class HealthMachine:
    service: str
    kind: str
    rise: int
    fall: int
    state: State = State.UNKNOWN
    since: datetime | None = None
    _direction: int = field(default=0, init=False)
    _streak: int = field(default=0, init=False)
    _bound: State = field(default=State.UNKNOWN, init=False)
    _evidence: ProbeResult | None = field(default=None, init=False)
    _provisional: bool = field(default=False, init=False)

    def restore(self, state: State, since: datetime) -> None:
        """Start from a stored state until the first result of this run (see the module)."""
        self.state, self.since = state, since
        self._provisional = state is not State.UNKNOWN
        self._reset()

    @property
    def confirmed(self) -> bool:
        """The state comes from a result of this run (not unknown, not restored)."""
        return self.state is not State.UNKNOWN and not self._provisional

    def observe(self, result: ProbeResult, at: datetime) -> Transition | None:
        """Feed one probe result; return the transition it causes, if any."""
        observed = result.state
        if self._provisional:
            self._provisional = False
            return None if observed is self.state else self._move(observed, result, at)
        if self.state is State.UNKNOWN:
            return self._move(observed, result, at)
        step = RANK[observed] - RANK[self.state]
        if step == 0:
            self._reset()
            return None
        direction = 1 if step > 0 else -1
        if direction != self._direction:
            self._direction, self._streak, self._bound = direction, 0, observed
        self._streak += 1
        # The furthest state every result of the streak supports, and its latest result.
        if (RANK[observed] - RANK[self._bound]) * direction < 0:
            self._bound = observed
        if observed is self._bound:
            self._evidence = result
        needed = self.rise if direction > 0 else self.fall
        if self._streak < needed:
            return None
        return self._move(self._bound, self._evidence or result, at)

    def _move(self, target: State, result: ProbeResult, at: datetime) -> Transition:
        previous = self.state
        self.state, self.since = target, at
        self._reset()
        reason = result.reason or DEFAULT_REASON[target]
        return Transition(
            service=self.service,
            kind=self.kind,
            previous=previous,
            current=target,
            reason=reason,
            at=at,
            result=result,
        )

    def _reset(self) -> None:
        self._direction, self._streak, self._bound = 0, 0, State.UNKNOWN
        self._evidence = None
