"""Health events as CloudEvents 1.0 (structured JSON mode) and their routing keys.

The body and the routing key are the public contract of DESIGN.md ("Health states and
events"); ``docs/events.md`` documents them for consumers.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sutazai_agent.core.model import State, Transition, format_time

SPEC_VERSION = "1.0"
EVENT_TYPE = "io.sutazai.service.health.changed"
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
APP_ID = "sutazai-agent"
ROUTING_PREFIX = "health"


def routing_key(service: str, state: State) -> str:
    """``health.<service>.<state>``, e.g. ``health.kong.down``."""
    return f"{ROUTING_PREFIX}.{service}.{state.value}"


def source(agent_id: str) -> str:
    return f"{APP_ID}/{agent_id}"


def build_event(
    transition: Transition,
    *,
    agent_id: str,
    sequence: int,
    epoch: str,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The CloudEvent announcing ``transition`` as the service's ``sequence``-th event of
    ``epoch`` (the outbox database's UUID: sequences are ordered within one epoch)."""
    result = transition.result
    return {
        "specversion": SPEC_VERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source(agent_id),
        "type": EVENT_TYPE,
        "subject": transition.service,
        "time": format_time(transition.at),
        "datacontenttype": DATA_CONTENT_TYPE,
        "data": {
            "service": transition.service,
            "kind": transition.kind,
            "previous": transition.previous.value,
            "current": transition.current.value,
            "reason": transition.reason,
            "sequence": sequence,
            "epoch": epoch,
            "agent_id": agent_id,
            "probe": {
                "latency_ms": round(result.latency_s * 1000, 3),
                "detail": result.detail,
            },
        },
    }


def encode(event: dict[str, Any]) -> str:
    """Compact JSON text of an event (UTF-8 when sent)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def decode(body: bytes | str) -> dict[str, Any]:
    """Parse an event body: ``ValueError`` if it is not JSON, ``TypeError`` if not an object."""
    value = json.loads(body)
    if not isinstance(value, dict):
        raise TypeError("an event body must be a JSON object")
    return value
