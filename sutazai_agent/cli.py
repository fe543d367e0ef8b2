"""``sutazai-agent [--config FILE] run|check|config|events|healthcheck``.

Exit codes: 0 ok, 1 unhealthy or runtime failure, 2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO

import yaml

from sutazai_agent import __version__, config, logs

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sutazai-agent",
        description="Health and service-discovery sidecar: probes services, registers the "
        "healthy ones in Consul, publishes state changes to RabbitMQ, serves /metrics.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML configuration file (default: ${config.CONFIG_ENV}, else built-in defaults)",
    )
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the daemon (the default)")
    check = commands.add_parser("check", help="probe every service once; exit 1 if any is not up")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    commands.add_parser("config", help="print the effective configuration, secrets redacted")
    events = commands.add_parser("events", help="print health events from the exchange")
    events.add_argument(
        "--bind",
        metavar="PATTERN",
        action="append",
        help="routing-key pattern to bind, repeatable (default: health.#)",
    )
    events.add_argument("--count", type=int, metavar="N", help="stop after N events")
    health = commands.add_parser("healthcheck", help="exit 0 if a running agent's /healthz is 200")
    health.add_argument(
        "--url", default="http://127.0.0.1:10220/healthz", help="default: %(default)s"
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command or "run"
    if command == "healthcheck":
        return healthcheck(args.url, args.timeout)
    if command == "events" and args.count is not None and args.count < 1:
        print("sutazai-agent: error: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"sutazai-agent: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if command == "config":
        yaml.safe_dump(cfg.redacted(), sys.stdout, sort_keys=False)
        return EXIT_OK
    logs.configure(
        cfg.log.level, cfg.log.format, cfg.secrets(), sys.stderr if command != "run" else None
    )
    if command == "check":
        return _run(_check(cfg, args.json, sys.stdout))
    if command == "events":
        from sutazai_agent.events.consumer import tail

        bind = args.bind or ["health.#"]
        url = cfg.rabbitmq.url
        return _run(tail(url, cfg.rabbitmq.exchange, bind, args.count, sys.stdout))
    from sutazai_agent.app import Agent, StartupError

    secrets = set(cfg.secrets())

    def reconfigure_logs(applied: config.AgentConfig) -> None:
        # Secrets of every configuration loaded so far stay scrubbed: a removed service's
        # password may still be in a message in flight.
        secrets.update(applied.secrets())
        logs.configure(applied.log.level, applied.log.format, secrets)

    def reload_config() -> config.AgentConfig:
        return config.load(args.config)

    agent = Agent(cfg, load=reload_config, on_config=reconfigure_logs)
    try:
        return _run(agent.main())
    except StartupError as exc:
        print(f"sutazai-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _check(cfg: config.AgentConfig, as_json: bool, out: TextIO) -> int:
    from sutazai_agent.app import check_once

    results = await check_once(cfg)
    rows = [
        {
            "name": service.name,
            "kind": service.kind,
            "state": result.state.value,
            "latency_ms": round(result.latency_s * 1000, 1),
            "reason": result.reason,
        }
        for service, result in results
    ]
    healthy = all(row["state"] == "up" for row in rows)
    if as_json:
        out.write(json.dumps({"healthy": healthy, "services": rows}) + "\n")
    else:
        headers = ("SERVICE", "KIND", "STATE", "LATENCY_MS", "REASON")
        table = [
            headers,
            *(
                (r["name"], r["kind"], r["state"], f"{r['latency_ms']:.1f}", r["reason"])
                for r in rows
            ),
        ]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(headers) - 1)]
        for row in table:
            cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
            out.write("  ".join([*cells, str(row[-1])]).rstrip() + "\n")
    return EXIT_OK if healthy else EXIT_UNHEALTHY


def healthcheck(url: str, timeout_s: float) -> int:
    """The container HEALTHCHECK: the slim image has no curl."""
    if not url.startswith(("http://", "https://")):
        print(f"sutazai-agent: error: not an http(s) URL: {url}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            ok = response.status == 200
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: HTTP {exc.code}", file=sys.stderr)
        return EXIT_UNHEALTHY
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK if ok else EXIT_UNHEALTHY
