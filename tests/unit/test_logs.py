"""Logs are JSON lines and never carry a secret, wherever it hides."""

from __future__ import annotations

import io
import json
import logging

import structlog

from sutazai_agent import logs


def test_secrets_are_scrubbed_from_messages_values_and_tracebacks() -> None:
    out = io.StringIO()
    logs.configure("debug", "json", secrets={"hunter22", "tok-abc"}, stream=out)
    log = structlog.get_logger("t")
    log.info("connecting", url="amqp://app:hunter22@mq/", headers={"X-Consul-Token": "tok-abc"})
    try:
        raise ValueError("auth failed for amqp://app:hunter22@mq/")
    except ValueError:
        log.exception("connect_failed")
    log.debug("quiet", items=["tok-abc", 3])
    text = out.getvalue()
    assert "hunter22" not in text
    assert "tok-abc" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "connecting"
    assert lines[0]["url"] == "amqp://app:***@mq/"
    assert lines[0]["level"] == "info"
    assert "ValueError" in lines[1]["exception"]
    assert lines[2]["items"] == ["***", 3]


def test_level_filters() -> None:
    out = io.StringIO()
    logs.configure("warning", "json", stream=out)
    log = structlog.get_logger("t")
    log.info("hidden")
    log.warning("shown")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["shown"]


def test_library_logs_are_json_scrubbed_and_quiet() -> None:
    out = io.StringIO()
    logs.configure("info", "json", secrets={"hunter22"}, stream=out)
    logging.getLogger("some.lib").warning("login as app:hunter22 failed")
    logging.getLogger("aiormq.connection").error("error when creating transport")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "login as app:*** failed"
    assert record["level"] == "warning"
