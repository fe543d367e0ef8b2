"""Where the configuration comes from, checked before the schema sees it.

- The YAML file: a key given twice in one mapping is an error (YAML loaders keep the last
  one silently, so a second ``services:`` block would replace the first).
- ``SUTAZAI_AGENT_*`` variables: each must name a field (``SUTAZAI_AGENT_CONSUL__URL``); a
  misspelt one is an error suggesting the right spelling, and a list or object field's value
  must be JSON. pydantic-settings would ignore the first and print a traceback for the second.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import yaml
from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from pydantic.fields import FieldInfo


class SourceError(Exception):
    """The file or the environment cannot be used; the message names the key or variable."""


# --- the YAML file ------------------------------------------------------------------------
class _DuplicateKeyError(yaml.YAMLError):
    pass


SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML has it: 1,000 services parse in 20 ms instead of 160 ms,
which a reload does while the agent keeps probing."""


class _UniqueKeyLoader(SAFE_LOADER):  # type: ignore[valid-type,misc]
    """The safe loader, rejecting a key repeated in one mapping (the parser stays libyaml's;
    only the mapping construction, which is Python in both, is extended)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" merges; overriding a merged key is the point of it
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:
                continue  # an unhashable key: the base loader reports it
            if first != line:
                raise _DuplicateKeyError(
                    f"duplicate key {key!r} on line {line} (first on line {first})"
                )
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The document in ``path``. Raises ``SourceError`` naming the file (and the line)."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        return yaml.load(raw, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise SourceError(f"config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SourceError(f"config file {path}: invalid YAML: {exc}") from None


# --- the environment ----------------------------------------------------------------------
def _model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _json_kind(annotation: Any) -> str | None:
    """``"list"`` or ``"object"`` when the field's env value is JSON, else ``None``."""
    for candidate in (annotation, *get_args(annotation)):
        origin = get_origin(candidate) or candidate
        if origin in (list, tuple, set, frozenset):
            return "list"
        if origin is dict or _model(candidate) is not None:
            return "object"
    return None


def _fields(model: type[BaseModel], prefix: str, path: str) -> Iterator[tuple[str, str, Any]]:
    """(variable, dotted field, annotation) for every field settable from the environment."""
    for name, info in model.model_fields.items():
        field: FieldInfo = info
        variable, dotted = prefix + name.upper(), f"{path}.{name}" if path else name
        yield variable, dotted, field.annotation
        nested = _model(field.annotation)
        if nested is not None:
            yield from _fields(nested, variable + "__", dotted)


def check_environment(
    environ: Mapping[str, str],
    model: type[BaseModel],
    prefix: str,
    allowed: frozenset[str] = frozenset(),
) -> None:
    """Every ``prefix`` variable names a field and a list or object field's value is JSON.

    ``allowed`` are variables with the prefix that are not fields (``SUTAZAI_AGENT_CONFIG``).
    Raises ``SourceError`` naming the variable (and the field).
    """
    known = {
        variable: (dotted, annotation)
        for variable, dotted, annotation in _fields(model, prefix, "")
    }
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(prefix) or upper in allowed:
            continue
        if upper not in known:
            # Compared without the prefix, which every name shares and would make all close.
            names = {name.removeprefix(prefix): name for name in known}
            close = difflib.get_close_matches(upper.removeprefix(prefix), names, 1, 0.75)
            hint = f"; did you mean {names[close[0]]}?" if close else ""
            raise SourceError(f"{variable}: no such setting{hint}")
        dotted, annotation = known[upper]
        kind = _json_kind(annotation)
        if kind is None:
            continue
        try:
            json.loads(environ[variable])
        except ValueError as exc:
            why = getattr(exc, "msg", str(exc))
            raise SourceError(f"{dotted}: {variable} must be a JSON {kind} ({why})") from None
