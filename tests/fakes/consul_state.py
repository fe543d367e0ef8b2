"""State and request decoding of the fake Consul agent (``tests/fakes/consul.py``).

Written from Consul's HTTP API documentation (agent/service, agent/check, health, catalog,
status, filtering) and the agent's observable behaviour:

- bodies are decoded like Go's ``encoding/json`` with unknown fields disallowed: field names
  match case-insensitively, an unknown one is ``json: unknown field "X"``, a wrong JSON type
  is ``json: cannot unmarshal <type> into Go struct field <Struct>.<Field> of type <T>``;
- durations are Go duration strings (``"30s"``, ``"1m30s"``) or numbers of nanoseconds;
- a TTL check starts ``critical`` unless registered with ``Status``; re-registering a service
  keeps an existing check's status and output whatever ``Status`` says, and restarts its TTL;
- a TTL not refreshed in time turns the check ``critical`` with output ``TTL expired``, or,
  when the check had an output, ``TTL expired (last output before timeout follows): <it>``
  (Consul's ``CheckTTL.getExpiredOutput``);
- ``DeregisterCriticalServiceAfter`` is raised to the 1 minute floor; the reaper runs every
  ``reap_interval_s`` (Consul: 30 s) and removes a service whose check has been critical for
  longer than that.

Deliberate limits: only TTL checks are modelled (other kinds answer 400 saying so); snake_case
aliases (``check_id``) that the real agent also accepts are rejected; ``filter`` supports
``==``/``!=`` on fields and ``Meta[...]`` plus ``in``/``not in``, joined by ``and``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any

CHECK_STATUSES = ("passing", "warning", "critical")
DEREGISTER_FLOOR_S = 60.0
META_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]+$")

SERVICE_FIELDS = (
    "Kind", "ID", "Name", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "SocketPath",
    "Weights", "Check", "Checks", "Token", "EnableTagOverride", "Proxy", "Connect",
    "Namespace", "Partition", "Locality",
)  # fmt: skip
CHECK_FIELDS = (
    "CheckID", "Name", "Status", "Notes", "ScriptArgs", "HTTP", "Header", "Method", "Body",
    "DisableRedirects", "TCP", "TCPUseTLS", "UDP", "Interval", "AliasNode", "AliasService",
    "DockerContainerID", "Shell", "GRPC", "GRPCUseTLS", "H2PING", "H2PingUseTLS", "OSService",
    "TLSServerName", "TLSSkipVerify", "Timeout", "TTL", "SuccessBeforePassing",
    "FailuresBeforeWarning", "FailuresBeforeCritical", "ProxyHTTP", "ProxyGRPC",
    "DeregisterCriticalServiceAfter", "OutputMaxSize",
)  # fmt: skip
CHECK_UPDATE_FIELDS = ("Status", "Output")
NON_TTL_KINDS = (
    "ScriptArgs", "HTTP", "TCP", "UDP", "DockerContainerID", "GRPC", "H2PING", "OSService",
    "AliasNode", "AliasService",
)  # fmt: skip
_STRING_FIELDS = {"Kind", "ID", "Name", "Address", "CheckID", "Status", "Notes", "Output"}
_GO_TYPES = {"Port": "int", "Tags": "[]string", "Meta": "map[string]string"}


class BadRequestError(Exception):
    """Answered as HTTP 400 with the message as the plain-text body."""


class NotFoundError(Exception):
    """Answered as HTTP 404 with the message as the plain-text body."""


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_struct(raw: Any, struct: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """Go's decoding into ``struct``: case-insensitive names, unknown fields refused."""
    if not isinstance(raw, dict):
        raise BadRequestError(
            f"Request decode failed: json: cannot unmarshal {_json_kind(raw)} "
            f"into Go value of type structs.{struct}"
        )
    by_lower = _by_lower(fields)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = by_lower.get(key.lower())
        if name is None:
            raise BadRequestError(f'Request decode failed: json: unknown field "{key}"')
        if value is None:
            continue
        _check_type(struct, name, value)
        out[name] = value
    return out


