"""Secrets in the configuration: shown as ``***`` when set, empty when not, never in clear."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog
import yaml

from sutazai_agent import cli, config, logs
from sutazai_agent.probes.base import error_reason

TCP = {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9}


def dump(tmp_path: Path, data: dict[str, object], capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"services": [TCP], **data}))
    assert cli.main(["--config", str(path), "config"]) == 0
    return capsys.readouterr().out


def test_config_shows_whether_the_token_is_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = yaml.safe_load(dump(tmp_path, {"consul": {"token": "s3cr3t-token"}}, capsys))
    assert shown["consul"]["token"] == "***"
    shown = yaml.safe_load(dump(tmp_path, {}, capsys))
    assert shown["consul"]["token"] == ""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h/x?access_token=s3cret1", "http://h/x?access_token=***"),
        ("http://h/x?a=1&password=s3cret1&b=2", "http://h/x?a=1&password=***&b=2"),
        ("http://h/x?token=s3cret1#top", "http://h/x?token=***#top"),
        ("http://h/x?api_key=s3cret1", "http://h/x?api_key=***"),
        ("http://h/x?Client_Secret=s3cret1", "http://h/x?Client_Secret=***"),
        ("http://u:pw1@h/x?key=s3cret1", "http://u:***@h/x?key=***"),
        ("http://h/x?page=2&q=tokens", "http://h/x?page=2&q=tokens"),
    ],
)
def test_credentials_in_query_strings_are_redacted(url: str, shown: str) -> None:
    assert config.redact_url(url) == shown


def test_query_secrets_are_hidden_in_config_output_logs_and_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = {"name": "web", "kind": "http", "url": "http://w/h?access_token=tok-s3cret&x=1"}
    data: dict[str, object] = {"services": [web]}
    out = dump(tmp_path, data, capsys)
    assert "tok-s3cret" not in out
    assert "access_token=***&x=1" in out

    cfg = config.AgentConfig(**data)  # type: ignore[arg-type]
    assert "tok-s3cret" in cfg.secrets()
    stream = io.StringIO()
    logs.configure("info", "json", cfg.secrets(), stream)
    structlog.get_logger().warning("probe_failed", detail="token tok-s3cret was refused")
    assert "tok-s3cret" not in stream.getvalue()
    assert json.loads(stream.getvalue())["detail"] == "token *** was refused"

    reason = error_reason(ValueError("GET http://w/h?access_token=tok-s3cret failed"), 1.0)
    assert "tok-s3cret" not in reason
