"""The image, built and run by a real Docker engine (tests/deploy/dockerd.py).

The image is built from a locally made base (a debootstrapped bookworm with Debian's python3
3.11, since Docker Hub is out of reach) through the Dockerfile's `PYTHON_IMAGE` build argument,
then run twice: once exactly as the image is (its own network namespace, its defaults, its
HEALTHCHECK), once on the host's network with a small configuration, probing a listener of the
test and publishing to the host's RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml
from aio_pika.abc import ExchangeType

from sutazai_agent import __version__
from tests.deploy.dockerd import BASE_TAG, Dockerd, base_tarball, build_options, wait_for
from tests.deploy.support import AGENT, ROOT, compose, duration_s
from tests.integration.agent_process import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

IMAGE = f"sutazai-agent:{__version__}-test"
STATE_DIR = "/var/lib/sutazai-agent"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
UID = "10001"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_cold_s: float
    build_cached_s: float
    size_bytes: int


def grace_s() -> float:
    """What compose gives the agent between SIGTERM and SIGKILL."""
    return duration_s(compose()["services"][AGENT]["stop_grace_period"])


@pytest.fixture(scope="module")
def image(dockerd: Dockerd) -> BuiltImage:
    dockerd.check("import", str(base_tarball()), BASE_TAG, timeout_s=300)
    build = [
        "build", "--network", "host", *build_options(sys.executable),
        "--build-arg", f"PYTHON_IMAGE={BASE_TAG}", "-t", IMAGE, str(ROOT),
    ]  # fmt: skip
    started = time.monotonic()
    dockerd.check(*build, timeout_s=600)
    cold_s = time.monotonic() - started
    first_id = dockerd.check("image", "inspect", "-f", "{{.Id}}", IMAGE)
    started = time.monotonic()
    dockerd.check(*build, timeout_s=600)
    cached_s = time.monotonic() - started
    # Every step came from the cache: the same image again.
    assert dockerd.check("image", "inspect", "-f", "{{.Id}}", IMAGE) == first_id
    size = int(dockerd.check("image", "inspect", "-f", "{{.Size}}", IMAGE))
    built = BuiltImage(IMAGE, cold_s, cached_s, size)
    print(
        f"\nimage {IMAGE}: {size / 1e6:.0f} MB, build {cold_s:.1f} s cold, {cached_s:.1f} s cached"
    )
    return built


def inspect(dockerd: Dockerd, container: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(dockerd.check("inspect", container))
    return data[0]


def health(dockerd: Dockerd, container: str) -> str:
    state = inspect(dockerd, container)["State"]
    assert state["Running"], f"the container stopped:\n{logs(dockerd, container)}"
    return str(state["Health"]["Status"])


def logs(dockerd: Dockerd, container: str) -> str:
    result = dockerd.docker("logs", "--tail", "40", container)
    return result.stdout + result.stderr


def stop(dockerd: Dockerd, container: str) -> float:
    """`docker stop` with compose's grace period; the seconds it took."""
    started = time.monotonic()
    dockerd.check("stop", "-t", str(int(grace_s())), container, timeout_s=grace_s() + 30)
    return time.monotonic() - started


