"""deploy/systemd/sutazai-agent.service: verified by systemd itself, hardened, and coherent.

`systemd-analyze verify` loads the unit the way systemd would (it works without systemd as
PID 1) and also checks that ExecStart is executable, so it is run on a copy whose ExecStart
is this checkout's installed `sutazai-agent`. It exits 0 on mere warnings (an unknown key,
an unparsable value), so any output counts as a failure. `systemd-analyze security
--offline=yes` scores the sandbox without a running manager.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.support import AGENT, DEPLOY, compose, describe, duration_s, run
from tests.integration.agent_process import AgentProcess, free_port

UNIT = DEPLOY / "systemd" / "sutazai-agent.service"
INSTALLED = "/opt/sutazai-agent/bin/sutazai-agent"
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def entries() -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order (keys may repeat)."""
    found, section = [], ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key, value))
    return found


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in entries() if s == section and k == key]


def one(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"{key}: {found}"
    return found[0]


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing (scripts/test installs Debian's systemd)"
    return path


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's installed agent."""
    agent = Path(sys.executable).with_name("sutazai-agent")
    assert agent.is_file(), agent
    copy = tmp_path / UNIT.name
    copy.write_text((text or UNIT.read_text("utf-8")).replace(INSTALLED, str(agent)), "utf-8")
    return copy


def verify(systemd_analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return run([systemd_analyze, "verify", "--man=no", str(unit)])


def test_systemd_analyze_verify_accepts_the_unit(systemd_analyze: str, tmp_path: Path) -> None:
    result = verify(systemd_analyze, local_copy(tmp_path))
    assert result.returncode == 0, describe(result)
    assert result.stdout + result.stderr == "", describe(result)


def test_systemd_analyze_verify_reports_a_broken_unit(systemd_analyze: str, tmp_path: Path) -> None:
    # The check above can fail: a misspelt key and a bad value come out as warnings.
    broken = UNIT.read_text("utf-8").replace("ProtectSystem=strict", "ProtectSystem=strictt")
    broken = broken.replace("Restart=on-failure", "Restartt=on-failure")
    result = verify(systemd_analyze, local_copy(tmp_path, broken))
    assert "Restartt" in result.stderr, describe(result)
    assert "strictt" in result.stderr, describe(result)


def test_the_sandbox_is_rated_ok_by_systemd(systemd_analyze: str, tmp_path: Path) -> None:
    copy = local_copy(tmp_path)
    result = run([systemd_analyze, "security", "--offline=yes", "--no-pager", str(copy)])
    assert result.returncode == 0, describe(result)
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert level, describe(result)
    assert float(level[1]) <= 2.0, level[0]  # 0 best, 10 worst; "OK" is below 2.1


def test_the_unit_runs_the_agent_unprivileged_with_its_state_directory() -> None:
    assert one("DynamicUser") == "yes"
    assert one("StateDirectory") == "sutazai-agent"
    env = dict(value.partition("=")[::2] for value in values("Environment"))
    assert env["SUTAZAI_AGENT_STATE_DIR"] == "/var/lib/sutazai-agent"  # = StateDirectory
    assert one("WorkingDirectory") == env["SUTAZAI_AGENT_STATE_DIR"]
    assert env["SUTAZAI_AGENT_CONFIG"].startswith("/etc/sutazai-agent/")
    assert one("EnvironmentFile").startswith("-/etc/sutazai-agent/")  # optional, for secrets
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert one("ExecStart") == f"{INSTALLED} run"
    assert one("WantedBy", "Install") == "multi-user.target"


def test_the_unit_restarts_on_failure_reloads_on_sighup_and_stops_gracefully() -> None:
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "2"  # a configuration error stays down
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("KillSignal") == "SIGTERM"
    grace = duration_s(compose()["services"][AGENT]["stop_grace_period"])
    assert duration_s(one("TimeoutStopSec")) >= grace


def set_memory_deny_write_execute() -> None:
    """What MemoryDenyWriteExecute=yes enforces, set on the child by the kernel's prctl."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


class SandboxedAgent(AgentProcess):
    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sutazai_agent", "--config", str(self.config_path), "run"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
                preexec_fn=set_memory_deny_write_execute,  # noqa: PLW1509
            )  # fmt: skip


# In a child under PR_SET_MDWE: the flag is on, and a writable+executable mapping is refused.
MDWE_PROBE = """
import ctypes, mmap
assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) == 1  # PR_GET_MDWE
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("refused")
"""


@pytest.mark.e2e
async def test_the_agent_runs_under_memory_deny_write_execute(tmp_path: Path) -> None:
    # The unit sets MemoryDenyWriteExecute=yes: nothing of the agent (uvloop, pydantic-core,
    # SQLite, aiohttp's C parser) may need memory that is writable and executable.
    try:
        probe = subprocess.run(
            [sys.executable, "-c", MDWE_PROBE], preexec_fn=set_memory_deny_write_execute,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except subprocess.SubprocessError as exc:
        pytest.skip(f"no PR_SET_MDWE in this kernel (Linux 6.3 or newer): {exc}")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "refused"
    down = free_port()
    agent = SandboxedAgent(
        {
            "interval_s": 0.5,
            "timeout_s": 0.4,
            "consul": {"url": f"http://127.0.0.1:{down}"},
            "rabbitmq": {"url": f"amqp://guest:guest@127.0.0.1:{down}/"},
            "services": [{"name": "gone", "kind": "tcp", "host": "127.0.0.1", "port": down}],
        },
        tmp_path,
    )
    agent.start()
    try:
        await agent.wait_ready()
        assert (await agent.service("gone"))["state"] == "down"
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0, agent.log_tail()
    finally:
        agent.kill()
    assert "Traceback" not in agent.log_text()
