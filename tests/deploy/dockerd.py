"""A Docker engine of the test's own: `dockerd` on its own socket, data root and exec root.

Nothing is shared with a Docker engine the machine may already run: the socket, the data and
exec roots, the pid file, the daemon configuration and the CLI configuration all live under one
temporary directory, which is removed when the daemon has stopped. `--iptables=false` keeps the
host's firewall untouched and `--bridge=none` creates no default `docker0` bridge; user-defined
bridge networks (`docker network create`) still work with both.

The base image is a debootstrapped Debian bookworm (scripts/debootstrap-base), cached as a
tarball under /var/cache/sutazai-agent-test/ between runs on the same machine, imported into
each fresh engine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.deploy.support import ROOT, describe

BASE_CACHE = Path(os.environ.get("SUTAZAI_TEST_CACHE", "/var/cache/sutazai-agent-test"))
BASE_SCRIPT = ROOT / "scripts" / "debootstrap-base"
BASE_TAG = "sutazai-base:bookworm"


class DockerdUnavailableError(Exception):
    """This machine cannot run a Docker engine for the tests (the message says why)."""


def _docker_cli() -> str:
    """A docker CLI that can build with BuildKit (the Dockerfile's `RUN --mount` needs it):
    one with the buildx plugin, or one older than 23.0 whose `docker build` still has
    BuildKit built in (Debian bookworm's docker.io, /usr/bin/docker). A newer CLI without
    buildx refuses to build."""
    candidates = dict.fromkeys(
        filter(None, [shutil.which("docker"), "/usr/bin/docker", "/usr/local/bin/docker"])
    )
    for cli in candidates:
        if not os.access(cli, os.X_OK):
            continue
        if (
            subprocess.run([cli, "buildx", "version"], capture_output=True, check=False).returncode
            == 0
        ):
            return cli
        version = subprocess.run([cli, "--version"], capture_output=True, text=True, check=False)
        major = re.match(r"Docker version (\d+)\.", version.stdout)
        if major and int(major[1]) < 23:
            return cli
    raise DockerdUnavailableError(
        f"no docker CLI that can build with BuildKit among {list(candidates)}"
        " (scripts/test installs Debian's docker.io)"
    )


class Dockerd:
    """One `dockerd` process and a `docker` CLI bound to it."""

    def __init__(self) -> None:
        dockerd = shutil.which("dockerd") or (
            "/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None
        )
        if dockerd is None:
            raise DockerdUnavailableError("no dockerd (scripts/test installs Debian's docker.io)")
        if os.geteuid() != 0:
            raise DockerdUnavailableError("dockerd needs root")
        self.dockerd = dockerd
        self.cli = _docker_cli()
        # Short: the daemon's and containerd's unix socket paths must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="sutazai-dockerd-", dir="/tmp"))
        self.socket = self.dir / "docker.sock"
        self.log_path = self.dir / "dockerd.log"
        (self.dir / "daemon.json").write_text("{}\n", encoding="utf-8")
        (self.dir / "cli").mkdir()
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.dir / "cli"),
            "DOCKER_BUILDKIT": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.dockerd,
                    f"--host=unix://{self.socket}",
                    f"--data-root={self.dir / 'data'}",
                    f"--exec-root={self.dir / 'exec'}",
                    f"--pidfile={self.dir / 'docker.pid'}",
                    f"--config-file={self.dir / 'daemon.json'}",
                    "--iptables=false",
                    "--bridge=none",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DockerdUnavailableError(f"dockerd exited at start:\n{self.log_tail()}")
            if self.docker("version", timeout_s=10).returncode == 0:
                return
            time.sleep(0.2)
        raise DockerdUnavailableError(
            f"dockerd did not answer within {timeout_s}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def docker(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip

    def check(self, *args: str, timeout_s: float = 120.0) -> str:
        """Run `docker ARGS`, fail the test with its output unless it exits 0; its stdout."""
        result = self.docker(*args, timeout_s=timeout_s)
        assert result.returncode == 0, describe(result)
        return result.stdout.strip()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the daemon by its PID (SIGTERM, SIGKILL after `timeout_s`), remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            for container in self.docker("ps", "-aq").stdout.split():
                self.docker("rm", "-f", "-v", container)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Whatever the daemon left mounted under its roots (it unmounts on a clean stop).
        mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
        points = [line.split()[1] for line in mounts if len(line.split()) > 1]
        for point in sorted((p for p in points if p.startswith(f"{self.dir}/")), reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def base_tarball() -> Path:
    """The debootstrapped root filesystem, made once per machine and script version."""
    digest = hashlib.sha256(BASE_SCRIPT.read_bytes()).hexdigest()[:12]
    tarball = BASE_CACHE / f"bookworm-python3-{digest}.tar"
    if not tarball.is_file():
        if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").is_file():
            raise DockerdUnavailableError("no debootstrap (scripts/test installs it)")
        made = subprocess.run(
            [str(BASE_SCRIPT), str(tarball)], capture_output=True, text=True, timeout=900,
            check=False,
        )  # fmt: skip
        assert made.returncode == 0, describe(made)
    return tarball


def pip_config(python: str) -> dict[str, str]:
    """`pip config list` of this machine: {key: value}, the environment's entries last."""
    listed = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    found: dict[str, str] = {}
    lines = sorted(listed.stdout.splitlines(), key=lambda line: line.startswith(":env:"))
    for line in lines:
        name, sep, value = line.partition("=")
        if sep:
            found[name.rpartition(".")[2]] = value.strip().strip("'\"")
    return found


def build_options(python: str) -> list[str]:
    """`docker build` options that let pip in the build reach PyPI as this host's pip does:
    the index URLs (http(s) only; a file:// index or find-links of the host is not in the
    build), proxies, and the CA bundle of a TLS-inspecting proxy as the `pip-ca` secret."""
    config = pip_config(python)
    options: list[str] = []
    index = config.get("index-url", "")
    if index.startswith(("http://", "https://")):
        options += ["--build-arg", f"PIP_INDEX_URL={index}"]
    extra = [u for u in config.get("extra-index-url", "").split() if u.startswith("http")]
    if extra:
        options += ["--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(extra)}"]
    proxy = config.get("proxy", "")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        value = os.environ.get(name) or os.environ.get(name.lower()) or ""
        if not value and proxy and name != "NO_PROXY":
            value = proxy
        if value:
            options += ["--build-arg", f"{name}={value}"]
    cert = config.get("cert") or os.environ.get("SSL_CERT_FILE", "")
    if cert and Path(cert).is_file():
        options += ["--secret", f"id=pip-ca,src={cert}"]
    return options


def wait_for(
    what: str, condition: Callable[[], object], timeout_s: float, interval_s: float = 0.2
) -> float:
    """Poll ``condition()`` until truthy; the seconds it took. Fails after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(interval_s)
    return time.monotonic() - start
