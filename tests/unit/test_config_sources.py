"""The YAML file and the environment, checked before the schema: duplicate keys, misspelt
variables and list or object variables that are not JSON."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from sutazai_agent import config

TCP = {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(config.ENV_PREFIX):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return str(path)


def test_a_duplicate_key_is_named_with_its_lines(tmp_path: Path) -> None:
    text = "agent_id: a\nservices: []\nagent_id: b\n"
    with pytest.raises(
        config.ConfigError, match=r"duplicate key 'agent_id' on line 3 \(first on line 1\)"
    ):
        config.load(write(tmp_path, text))


def test_a_duplicate_key_inside_a_service_is_an_error(tmp_path: Path) -> None:
    text = "services:\n  - name: a\n    kind: tcp\n    host: h\n    port: 1\n    port: 2\n"
    with pytest.raises(config.ConfigError, match="duplicate key 'port' on line 6"):
        config.load(write(tmp_path, text))


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    text = (
        "x-base: &base {kind: tcp, host: h, port: 1}\n"
        "services:\n  - <<: *base\n    name: a\n    port: 2\n"
    )
    data = yaml.safe_load(text)
    del data["x-base"]
    cfg = config.load(write(tmp_path, yaml.safe_dump(data)))
    assert cfg.services[0].port == 2


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SUTAZAI_AGENT_INTERVALL_S", "5", "did you mean SUTAZAI_AGENT_INTERVAL_S?"),
        ("SUTAZAI_AGENT_CONSUL_URL", "http://c", "did you mean SUTAZAI_AGENT_CONSUL__URL?"),
        ("sutazai_agent_consul__tokn", "t", "did you mean SUTAZAI_AGENT_CONSUL__TOKEN?"),
        ("SUTAZAI_AGENT_WHATEVER", "1", "SUTAZAI_AGENT_WHATEVER: no such setting"),
        ("SUTAZAI_AGENT_SERVICES__0__PORT", "1", "no such setting"),
        (
            "SUTAZAI_AGENT_SERVICES",
            "not json",
            "services: SUTAZAI_AGENT_SERVICES must be a JSON list",
        ),
        ("SUTAZAI_AGENT_SERVICES", "", "must be a JSON list"),
        ("SUTAZAI_AGENT_HTTP", "notjson", "http: SUTAZAI_AGENT_HTTP must be a JSON object"),
        ("SUTAZAI_AGENT_METRICS__PROBE_DURATION_BUCKETS_S", "0.1,1", "must be a JSON list"),
    ],
)
def test_bad_variables_are_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError, match=message) as caught:
        config.load()
    assert "\n" not in str(caught.value)


def test_good_variables_and_the_non_field_ones_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, yaml.safe_dump({"services": [TCP]}))
    monkeypatch.setenv("SUTAZAI_AGENT_CONFIG", path)
    monkeypatch.setenv("SUTAZAI_AGENT_ID", "compose-only")
    monkeypatch.setenv("SUTAZAI_AGENT_HTTP__PORT", "7")
    monkeypatch.setenv("SUTAZAI_AGENT_METRICS__PROBE_DURATION_BUCKETS_S", "[0.1, 1]")
    monkeypatch.setenv("SUTAZAI_AGENT_CONSUL", '{"url": "http://c:1"}')
    cfg = config.load()
    assert cfg.http.port == 7
    assert cfg.metrics.probe_duration_buckets_s == (0.1, 1.0)
    assert cfg.consul.url == "http://c:1"
