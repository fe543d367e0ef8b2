"""Exponential backoff with jitter: the one retry pacing every loop uses."""

from __future__ import annotations

import random


class Backoff:
    """The n-th delay after a failure is drawn from [50 %, 100 %] of ``min(cap, initial · 2ⁿ)``.

    Jitter keeps a fleet of agents from retrying a recovering Consul or broker in step.
    ``reset()`` after a success starts again from ``initial_s``.
    """

    MAX_EXPONENT = 32
    """``2.0 ** n`` overflows a float past n = 1023; any cap is reached long before 2 ** 32."""

    def __init__(
        self,
        initial_s: float = 1.0,
        cap_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        exponent = min(self.failures, self.MAX_EXPONENT)
        step = min(self.cap_s, self.initial_s * 2.0**exponent)
        self.failures += 1
        return step * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0
