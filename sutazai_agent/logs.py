"""structlog set-up: JSON lines on stdout in production, a console renderer on a TTY.

Every event passes through ``SecretScrubber`` last, so a secret that slips into a message,
a value or a traceback is replaced by ``***`` before anything is written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from sutazai_agent.core.secrets import Scrubber

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class SecretScrubber:
    """The log pipeline's last processor: every known secret value becomes ``***``, at any
    depth (``core.secrets.Scrubber``), and so does any URL's password."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._scrubber = Scrubber(secrets)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        return {key: self._scrubber.deep(value) for key, value in event.items()}


def configure(
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the process (the composition root calls this once)."""
    out = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text here, before the scrubber, so they are scrubbed too.
        structlog.processors.format_exc_info,
        SecretScrubber(secrets),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors.append(structlog.processors.JSONRenderer())
    _route_stdlib(processors, level, out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


QUIET_LIBRARIES = ("aiormq", "aio_pika", "asyncio")
"""Libraries whose own logs repeat what the agent already reports once per outage (a refused
AMQP probe logs an error every interval; a reconnecting robust connection logs each try)."""


def _route_stdlib(processors: list[Processor], level: str, out: TextIO) -> None:
    """Send the standard library's log records through the same renderer and scrubber."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=processors[:-2],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *processors[-2:],
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)


class LoopExceptionLogger:
    """The event loop's last-resort exception handler, as structured, rate-limited lines.

    The ``asyncio`` logger is quieted (``QUIET_LIBRARIES``), which would also hide "Task
    exception was never retrieved" and other errors nothing else reports. Installed with
    ``loop.set_exception_handler``, this logs each kind of problem (message + exception type)
    once as ``loop_exception``, then at most once per ``window_s`` with the count of the
    repeats it held back, so a library failing on every reconnect cannot flood the log.
    """

    MAX_KINDS = 256

    def __init__(
        self,
        logger: Any = None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger if logger is not None else structlog.get_logger("sutazai_agent.loop")
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}
        """kind → (when last logged, repeats held back since)."""

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "unhandled exception in the event loop")
        kind = f"{message}|{type(exc).__name__ if exc is not None else ''}"
        now = self._clock()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self._window_s:
            self._seen[kind] = (last[0], last[1] + 1)
            return
        if last is None and len(self._seen) >= self.MAX_KINDS:
            self._seen.pop(next(iter(self._seen)))
        self._seen[kind] = (now, 0)
        source = context.get("task") or context.get("future") or context.get("handle")
        name = source.get_name() if isinstance(source, asyncio.Task) else None
        self._log.error(
            "loop_exception",
            message=message[:200],
            task=name,
            repeated=0 if last is None else last[1],
            exc_info=exc if isinstance(exc, BaseException) else None,
        )
