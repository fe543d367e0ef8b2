"""How fast the registrar writes changes: bounded in flight, slowed when Consul slows down.

A Consul agent pays for a registration with work that grows with the services it already
holds (docs/performance.md: ~2 ms of its CPU per registration at 1,000 services, ~26 ms at
5,000), and it runs heartbeats on the same CPU. Sending thousands of registrations as fast as
answers come back makes each answer slower, until calls time out and TTL checks expire. The
``Pacer`` keeps it convergent: additive increase, multiplicative decrease of the number of
changes in flight, driven by how long each group of writes took, and a time budget per pass so
that the heartbeats due meanwhile go out between groups.
"""

from __future__ import annotations

from typing import Final

WINDOW_START: Final = 4
"""Changes in flight when the registrar starts (and after an outage)."""
BUDGET_S: Final = 0.5
"""Time one pass spends applying changes before it turns to the due heartbeats."""


class Pacer:
    """AIMD on the number of changes written at once.

    ``slow_s`` is the latency of a group of writes above which Consul counts as slowing
    down: the window halves. Below it the window grows by one, up to ``window_max``.
    """

    __slots__ = ("slow_s", "window", "window_max")

    def __init__(self, window_max: int, slow_s: float) -> None:
        self.window_max = window_max
        self.slow_s = slow_s
        self.window = min(WINDOW_START, window_max)

    def done(self, elapsed_s: float) -> None:
        """A group of ``window`` writes took ``elapsed_s``: adapt the next group's size."""
        if elapsed_s > self.slow_s:
            self.window = max(1, self.window // 2)
        else:
            self.window = min(self.window_max, self.window + 1)

    def reset(self) -> None:
        """After an outage: start small again."""
        self.window = min(WINDOW_START, self.window_max)


def slow_threshold(timeout_s: float) -> float:
    """A group of writes slower than this (a tenth of the call timeout, at least 50 ms and
    at most 0.5 s) means Consul is queueing them."""
    return min(max(timeout_s / 10, 0.05), 0.5)
