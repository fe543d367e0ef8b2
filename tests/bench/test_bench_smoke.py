"""The benchmarks' ``--smoke`` modes still run: they exit 0 and print their figure lines.

No figure is asserted: performance is measured by running the benchmarks (docs/performance.md),
never by timed assertions in tests. These keep the harness from rotting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.blackbox import exporter_path

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.broker, pytest.mark.e2e]


def smoke(module: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


def test_throughput_smoke_prints_agent_and_blackbox_rows() -> None:
    out = smoke("bench.throughput")
    (agent,) = lines(out, "agent ")
    assert "cpu_ms_per_probe=" in agent
    assert "lag_p99_ms=" in agent
    assert "skipped=" in agent
    assert "series_per_service=" in lines(out, "metrics ")[0]
    assert "heartbeats_expected=" in lines(out, "consul ")[0]
    if exporter_path() is not None:
        assert "cpu_ms_per_probe=" in lines(out, "blackbox ")[0]
        assert "agent/blackbox=" in lines(out, "ratio ")[0]


def test_throughput_smoke_registers_only_the_first_n_without_histograms() -> None:
    lean = '{"metrics": {"per_service_histogram": false}}'
    out = smoke("bench.throughput", "--agent-only", "--register-max", "10", "--agent-extra", lean)
    registrar = lines(out, "registrar ")[0]
    assert "registered=10 " in registrar
    assert "beat_lag_p99_ms=" in registrar
    assert "series_per_service=8 " in lines(out, "metrics ")[0]
    assert "probe_p99_ms=n/a" not in lines(out, "agent ")[0]  # from the per-kind histogram


def test_throughput_smoke_idle_prints_rss() -> None:
    out = smoke("bench.throughput", "--idle")
    assert "rss_mb=" in lines(out, "idle ")[0]


def test_detection_smoke_prints_three_distributions() -> None:
    out = smoke("bench.detection")
    found = lines(out, "detect ")
    assert [line.split()[1] for line in found] == ["metrics", "consul", "event"]
    assert all("p50=" in line for line in found)


def test_heartbeat_cost_smoke_prints_client_and_server_cost() -> None:
    out = smoke("bench.heartbeat_cost")
    for phase in ("register", "heartbeat", "paced"):
        (row,) = lines(out, f"{phase} ")
        assert "calls_per_s=" in row
        assert "client_cpu_ms_per_call=" in row
        assert "server_cpu_ms_per_call=" in row


def test_probe_cost_smoke_prints_each_variant() -> None:
    out = smoke("bench.probe_cost")
    for variant in ("http", "http-aiohttp", "tcp", "redis", "postgres", "grpc"):
        (row,) = lines(out, f"{variant}: ")
        assert "CPU-ms/probe" in row
        assert row.endswith(" 0 failed"), row


def test_takeover_smoke_prints_takeover_moves_and_writes() -> None:
    out = smoke("bench.takeover")
    assert len(lines(out, "takeover_s over 1 SIGKILLs: p50 ")) == 1, out
    assert len(lines(out, "moved per leave: ")) == 1, out
    assert len(lines(out, "events during the rounds: ")) == 1, out
    assert len(lines(out, "consul writes per agent in steady state: ")) == 1, out


def test_tls_start_smoke_prints_start_time_and_rss() -> None:
    out = smoke("bench.tls_start")
    (row,) = lines(out, "tls_start ")
    assert "serving_s=" in row
    assert "serving_rss_mb=" in row
    assert "up=" in row


def test_reload_smoke_prints_rounds_and_the_summary() -> None:
    out = smoke("bench.reload")
    rounds = lines(out, "round ")
    assert len(rounds) == 2
    for row in rounds:
        for figure in ("apply_ms=", "seen_ms=", "skipped=", "added_probed=", "deregistered="):
            assert figure in row
        # Every added service is probed within an interval, also one a reload added back.
        probed = row.split("added_probed=")[1].split()[0]
        assert probed == "3/3", row
    (summary,) = lines(out, "reload ")
    assert "apply_ms_median=" in summary
    assert "skipped=" in summary
