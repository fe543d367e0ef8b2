"""The real daemon as a process, for end-to-end tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AgentProcess:
    """``sutazai-agent --config FILE run`` with its log captured to a file."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.config = {
            "agent_id": "e2e",
            "state_dir": str(workdir / "state"),
            "log": {"level": "info", "format": "json"},
            **config,
            "http": {"host": "127.0.0.1", "port": self.port},
        }
        self.config_path = workdir / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / "agent.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sutazai_agent", "--config", str(self.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"event": "<not json>", "raw": raw})
        return lines

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base + path, timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return resp.status, await resp.text()

    async def status(self) -> dict[str, Any]:
        code, body = await self.get("/status")
        assert code == 200, body
        data: dict[str, Any] = json.loads(body)
        return data

    async def service(self, name: str) -> dict[str, Any]:
        for service in (await self.status())["services"]:
            if service["name"] == name:
                found: dict[str, Any] = service
                return found
        raise KeyError(name)

    async def metrics(self) -> str:
        code, body = await self.get("/metrics")
        assert code == 200
        return body

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        async def ready() -> bool:
            try:
                return (await self.get("/readyz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout_s, f"agent not ready; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout_s: float, message: str = ""
) -> float:
    """Poll ``condition`` until true; return the seconds it took. Fails after ``timeout_s``."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s}s. {message}")
        await asyncio.sleep(0.05)
