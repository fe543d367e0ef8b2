"""Configuration: defaults, env overrides, redaction, and every bad value → exit 2 naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sutazai_agent import cli, config

TCP = {"name": "db", "kind": "tcp", "host": "localhost", "port": 5432}


def write(tmp_path: Path, data: object) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_defaults_match_the_seed() -> None:
    cfg = config.load(None)
    assert (cfg.interval_s, cfg.timeout_s, cfg.rise, cfg.fall) == (10.0, 5.0, 2, 2)
    assert (cfg.http.host, cfg.http.port) == ("0.0.0.0", 10220)
    assert cfg.consul.url == "http://localhost:10006"
    assert cfg.rabbitmq.exchange == "sutazai.health"
    assert [(s.name, s.kind) for s in cfg.services] == [
        ("kong", "kong"),
        ("consul", "consul"),
        ("rabbitmq", "rabbitmq"),
    ]
    consul = cfg.services[1]
    assert consul.register_service is False  # Consul registers itself


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"consul": {"url": "http://a:1", "ttl_s": 20}, "services": [TCP]})
    monkeypatch.setenv("SUTAZAI_AGENT_CONSUL__URL", "http://consul:8500")
    monkeypatch.setenv("SUTAZAI_AGENT_INTERVAL_S", "2.5")
    monkeypatch.setenv("SUTAZAI_AGENT_TIMEOUT_S", "1")
    cfg = config.load(path)
    assert cfg.consul.url == "http://consul:8500"
    assert cfg.consul.ttl_s == 20  # the file's other keys of the same section survive
    assert cfg.interval_s == 2.5


def test_config_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SUTAZAI_AGENT_CONFIG", write(tmp_path, {"agent_id": "n7", "services": [TCP]})
    )
    assert config.load(None).agent_id == "n7"


def test_per_service_overrides_and_registration_address(tmp_path: Path) -> None:
    services = [
        {"name": "web", "kind": "http", "url": "https://web.local/health", "interval_s": 3,
         "timeout_s": 1, "rise": 4, "fall": 5, "service_id": "web-1", "tags": ["a"]},
        {**TCP, "address": "10.1.1.1"},
    ]  # fmt: skip
    cfg = config.load(write(tmp_path, {"services": services}))
    web, db = cfg.services
    assert (cfg.interval_for(web), cfg.timeout_for(web), cfg.rise_for(web), cfg.fall_for(web)) == (
        3,
        1,
        4,
        5,
    )
    assert cfg.interval_for(db) == 10.0
    assert web.id == "web-1"
    assert config.registration_address(web) == ("web.local", 443)
    assert config.registration_address(db) == ("10.1.1.1", 5432)


def test_redacted_output_hides_every_secret(tmp_path: Path) -> None:
    data = {
        "consul": {"token": "s3cr3t-token"},
        "rabbitmq": {"url": "amqp://svc:hunter22@mq:5672/"},
        "services": [
            {"name": "web", "kind": "http", "url": "http://u:webpass1@w/h",
             "headers": {"Authorization": "Bearer abcdef"}},
        ],
    }  # fmt: skip
    cfg = config.load(write(tmp_path, data))
    text = yaml.safe_dump(cfg.redacted())
    for secret in ("s3cr3t-token", "hunter22", "webpass1", "Bearer abcdef"):
        assert secret not in text
    assert "amqp://svc:***@mq:5672/" in text
    assert {"s3cr3t-token", "hunter22", "webpass1", "Bearer abcdef"} <= cfg.secrets()


BAD = [
    ({"interval_s": 1, "timeout_s": 2}, "timeout_s"),
    ({"interval_s": 0}, "interval_s"),
    ({"interval_s": "soon"}, "interval_s"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"rise": 0}, "rise"),
    ({"fall": -2}, "fall"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"http": {"port": 70000}}, "http.port"),
    ({"consul": {"url": "consul:8500"}}, "consul.url"),
    ({"consul": {"ttl_s": 0}}, "consul.ttl_s"),
    ({"consul": {"ca_file": "/nonexistent/ca.pem"}}, "consul.ca_file"),
    ({"rabbitmq": {"url": "http://mq"}}, "rabbitmq.url"),
    ({"no_such_key": 1}, "no_such_key"),
    ({"services": [{**TCP, "name": "Bad_Name"}]}, "services[0].name"),
    ({"services": [{**TCP, "name": "x" * 64}]}, "services[0].name"),
    ({"services": [{**TCP, "kind": "ftp"}]}, "services[0].kind"),
    ({"services": [{"name": "db", "kind": "tcp", "host": "h"}]}, "services[0].port"),
    ({"services": [{**TCP, "port": 0}]}, "services[0].port"),
    ({"services": [{"name": "w", "kind": "http", "url": "ftp://w"}]}, "services[0].url"),
    ({"services": [{"name": "w", "kind": "http", "url": "http://w:99999/"}]}, "services[0].url"),
    ({"services": [{"name": "w", "kind": "http", "url": "http://w", "body_regex": "("}]},
     "services[0].body_regex"),
    ({"services": [{"name": "w", "kind": "http", "url": "http://w",
                    "headers": {"X-A": "ok\r\nInjected: 1"}}]},
     "services[0].headers"),
    ({"services": [{"name": "w", "kind": "http", "url": "http://w",
                    "headers": {"Bad Name": "v"}}]},
     "services[0].headers"),
    ({"services": [{"name": "w", "kind": "http", "url": "http://w", "expect_status": [999]}]},
     "services[0].expect_status"),
    ({"services": [TCP, TCP]}, "services[1].name"),
    ({"services": [TCP, {**TCP, "name": "db2", "service_id": "db"}]}, "services[1].service_id"),
    ({"services": [{**TCP, "timeout_s": 30}]}, "services[0].timeout_s"),
    ({"services": [{**TCP, "meta": {"managed-by": "me"}}]}, "services[0].meta"),
    ({"services": [{**TCP, "colour": "red"}]}, "services[0].colour"),
    ({"services": [{"name": "k", "kind": "kong", "admin_url": "http://a"}]},
     "services[0].proxy_url"),
    ({"services": [{"name": "r", "kind": "rabbitmq", "amqp_url": "http://r"}]},
     "services[0].amqp_url"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_values_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, object], field: str
) -> None:
    assert cli.main(["--config", write(tmp_path, data), "config"]) == 2
    err = capsys.readouterr().err
    assert f"\n{field}: " in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: [", "invalid YAML"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_unreadable_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    assert cli.main(["--config", write(tmp_path, text), "check"]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", "/nonexistent/agent.yaml", "run"]) == 2
    assert "/nonexistent/agent.yaml" in capsys.readouterr().err


def test_a_real_process_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, {"services": [{**TCP, "port": "many"}]})
    proc = subprocess.run(
        [sys.executable, "-m", "sutazai_agent", "--config", path, "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "services[0].port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus-command"])
    assert exc.value.code == 2
    assert cli.main(["events", "--count", "0"]) == 2
    assert "--count" in capsys.readouterr().err


def test_a_rabbitmq_service_without_credentials_takes_the_brokers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = [
        {"name": "mq", "kind": "rabbitmq", "amqp_url": "amqp://rabbitmq:5672/"},
        {"name": "mq2", "kind": "rabbitmq", "amqp_url": "amqp://own:creds@other:5672/"},
    ]
    monkeypatch.setenv("SUTAZAI_AGENT_RABBITMQ__URL", "amqp://app:s3cret@rabbitmq:5672/")
    cfg = config.load(write(tmp_path, {"services": services}))
    assert cfg.services[0].amqp_url == "amqp://app:s3cret@rabbitmq:5672/"  # type: ignore[union-attr]
    assert cfg.services[1].amqp_url == "amqp://own:creds@other:5672/"  # type: ignore[union-attr]
    assert "s3cret" in cfg.secrets()
