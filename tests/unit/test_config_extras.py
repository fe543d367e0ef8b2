"""The redis, postgres and grpc kinds: their fields, registered address, secrets, and the
configuration error (exit 2) naming the extra when a kind's client library is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sutazai_agent import cli, config

REDIS = {"name": "cache", "kind": "redis", "url": "redis://:redis-pw-1@cache.internal:6380/2"}
POSTGRES = {"name": "db", "kind": "postgres", "dsn": "postgresql://app:pg-pw-1@db.internal/app"}
GRPC = {"name": "models", "kind": "grpc", "host": "models.internal", "port": 10104}


def write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_three_kinds_load_with_their_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"services": [REDIS, POSTGRES, GRPC]}))

    redis, postgres, grpc = cfg.services
    assert isinstance(redis, config.RedisService)
    assert isinstance(postgres, config.PostgresService)
    assert postgres.primary is False
    assert isinstance(grpc, config.GrpcService)
    assert (grpc.grpc_service, grpc.tls, grpc.ca_file, grpc.server_name) == ("", False, None, None)


def test_registered_address_defaults_to_the_probed_target() -> None:
    cfg = config.AgentConfig(
        services=[
            REDIS,
            {**REDIS, "name": "plain", "url": "redis://cache.internal"},
            POSTGRES,
            {**POSTGRES, "name": "db2", "dsn": "postgres://db2.internal:6432/app"},
            GRPC,
            {**GRPC, "name": "pinned", "address": "10.0.0.9", "port": 9000},
        ]
    )

    assert [config.registration_address(s) for s in cfg.services] == [
        ("cache.internal", 6380),
        ("cache.internal", 6379),
        ("db.internal", 5432),
        ("db2.internal", 6432),
        ("models.internal", 10104),
        ("10.0.0.9", 9000),
    ]


def test_passwords_in_urls_and_dsns_are_secrets_and_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, {"services": [REDIS, POSTGRES, GRPC]})
    cfg = config.load(path)

    assert {"redis-pw-1", "pg-pw-1"} <= cfg.secrets()
    text = yaml.safe_dump(cfg.redacted())
    assert "redis-pw-1" not in text
    assert "pg-pw-1" not in text
    assert "redis://:***@cache.internal:6380/2" in text
    assert "postgresql://app:***@db.internal/app" in text


def test_config_command_prints_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config", write(tmp_path, {"services": [REDIS, POSTGRES]}), "config"]) == 0

    out = capsys.readouterr().out
    assert "redis-pw-1" not in out
    assert "pg-pw-1" not in out


BAD = [
    ({**REDIS, "url": "http://cache"}, "services[0].url", "must be a redis or rediss URL"),
    ({**REDIS, "url": "redis://cache/zero"}, "services[0].url", "database number"),
    ({**REDIS, "url": "redis://cache/0?password=pw-in-query"}, "services[0].url", "userinfo"),
    ({**POSTGRES, "dsn": "mysql://db/app"}, "services[0].dsn", "postgresql or postgres URL"),
    ({**POSTGRES, "dsn": "postgresql://db/app?password=pw-in-query"}, "services[0].dsn",
     "userinfo"),
    ({**POSTGRES, "tls_verify": False}, "services[0].tls_verify", "sslmode"),
    ({**POSTGRES, "primary": "sometimes"}, "services[0].primary", "boolean"),
    ({"name": "m", "kind": "grpc", "host": "h"}, "services[0].port", "Field required"),
    ({**GRPC, "ca_file": "/etc/hostname"}, "services[0].ca_file", "needs tls: true"),
    ({**GRPC, "server_name": "m.internal"}, "services[0].server_name", "needs tls: true"),
    ({**GRPC, "tls": True, "ca_file": "/nonexistent/ca.pem"}, "services[0].ca_file",
     "no such file"),
    ({**GRPC, "tls": True, "tls_verify": False}, "services[0].tls_verify", "always verifies"),
]  # fmt: skip


@pytest.mark.parametrize(("service", "field", "message"), BAD, ids=[f"{f}-{m}" for _, f, m in BAD])
def test_bad_values_exit_2_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    service: dict[str, object],
    field: str,
    message: str,
) -> None:
    assert cli.main(["--config", write(tmp_path, {"services": [service]}), "config"]) == 2

    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith(f"{field}: "))
    assert message in line
    assert "pw-in-query" not in err


@pytest.mark.parametrize(
    ("service", "blocked", "extra"),
    [
        (REDIS, "redis", "redis"),
        (REDIS, "redis.asyncio", "redis"),
        (POSTGRES, "asyncpg", "postgres"),
        (GRPC, "grpc", "grpc"),
        (GRPC, "grpc_health.v1.health_pb2", "grpc"),
    ],
)
def test_a_kind_whose_extra_is_missing_is_a_configuration_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    service: dict[str, object],
    blocked: str,
    extra: str,
) -> None:
    # ``None`` in sys.modules makes ``import`` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, blocked, None)
    data = {"services": [{"name": "web", "kind": "http", "url": "http://w/"}, service]}

    assert cli.main(["--config", write(tmp_path, data), "config"]) == 2

    kind = service["kind"]
    install = f"pip install '.[{extra}]' in the agent's source directory (the image has it)"
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"services[1].kind: the {kind} probe needs the {extra!r} extra: {install}"
    ]


BLOCK_EXTRAS = """
import sys
for name in ("redis", "asyncpg", "grpc", "grpc_health"):
    sys.modules[name] = None  # as if the extras were not installed
from sutazai_agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_agent_without_the_extras_refuses_the_kind_and_runs_the_rest(
    tmp_path: Path,
) -> None:
    """A real process: the package imports without the extras; only the kind is refused."""
    with_postgres = write(tmp_path, {"services": [POSTGRES]})
    refused = subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRAS, "--config", with_postgres, "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        "services[0].kind: the postgres probe needs the 'postgres' extra: "
        "pip install '.[postgres]' in the agent's source directory (the image has it)"
    )
    assert "Traceback" not in refused.stderr

    tcp_only = tmp_path / "tcp.yaml"
    tcp_only.write_text(
        yaml.safe_dump({"services": [{"name": "db", "kind": "tcp", "host": "h", "port": 1}]})
    )
    printed = subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRAS, "--config", str(tcp_only), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert "kind: tcp" in printed.stdout
