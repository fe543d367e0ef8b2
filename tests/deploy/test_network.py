"""deploy/up and the seed's `sutazai-network`, against a real Docker engine.

The stack itself cannot come up here (its images are on Docker Hub, out of reach, and there is
no Compose v2 plugin), so `docker compose` is replaced by a recorder on PATH: every other
`docker` command of the script reaches the test's own dockerd. The recorder notes the
arguments and which `sutazai-network` existed at the moment compose was called.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.dockerd import Dockerd
from tests.deploy.support import COMPOSE_FILE, DEPLOY, describe

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

NETWORK = "sutazai-network"
UP = DEPLOY / "up"


class Stack:
    """deploy/up with `docker compose` recorded and everything else sent to the dockerd."""

    def __init__(self, dockerd: Dockerd, tmp: Path) -> None:
        self.dockerd = dockerd
        self.record = tmp / "compose-calls.jsonl"
        shim = tmp / "bin"
        shim.mkdir()
        real = shlex.quote(dockerd.cli)
        (shim / "docker").write_text(
            "#!/bin/sh\n"
            'if [ "${1:-}" = compose ]; then\n'
            f"  id=$({real} network inspect -f '{{{{.Id}}}}' {NETWORK} 2>/dev/null || true)\n"
            f'  python3 -c \'import json, sys; print(json.dumps({{"args": sys.argv[2:], '
            f'"network": sys.argv[1]}}))\' "$id" "$@" >> {shlex.quote(str(self.record))}\n'
            "  exit 0\n"
            "fi\n"
            f'exec {real} "$@"\n',
            encoding="utf-8",
        )
        (shim / "docker").chmod(0o755)
        self.env = {**dockerd.env, "PATH": f"{shim}:{os.environ['PATH']}"}

    def up(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(UP), *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=120, check=False, cwd="/",
        )  # fmt: skip

    def calls(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def network_id(self) -> str | None:
        found = self.dockerd.docker("network", "inspect", "-f", "{{.Id}}", NETWORK)
        return found.stdout.strip() if found.returncode == 0 else None


@pytest.fixture
def stack(dockerd: Dockerd, tmp_path: Path) -> Iterator[Stack]:
    dockerd.docker("network", "rm", NETWORK)
    yield Stack(dockerd, tmp_path)
    dockerd.docker("network", "rm", NETWORK)


def compose_up(*extra: str) -> list[str]:
    return ["compose", "-f", str(COMPOSE_FILE), "up", "-d", "--build", *extra]


def test_a_fresh_host_gets_the_network_before_compose_runs(stack: Stack) -> None:
    assert stack.network_id() is None
    result = stack.up()
    assert result.returncode == 0, describe(result)
    network = stack.network_id()
    assert network, "deploy/up did not create the network"
    assert stack.calls() == [{"args": compose_up(), "network": network}]
    details = json.loads(stack.dockerd.check("network", "inspect", NETWORK))[0]
    assert details["Driver"] == "bridge"
    # Made as the seed makes it, not by compose: no compose project claims it.
    assert not any(key.startswith("com.docker.compose") for key in details["Labels"] or {})
    assert f"created the Docker network {NETWORK}" in result.stderr


def test_the_seeds_network_is_joined_as_it_is(stack: Stack) -> None:
    seed = stack.dockerd.check("network", "create", NETWORK)  # what the seed does
    first = stack.up()
    again = stack.up("sutazai-agent")  # twice, and with arguments for compose
    assert first.returncode == 0, describe(first)
    assert again.returncode == 0, describe(again)
    assert stack.network_id() == seed
    assert stack.calls() == [
        {"args": compose_up(), "network": seed},
        {"args": compose_up("sutazai-agent"), "network": seed},
    ]
    assert "created" not in first.stderr + again.stderr


def test_compose_is_not_run_when_the_network_cannot_be_made(stack: Stack, tmp_path: Path) -> None:
    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = stack.up(env=nowhere)
    assert result.returncode != 0
    assert stack.calls() == []
    assert stack.network_id() is None
