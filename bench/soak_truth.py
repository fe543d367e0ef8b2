"""The soak's truth invariants: what Consul and the consumer were told, against what happened.

Pure bookkeeping (no I/O), fed by ``bench/soak.py``, unit-tested in tests/unit/test_soak_truth:

- ``Windows``: when each kind of disruption (broker cut, agent down, Consul down, disk full)
  was in effect, on the wall clock (event times are wall-clock RFC 3339);
- ``ConsulWatch``: Consul must never show passing a service whose last probe of this run
  failed for longer than fall * interval + timeout + 1 s (Consul outages excused: the agent
  cannot write meanwhile, and retries with a backoff of at most ``CONSUL_BACKOFF_CAP_S``);
- ``deliveries``: per (epoch, service) delivery bookkeeping: lost, out of order, an event id
  delivered twice without a broker cut or an agent stop between, and events of one service
  that waited (``BLOCK_S``) without any disruption to explain it: behind another's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CONSUL_BACKOFF_CAP_S = 30.0
"""The registrar's longest backoff: after Consul returns it may wait this long to write."""
BLOCK_S = 15.0
"""An event that took longer than this from its transition to the consumer, with nothing
disrupted meanwhile, waited behind another service's events."""
DUPLICATE_SLACK_S = 2.0
"""A broker cut or agent stop this long before an event's first delivery can still have
lost its confirm (the confirm was in flight)."""
RESENDING = ("broker_cut", "agent_down")
"""Disruptions across which an event may legitimately be delivered again."""
DELAYING = ("broker_cut", "agent_down", "disk_full")
"""Disruptions that legitimately delay events."""


def wall(rfc3339: str) -> float:
    """Seconds since the epoch of an event's ``time`` (``...Z``)."""
    return datetime.fromisoformat(rfc3339).timestamp()


@dataclass
class Windows:
    """Disruption windows on the wall clock; an open window has ``end`` None."""

    spans: dict[str, list[list[float | None]]] = field(default_factory=lambda: defaultdict(list))

    def begin(self, kind: str, at: float) -> None:
        self.spans[kind].append([at, None])

    def end(self, kind: str, at: float) -> None:
        for span in reversed(self.spans[kind]):
            if span[1] is None:
                span[1] = at
                return

    def overlaps(self, kinds: Iterable[str], start: float, stop: float, grace_s: float = 0) -> bool:
        """Was a disruption of ``kinds`` in effect at some moment of [start, stop]?
        ``grace_s`` extends each window past its end (recovery takes a moment)."""
        for kind in kinds:
            for begin, end in self.spans.get(kind, []):
                assert begin is not None
                until = float("inf") if end is None else end + grace_s
                if begin <= stop and until >= start:
                    return True
        return False

    def clear_from(self, kind: str, start: float, now: float, grace_s: float) -> float | None:
        """When, from ``start`` on, ``kind`` stopped being in effect (each window extended by
        ``grace_s``); None if it still is at ``now``."""
        for begin, end in sorted(self.spans.get(kind, []), key=lambda span: span[0] or 0.0):
            assert begin is not None
            if begin > now:
                break
            if end is None:
                return None
            if end + grace_s >= start:
                start = max(start, end + grace_s)
        return start if start <= now else None

    def began_within(self, kinds: Iterable[str], start: float, stop: float) -> bool:
        """Did a disruption of ``kinds`` begin within [start, stop]?"""
        return any(
            begin is not None and start <= begin <= stop
            for kind in kinds
            for begin, _ in self.spans.get(kind, [])
        )

    def count(self) -> dict[str, int]:
        return {kind: len(spans) for kind, spans in sorted(self.spans.items()) if spans}


