"""Bad configuration and a bad place to run: the agent says what is wrong in one clear message
naming the setting, exits 2, and never shows a traceback. docs/bad-input.md lists these rows."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

BASE: dict[str, Any] = {
    "agent_id": "bad-input",
    "http": {"host": "127.0.0.1", "port": 0},
    "consul": {"url": "http://127.0.0.1:9"},
    "rabbitmq": {"url": "amqp://guest:guest@127.0.0.1:9/"},
    "services": [{"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9}],
}
TCP = {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9}


def run_agent(
    tmp_path: Path, config: dict[str, Any] | str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "agent.yaml"
    if isinstance(config, dict):
        config = {"state_dir": str(tmp_path / "state"), **config}
        path.write_text(yaml.safe_dump(config))
    elif isinstance(config, str):
        path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "sutazai_agent", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def with_services(*services: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "services": list(services)}


CONFIG_CASES: list[tuple[str, dict[str, Any] | str | None, dict[str, str], str]] = [
    ("missing file", None, {}, "No such file or directory"),
    ("invalid YAML", "services: [unclosed", {}, "invalid YAML"),
    ("top level is a list", "- a\n- b\n", {}, "the top level must be a mapping"),
    (
        "unknown field (typo)",
        {**BASE, "intervall_s": 5},
        {},
        "intervall_s: no such setting; did you mean 'interval_s'?",
    ),
    (
        "unknown service field (typo)",
        with_services({**TCP, "timout_s": 1}),
        {},
        "services[0].timout_s: no such setting; did you mean 'timeout_s'?",
    ),
    ("negative interval", {**BASE, "interval_s": -1}, {}, "interval_s: Input should be greater"),
    ("interval not a number", {**BASE, "interval_s": "ten"}, {}, "interval_s: Input should be"),
    (
        "timeout not below interval",
        {**BASE, "interval_s": 5, "timeout_s": 5},
        {},
        "timeout_s: must be less than interval_s",
    ),
    (
        "service timeout not below its interval",
        with_services({**TCP, "interval_s": 2, "timeout_s": 3}),
        {},
        "services[0].timeout_s: must be less than interval_s",
    ),
    ("rise of 0", {**BASE, "rise": 0}, {}, "rise: Input should be greater than or equal to 1"),
    (
        "name not a DNS label",
        with_services({**TCP, "name": "Kong_1"}),
        {},
        "services[0].name: 'Kong_1' is not a DNS label",
    ),
    (
        "name over 63 characters",
        with_services({**TCP, "name": "a" * 64}),
        {},
        "services[0].name:",
    ),
    (
        "duplicate service names",
        with_services(TCP, {**TCP, "port": 10}),
        {},
        "services[1].name: duplicate service name 'db'",
    ),
    (
        "duplicate service ids",
        with_services({**TCP, "service_id": "x"}, {**TCP, "name": "db2", "service_id": "x"}),
        {},
        "services[1].service_id: duplicate service id 'x'",
    ),
    (
        "unknown kind",
        with_services({"name": "x", "kind": "ftp"}),
        {},
        "services[0].kind: must be one of http, tcp, kong, consul, rabbitmq, redis, postgres, grpc",
    ),
    ("kind missing", with_services({"name": "x"}), {}, "services[0].kind: must be one of"),
    (
        "http service without url",
        with_services({"name": "web", "kind": "http"}),
        {},
        "services[0].url: Field required",
    ),
    (
        "url with the wrong scheme",
        with_services({"name": "web", "kind": "http", "url": "ftp://h/x"}),
        {},
        "services[0].url: must be a http or https URL",
    ),
    (
        "url with an invalid port",
        with_services({"name": "web", "kind": "http", "url": "http://h:99999/"}),
        {},
        "services[0].url: has an invalid port",
    ),
    (
        "url without a host",
        with_services({"name": "web", "kind": "http", "url": "http:///x"}),
        {},
        "services[0].url: has no host",
    ),
    (
        "tcp port out of range",
        with_services({**TCP, "port": 70000}),
        {},
        "services[0].port: Input should be less than or equal to 65535",
    ),
    (
        "tcp without host",
        with_services({"name": "db", "kind": "tcp", "port": 5}),
        {},
        "services[0].host: Field required",
    ),
    (
        "invalid body_regex",
        with_services({"name": "web", "kind": "http", "url": "http://h/", "body_regex": "("}),
        {},
        "services[0].body_regex: invalid regular expression",
    ),
    (
        "header value with a line break",
        with_services(
            {"name": "web", "kind": "http", "url": "http://h/", "headers": {"X-A": "a\r\nB: c"}}
        ),
        {},
        "services[0].headers: value of 'X-A' must not contain CR, LF or NUL",
    ),
    (
        "expect_status not a status",
        with_services({"name": "web", "kind": "http", "url": "http://h/", "expect_status": [999]}),
        {},
        "services[0].expect_status: not HTTP status codes: [999]",
    ),
    (
        "reserved meta key",
        with_services({**TCP, "meta": {"managed-by": "me"}}),
        {},
        "services[0].meta: keys ['managed-by'] are set by the agent",
    ),
    (
        "header value not a string",
        with_services({"name": "web", "kind": "http", "url": "http://h/", "headers": {"X": [1]}}),
        {},
        "services[0].headers.X: Input should be a valid string",
    ),
    (
        "consul url not a URL",
        {**BASE, "consul": {"url": "consul:8500"}},
        {},
        "consul.url: must be a http or https URL",
    ),
    (
        "rabbitmq url not AMQP (password redacted)",
        {**BASE, "rabbitmq": {"url": "http://app:s3cr3t-pw@mq/"}},
        {},
        "rabbitmq.url: must be a amqp or amqps URL, got 'http://app:***@mq/'",
    ),
    (
        "missing consul.ca_file",
        {**BASE, "consul": {"url": "https://h:8501", "ca_file": "/nonexistent/ca.pem"}},
        {},
        "consul.ca_file: no such file: /nonexistent/ca.pem",
    ),
    ("empty exchange name", {**BASE, "rabbitmq": {"exchange": ""}}, {}, "rabbitmq.exchange:"),
    (
        "bad env override",
        BASE,
        {"SUTAZAI_AGENT_INTERVAL_S": "abc"},
        "as a number (set by SUTAZAI_AGENT_INTERVAL_S)",
    ),
    (
        "bad nested env override",
        BASE,
        {"SUTAZAI_AGENT_CONSUL__URL": "localhost:8500"},
        "consul.url: must be a http or https URL",
    ),
    ("unknown log level", {**BASE, "log": {"level": "loud"}}, {}, "log.level: Input should be"),
    (
        "env list not JSON",
        BASE,
        {"SUTAZAI_AGENT_SERVICES": "not json"},
        "services: SUTAZAI_AGENT_SERVICES must be a JSON list",
    ),
    (
        "env object not JSON",
        BASE,
        {"SUTAZAI_AGENT_HTTP": "notjson"},
        "http: SUTAZAI_AGENT_HTTP must be a JSON object",
    ),
    (
        "env buckets as a comma list",
        BASE,
        {"SUTAZAI_AGENT_METRICS__PROBE_DURATION_BUCKETS_S": "0.1,0.5"},
        "metrics.probe_duration_buckets_s: SUTAZAI_AGENT_METRICS__PROBE_DURATION_BUCKETS_S must",
    ),
    (
        "misspelt env variable",
        BASE,
        {"SUTAZAI_AGENT_INTERVALL_S": "5"},
        "SUTAZAI_AGENT_INTERVALL_S: no such setting; did you mean SUTAZAI_AGENT_INTERVAL_S?",
    ),
    (
        "env variable with one underscore for nesting",
        BASE,
        {"SUTAZAI_AGENT_CONSUL_URL": "http://consul:8500"},
        "SUTAZAI_AGENT_CONSUL_URL: no such setting; did you mean SUTAZAI_AGENT_CONSUL__URL?",
    ),
    (
        "duplicate YAML key",
        f"{yaml.safe_dump(BASE)}services: []\n",
        {},
        "duplicate key 'services' on line",
    ),
    (
        "meta key with a dot",
        with_services({**TCP, "meta": {"app.version": "1"}}),
        {},
        "services[0].meta: keys ['app.version'] are not Consul meta keys",
    ),
    (
        "meta key with Consul's prefix",
        with_services({**TCP, "meta": {"consul-x": "1"}}),
        {},
        "services[0].meta: keys ['consul-x'] use the prefix 'consul-'",
    ),
    (
        "meta value over 512 characters",
        with_services({**TCP, "meta": {"v": "x" * 513}}),
        {},
        "services[0].meta: values of ['v'] are longer than 512",
    ),
    (
        "over 61 meta pairs",
        with_services({**TCP, "meta": {f"k{i}": "v" for i in range(62)}}),
        {},
        "services[0].meta: at most 61 pairs",
    ),
    (
        "HEAD with body_regex",
        with_services(
            {"name": "web", "kind": "http", "url": "http://h/", "method": "HEAD", "body_regex": "x"}
        ),
        {},
        "services[0].body_regex: a HEAD response has no body to match",
    ),
    (
        "agent_id with a newline and quotes",
        {**BASE, "agent_id": 'node"1\nx'},
        {},
        "agent_id: ",
    ),
    ("interval_s below 0.1", {**BASE, "interval_s": 0.001}, {}, "interval_s: Input should be"),
    (
        "a service's interval_s below 0.1",
        with_services({**TCP, "interval_s": 0.001, "timeout_s": 0.0005}),
        {},
        "services[0].interval_s: Input should be greater than or equal to 0.1",
    ),
    (
        "consul.ttl_s below 1",
        {**BASE, "consul": {"ttl_s": 0.001}},
        {},
        "consul.ttl_s: Input should be greater than or equal to 1",
    ),
    ("empty state_dir", {**BASE, "state_dir": ""}, {}, "state_dir: must not be empty"),
    (
        "no services",
        {**BASE, "services": []},
        {},
        "services: must list at least one service",
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("config", "env", "message"),
    [case[1:] for case in CONFIG_CASES],
    ids=[case[0] for case in CONFIG_CASES],
)
def test_bad_configuration_is_one_clear_message_and_exit_2(
    tmp_path: Path, config: dict[str, Any] | str | None, env: dict[str, str], message: str
) -> None:
    done = run_agent(tmp_path, config, env)
    assert done.returncode == 2, done.stderr
    assert "sutazai-agent: invalid configuration:" in done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    assert done.stdout == ""
    assert not (tmp_path / "state").exists()  # nothing started


@pytest.mark.e2e
def test_config_after_the_command_is_read(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({**BASE, "interval_s": "ten"}))
    done = subprocess.run(
        [sys.executable, "-m", "sutazai_agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "interval_s: Input should be" in done.stderr
    assert "unrecognized arguments" not in done.stderr


@pytest.mark.e2e
def test_state_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    done = run_agent(tmp_path, {**BASE, "state_dir": str(blocker)})
    assert done.returncode == 2, done.stderr
    assert f"cannot start: state_dir: cannot open the outbox in {blocker}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_corrupt_outbox_database_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.db").write_bytes(b"\x00garbage" * 1000)
    done = run_agent(tmp_path, BASE)
    assert done.returncode == 2, done.stderr
    assert "state_dir: cannot open the outbox" in done.stderr
    assert "file is not a database" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_outbox_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "agent.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    done = run_agent(tmp_path, BASE)
    assert done.returncode == 2, done.stderr
    assert "schema version 99 is newer than this agent's" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_http_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_agent(tmp_path, {**BASE, "http": {"host": "127.0.0.1", "port": port}})
    assert done.returncode == 2, done.stderr
    assert f"cannot start: http: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "address already in use" in done.stderr
    assert "Traceback" not in done.stderr
