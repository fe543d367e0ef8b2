"""The CloudEvent body and routing key: the contract event consumers rely on."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import pytest

from sutazai_agent.core.model import Outcome, ProbeResult, State, Transition, format_time
from sutazai_agent.events import cloudevents as events

# CloudEvents 1.0 (spec.md "Context Attributes" and json-format.md), as a JSON schema.
CLOUDEVENT_SCHEMA = {
    "type": "object",
    "required": ["specversion", "id", "source", "type"],
    "propertyNames": {"pattern": "^[a-z0-9]{1,20}$"},
    "properties": {
        "specversion": {"const": "1.0"},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1, "format": "uri-reference"},
        "type": {"type": "string", "minLength": 1},
        "subject": {"type": "string", "minLength": 1},
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"type": "string", "minLength": 1},
    },
}
DATA_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "service", "kind", "previous", "current", "reason", "sequence", "epoch", "agent_id",
        "probe",
    ],
    "properties": {
        "service": {"type": "string"},
        "kind": {"type": "string"},
        "previous": {"enum": ["unknown", "up", "degraded", "down"]},
        "current": {"enum": ["up", "degraded", "down"]},
        "reason": {"type": "string"},
        "sequence": {"type": "integer", "minimum": 1},
        "epoch": {"type": "string", "format": "uuid"},
        "agent_id": {"type": "string"},
        "probe": {
            "type": "object",
            "additionalProperties": False,
            "required": ["latency_ms", "detail"],
            "properties": {"latency_ms": {"type": "number"}, "detail": {"type": "string"}},
        },
    },
}  # fmt: skip
EPOCH = "0b4c8f4e-2a55-4d8e-9f4c-2f5d3c1e7a10"
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def transition(
    at: datetime = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC),
    previous: State = State.UP,
    current: State = State.DOWN,
) -> Transition:
    result = ProbeResult(Outcome.FAIL, 0.0031, "proxy: connection refused", "GET /: refused")
    return Transition("kong", "kong", previous, current, "proxy: connection refused", at, result)


def test_event_carries_every_field_of_the_contract() -> None:
    event = events.build_event(transition(), agent_id="node-1", sequence=7, epoch=EPOCH)

    assert list(event) == [
        "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data",
    ]  # fmt: skip
    assert event["specversion"] == "1.0"
    assert uuid.UUID(event["id"]).version == 4
    assert str(uuid.UUID(event["id"])) == event["id"]
    assert event["source"] == "sutazai-agent/node-1"
    assert event["type"] == "io.sutazai.service.health.changed"
    assert event["subject"] == "kong"
    assert event["time"] == "2026-11-26T10:00:00.123Z"
    assert event["datacontenttype"] == "application/json"
    assert event["data"] == {
        "service": "kong",
        "kind": "kong",
        "previous": "up",
        "current": "down",
        "reason": "proxy: connection refused",
        "sequence": 7,
        "epoch": EPOCH,
        "agent_id": "node-1",
        "probe": {"latency_ms": 3.1, "detail": "GET /: refused"},
    }


def test_event_validates_against_cloudevents_and_data_schemas() -> None:
    event = events.build_event(
        transition(previous=State.UNKNOWN, current=State.UP),
        agent_id="n",
        sequence=1,
        epoch=EPOCH,
    )
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.validate(event, CLOUDEVENT_SCHEMA, format_checker=checker)
    jsonschema.validate(event["data"], DATA_SCHEMA, format_checker=checker)


def test_every_event_has_a_new_id_unless_one_is_given() -> None:
    first = events.build_event(transition(), agent_id="n", sequence=1, epoch=EPOCH)
    second = events.build_event(transition(), agent_id="n", sequence=1, epoch=EPOCH)
    assert first["id"] != second["id"]
    given = events.build_event(transition(), agent_id="n", sequence=1, epoch=EPOCH, event_id="abc")
    assert given["id"] == "abc"


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05.000Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC), "2026-01-02T03:04:05.999Z"),
        # Another offset is converted to UTC, not just relabelled.
        (
            datetime(2026, 1, 2, 5, 4, 5, 7000, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-02T03:04:05.007Z",
        ),
        # Naive datetimes are taken as UTC.
        (datetime(2026, 1, 2, 3, 4, 5, 42000), "2026-01-02T03:04:05.042Z"),
    ],
)
def test_time_is_rfc3339_utc_with_milliseconds(at: datetime, expected: str) -> None:
    formatted = format_time(at)
    assert formatted == expected
    assert TIME_RE.match(formatted)
    event = events.build_event(transition(at=at), agent_id="n", sequence=1, epoch=EPOCH)
    assert event["time"] == expected


@pytest.mark.parametrize("state", [State.UP, State.DEGRADED, State.DOWN])
def test_routing_key_is_health_service_state(state: State) -> None:
    assert events.routing_key("kong", state) == f"health.kong.{state.value}"


def test_encoded_body_is_compact_json_that_decodes_to_the_same_event() -> None:
    event = events.build_event(transition(), agent_id="node-1", sequence=3, epoch=EPOCH)
    text = events.encode(event)
    assert "\n" not in text
    assert json.loads(text) == event
    assert events.decode(text.encode()) == event


def test_decode_rejects_non_objects() -> None:
    with pytest.raises(TypeError):
        events.decode(b"[1, 2]")
    with pytest.raises(ValueError, match="Expecting value"):
        events.decode(b"not json")
