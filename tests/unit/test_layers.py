"""The import contracts cover the whole package: a new module cannot slip past them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import sutazai_agent

ROOT = Path(sutazai_agent.__file__).parent
PYPROJECT = ROOT.parent / "pyproject.toml"


def contract(name: str) -> dict[str, list[str]]:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (found,) = [c for c in contracts if c["name"] == name]
    return found


def top_level_parts() -> set[str]:
    modules = {p.stem for p in ROOT.glob("*.py")} | {
        p.parent.name for p in ROOT.glob("*/__init__.py")
    }
    return {f"sutazai_agent.{m}" for m in modules - {"__init__", "__main__"}}


def test_every_part_but_the_cli_and_the_root_is_kept_from_importing_the_composition_root() -> None:
    sources = set(contract("nothing but the CLI imports the composition root")["source_modules"])
    assert sources == top_level_parts() - {"sutazai_agent.cli", "sutazai_agent.app"}


def test_every_part_but_main_is_kept_from_importing_the_cli() -> None:
    sources = set(
        contract("only __main__ imports the composition root and the CLI")["source_modules"]
    )
    assert sources == top_level_parts() - {"sutazai_agent.cli"}
