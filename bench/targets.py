"""A farm of N loopback HTTP/TCP targets served by a few worker processes.

Each worker serves a slice of the ports with a minimal asyncio HTTP/1.1 responder (keep-alive
honoured, ``Connection: close`` honoured; every request gets ``200 ok``), so the targets cost
little CPU and a TCP probe (connect, close) works against the same ports. A worker also
listens on a control port: ``GET /stop/<port>`` closes that target's listener and every open
connection to it (what a dying process looks like), ``GET /hang/<port>`` keeps accepting but
never answers (a wedged process: probes time out), ``GET /start/<port>`` serves it again.

    python -m bench.targets --count 1000          # serve until Ctrl-C, print the ports

From Python: ``TargetFarm(count).start()`` … ``farm.close()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    b"Server: bench-target\r\n\r\nok\n"
)
DEFAULT_BASE_PORT = 21000
EPHEMERAL_LOW = 32768
"""Targets stay below Linux's ephemeral range, so outgoing connections never collide."""


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- the worker (runs in its own process) --------------------------------------------------
class _Target:
    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.Transport] = set()
        self.hang = False


class _HttpProtocol(asyncio.Protocol):
    __slots__ = ("_buffer", "_target", "_transport")

    def __init__(self, target: _Target) -> None:
        self._target = target
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._target.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._target.transports.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        if self._target.hang or self._transport is None:
            return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > 65536:
                    self._transport.close()
                return
            head = self._buffer[:end].lower()
            self._buffer = self._buffer[end + 4 :]
            self._transport.write(RESPONSE)
            if b"connection: close" in head or head.split(b"\r\n", 1)[0].endswith(b"http/1.0"):
                self._transport.close()
                return


class _Worker:
    def __init__(self) -> None:
        self.targets: dict[int, _Target] = {}

    async def bind(self, candidates: list[int], quota: int) -> list[int]:
        """Serve the first ``quota`` candidate ports that are free (others skipped)."""
        for port in candidates:
            if len(self.targets) >= quota:
                break
            self.targets[port] = _Target(port)
            try:
                await self.start(port)
            except OSError:
                del self.targets[port]
        return list(self.targets)

    async def start(self, port: int) -> None:
        target = self.targets[port]
        target.hang = False
        if target.server is None:
            loop = asyncio.get_running_loop()
            target.server = await loop.create_server(
                lambda: _HttpProtocol(target),
                "127.0.0.1",
                port,
                reuse_address=True,
                backlog=1024,
            )

    def stop(self, port: int) -> None:
        target = self.targets[port]
        if target.server is not None:
            target.server.close()
            target.server = None
        for transport in list(target.transports):
            transport.abort()
        target.transports.clear()

    def _parse(self, request_line: str) -> tuple[str, int]:
        _, path, _ = request_line.split(" ", 2)
        _, action, port_text = path.split("/", 2)
        port = int(port_text)
        if port not in self.targets:
            raise KeyError(port)
        if action not in ("stop", "hang", "start"):
            raise ValueError(action)
        return action, port

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            action, port = self._parse(line)
            if action == "stop":
                self.stop(port)
            elif action == "hang":
                self.targets[port].hang = True
            else:
                await self.start(port)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        except (ValueError, KeyError, OSError) as exc:
            body = f"{exc!r}\n".encode()
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        await writer.drain()
        writer.close()


async def _worker_main(candidates: list[int], quota: int) -> None:
    worker = _Worker()
    ports = await worker.bind(candidates, quota)
    control = await asyncio.start_server(worker.control, "127.0.0.1", 0)
    control_port = control.sockets[0].getsockname()[1]
    print(f"READY {control_port} {json.dumps(ports)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)  # type: ignore[arg-type]


# --- the farm (the benchmark's side) -------------------------------------------------------
class TargetFarm:
    """``count`` targets on 127.0.0.1 from ``base_port`` up (ports in use are skipped, e.g.
    RabbitMQ's 15672 and 25672), served by ``workers`` processes."""

    def __init__(self, count: int, base_port: int = DEFAULT_BASE_PORT, workers: int = 2) -> None:
        self.count = count
        self.base_port = base_port
        self.ports: list[int] = []
        self.workers = max(1, min(workers, count))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._control: dict[int, int] = {}
        """target port → its worker's control port."""

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/health"

    def start(self, timeout_s: float = 60.0) -> None:
        w = self.workers
        candidates = range(self.base_port, EPHEMERAL_LOW)
        slices = [list(candidates[i::w]) for i in range(w)]
        quotas = [self.count // w + (i < self.count % w) for i in range(w)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for ports, quota in zip(slices, quotas, strict=True):
            spec = json.dumps({"candidates": ports, "quota": quota}).encode()
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.targets", "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                cwd=ROOT,
            )
            assert proc.stdin is not None
            proc.stdin.write(spec)
            proc.stdin.close()
            self._procs.append(proc)
        deadline = time.monotonic() + timeout_s
        for proc, ports in zip(self._procs, slices, strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline().decode().strip()
            if not line.startswith("READY ") or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"target worker failed to start (ports {ports[0]}…): {line!r}")
            _, control, bound_text = line.split(" ", 2)
            bound = json.loads(bound_text)
            self._control.update(dict.fromkeys(bound, int(control)))
            self.ports.extend(bound)
        self.ports.sort()
        if len(self.ports) < self.count:
            self.close()
            raise RuntimeError(f"only {len(self.ports)} free ports from {self.base_port} up")

    def control(self, action: str, port: int) -> None:
        """``stop``, ``hang`` or ``start`` one target (blocking; loopback, a few ms)."""
        url = f"http://127.0.0.1:{self._control[port]}/{action}/{port}"
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()

    async def acontrol(self, action: str, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self._control[port])
        writer.write(f"GET /{action}/{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        writer.close()
        if b" 200 " not in status:
            raise RuntimeError(f"target control {action} {port}: {status!r}")

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._procs.clear()

    def __enter__(self) -> TargetFarm:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    raise_fd_limit()
    if args.worker:
        spec = json.loads(sys.stdin.read())
        _run(_worker_main(spec["candidates"], spec["quota"]))
        return
    with TargetFarm(args.count, args.base_port, args.workers) as farm:
        print(f"serving {len(farm.ports)} targets on 127.0.0.1:{farm.ports[0]}-{farm.ports[-1]}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
