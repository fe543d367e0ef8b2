"""``sutazai-agent check`` as a real process probing the real Redis and PostgreSQL on
loopback and a gRPC port nothing listens on: each kind's verdict, no password anywhere."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e


def test_check_probes_the_data_layer_kinds(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    services = [
        {"name": "cache", "kind": "redis", "url": "redis://127.0.0.1:6379/0"},
        {"name": "db", "kind": "postgres", "dsn": "postgresql://postgres@127.0.0.1:5432/postgres",
         "primary": True},
        {"name": "ghost", "kind": "postgres",
         "dsn": "postgresql://nobody:e2e-pw-55@127.0.0.1:5432/postgres"},
        {"name": "models", "kind": "grpc", "host": "127.0.0.1", "port": closed_port},
    ]  # fmt: skip
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"timeout_s": 3, "services": services}))

    done = subprocess.run(
        [sys.executable, "-m", "sutazai_agent", "--config", str(path), "check", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    verdicts = {row["name"]: (row["state"], row["reason"]) for row in report["services"]}
    assert verdicts == {
        "cache": ("up", ""),
        "db": ("up", ""),
        "ghost": ("down", 'role "nobody" does not exist'),
        "models": ("down", "connection refused"),
    }
    assert "e2e-pw-55" not in done.stdout + done.stderr
