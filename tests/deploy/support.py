"""What the deploy tests share: file locations, Compose interpolation, Dockerfile parsing.

Docker itself is not available where these tests run, so the few pieces of Docker and Compose
behaviour the tests rely on are reimplemented here, narrowly, from their specifications:
variable interpolation (Compose Specification, "Interpolation"), `.dockerignore` matching
(Docker docs, ".dockerignore file") and Dockerfile line continuation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
AGENT_CONFIG = DEPLOY / "sutazai-agent.yaml"
KONG_FILE = DEPLOY / "kong" / "kong.yml"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

AGENT = "sutazai-agent"
STATUS_KEY_MARKER = "__SUTAZAI_STATUS_API_KEY__"


class InterpolationError(Exception):
    """A `${VAR:?message}` whose variable is missing, as `docker compose` reports it."""


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^{}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose variable interpolation: $$, $VAR, ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:?e} ..."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset_or_empty = value is None or value == ""
        if op == ":-":
            return arg if unset_or_empty else str(value)
        if op == "-":
            return arg if value is None else value
        if op in {":?", "?"}:
            if (op == ":?" and unset_or_empty) or value is None:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        if op == ":+":
            return "" if unset_or_empty else arg
        if op == "+":
            return "" if value is None else arg
        return value or ""

    return _VAR.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def read_dotenv(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env file (the subset of the format .env.example uses)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        values[key] = value
    return values


def raw_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with deploy/.env = example."""
    if env is None:
        env = read_dotenv(ENV_EXAMPLE)
    data: dict[str, Any] = interpolate_tree(raw_compose(), env)
    return data


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, list or mapping form, as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


@dataclass(frozen=True)
class PortMapping:
    host_ip: str  # "" = every interface
    published: int
    target: int
    protocol: str


def ports(service: Mapping[str, Any]) -> list[PortMapping]:
    """Short-syntax port mappings ([HOST_IP:]PUBLISHED:TARGET[/PROTO]) of a service."""
    mappings = []
    for spec in service.get("ports", []):
        text, _, protocol = str(spec).partition("/")
        parts = text.rsplit(":", 2)
        if len(parts) != 3:
            parts = ["", *parts] if len(parts) == 2 else ["", "", *parts]
        host_ip, published, target = parts
        mappings.append(PortMapping(host_ip, int(published or 0), int(target), protocol or "tcp"))
    return mappings


def duration_s(text: str) -> float:
    """A Compose duration (`1m30s`, `20s`, `500ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined; comments and the syntax line dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    instructions = []
    stage = -1
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(args.split()), stage))
    return instructions


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction (CMD, ENTRYPOINT, HEALTHCHECK ... CMD)."""
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(item) for item in value]


# --- .dockerignore ------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, patterns cleaned as Docker cleans them."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def in_build_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            included = negated
    return included


def build_context_files() -> Iterator[str]:
    """Every file of the work tree that `docker build .` would send to the builder."""
    rules = dockerignore_rules()
    for directory, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(directory).relative_to(ROOT).as_posix()
        dirnames[:] = [d for d in dirnames if d != ".git"]  # large, and excluded by '*'
        for name in filenames:
            relative = name if rel_dir == "." else f"{rel_dir}/{name}"
            if in_build_context(relative, rules):
                yield relative


# --- processes ------------------------------------------------------------------------------


def run(
    args: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
    timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        args, cwd=cwd, env=None if env is None else dict(env), capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"$ {' '.join(map(str, result.args))}\nexit {result.returncode}\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any SUTAZAI_AGENT_* override and without proxies for 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUTAZAI_AGENT_")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env
