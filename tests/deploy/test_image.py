"""Dockerfile and .dockerignore: checked statically, and the image's install steps run here.

The install is also exercised without Docker, the way the builder runs it: the build context
(as .dockerignore filters it) is copied, the build stage's and the runtime stage's RUN commands
are taken from the Dockerfile, their paths moved under a temporary directory, and run with a
CPython of the image's minor version; the installed `sutazai-agent` is then started and checked
with the HEALTHCHECK command. test_container.py builds and runs the real image.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from sutazai_agent import __version__, cli, config
from tests.deploy.support import (
    AGENT,
    AGENT_CONFIG,
    ROOT,
    Instruction,
    build_context_files,
    clean_env,
    compose,
    describe,
    dockerfile,
    dockerignore_rules,
    duration_s,
    exec_form,
    in_build_context,
    run,
)
from tests.integration.agent_process import free_port

STATE_DIR = "/var/lib/sutazai-agent"
OCI_LABELS = {"title", "description", "version", "revision", "created", "licenses"}


def stage(index: int) -> list[Instruction]:
    return [i for i in dockerfile() if i.stage == index]


def final_stage() -> list[Instruction]:
    return stage(max(i.stage for i in dockerfile()))


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def base_image() -> str:
    arg = next(i for i in dockerfile() if i.keyword == "ARG" and i.stage == -1)
    name, _, default = arg.args.partition("=")
    assert name == "PYTHON_IMAGE"
    return default


def labels() -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in final_stage():
        if instruction.keyword == "LABEL":
            for item in shlex.split(instruction.args):
                key, _, value = item.partition("=")
                found[key] = value
    return found


def run_script(stage_index: int, verb: str) -> str:
    """The shell command of the one RUN of a stage that runs `pip <verb>`, without its
    BuildKit flags (`--mount=...`)."""
    runs = [i for i in stage(stage_index) if i.keyword == "RUN" and f"pip {verb}" in i.args]
    assert len(runs) == 1, runs
    words = runs[0].args.split(" ")
    while words and words[0].startswith("--mount="):
        words.pop(0)
    return " ".join(words)


def mounts(stage_index: int, verb: str) -> list[str]:
    runs = [i for i in stage(stage_index) if i.keyword == "RUN" and f"pip {verb}" in i.args]
    return [w for w in runs[0].args.split(" ") if w.startswith("--mount=")]


def steps(script: str) -> list[list[str]]:
    """The `&&`-separated commands of a RUN, as words."""
    return [shlex.split(step) for step in script.split("&&")]


# --- static checks ----------------------------------------------------------------------------


def test_two_stages_on_one_pinned_python_slim_base() -> None:
    froms = [i for i in dockerfile() if i.keyword == "FROM"]
    assert [f.args for f in froms] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm", base_image())


def test_wheels_are_built_in_the_first_stage_and_only_installed_in_the_second() -> None:
    # Both stages call `python3` (the slim image and Debian's python3 both have it) and use a
    # venv's pip (Debian's python3 has none, and its own site-packages are externally managed).
    build = steps(run_script(0, "wheel"))
    assert build[0] == ["python3", "-m", "venv", "/opt/build"]
    assert build[-1] == [
        "/opt/build/bin/python", "-m", "pip", "wheel", "--wheel-dir", "/wheels", ".[all]",
    ]  # fmt: skip
    # A proxy's CA bundle, when the builder is given one, is a secret: never a layer.
    assert mounts(0, "wheel") == ["--mount=type=secret,id=pip-ca"]
    assert "export PIP_CERT=/run/secrets/pip-ca" in run_script(0, "wheel")
    install = steps(run_script(1, "install"))
    assert install[0] == ["python3", "-m", "venv", "/opt/sutazai-agent"]
    assert install[-1][:4] == ["/opt/sutazai-agent/bin/python", "-m", "pip", "install"]
    assert "--no-index" in install[-1]
    assert install[-1][install[-1].index("--find-links") + 1] == "/wheels"
    assert install[-1][-1] == "sutazai-agent[all]"
    assert mounts(1, "install") == ["--mount=type=bind,from=build,source=/wheels,target=/wheels"]
    assert not [i for i in stage(1) if i.keyword == "COPY"], "the runtime copies nothing"
    env = " ".join(i.args for i in final_stage() if i.keyword == "ENV")
    assert "PATH=/opt/sutazai-agent/bin:$PATH" in env


def test_the_base_image_is_a_build_argument() -> None:
    # The default is the pinned upstream image; a locally made base replaces it with
    # `--build-arg PYTHON_IMAGE=...` (tests/deploy/test_container.py does).
    first = dockerfile()[0]
    assert first.keyword == "ARG"
    assert first.args.startswith("PYTHON_IMAGE=")
    assert labels()["org.opencontainers.image.base.name"] == "${PYTHON_IMAGE}"


def test_the_runtime_runs_as_an_unprivileged_user() -> None:
    user = [i for i in final_stage() if i.keyword == "USER"][-1].args
    uid = user.split(":")[0]
    assert uid not in {"0", "root"}
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    entry = only(final_stage(), "ENTRYPOINT")
    assert dockerfile().index(entry) > dockerfile().index(
        next(i for i in final_stage() if i.keyword == "USER")
    )


def test_state_dir_is_a_volume_everywhere_it_is_named() -> None:
    assert exec_form(only(final_stage(), "VOLUME").args) == [STATE_DIR]
    env = " ".join(i.args for i in final_stage() if i.keyword == "ENV")
    assert f"SUTAZAI_AGENT_STATE_DIR={STATE_DIR}" in env
    assert yaml.safe_load(AGENT_CONFIG.read_text(encoding="utf-8"))["state_dir"] == STATE_DIR
    agent = compose()["services"][AGENT]
    assert f"agent-state:{STATE_DIR}" in agent["volumes"]


def test_exposed_port_is_the_agents_http_port_and_the_healthcheck_default() -> None:
    assert only(final_stage(), "EXPOSE").args == "10220"
    assert yaml.safe_load(AGENT_CONFIG.read_text(encoding="utf-8"))["http"]["port"] == 10220
    default_url = cli.healthcheck_url(config.AgentConfig())
    assert default_url == "http://127.0.0.1:10220/healthz"


def test_healthcheck_uses_the_agent_itself() -> None:
    args = only(final_stage(), "HEALTHCHECK").args
    options, _, command = args.partition(" CMD ")
    assert exec_form(command) == ["sutazai-agent", "healthcheck"]
    flags = dict(flag.removeprefix("--").split("=") for flag in options.split())
    assert duration_s(flags["timeout"]) < duration_s(flags["interval"])
    assert duration_s(flags["start-period"]) >= 10


def test_stop_signal_and_entrypoint() -> None:
    assert only(final_stage(), "STOPSIGNAL").args == "SIGTERM"
    assert exec_form(only(final_stage(), "ENTRYPOINT").args) == ["sutazai-agent"]
    assert exec_form(only(final_stage(), "CMD").args) == ["run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert "sutazai-agent" in scripts


def test_oci_labels_and_version_match_the_package() -> None:
    found = labels()
    for name in OCI_LABELS:
        assert found.get(f"org.opencontainers.image.{name}"), name
    version_arg = next(i for i in final_stage() if i.keyword == "ARG" and "VERSION=" in i.args)
    assert version_arg.args == f"VERSION={__version__}"
    assert found["org.opencontainers.image.version"] == "${VERSION}"
    assert compose()["services"][AGENT]["image"] == f"sutazai-agent:{__version__}"


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    context = set(build_context_files())
    for instruction in stage(0):
        if instruction.keyword == "COPY":
            *sources, _ = instruction.args.split()
            for source in sources:
                prefix = source.rstrip("/")
                assert any(f == prefix or f.startswith(prefix + "/") for f in context), source
    assert {"pyproject.toml", "README.md", "sutazai_agent/config/schema.py"} <= context
    rules = dockerignore_rules()
    for path in (
        ".git/config", ".venv/bin/python", "deploy/.env", "tests/deploy/support.py",
        "state/outbox.db", "sutazai_agent/config/__pycache__/schema.cpython-312.pyc", "Dockerfile",
        "docs/deployment.md",
    ):  # fmt: skip
        assert not in_build_context(path, rules), path


# --- the install steps, run ---------------------------------------------------------------------


def image_python() -> str:
    """A CPython with the image's minor version if this machine has one, else this one."""
    minor = re.match(r"python:(\d+\.\d+)", base_image())
    assert minor
    candidates = [
        os.environ.get("SUTAZAI_IMAGE_PYTHON", ""),
        shutil.which(f"python{minor[1]}") or "",
        *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor[1]}*/bin/python3"))),
    ]
    for candidate in filter(None, candidates):
        probe = run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        if probe.returncode == 0 and probe.stdout.strip() == minor[1]:
            return candidate
    return sys.executable


