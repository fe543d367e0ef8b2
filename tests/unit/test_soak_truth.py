"""The soak's truth invariants (bench/soak_truth.py): what counts as a violation and what a
disruption excuses."""

from __future__ import annotations

from bench.soak_truth import BLOCK_S, ConsulWatch, Delivery, Windows, deliveries

AT = "2026-11-26T10:00:00.000Z"
T = 1_795_687_200.0  # AT as seconds since the epoch


def probe(name: str, result: str | None, at: str = AT) -> dict[str, object]:
    return {"name": name, "last_probe": None if result is None else {"result": result, "at": at}}


def test_wall_reads_event_times() -> None:
    assert Delivery("s", "e", 1, "i", T, T).event_time == T
    from bench.soak_truth import wall

    assert wall(AT) == T


def test_passing_while_failing_counts_only_past_the_bound_and_outside_consul_outages() -> None:
    windows = Windows()
    watch = ConsulWatch(bound_s=6.5, windows=windows)
    watch.sample([probe("web", "fail"), probe("db", "ok")], {"web", "db"}, T + 5)
    assert watch.worst == {}  # within the bound
    assert watch.longest == ("web", 5.0)  # but the longest disagreement is kept
    watch.sample([probe("web", "timeout", "2026-11-26T10:00:02.000Z")], {"web"}, T + 8)
    assert watch.worst == {"web": 8.0}  # the streak started with the first failure
    watch.sample([probe("web", "ok")], {"web"}, T + 9)
    watch.sample([probe("web", "fail", "2026-11-26T10:00:09.000Z")], set(), T + 20)
    assert watch.worst == {"web": 8.0}  # deregistered: fine
    watch.new_run()
    windows.begin("consul_down", T + 30)
    windows.end("consul_down", T + 40)
    watch.sample([probe("db", "fail", "2026-11-26T10:00:31.000Z")], {"db"}, T + 45)
    assert "db" not in watch.worst  # Consul could not be told
    watch.sample([probe("db", "fail", "2026-11-26T10:00:31.000Z")], {"db"}, T + 80)
    assert watch.worst["db"] == 10.0  # counted from when Consul could be told again
    assert watch.longest == ("db", 10.0)


def deliver(service: str, sequence: int, event_id: str, at: float, got: float) -> Delivery:
    return Delivery(service, "e1", sequence, event_id, at, got)


def test_deliveries_count_lost_resent_and_blocked_events() -> None:
    windows = Windows()
    windows.begin("broker_cut", T + 100)
    windows.end("broker_cut", T + 110)
    got = [
        deliver("a", 1, "a1", T, T + 1),
        deliver("a", 1, "a1", T, T + 3),  # again with nothing between: re-sent
        deliver("b", 1, "b1", T + 99, T + 99.5),
        deliver("b", 1, "b1", T + 99, T + 111),  # again across the broker cut: fine
        deliver("c", 1, "c1", T, T + BLOCK_S + 5),  # waited behind someone
        deliver("d", 1, "d1", T + 105, T + 130),  # waited for the broker: fine
        deliver("k", 1, "k1", T, T + 200),  # the rejected service waits
        deliver("k", 1, "k1", T, T + 201),
    ]
    recorded = {"e1": {"a": 2, "b": 1, "c": 1, "d": 1, "k": 1}, "e0": {"a": 3}}
    abandoned = {"e0": {"a": {3}}}
    result = deliveries(got, recorded, abandoned, windows, rejected="k")
    assert result["resent_without_cause"] == 1
    assert result["rejected_copies"] == 1
    assert result["duplicates"] == 3
    assert result["blocked"] == 1
    assert result["blocked_examples"] == [("c", BLOCK_S + 5)]
    assert result["lost"] == 1 + 2  # a#2 of e1; a#1 and a#2 of e0 (a#3 was abandoned)
    assert result["abandoned_by_wipe"] == 1
    assert result["epochs"] == 2
