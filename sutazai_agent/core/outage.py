""" "Log once per outage, once on recovery": the bookkeeping every dependency loop shares.

A dependency (the outbox's disk, Consul, the broker) fails many times in a row during one
outage. Operators want one line when it starts (or changes its nature, e.g. unreachable →
permission denied) and one line with the outage's length when it ends, not a line per retry.
The caller owns the log lines and their static event names; this decides when they are due.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Outage:
    """Tracks one dependency's current outage, if any."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.kind: str | None = None
        self.since: float | None = None
        self.failures = 0

    def failed(self, kind: str = "error") -> bool:
        """Count a failure; True when it starts an outage or changes its kind (log it)."""
        self.failures += 1
        if self.since is None:
            self.since = self._clock()
        if kind == self.kind:
            return False
        self.kind = kind
        return True

    def recovered(self) -> float | None:
        """End the outage; its length in seconds if one was ongoing (log it), else None."""
        if self.since is None:
            return None
        length_s = round(self._clock() - self.since, 3)
        self.kind = self.since = None
        self.failures = 0
        return length_s
