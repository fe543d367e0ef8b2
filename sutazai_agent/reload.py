"""Live configuration: re-read the configuration and apply it, one reload at a time.

``Reloader.reload()`` loads the configuration again (the same file and the environment, in
a worker thread), and either applies it through the agent's ``apply`` callable or, when it
is invalid, changes nothing: one ``config_reload_failed`` line naming the field, and
``config_last_reload_successful`` 0. ``apply`` raises ``ConfigError`` (having changed
nothing) for what only applying finds, e.g. a probe that cannot be built. Reloads are
serialized by a lock, and the calls made while one waits to start share it; the SIGHUP
handler and ``POST /-/reload`` both come here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from sutazai_agent.config import AgentConfig, ConfigDiff, ConfigError
from sutazai_agent.web.metrics import Metrics

log = structlog.get_logger(__name__)
NAMES_LOGGED = 20
"""Service names listed per kind of change in the log line (the counts are always whole)."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    duration_s: float
    diff: ConfigDiff | None = None
    error: str = ""

    def summary(self) -> dict[str, Any]:
        """The answer of ``POST /-/reload``."""
        if self.diff is None:
            return {"status": "failed", "error": self.error}
        services = self.diff.services
        return {
            "status": "applied",
            "added": list(services.added),
            "removed": list(services.removed),
            "changed": list(services.changed),
            "unchanged": len(services.unchanged),
            "applied_keys": list(self.diff.applied_keys),
            "restart_required": list(self.diff.restart_keys),
            "duration_ms": round(self.duration_s * 1000, 3),
        }


class Reloader:
    def __init__(
        self,
        load: Callable[[], AgentConfig],
        apply: Callable[[AgentConfig], ConfigDiff],
        metrics: Metrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._load = load
        self._apply = apply
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self._waiting: asyncio.Task[ReloadResult] | None = None
        """A reload asked for but not started yet: later requests share it."""
        self.succeeded()

    def succeeded(self) -> None:
        """The configuration in use was loaded successfully just now (start or reload)."""
        self._metrics.config_last_reload_successful.set(1)
        self._metrics.config_last_reload_success_timestamp.set(self._wall_clock())

    async def reload(self, trigger: str) -> ReloadResult:
        """Load and apply the configuration, starting after this call. Reloads run one at a
        time, and every call made while one is waiting to start shares that one: a flood of
        requests costs at most the reload running and one more."""
        task = self._waiting
        if task is None:
            task = self._waiting = asyncio.create_task(self._reload(trigger), name="reload")
        # A caller that goes away (an HTTP client hanging up) does not cancel the reload.
        return await asyncio.shield(task)

    async def _reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            self._waiting = None  # from now on a request wants a reload after this one
            started = time.monotonic()
            try:
                new = await asyncio.to_thread(self._load)
                loaded = time.monotonic()
                diff = self._apply(new)
            except ConfigError as exc:
                reason = str(exc) or type(exc).__name__
            else:
                reason = ""
            if reason:
                self._metrics.config_last_reload_successful.set(0)
                log.error("config_reload_failed", trigger=trigger, reason=reason)
                return ReloadResult(False, time.monotonic() - started, error=reason)
            done = time.monotonic()
            duration_s = done - started
            self.succeeded()
            _log_applied(trigger, diff, duration_s, done - loaded)
            return ReloadResult(True, duration_s, diff)


def _log_applied(trigger: str, diff: ConfigDiff, duration_s: float, apply_s: float) -> None:
    services = diff.services
    fields: dict[str, Any] = {
        "trigger": trigger,
        "duration_ms": round(duration_s * 1000, 3),
        "apply_ms": round(apply_s * 1000, 3),
        "unchanged": len(services.unchanged),
    }
    for kind in ("added", "removed", "changed"):
        names: tuple[str, ...] = getattr(services, kind)
        fields[kind] = len(names)
        if names:
            fields[f"{kind}_names"] = list(names[:NAMES_LOGGED])
    if diff.applied_keys:
        fields["applied_keys"] = list(diff.applied_keys)
    log.info("config_reloaded", **fields)
    if diff.restart_keys:
        log.warning(
            "config_restart_required",
            keys=list(diff.restart_keys),
            action="the running values are kept until the agent restarts",
        )
