"""Probe kinds whose client library is an optional extra, and the check that it is installed.

A configured kind whose extra is missing is a configuration error naming the extra (exit 2),
never an ``ImportError`` at the first probe.
"""

from __future__ import annotations

import importlib

EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "redis": ("redis", ("redis", "redis.asyncio")),
    "postgres": ("postgres", ("asyncpg",)),
    "grpc": ("grpc", ("grpc", "grpc.aio", "grpc_health", "grpc_health.v1.health_pb2")),
}
"""kind → (the extra that installs its client library, the modules the probe imports)."""


def missing_extra(kind: str) -> str | None:
    """Why ``kind`` cannot be probed here, or ``None`` when its client library imports."""
    if kind not in EXTRAS:
        return None
    extra, modules = EXTRAS[kind]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            install = f"pip install '.[{extra}]' in the agent's source directory"
            return f"the {kind} probe needs the {extra!r} extra: {install} (the image has it)"
    return None
