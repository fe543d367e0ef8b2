"""The short chaos soak (``bench/soak.py --short``, fixed seed, ~2-3 minutes) must hold its
invariants: no lost event, no wrong registration after convergence, flat RSS and fds, no
unhandled exception and a scheduler lag p99 under a second; Consul never passing a failing
service beyond the bound, no event re-sent without cause, no service's events behind
another's; with the state_dir faults (full, wiped, long stops) and a rejecting queue in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVARIANTS = (
    "1-events",
    "2-consul",
    "3-resources",
    "4-health",
    "5-consul-truth",
    "6-no-resend",
    "7-no-blocking",
)
FAULTS = ("state_dir_full", "reject_publish_queue", "agent_long_stop", "state_dir_wiped")


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.timeout(400)
def test_short_soak_holds_every_invariant() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    out = done.stdout
    report = out[out.find("=== soak figures ===") :] if "=== soak figures ===" in out else out
    assert done.returncode == 0, f"soak failed:\n{report}\n{done.stderr[-3000:]}"
    lines = {
        line.split(":", 1)[0]: line for line in out.splitlines() if line.startswith("invariant")
    }
    for name in INVARIANTS:
        assert f"invariant {name}" in lines, report
        assert f"invariant {name}: PASS" in lines[f"invariant {name}"], report
    assert " lost=0 " in lines["invariant 1-events"]
    assert "wrong_registrations=0 " in lines["invariant 2-consul"]
    injected = next(line for line in out.splitlines() if line.startswith("faults injected:"))
    for fault in FAULTS:
        if fault == "state_dir_full" and "no disk-full faults" in out:
            continue  # not root: no tmpfs to fill
        assert f"'{fault}'" in injected, report
    assert "soak PASSED" in out
