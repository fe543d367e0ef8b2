"""The health state machine, table-driven: results in, states and transitions out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sutazai_agent.core.health import HealthMachine
from sutazai_agent.core.model import Outcome, ProbeResult, State

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
CODE = {"u": Outcome.OK, "g": Outcome.DEGRADED, "d": Outcome.FAIL, "t": Outcome.TIMEOUT}
NAME = {"?": State.UNKNOWN, "u": State.UP, "g": State.DEGRADED, "d": State.DOWN}


def run(results: str, rise: int = 2, fall: int = 2, start: str = "?") -> tuple[str, list[str]]:
    """Feed results ('u' ok, 'g' degraded, 'd' fail, 't' timeout); return the states seen
    after each result and the transitions as 'prev>cur'."""
    machine = HealthMachine("svc", "http", rise, fall, state=NAME[start])
    inverse = {v: k for k, v in NAME.items()}
    states, transitions = "", []
    for i, code in enumerate(results):
        t = machine.observe(ProbeResult(CODE[code], 0.01, f"r{i}"), T0 + timedelta(seconds=i))
        if t is not None:
            transitions.append(f"{inverse[t.previous]}>{inverse[t.current]}")
        states += inverse[machine.state]
    return states, transitions


@pytest.mark.parametrize(
    ("results", "rise", "fall", "start", "states", "transitions"),
    [
        # The first result decides directly, whatever rise/fall say.
        ("u", 3, 3, "?", "u", ["?>u"]),
        ("d", 3, 3, "?", "d", ["?>d"]),
        ("g", 3, 3, "?", "g", ["?>g"]),
        ("t", 3, 3, "?", "d", ["?>d"]),
        # fall consecutive failures take an up service down.
        ("udd", 2, 2, "?", "uud", ["?>u", "u>d"]),
        ("uddd", 2, 3, "?", "uuud", ["?>u", "u>d"]),
        # rise consecutive successes bring it back.
        ("duu", 2, 2, "?", "ddu", ["?>d", "d>u"]),
        ("duuu", 3, 2, "?", "dddu", ["?>d", "d>u"]),
        # Flapping never changes state while no streak reaches its threshold.
        ("udududud", 2, 2, "?", "uuuuuuuu", ["?>u"]),
        ("dudududu", 2, 2, "?", "dddddddd", ["?>d"]),
        # A result equal to the state breaks the streak.
        ("udud" + "dd", 2, 3, "?", "uuuuud", ["?>u", "u>d"]),
        # rise/fall of 1: every change moves at once.
        ("udug", 1, 1, "?", "udug", ["?>u", "u>d", "d>u", "u>g"]),
        # Degraded is a state of its own, reached by fall from up and by rise from down.
        ("ugg", 2, 2, "?", "uug", ["?>u", "u>g"]),
        ("dgg", 2, 2, "?", "ddg", ["?>d", "d>g"]),
        ("guu", 2, 2, "?", "ggu", ["?>g", "g>u"]),
        ("gdd", 2, 2, "?", "ggd", ["?>g", "g>d"]),
        # A mixed streak moves only as far as all of it agrees.
        ("ugd", 2, 2, "?", "uug", ["?>u", "u>g"]),
        ("udg", 2, 2, "?", "uug", ["?>u", "u>g"]),
        ("dgu", 2, 2, "?", "ddg", ["?>d", "d>g"]),
        ("dug", 2, 2, "?", "ddg", ["?>d", "d>g"]),
        ("udt", 2, 2, "?", "uud", ["?>u", "u>d"]),
        # Direction changes restart the streak: degraded then up then down stays degraded.
        ("gudu", 2, 2, "?", "gggg", ["?>g"]),
        # A state restored from disk is not re-announced, and rise/fall apply at once.
        ("uu", 2, 2, "u", "uu", []),
        ("dd", 2, 2, "u", "ud", ["u>d"]),
        ("u", 2, 2, "d", "d", []),
    ],
)
def test_transitions(
    results: str, rise: int, fall: int, start: str, states: str, transitions: list[str]
) -> None:
    assert run(results, rise, fall, start) == (states, transitions)


def test_transition_carries_reason_time_and_result() -> None:
    machine = HealthMachine("kong", "kong", rise=1, fall=1)
    up = ProbeResult(Outcome.OK, 0.002)
    first = machine.observe(up, T0)
    assert first is not None
    assert first.reason == "probe ok"  # a default when the probe gave none
    failing = ProbeResult(Outcome.FAIL, 0.5, "proxy: connection refused")
    at = T0 + timedelta(seconds=10)
    t = machine.observe(failing, at)
    assert t is not None
    assert (t.service, t.kind, t.previous, t.current) == ("kong", "kong", State.UP, State.DOWN)
    assert t.reason == "proxy: connection refused"
    assert t.at == at
    assert t.result is failing
    assert machine.since == at


@pytest.mark.parametrize(
    ("results", "current", "reason"),
    [
        # up → [degraded, fail] moves only to degraded: the degraded probe's reason, not the fail's.
        ("gd", State.DEGRADED, "r0"),
        ("dg", State.DEGRADED, "r1"),
        ("gdg", State.DEGRADED, "r2"),
        ("dd", State.DOWN, "r1"),
    ],
)
def test_a_partial_move_reports_the_reason_of_the_state_it_moves_to(
    results: str, current: State, reason: str
) -> None:
    machine = HealthMachine("svc", "http", rise=3, fall=len(results), state=State.UP)
    moves = [
        machine.observe(ProbeResult(CODE[code], 0.01, f"r{i}"), T0 + timedelta(seconds=i))
        for i, code in enumerate(results)
    ]
    last = moves[-1]
    assert last is not None
    assert (last.current, last.reason, last.result.reason) == (current, reason, reason)


@pytest.mark.parametrize(
    ("stored", "first", "transition"),
    [
        (State.UP, Outcome.OK, None),
        (State.UP, Outcome.FAIL, (State.UP, State.DOWN)),
        (State.DOWN, Outcome.OK, (State.DOWN, State.UP)),
        (State.DEGRADED, Outcome.TIMEOUT, (State.DEGRADED, State.DOWN)),
    ],
)
def test_a_restored_state_is_provisional_until_the_first_result_of_this_run(
    stored: State, first: Outcome, transition: tuple[State, State] | None
) -> None:
    machine = HealthMachine("svc", "http", rise=3, fall=3)
    machine.restore(stored, T0)
    assert machine.state is stored
    assert not machine.confirmed
    moved = machine.observe(ProbeResult(first, 0.01, "now"), T0 + timedelta(days=7))
    assert machine.confirmed
    assert machine.state is first.state
    assert (None if moved is None else (moved.previous, moved.current)) == transition
    # After that, rise/fall apply again.
    again = machine.observe(ProbeResult(Outcome.FAIL, 0.01), T0 + timedelta(days=7, seconds=1))
    assert again is None
