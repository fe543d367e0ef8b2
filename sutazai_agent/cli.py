"""``sutazai-agent [--config FILE] run|check|config|events|healthcheck [--config FILE]``.

Exit codes: 0 ok, 1 unhealthy or runtime failure, 2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO

import yaml

from sutazai_agent import __version__, config, logs

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    config_help = (
        f"YAML configuration file (default: ${config.CONFIG_ENV}, else built-in defaults); "
        "accepted before or after the command"
    )
    p = argparse.ArgumentParser(
        prog="sutazai-agent",
        description="Health and service-discovery sidecar: probes services, registers the "
        "healthy ones in Consul, publishes state changes to RabbitMQ, serves /metrics.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", metavar="FILE", help=config_help)
    # Every command takes --config too; SUPPRESS keeps the global one when it is not repeated.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the daemon (the default)")
    check = commands.add_parser(
        "check", parents=[common], help="probe every service once; exit 1 if any is not up"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    commands.add_parser(
        "config", parents=[common], help="print the effective configuration, secrets redacted"
    )
    events = commands.add_parser(
        "events", parents=[common], help="print health events from the exchange"
    )
    events.add_argument(
        "--bind",
        metavar="PATTERN",
        action="append",
        help="routing-key pattern to bind, repeatable (default: health.#)",
    )
    events.add_argument("--count", type=int, metavar="N", help="stop after N events")
    health = commands.add_parser(
        "healthcheck", parents=[common], help="exit 0 if a running agent's /healthz is 200"
    )
    health.add_argument(
        "--url",
        help="default: /healthz of the configured agent (http.host and http.port; "
        "0.0.0.0 and :: are reached on loopback)",
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    return p


def healthcheck_url(cfg: config.AgentConfig) -> str:
    """The configured agent's /healthz, reached directly: a wildcard host means loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.http.host, cfg.http.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.http.port}/healthz"


def _usage_error(message: str) -> int:
    print(f"sutazai-agent: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of our output went away (`config | head`): that ends the command, quietly.
        # Point stdout at /dev/null so the interpreter's own final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    command = args.command or "run"
    if command == "healthcheck" and not (args.timeout > 0 and math.isfinite(args.timeout)):
        return _usage_error("--timeout must be a positive number of seconds")
    if command == "events" and args.count is not None and args.count < 1:
        return _usage_error("--count must be at least 1")
    if command == "events" and any(not pattern.strip() for pattern in args.bind or ()):
        return _usage_error("--bind must be a non-empty routing-key pattern")
    if command == "healthcheck" and args.url is not None:
        return healthcheck(args.url, args.timeout)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"sutazai-agent: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if command == "healthcheck":
        return healthcheck(healthcheck_url(cfg), args.timeout)
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
    from sutazai_agent.check import check_once

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
    """The container HEALTHCHECK: the slim image has no curl.

    The request goes straight to the agent: ``HTTP_PROXY`` and friends are ignored (a proxy
    would answer for the agent, or not reach a loopback address at all).
    """
    if not url.startswith(("http://", "https://")):
        return _usage_error(f"not an http(s) URL: {url}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            ok = response.status == 200
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: HTTP {exc.code}", file=sys.stderr)
        return EXIT_UNHEALTHY
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK if ok else EXIT_UNHEALTHY