@functools.cache
def _by_lower(fields: tuple[str, ...]) -> dict[str, str]:
    """Field names by their lower case (built once per struct, not on every request)."""
    return {name.lower(): name for name in fields}


def _check_type(struct: str, name: str, value: Any) -> None:
    ok = True
    if name in _STRING_FIELDS:
        ok = isinstance(value, str)
        expected = "string"
    elif name == "Port":
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "int"
    elif name == "Tags":
        ok = isinstance(value, list) and all(isinstance(t, str) for t in value)
        expected = _GO_TYPES[name]
    elif name == "Meta":
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        expected = _GO_TYPES[name]
    elif name == "Check":
        ok = isinstance(value, dict)
        expected = "structs.CheckType"
    elif name == "Checks":
        ok = isinstance(value, list)
        expected = "structs.CheckTypes"
    elif name == "EnableTagOverride":
        ok = isinstance(value, bool)
        expected = "bool"
    if not ok:
        raise BadRequestError(
            f"Request decode failed: json: cannot unmarshal {_json_kind(value)} into Go "
            f"struct field {struct}.{name} of type {expected}"
        )


_UNIT_S = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration_s(value: Any) -> float:
    """Seconds of a Go duration string, or of a JSON number of nanoseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise BadRequestError(f"Request decode failed: invalid duration type {_json_kind(value)}")
    text = value
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise BadRequestError(f'Request decode failed: time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not body:
        raise BadRequestError(f'Request decode failed: time: invalid duration "{text}"')
    return sign * total


def validate_meta(meta: dict[str, str]) -> None:
    if len(meta) > 64:
        raise BadRequestError(
            "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
        )
    for key, value in meta.items():
        problem = None
        if not key:
            problem = "Key cannot be blank"
        elif not META_KEY_RE.match(key):
            problem = "Key contains invalid characters"
        elif len(key) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif key.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            problem = "Value is too long (limit: 512 characters)"
        if problem:
            raise BadRequestError(
                f"Invalid Service Meta: Couldn't load metadata pair ('{key}', '{value}'): {problem}"
            )


@dataclass
class FakeService:
    id: str
    name: str
    address: str = ""
    port: int = 0
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    enable_tag_override: bool = False
    create_index: int = 0
    modify_index: int = 0


@dataclass
class FakeCheck:
    check_id: str
    name: str
    service_id: str
    service_name: str
    ttl_s: float
    expires_at: float
    status: str = "critical"
    output: str = ""
    notes: str = ""
    deregister_after_s: float | None = None
    critical_since: float | None = None
    create_index: int = 0
    modify_index: int = 0

    def set_status(self, status: str, output: str, now: float) -> None:
        if status == "critical":
            if self.status != "critical" or self.critical_since is None:
                self.critical_since = now
        else:
            self.critical_since = None
        self.status = status
        self.output = output


def expired_output(last: str) -> str:
    """A TTL check's output once its TTL expired: Consul keeps the last output it was given."""
    prefix = "TTL expired"
    return f"{prefix} (last output before timeout follows): {last}" if last else prefix


def decode_checks(definition: dict[str, Any], service_id: str) -> list[dict[str, Any]]:
    """The service's check definitions, validated, with their IDs filled in."""
    raw_checks: list[Any] = []
    if "Check" in definition:
        raw_checks.append(definition["Check"])
    raw_checks.extend(definition.get("Checks", []))
    checks = []
    for index, raw in enumerate(raw_checks):
        check = decode_struct(raw, "CheckType", CHECK_FIELDS)
        for name in ("TTL", "DeregisterCriticalServiceAfter", "Interval", "Timeout"):
            if name in check:
                check[name] = go_duration_s(check[name])
        status = check.get("Status", "")
        if status and status not in CHECK_STATUSES:
            raise BadRequestError("Status for checks must 'passing', 'warning', 'critical'")
        if any(kind in check for kind in NON_TTL_KINDS):
            raise BadRequestError("fake consul: only TTL checks are modelled")
        if "TTL" not in check:
            raise BadRequestError(
                "Invalid check: Must provide TTL or Script/DockerContainerID/HTTP/TCP/UDP/"
                "H2PING/GRPC/AliasNode/AliasService and Interval"
            )
        if check["TTL"] <= 0:
            raise BadRequestError("Invalid check: TTL must be > 0 for TTL checks")
        if not check.get("CheckID"):
            suffix = f":{index + 1}" if len(raw_checks) > 1 else ""
            check["CheckID"] = f"service:{service_id}{suffix}"
        checks.append(check)
    return checks


