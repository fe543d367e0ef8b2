"""Loading the configuration: YAML file, then environment, then validation.

Every problem becomes a ``ConfigError`` whose message names the field, one line per problem.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from sutazai_agent.config.schema import CONFIG_ENV, ENV_PREFIX, NON_FIELD_ENV, AgentConfig
from sutazai_agent.config.services import KINDS, ServiceConfig
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


def _kind_models() -> dict[str, type[BaseModel]]:
    union = get_args(ServiceConfig)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in get_args(union):
        kind = get_args(model.model_fields["kind"].annotation)[0]
        models[kind] = model
    return models


SERVICE_MODELS = _kind_models()
"""kind → the model of a service of that kind."""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds (``X``, ``X | None``), else ``None``."""
    for candidate in (annotation, *get_args(annotation)):
        origin = get_origin(candidate) or candidate
        if isinstance(origin, type) and issubclass(origin, BaseModel):
            return origin
    return None


def _keys_at(loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys allowed beside ``loc``'s last one (its model's fields), if known."""
    model: type[BaseModel] | None = AgentConfig
    previous: int | str | None = None
    for part in loc[:-1]:
        if isinstance(part, int):
            pass
        elif isinstance(previous, int) and part in SERVICE_MODELS:
            model = SERVICE_MODELS[part]
        elif model is not None and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation)
        else:
            return None
        previous = part
    return None if model is None else list(model.model_fields)


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """ "; did you mean 'interval_s'?" for a misspelt key, when one is close."""
    keys = _keys_at(loc)
    if not keys or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], keys, 1, 0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _variable(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The ``SUTAZAI_AGENT_*`` variable that set the field at ``loc`` (or the list or
    object holding it), if one is set: the environment overrides the file."""
    names = [part for part in loc if isinstance(part, str)]
    for end in range(len(names), 0, -1):
        variable = ENV_PREFIX + "__".join(names[:end]).upper()
        if variable in environ:
            return variable
    return None


def describe(error: ValidationError, environ: Mapping[str, str] | None = None) -> str:
    """One line per problem, each naming the field (and the variable that set it)."""
    environ = os.environ if environ is None else environ
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        field = _format_loc(loc)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"no such setting{_suggestion(loc)}"
        if loc and (variable := _variable(loc, environ)) is not None:
            message = f"{message} (set by {variable})"
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
