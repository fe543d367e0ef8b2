"""core.outage: one log line when an outage starts or changes kind, one when it ends."""

from __future__ import annotations

from sutazai_agent.core.outage import Outage


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_the_first_failure_and_a_change_of_kind_are_news() -> None:
    clock = FakeClock()
    outage = Outage(clock)
    assert outage.since is None
    assert outage.failed("unreachable") is True
    clock.now += 1
    assert outage.failed("unreachable") is False
    assert outage.failed("forbidden") is True
    assert outage.failures == 3
    assert outage.since == 100.0


def test_recovery_reports_the_length_once_and_starts_afresh() -> None:
    clock = FakeClock()
    outage = Outage(clock)
    assert outage.recovered() is None
    outage.failed()
    clock.now += 12.3456
    assert outage.recovered() == 12.346
    assert outage.recovered() is None
    assert outage.failures == 0
    assert outage.failed() is True
