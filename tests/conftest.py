"""Shared test set-up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """``logs.configure`` is process-wide; give every test structlog's defaults back."""
    yield
    structlog.reset_defaults()
