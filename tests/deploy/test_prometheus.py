"""deploy/prometheus: promtool's own checks, unit tests of every alert, names that exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from sutazai_agent.web.metrics import Metrics
from tests.deploy.support import AGENT, PROMETHEUS_DIR, compose, describe, ports, run

PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_YML = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_YML = PROMETHEUS_DIR / "alerts_test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed (scripts/test installs Debian's prometheus)"
    return path


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_config_and_its_rule_files(promtool: str) -> None:
    result = run([promtool, "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, describe(result)
    assert "alerts.yml" in result.stdout + result.stderr  # the rule file was checked too


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(ALERTS_YML)])
    assert result.returncode == 0, describe(result)


def test_the_alert_unit_tests_pass(promtool: str) -> None:
    result = run([promtool, "test", "rules", str(ALERTS_TEST_YML)], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, describe(result)
    assert "SUCCESS" in result.stdout, describe(result)


def test_the_alert_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    # The unit tests must notice when an alert stops firing: weaken every `for` and threshold.
    broken = ALERTS_YML.read_text(encoding="utf-8").replace("== 1", "== 2").replace("> 0", "> 1e9")
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    shutil.copy(ALERTS_TEST_YML, tmp_path / "alerts_test.yml")
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode != 0, describe(result)
    for name in (
        "SutazaiServiceDown",
        "SutazaiAgentOutboxBacklogGrowing",
        "SutazaiAgentOutboxWriteFailing",
    ):
        assert name in result.stdout + result.stderr


def test_the_issue_alerts_exist_with_severity_and_annotations() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    required = {
        "SutazaiServiceDown",  # a service down for 1m
        "SutazaiAgentDown",
        "SutazaiAgentOutboxBacklogGrowing",
        "SutazaiAgentOutboxWriteFailing",  # a failing outbox is alertable
        "SutazaiConsulUnreachable",
        "SutazaiProbeLatencyHigh",
    }
    assert required <= rules.keys()
    assert rules["SutazaiServiceDown"]["for"] == "1m"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name  # type: ignore[index]
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations.get("summary"), name
        assert annotations.get("description"), name


def test_every_alert_has_a_firing_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST_YML.read_text(encoding="utf-8"))
    fired = {
        case["alertname"]
        for group in tests["tests"]
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for group in tests["tests"]
        for case in group.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    names = {str(rule["alert"]) for rule in alert_rules()}
    assert names - fired == set(), "alerts without a test where they fire"
    assert names - quiet == set(), "alerts without a test where they stay quiet"
    assert tests["rule_files"] == ["alerts.yml"]


def test_alerts_use_only_metrics_the_agent_exports() -> None:
    exported: set[str] = set()
    for family in Metrics().registry.collect():
        for sample in family.samples:
            exported.add(sample.name)
        exported.add(family.name)
        if family.type == "counter":
            exported.add(family.name + "_total")
        if family.type == "histogram":
            exported.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    used = set(re.findall(r"\bsutazai_agent_[a-z_]+", ALERTS_YML.read_text(encoding="utf-8")))
    assert used, "no agent metric in alerts.yml?"
    assert used - exported == set()


def test_alerts_name_the_scrape_job_of_the_agent() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    referenced = set(re.findall(r'job="([^"]+)"', ALERTS_YML.read_text(encoding="utf-8")))
    assert referenced == {AGENT}
    assert referenced <= jobs


def test_scrape_targets_are_the_compose_services_on_their_listening_ports() -> None:
    services = compose()["services"]
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert targets[AGENT] == f"{AGENT}:10220"
    assert 10220 in {p.target for p in ports(services[AGENT])}
    # Kong's prometheus plugin is served by the status listener, not the proxy.
    assert targets["kong"] == "kong:8100"
    assert services["kong"]["environment"]["KONG_STATUS_LISTEN"].endswith(":8100")


def test_compose_mounts_the_files_prometheus_loads() -> None:
    service = compose()["services"]["prometheus"]
    mounts = {
        target: source
        for source, target, *_ in (volume.split(":") for volume in service["volumes"])
    }
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
