"""Loading the configuration: YAML file, then environment, then validation.

Every problem becomes a ``ConfigError`` whose message names the field, one line per problem.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from sutazai_agent.config.schema import CONFIG_ENV, ENV_PREFIX, NON_FIELD_ENV, AgentConfig
from sutazai_agent.config.services import KINDS
from sutazai_agent.config.sources import SourceError, check_environment, read_yaml


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


_NAMED_MESSAGE = re.compile(r"([a-z_]+): (.*)", re.DOTALL)


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
        elif field.endswith("]") and (named := _NAMED_MESSAGE.match(message)):
            # ... and so do a service's: "services[0]" + "body_regex: ...".
            field, message = f"{field}.{named[1]}", named[2]
        lines.append(f"{field}: {message}")
    return "\n".join(lines)


def load(path: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Read the YAML file (if any), apply env overrides, validate. Raises ``ConfigError``."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    try:
        check_environment(os.environ, AgentConfig, ENV_PREFIX, NON_FIELD_ENV)
        if path is not None:
            loaded = read_yaml(path)
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path}: the top level must be a mapping")
            data = loaded
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    except SettingsError as exc:  # a value check_environment did not foresee
        raise ConfigError(f"environment: {exc}") from None
