"""Rendezvous hashing: stable, balanced, and a join or leave moves only what it must."""

from __future__ import annotations

import math

import pytest

from sutazai_agent.core.rendezvous import assign, moved, owner, weight

SERVICES = [f"svc-{i}" for i in range(30)]


def test_weight_is_stable_across_runs() -> None:
    # A fixed value: the hash must not depend on PYTHONHASHSEED or the host.
    assert weight("kong", "node-1") == 0x8BA550B23E7393C3
    assert weight("kong", "node-1") != weight("kong", "node-2")
    assert weight("kong", "node-1") != weight("node-1", "kong")


@pytest.mark.parametrize(
    ("service", "members", "expected"),
    [
        ("kong", [], None),
        ("kong", ["only"], "only"),
        ("kong", ["a", "b", "c"], owner("kong", ["c", "b", "a"])),
    ],
)
def test_owner_table(service: str, members: list[str], expected: str | None) -> None:
    assert owner(service, members) == expected


def test_owner_does_not_depend_on_member_order() -> None:
    for service in SERVICES:
        assert owner(service, ["a", "b", "c"]) == owner(service, ["c", "a", "b"])


@pytest.mark.parametrize("members", [["a", "b"], ["a", "b", "c"], ["n1", "n2", "n3", "n4"]])
def test_split_is_roughly_even(members: list[str]) -> None:
    services = [f"svc-{i}" for i in range(3000)]
    counts = dict.fromkeys(members, 0)
    for who in assign(services, members).values():
        assert who is not None
        counts[who] += 1
    fair = len(services) / len(members)
    assert all(abs(n - fair) < 0.1 * fair for n in counts.values()), counts


def test_a_join_moves_only_services_to_the_newcomer() -> None:
    before = assign(SERVICES, ["a", "b", "c"])
    after = assign(SERVICES, ["a", "b", "c", "d"])
    changed = moved(before, after)
    assert changed, "a fourth member takes some services"
    assert all(after[s] == "d" for s in changed)
    assert len(changed) <= math.ceil(len(SERVICES) / 4) + 3


def test_a_leave_moves_only_the_leavers_services() -> None:
    before = assign(SERVICES, ["a", "b", "c"])
    after = assign(SERVICES, ["a", "c"])
    assert moved(before, after) == {s for s, who in before.items() if who == "b"}