def pip_cert() -> str:
    """The CA bundle this machine's pip uses, if any (the build gets it as a secret)."""
    listed = run([sys.executable, "-m", "pip", "config", "list"])
    for line in listed.stdout.splitlines():
        name, _, value = line.partition("=")
        if name.endswith(".cert"):
            return value.strip("'\"")
    return ""


def localize(script: str, python: str, tmp: Path) -> str:
    """A RUN's shell command with the image's paths moved under ``tmp``."""
    script = re.sub(r"(?<![\w/.-])python3(?= )", python, script)
    script = script.replace("/opt/build", str(tmp / "build"))
    script = script.replace("/opt/sutazai-agent", str(tmp / "venv"))
    script = script.replace("/run/secrets/pip-ca", pip_cert() or str(tmp / "no-pip-ca"))
    return re.sub(r"(?<![\w/.-])/wheels\b", str(tmp / "wheels"), script)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the agent installed by the Dockerfile's own RUN commands."""
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "context"
    for relative in build_context_files():
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    python = image_python()
    env = clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    built = run(["sh", "-ec", localize(run_script(0, "wheel"), python, tmp)], cwd=context, env=env)
    assert built.returncode == 0, describe(built)
    wheels = tmp / "wheels"
    assert list(wheels.glob(f"sutazai_agent-{__version__}-*.whl")), sorted(wheels.iterdir())
    done = run(["sh", "-ec", localize(run_script(1, "install"), python, tmp)], env=env)
    assert done.returncode == 0, describe(done)
    return tmp / "venv"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_installs_into_a_fresh_venv_and_the_cli_runs(installed: Path) -> None:
    agent = str(installed / "bin" / "sutazai-agent")
    helped = run([agent, "--help"], env=clean_env())
    assert helped.returncode == 0, describe(helped)
    assert "healthcheck" in helped.stdout
    version = run([agent, "--version"], env=clean_env())
    assert __version__ in version.stdout, describe(version)
    code = "import sutazai_agent, uvloop; print(sutazai_agent.__file__)"
    where = run([str(installed / "bin" / "python"), "-c", code], env=clean_env(), cwd=installed)
    assert where.returncode == 0, describe(where)
    assert where.stdout.startswith(str(installed)), "not the installed wheel: " + where.stdout


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_healthcheck_command_sees_a_started_agent_and_its_stop(
    installed: Path, tmp_path: Path
) -> None:
    agent = str(installed / "bin" / "sutazai-agent")
    port, dead = free_port(), free_port()
    cfg = {
        "agent_id": "image-test",
        "interval_s": 1,
        "timeout_s": 0.5,
        "http": {"host": "127.0.0.1", "port": port},
        "state_dir": str(tmp_path / "state"),
        "consul": {"url": f"http://127.0.0.1:{dead}"},
        "rabbitmq": {"url": f"amqp://guest:guest@127.0.0.1:{dead}/"},
        "services": [{"name": "gone", "kind": "tcp", "host": "127.0.0.1", "port": dead}],
        "log": {"format": "json"},
    }
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    healthz = f"http://127.0.0.1:{port}/healthz"
    check = [agent, "healthcheck", "--url", healthz]

    before = run(check, env=clean_env())
    assert before.returncode == 1, describe(before)  # nothing listens yet

    log = (tmp_path / "agent.log").open("w")
    process = subprocess.Popen(
        [agent, "--config", str(config_file), "run"], env=clean_env(), cwd=tmp_path,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        healthy = before
        while time.monotonic() < deadline and process.poll() is None:
            healthy = run(check, env=clean_env(), timeout_s=30)
            if healthy.returncode == 0:
                break
            time.sleep(0.5)
        output = (tmp_path / "agent.log").read_text(encoding="utf-8")
        assert process.poll() is None, f"the agent exited:\n{output[-4000:]}"
        assert healthy.returncode == 0, describe(healthy) + f"\n--- agent\n{output[-4000:]}"

        # `docker stop`: SIGTERM, then SIGKILL after the compose stop_grace_period.
        grace_s = duration_s(compose()["services"][AGENT]["stop_grace_period"])
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=grace_s)
        assert returncode == 0, (tmp_path / "agent.log").read_text(encoding="utf-8")[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()

    after = run(check, env=clean_env())
    assert after.returncode == 1, describe(after)
