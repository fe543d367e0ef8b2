"""The registrar's pass log: the changes of one pass, logged at its end, one line each or
one summary line for many (after Consul loses its state, 300 re-registrations are one line)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def pass_summary(items: Sequence[Mapping[str, Any]], limit: int) -> dict[str, Any]:
    """One log line for many changes of one kind: the count, the first ids, the common
    values of ``status``/``reason``/``action`` (a sorted list when they differ)."""
    summary: dict[str, Any] = {
        "count": len(items),
        "service_ids": [f["service_id"] for f in items[:limit]],
    }
    for key in ("status", "reason", "action"):
        values = sorted({str(f[key]) for f in items if key in f})
        if values:
            summary[key] = values[0] if len(values) == 1 else values
    return summary


class PassLog:
    """The changes of one registrar pass, logged at its end: one line each, or, past
    ``limit`` changes of one kind, one summary line (``pass_summary``) with each at debug."""

    def __init__(self, limit: int, warnings: frozenset[str]) -> None:
        self.limit = limit
        self.warnings = warnings
        self._notes: dict[str, list[dict[str, Any]]] = {}

    def note(self, event: str, fields: dict[str, Any]) -> None:
        self._notes.setdefault(event, []).append(fields)

    def drain(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The ``(level, event, fields)`` lines to log, and forget them."""
        notes, self._notes = self._notes, {}
        lines: list[tuple[str, str, dict[str, Any]]] = []
        for event, items in notes.items():
            level = "warning" if event in self.warnings else "info"
            if len(items) <= self.limit:
                lines.extend((level, event, fields) for fields in items)
                continue
            lines.extend(("debug", event, fields) for fields in items)
            lines.append((level, event, pass_summary(items, self.limit)))
        return lines
