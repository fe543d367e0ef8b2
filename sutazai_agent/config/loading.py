"""Loading the configuration: YAML file, then environment, then validation.

Every problem becomes a ``ConfigError`` whose message names the field, one line per problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sutazai_agent.config.schema import CONFIG_ENV, AgentConfig
from sutazai_agent.config.services import KINDS

SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML has it: 1,000 services parse in 20 ms instead of 160 ms,
which a reload does while the agent keeps probing."""


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in KINDS:
            pass  # the branch of the services union, not a field
        elif not part.startswith(("function-", "tagged-union")):
            out += f".{part}" if out else part
        previous = part
    return out


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the field."""
    lines = []
    for item in error.errors(include_url=False):
        field = _format_loc(tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in {"union_tag_invalid", "union_tag_not_found"}:
            field = f"{field}.kind"
            message = f"must be one of {', '.join(KINDS)}"
        elif not item["loc"]:
            # Cross-field checks carry their field in the message: "timeout_s: must be ...".
            field, _, message = message.partition(": ")
        lines.append(f"{field}: {message}")
    return "\n".join(lines)


def load(path: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Read the YAML file (if any), apply env overrides, validate. Raises ``ConfigError``."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.load(raw, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
        data = loaded
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