@dataclass
class ConsulWatch:
    """Samples of (agent /status, Consul passing set); violations of the passing bound."""

    bound_s: float
    windows: Windows
    failing_since: dict[str, float] = field(default_factory=dict)
    worst: dict[str, float] = field(default_factory=dict)
    """Per service, the longest it was seen passing while failing (unexcused)."""
    longest: tuple[str, float] | None = None
    """The longest Consul-vs-probe disagreement seen (unexcused), within the bound or not."""
    samples: int = 0

    def new_run(self) -> None:
        """The agent (re)started: only probes of the new run count."""
        self.failing_since.clear()

    def sample(self, services: Iterable[Mapping[str, Any]], passing: set[str], now: float) -> None:
        self.samples += 1
        for service in services:
            name, last = service["name"], service.get("last_probe")
            if last is None:
                self.failing_since.pop(name, None)
                continue
            if last["result"] in ("fail", "timeout"):
                self.failing_since.setdefault(name, wall(last["at"]))
            else:
                self.failing_since.pop(name, None)
        for name, since in self.failing_since.items():
            if name not in passing:
                continue
            start = self.windows.clear_from("consul_down", since, now, CONSUL_BACKOFF_CAP_S)
            if start is None:
                continue
            if self.longest is None or now - start > self.longest[1]:
                self.longest = (name, now - start)
            if now - start > self.bound_s:
                self.worst[name] = max(self.worst.get(name, 0.0), now - start)


@dataclass(frozen=True)
class Delivery:
    service: str
    epoch: str
    sequence: int
    event_id: str
    event_time: float
    received: float


def deliveries(
    received: Iterable[Delivery],
    recorded: Mapping[str, Mapping[str, int]],
    abandoned: Mapping[str, Mapping[str, set[int]]],
    windows: Windows,
    rejected: str | None,
) -> dict[str, Any]:
    """Check what the consumer got against what each epoch's outbox recorded.

    ``recorded[epoch][service]`` is the service's last sequence in that epoch;
    ``abandoned[epoch][service]`` the sequences still in the outbox when its ``state_dir``
    was wiped (lost on purpose). ``rejected`` is the service whose routing key had a
    never-consumed ``reject-publish`` queue: each retry of its rejected event also reaches
    the consumer, so its copies are counted apart and its waiting is expected.
    """
    seen: dict[tuple[str, str], dict[int, Delivery]] = defaultdict(dict)
    high: dict[tuple[str, str], int] = defaultdict(int)
    out_of_order = id_conflicts = duplicates = resent = rejected_copies = 0
    blocked: list[tuple[str, float]] = []
    for d in received:
        key = (d.epoch, d.service)
        first = seen[key].get(d.sequence)
        if first is not None:
            duplicates += 1
            if first.event_id != d.event_id:
                id_conflicts += 1
            elif d.service == rejected:
                rejected_copies += 1
            elif not windows.began_within(
                RESENDING, first.received - DUPLICATE_SLACK_S, d.received
            ):
                resent += 1
            continue
        if d.sequence < high[key]:
            out_of_order += 1
        high[key] = max(high[key], d.sequence)
        seen[key][d.sequence] = d
        waited = d.received - d.event_time
        if (
            d.service != rejected
            and waited > BLOCK_S
            and not windows.overlaps(DELAYING, d.event_time - 1, d.received)
        ):
            blocked.append((d.service, round(waited, 1)))
    lost = not_recorded = gave_up = 0
    for epoch, services in recorded.items():
        for service, last in services.items():
            dropped = abandoned.get(epoch, {}).get(service, set())
            got = seen[(epoch, service)]
            gave_up += len(dropped)
            lost += sum(1 for s in range(1, last + 1) if s not in got and s not in dropped)
            not_recorded += sum(1 for s in got if s > last)
    not_recorded += sum(
        len(got) for (epoch, service), got in seen.items() if service not in recorded.get(epoch, {})
    )
    return {
        "recorded": sum(sum(s.values()) for s in recorded.values()),
        "epochs": len(recorded),
        "delivered_unique": sum(len(got) for got in seen.values()),
        "duplicates": duplicates,
        "resent_without_cause": resent,
        "rejected_copies": rejected_copies,
        "lost": lost,
        "abandoned_by_wipe": gave_up,
        "out_of_order": out_of_order,
        "id_conflicts": id_conflicts,
        "not_recorded": not_recorded,
        "blocked": len(blocked),
        "blocked_examples": sorted(blocked, key=lambda b: -b[1])[:5],
    }
