"""The roles components play for each other. Concrete classes meet only in ``app.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sutazai_agent.config import ServiceConfig
    from sutazai_agent.core.model import KnownState, ProbeResult, State, Transition


class Clock(Protocol):
    """Monotonic time in seconds; injectable so the scheduler runs on a fake clock in tests."""

    def __call__(self) -> float: ...


class Probe(Protocol):
    """Checks one target once. Never raises: every failure is a ``ProbeResult``.

    The caller (the scheduler) applies the timeout by cancelling the call.
    """

    async def probe(self) -> ProbeResult: ...


class EventSink(Protocol):
    """Durable record of transitions (the outbox), read back by the publisher."""

    async def append(self, transitions: Sequence[Transition]) -> None:
        """Persist the transitions (and each service's new state) in one durable commit."""
        ...

    def known_states(self) -> Mapping[str, KnownState]:
        """Last announced state of every service, as of the last commit."""
        ...

    def pending(self) -> int:
        """Events written but not yet confirmed by the broker."""
        ...


class Registrar(Protocol):
    """Keeps the service registry in line with health states. Calls never block on I/O."""

    def observe(self, service: ServiceConfig, state: State) -> None:
        """Record the desired registration for ``service`` given its health ``state``."""
        ...

    def forget(self, service: ServiceConfig) -> None:
        """``service`` is no longer this agent's: deregister it if registered, then drop it."""
        ...

    def is_registered(self, service_id: str) -> bool: ...

    def status(self) -> dict[str, Any]: ...


class Publisher(Protocol):
    def wake(self) -> None:
        """New events are in the outbox: publish them as soon as the broker allows."""
        ...

    def status(self) -> dict[str, Any]: ...
