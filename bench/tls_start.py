"""Start-up cost of many ``https`` services: time until the agent serves, and its RSS.

The real agent is started with ``--services`` https services, all probing one local TLS
server (a trustme CA, trusted by the agent through ``SSL_CERT_FILE``: the system's CA bundle
plus the test CA, so that each TLS context costs what it costs in production). It prints
when ``/healthz`` first answers (the agent serves), when ``/readyz`` does (every service
probed once), and the agent's RSS and peak RSS at each point.

    python -m bench.tls_start --services 2000
    python -m bench.tls_start --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from bench.common import RABBITMQ_URL, machine, rss_mb, run
from bench.targets import raise_fd_limit
from tests.integration.agent_process import AgentProcess

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def write_bundle(path: Path, ca: trustme.CA) -> Path:
    """The system's CA bundle plus ``ca``, written to ``path``."""
    system = ssl.get_default_verify_paths().cafile
    bundle = Path(system).read_bytes() if system and Path(system).is_file() else b""
    path.write_bytes(bundle + ca.cert_pem.bytes())
    return path


async def serve_tls(context: ssl.SSLContext) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context, backlog=1024)


async def first_ok(session: aiohttp.ClientSession, url: str, timeout_s: float) -> float:
    """Seconds until ``url`` answers 200 (polled every 20 ms), from now."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:g}s")


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_path = write_bundle(workdir / "ca.pem", ca)
    server = await serve_tls(server_context)
    port = server.sockets[0].getsockname()[1]
    services = [
        {
            "name": f"tls-{i}",
            "kind": "http",
            "url": f"https://127.0.0.1:{port}/health?n={i}",
            "register": False,
        }
        for i in range(args.services)
    ]
    config = {
        "agent_id": "bench-tls",
        "interval_s": args.interval,
        "timeout_s": min(5.0, args.interval / 2),
        "consul": {"url": "http://127.0.0.1:9"},
        "rabbitmq": {"url": RABBITMQ_URL, "exchange": "bench.tls"},
        "services": services,
    }
    agent = AgentProcess(config, workdir, env={"SSL_CERT_FILE": str(ca_path)})
    result: dict[str, Any] = {}
    async with server, aiohttp.ClientSession() as session:
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        try:
            result["serving_s"] = await first_ok(session, agent.base + "/healthz", args.wait)
            result["serving_rss_mb"], _ = rss_mb(pid)
            result["ready_s"] = result["serving_s"] + await first_ok(
                session, agent.base + "/readyz", args.wait
            )
            result["ready_rss_mb"], result["peak_rss_mb"] = rss_mb(pid)
            up = sum(
                1
                for line in (await agent.metrics()).splitlines()
                if line.startswith("sutazai_agent_service_up{") and line.endswith(" 1.0")
            )
            result["up"] = up
        finally:
            agent.stop()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", type=int, default=2000)
    p.add_argument("--interval", type=float, default=10.0, help="probe interval_s")
    p.add_argument("--wait", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument("--smoke", action="store_true", help="a quick run (50 services)")
    args = p.parse_args()
    if args.smoke:
        args.services, args.wait, args.interval = 50, 60.0, 2.0
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        result = run(measure(args, Path(tmp)))
    print(f"machine   {machine()}")
    print(f"command   services={args.services} kind=http(s) interval_s={args.interval}")
    print(
        f"tls_start serving_s={result['serving_s']:.2f} ready_s={result['ready_s']:.2f} "
        f"serving_rss_mb={result['serving_rss_mb']:.0f} ready_rss_mb={result['ready_rss_mb']:.0f} "
        f"peak_rss_mb={result['peak_rss_mb']:.0f} up={result['up']}/{args.services}"
    )


if __name__ == "__main__":
    main()
