"""The command line: options, usage errors (exit 2) and the container health check."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sutazai_agent import cli, config

TCP = {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9}


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def agent_port() -> Iterator[int]:
    """A stand-in for a running agent: /healthz answers 200."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy variables pointing at a port nobody listens on (the discard port)."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, data: dict[str, object]) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"services": [TCP], **data}))
    return str(path)


@pytest.mark.usefixtures("dead_proxy")
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_healthcheck_checks_the_configured_agent_directly(
    tmp_path: Path, agent_port: int, host: str
) -> None:
    path = write(tmp_path, {"http": {"host": host, "port": agent_port}})
    assert cli.main(["--config", path, "healthcheck", "--timeout", "5"]) == cli.EXIT_OK
    assert cli.main(["healthcheck", "--config", path, "--timeout", "5"]) == cli.EXIT_OK


@pytest.mark.usefixtures("dead_proxy")
def test_healthcheck_follows_the_port_from_the_environment(
    tmp_path: Path, agent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, {"http": {"host": "127.0.0.1", "port": 1}})
    monkeypatch.setenv("SUTAZAI_AGENT_HTTP__PORT", str(agent_port))
    assert cli.main(["--config", path, "healthcheck"]) == cli.EXIT_OK


@pytest.mark.usefixtures("dead_proxy")
def test_healthcheck_with_an_explicit_url_ignores_the_proxy(agent_port: int) -> None:
    url = f"http://127.0.0.1:{agent_port}/healthz"
    assert cli.main(["healthcheck", "--url", url]) == cli.EXIT_OK
    assert cli.main(["healthcheck", "--url", url.replace("/healthz", "/x")]) == cli.EXIT_UNHEALTHY


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:7/healthz"),
        ("::", "http://[::1]:7/healthz"),
        ("10.1.2.3", "http://10.1.2.3:7/healthz"),
        ("::1", "http://[::1]:7/healthz"),
    ],
)
def test_healthcheck_url_reaches_a_wildcard_listener_on_loopback(host: str, url: str) -> None:
    cfg = config.AgentConfig(http={"host": host, "port": 7}, services=[TCP])
    assert cli.healthcheck_url(cfg) == url


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["healthcheck", "--timeout", "-1"], "--timeout"),
        (["healthcheck", "--timeout", "0"], "--timeout"),
        (["healthcheck", "--timeout", "nan"], "--timeout"),
        (["events", "--bind", ""], "--bind"),
        (["events", "--bind", "health.#", "--bind", " "], "--bind"),
        (["events", "--count", "0"], "--count"),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert option in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", ["run", "check", "config", "events", "healthcheck"])
def test_config_is_accepted_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # An invalid file: every command reads it first and exits 2 naming the field, which
    # shows the option was taken (not "unrecognized arguments").
    path = write(tmp_path, {"interval_s": "ten"})
    assert cli.main([command, "--config", path]) == cli.EXIT_USAGE
    assert "interval_s:" in capsys.readouterr().err


def test_config_after_the_command_wins_over_the_global_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, {"agent_id": "from-the-command"})
    assert cli.main(["--config", "/nonexistent.yaml", "config", "--config", good]) == 0
    assert "from-the-command" in capsys.readouterr().out
