"""The postgres probe against the real PostgreSQL on 127.0.0.1:5432 (trust auth), and a
throwaway cluster the test starts (``initdb``) with password authentication (scram) and a
``standby.signal``, so it runs in recovery like a standby and rejects wrong passwords."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from sutazai_agent.config import PostgresService
from sutazai_agent.core.model import Outcome
from sutazai_agent.core.protocols import Probe
from sutazai_agent.probes import build_probe, run_probe
from tests.component.conftest import HangingServer
from tests.component.leaks import cancelled_once_connected, fd_growth

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
PASSWORD = "probe-secret-9"
TIMEOUT_S = 2.0


def probe_for(
    session: aiohttp.ClientSession,
    dsn: str,
    *,
    primary: bool = False,
    timeout_s: float = TIMEOUT_S,
) -> Probe:
    service = PostgresService(name="db", kind="postgres", dsn=dsn, primary=primary)
    return build_probe(service, session, timeout_s)


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(*args: str) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return list(args)


@pytest.fixture(scope="module")
def standby_port() -> Iterator[int]:
    """A fresh cluster in recovery with scram auth for user ``probe``; yields its port."""
    bin_dir = _bin_dir()
    if bin_dir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    home = Path(tempfile.mkdtemp(prefix="sutazai-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    (home / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(home / "pw", "postgres")
    data = home / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    subprocess.run(
        _as_postgres(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "probe",
            f"--pwfile={home / 'pw'}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ),
        check=True,
        capture_output=True,
    )
    # No primary to follow and no archive: the server stays in recovery, serving reads.
    subprocess.run(_as_postgres("touch", str(data / "standby.signal")), check=True)
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = str(bin_dir / "pg_ctl")
    subprocess.run(
        _as_postgres(
            pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(home / "log"), "start"
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield port
    finally:
        subprocess.run(
            _as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(home, ignore_errors=True)


async def test_real_postgres_is_up(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, f"{POSTGRES}/postgres").probe()

    assert result.outcome is Outcome.OK
    assert result.detail.startswith("PostgreSQL ")


async def test_primary_that_is_not_in_recovery_is_up(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, f"{POSTGRES}/postgres", primary=True).probe()

    assert result.outcome is Outcome.OK


async def test_refused(session: aiohttp.ClientSession, closed_port: int) -> None:
    result = await probe_for(session, f"postgresql://postgres@127.0.0.1:{closed_port}/x").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == "connection refused"


async def test_unknown_role_is_down(session: aiohttp.ClientSession) -> None:
    dsn = "postgresql://no_such_role:pw-123@127.0.0.1:5432/postgres"

    result = await probe_for(session, dsn).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == 'role "no_such_role" does not exist'
    assert "pw-123" not in result.reason + result.detail


async def test_unknown_database_is_down(session: aiohttp.ClientSession) -> None:
    result = await probe_for(session, f"{POSTGRES}/no_such_db").probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == 'database "no_such_db" does not exist'


async def test_wrong_password_is_down_without_the_password(
    session: aiohttp.ClientSession, standby_port: int
) -> None:
    dsn = f"postgresql://probe:wrong-pw-1@127.0.0.1:{standby_port}/postgres"

    result = await probe_for(session, dsn).probe()

    assert result.outcome is Outcome.FAIL
    assert result.reason == 'password authentication failed for user "probe"'


async def test_standby_is_up_unless_a_primary_is_asked_for(
    session: aiohttp.ClientSession, standby_port: int
) -> None:
    dsn = f"postgresql://probe:{PASSWORD}@127.0.0.1:{standby_port}/postgres"

    any_server = await probe_for(session, dsn).probe()
    primary = await probe_for(session, dsn, primary=True).probe()

    assert any_server.outcome is Outcome.OK
    assert primary.outcome is Outcome.DEGRADED
    assert primary.reason == "in recovery (a standby), primary asked for"


async def test_server_that_never_answers_times_out(
    session: aiohttp.ClientSession, hanging_server: HangingServer
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{hanging_server.port}/postgres"

    result = await run_probe(probe_for(session, dsn, timeout_s=0.2), 0.2)

    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timeout after 0.2s"
    assert result.latency_s >= 0.2


async def test_no_descriptor_leaks_on_refusal_timeout_or_cancellation(
    session: aiohttp.ClientSession, closed_port: int, hanging_server: HangingServer
) -> None:
    refused = probe_for(session, f"postgresql://postgres@127.0.0.1:{closed_port}/x")
    hanging_dsn = f"postgresql://postgres@127.0.0.1:{hanging_server.port}/postgres"
    hanging = probe_for(session, hanging_dsn, timeout_s=0.05)
    up = probe_for(session, f"{POSTGRES}/postgres", primary=True)

    cancelled = cancelled_once_connected(hanging.probe, hanging_server)

    assert await fd_growth(refused.probe, 50) <= 0
    assert await fd_growth(hanging.probe, 20) <= 0
    assert await fd_growth(cancelled, 20) <= 0
    assert await fd_growth(up.probe, 30) <= 0