def test_the_image_runs_unprivileged_turns_healthy_and_stops_cleanly(
    dockerd: Dockerd, image: BuiltImage, record_property: Any
) -> None:
    config = inspect(dockerd, image.tag)["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Healthcheck"]["Test"] == ["CMD", "sutazai-agent", "healthcheck"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.base.name"] == BASE_TAG
    assert labels["org.opencontainers.image.version"] == __version__

    name = f"sutazai-agent-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-state"
    # As the image is: no configuration, its own (empty) network namespace.
    started = time.monotonic()
    dockerd.check("run", "-d", "--name", name, "--network", "none", "-v", f"{volume}:{STATE_DIR}",
                  image.tag)  # fmt: skip
    try:
        assert dockerd.check("exec", name, "id", "-u") == UID
        assert dockerd.check("exec", name, "python3", "-c", "import sys; print(sys.prefix)") == (
            "/opt/sutazai-agent"
        )

        # The agent writes its outbox and states into the volume, as the unprivileged user.
        def state_written() -> bool:
            listing = dockerd.docker("exec", name, "ls", "-ln", STATE_DIR).stdout
            return "agent.db" in listing

        wait_for("agent.db in the volume", state_written, 60)
        listing = dockerd.check("exec", name, "ls", "-ln", STATE_DIR)
        for line in listing.splitlines()[1:]:
            assert line.split()[2:4] == [UID, UID], listing
        dockerd.check("exec", name, "touch", f"{STATE_DIR}/written-by-the-test")

        # Docker runs the image's HEALTHCHECK (`sutazai-agent healthcheck`) every 15 s.
        assert health(dockerd, name) in {"starting", "healthy"}
        wait_for("healthy", lambda: health(dockerd, name) == "healthy", 90, 0.5)
        healthy_s = time.monotonic() - started
        record_property("start_to_healthy_s", round(healthy_s, 1))
        print(f"\nstart to healthy: {healthy_s:.1f} s")
        probe_log = inspect(dockerd, name)["State"]["Health"]["Log"]
        assert probe_log[-1]["ExitCode"] == 0, probe_log

        stopped_s = stop(dockerd, name)
        state = inspect(dockerd, name)["State"]
        assert state["ExitCode"] == 0, logs(dockerd, name)
        assert not state["OOMKilled"]
        assert stopped_s < grace_s(), f"SIGTERM took {stopped_s:.1f}s: killed, not stopped"
        assert "agent_stopped" in logs(dockerd, name), logs(dockerd, name)
    finally:
        dockerd.docker("rm", "-f", name)
        dockerd.docker("volume", "rm", "-f", volume)


class Listener:
    """A TCP listener on the host's loopback that accepts and closes, until closed itself."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def listener() -> Iterator[Listener]:
    target = Listener()
    yield target
    target.close()


class Tap:
    """A queue on the host's broker bound to the test's exchange, read by polling."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.queue = f"{exchange}.tap"

    async def _run(self, work: str) -> list[str]:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            if work == "delete":
                await channel.queue_delete(self.queue)
                await channel.exchange_delete(self.exchange)
                return []
            exchange = await channel.declare_exchange(
                self.exchange, ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.queue, arguments={"x-expires": 600_000})
            if work == "declare":
                await queue.bind(exchange, "health.#")
                return []
            keys = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                keys.append(message.routing_key or "")
            return keys
        finally:
            await connection.close()

    def declare(self) -> None:
        asyncio.run(self._run("declare"))

    def drain(self) -> list[str]:
        return asyncio.run(self._run("drain"))

    def delete(self) -> None:
        asyncio.run(self._run("delete"))


def test_the_container_probes_and_publishes_to_the_hosts_broker(
    dockerd: Dockerd, image: BuiltImage, listener: Listener, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    exchange = f"sutazai.health.image-test-{suffix}"
    port = free_port()
    management = "http://127.0.0.1:15672"
    cfg = {
        "agent_id": f"image-test-{suffix}",
        "interval_s": 1,
        "timeout_s": 0.8,
        "rise": 1,
        "fall": 1,
        "http": {"host": "127.0.0.1", "port": port},
        "consul": {"url": f"http://127.0.0.1:{free_port()}"},  # none: the agent keeps going
        "rabbitmq": {"url": AMQP_URL, "exchange": exchange},
        "services": [
            {"name": "target", "kind": "tcp", "host": "127.0.0.1", "port": listener.port},
            {
                "name": "broker",
                "kind": "rabbitmq",
                "amqp_url": AMQP_URL,
                "management_url": management,
            },
        ],
        "log": {"format": "json"},
    }
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    config_file.chmod(0o644)
    tap = Tap(exchange)
    tap.declare()
    name = f"sutazai-agent-{suffix}"
    dockerd.check(
        "run", "-d", "--name", name, "--network", "host",
        "-v", f"{config_file}:/etc/sutazai-agent/agent.yaml:ro",
        "-e", "SUTAZAI_AGENT_CONFIG=/etc/sutazai-agent/agent.yaml", image.tag,
    )  # fmt: skip
    keys: list[str] = []
    try:

        def published(key: str) -> bool:
            keys.extend(tap.drain())
            assert inspect(dockerd, name)["State"]["Running"], logs(dockerd, name)
            return key in keys

        wait_for("health.target.up", lambda: published("health.target.up"), 60, 0.5)
        wait_for("health.broker.up", lambda: published("health.broker.up"), 30, 0.5)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
        assert re.search(
            r'^sutazai_agent_service_up\{service="target"\} 1\.0$', text, re.MULTILINE
        ), text
        assert re.search(r"^sutazai_agent_events_published_total [1-9]", text, re.MULTILINE), text

        # The target goes away: the container notices and says so on the host's broker.
        listener.close()
        wait_for("health.target.down", lambda: published("health.target.down"), 30, 0.5)

        stopped_s = stop(dockerd, name)
        state = inspect(dockerd, name)["State"]
        assert state["ExitCode"] == 0, logs(dockerd, name)
        assert stopped_s < grace_s()
        assert "Traceback" not in logs(dockerd, name)
    finally:
        dockerd.docker("rm", "-f", "-v", name)
        tap.delete()


def test_the_image_has_every_probe_kinds_extra(dockerd: Dockerd, image: BuiltImage) -> None:
    """The image installs `[all]`: a redis, postgres and grpc service are accepted (without
    their extras, loading the configuration would exit 2 naming the missing extra)."""
    services = [
        {"name": "cache", "kind": "redis", "url": "redis://cache:6379/0"},
        {"name": "db", "kind": "postgres", "dsn": "postgresql://app@db:5432/app"},
        {"name": "models", "kind": "grpc", "host": "models", "port": 10104},
    ]
    printed = dockerd.check(
        "run", "--rm", "--network", "none",
        "-e", f"SUTAZAI_AGENT_SERVICES={json.dumps(services)}",
        image.tag, "config",
    )  # fmt: skip
    for kind in ("redis", "postgres", "grpc"):
        assert f"kind: {kind}" in printed
