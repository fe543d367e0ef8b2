"""Shared test set-up."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from sutazai_agent.logs import QUIET_LIBRARIES


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """``logs.configure`` is process-wide; give every test structlog's defaults back, and the
    root and library loggers their handlers and levels (it quiets aio-pika and aiormq)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