def reap_deadline(check: FakeCheck, started_at: float, reap_interval_s: float) -> float | None:
    """When the reaper removes the check's service, if the check stays critical."""
    if check.critical_since is None or check.deregister_after_s is None:
        return None
    due = check.critical_since + check.deregister_after_s
    ticks = math.floor((due - started_at) / reap_interval_s) + 1  # reaps when critical > after
    return started_at + ticks * reap_interval_s


# --- filter expressions (the subset of go-bexpr the tests and the registrar use) -----------
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<op>==|!=)|(?P<br>[\[\]])'
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))"
)


def _lex(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expression.rstrip()):
        match = _TOKEN.match(expression, pos)
        if match is None:
            raise BadRequestError(
                f"Failed to create boolean expression evaluator: 1:{pos + 1}: no match found"
            )
        kind = match.lastgroup or ""
        text = match.group(kind)
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
            kind = "value"
        elif kind == "raw":
            text, kind = text[1:-1], "value"
        tokens.append((kind, text))
        pos = match.end()
    return tokens


Clause = tuple[str, str | None, str, str]  # (field, meta key, op, value)


def parse_filter(expression: str, fields: tuple[str, ...]) -> list[Clause]:
    tokens = _lex(expression)
    clauses: list[Clause] = []
    index = 0

    def fail(detail: str) -> BadRequestError:
        return BadRequestError(f"Failed to create boolean expression evaluator: {detail}")

    def selector() -> tuple[str, str | None]:
        nonlocal index
        if index >= len(tokens) or tokens[index][0] != "word":
            raise fail("expected a selector")
        name = tokens[index][1]
        index += 1
        key = None
        if name.startswith("Meta."):
            name, key = "Meta", name[5:]
        elif index < len(tokens) and tokens[index] == ("br", "["):
            if index + 2 >= len(tokens) or tokens[index + 1][0] != "value":
                raise fail("expected a quoted map key")
            key = tokens[index + 1][1]
            index += 3
        if name not in fields or (name == "Meta") != (key is not None):
            raise fail(f'Selector "{name}" is not valid')
        return name, key

    while True:
        if index < len(tokens) and tokens[index][0] == "value":
            value = tokens[index][1]
            index += 1
            negate = index < len(tokens) and tokens[index] == ("word", "not")
            index += 1 if negate else 0
            if index >= len(tokens) or tokens[index] != ("word", "in"):
                raise fail("expected 'in'")
            index += 1
            name, key = selector()
            clauses.append((name, key, "not in" if negate else "in", value))
        else:
            name, key = selector()
            if index + 1 >= len(tokens) or tokens[index][0] != "op":
                raise fail("expected == or !=")
            op, value_token = tokens[index][1], tokens[index + 1]
            if value_token[0] != "value":
                raise fail("expected a quoted value")
            clauses.append((name, key, op, value_token[1]))
            index += 2
        if index == len(tokens):
            return clauses
        if tokens[index] != ("word", "and"):
            raise fail(f"unsupported token {tokens[index][1]!r} (the fake supports 'and' only)")
        index += 1


def matches(clauses: list[Clause], record: dict[str, Any]) -> bool:
    for name, key, op, value in clauses:
        actual = record.get(name)
        if key is not None:
            actual = (actual or {}).get(key)
        if op == "in" and not (isinstance(actual, list | str) and value in actual):
            return False
        if op == "not in" and isinstance(actual, list | str) and value in actual:
            return False
        if op == "==" and str(actual if actual is not None else "") != value:
            return False
        if op == "!=" and str(actual if actual is not None else "") == value:
            return False
    return True
