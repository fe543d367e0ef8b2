"""The reload diff: old configuration, new configuration → added, removed, changed, unchanged
services, and the top-level keys applied or needing a restart. A table, no I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sutazai_agent.config import RESTART_KEYS, AgentConfig, applicable, diff_config

WEB = {"name": "web", "kind": "http", "url": "http://127.0.0.1:8080/health"}
DB = {"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 5432}
MQ = {"name": "mq", "kind": "rabbitmq", "amqp_url": "amqp://127.0.0.1:5672/"}
BASE: dict[str, Any] = {"agent_id": "a", "services": [WEB, DB, MQ]}


def cfg(**changes: Any) -> AgentConfig:
    return AgentConfig(**{**BASE, **changes})


CASES: list[tuple[str, dict[str, Any], tuple[str, ...], tuple[str, ...], tuple[str, ...],
                  tuple[str, ...], tuple[str, ...]]] = [
    # id, new config's changes, added, removed, changed, applied keys, restart keys
    ("nothing", {}, (), (), (), (), ()),
    ("add", {"services": [WEB, DB, MQ, {**DB, "name": "db2"}]}, ("db2",), (), (), (), ()),
    ("remove", {"services": [WEB, MQ]}, (), ("db",), (), (), ()),
    ("reorder only", {"services": [MQ, DB, WEB]}, (), (), (), (), ()),
    ("probe target", {"services": [WEB, {**DB, "port": 5433}, MQ]}, (), (), ("db",), (), ()),
    ("own interval", {"services": [{**WEB, "interval_s": 7}, DB, MQ]}, (), (), ("web",), (), ()),
    ("registration only", {"services": [{**WEB, "tags": ["api"]}, DB, MQ]},
     (), (), ("web",), (), ()),
    ("kind", {"services": [WEB, {"name": "db", "kind": "http", "url": "http://127.0.0.1:5432/"},
                           MQ]}, (), (), ("db",), (), ()),
    ("register flag", {"services": [WEB, {**DB, "register": False}, MQ]},
     (), (), ("db",), (), ()),
    # A default every service inherits changes every service that does not set its own;
    # one that sets the old default as its own keeps its effective settings.
    ("inherited interval", {"interval_s": 20, "services": [{**WEB, "interval_s": 10}, DB, MQ]},
     (), (), ("db", "mq"), ("interval_s",), ()),
    ("inherited rise", {"rise": 3}, (), (), ("web", "db", "mq"), ("rise",), ()),
    ("log level", {"log": {"level": "debug"}}, (), (), (), ("log",), ()),
    ("agent id", {"agent_id": "b"}, (), (), (), (), ("agent_id",)),
    ("group", {"group": "g"}, (), (), (), (), ("group",)),
    ("listener", {"http": {"port": 1}}, (), (), (), (), ("http",)),
    ("state dir", {"state_dir": "/elsewhere"}, (), (), (), (), ("state_dir",)),
    ("consul", {"consul": {"url": "http://consul:8500"}}, (), (), (), (), ("consul",)),
    ("rabbitmq exchange", {"rabbitmq": {"exchange": "x"}}, (), (), (), (), ("rabbitmq",)),
    # The broker's credentials flow into a rabbitmq service without its own: it changes too.
    ("broker credentials", {"services": [MQ], "rabbitmq": {"url": "amqp://u:p@127.0.0.1/"}},
     (), ("web", "db"), ("mq",), (), ("rabbitmq",)),
    ("everything at once",
     {"agent_id": "z", "timeout_s": 1, "services": [{**DB, "timeout_s": 2}, MQ, {**WEB,
      "name": "web2"}]},
     ("web2",), ("web",), ("db", "mq"), ("timeout_s",), ("agent_id",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("new", "added", "removed", "changed", "applied", "restart"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_diff(
    new: dict[str, Any],
    added: tuple[str, ...],
    removed: tuple[str, ...],
    changed: tuple[str, ...],
    applied: tuple[str, ...],
    restart: tuple[str, ...],
) -> None:
    diff = diff_config(cfg(), cfg(**new))
    services = diff.services
    assert (services.added, services.removed, services.changed) == (added, removed, changed)
    everything = {s.name for s in cfg(**new).services}
    assert set(services.unchanged) == everything - set(added) - set(changed)
    assert (diff.applied_keys, diff.restart_keys) == (applied, restart)


def test_applicable_keeps_the_running_values_of_restart_keys() -> None:
    running = cfg()
    new = cfg(agent_id="b", state_dir="/elsewhere", interval_s=20, services=[DB])
    diff = diff_config(running, new)
    effective = applicable(running, new, diff.restart_keys)
    assert effective.agent_id == "a"
    assert effective.state_dir == Path("./state")
    assert effective.interval_s == 20
    assert [s.name for s in effective.services] == ["db"]
    # Until the restart, every later reload still reports them.
    assert diff_config(effective, new).restart_keys == ("agent_id", "state_dir")


def test_restart_keys_are_fields_of_the_configuration() -> None:
    assert set(RESTART_KEYS) <= set(AgentConfig.model_fields)
