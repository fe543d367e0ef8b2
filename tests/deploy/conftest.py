"""The deploy tests' Docker engine: one per test session, started only when a test needs it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.deploy.dockerd import Dockerd, DockerdUnavailableError


def unavailable(reason: str) -> None:
    """Skip on a developer machine that cannot run dockerd; in CI (CI=true) that is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the Docker engine tests cannot run: {reason}")
    pytest.skip(f"cannot run a Docker engine here: {reason}")


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    try:
        engine = Dockerd()
    except DockerdUnavailableError as exc:
        unavailable(str(exc))
        raise  # unreachable: skip and fail raise
    try:
        engine.start()
    except DockerdUnavailableError as exc:
        engine.stop()
        unavailable(str(exc))
        raise
    try:
        yield engine
    finally:
        engine.stop()
