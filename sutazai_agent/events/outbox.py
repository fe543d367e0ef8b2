"""The durable event outbox: SQLite in ``state_dir/agent.db``.

The database carries an ``epoch``, a UUID created with it: every event names it, so a new or
wiped ``state_dir`` (whose sequences start again at 1) is told apart from the old one. The
outbox holds an exclusive lock on ``state_dir/agent.lock`` while it is open: a second agent
on the same directory fails to start (``StateDirLockedError``) instead of publishing its own
events under the same source and sequences.

Every transition is written here, as a CloudEvent with the service's next sequence number, in
the same transaction that records the service's new last known state. The publisher reads the
events back in order and deletes them once the broker has confirmed them.

All SQLite work runs on one dedicated thread, so the event loop never waits for an fsync and
the connection is only ever used by the thread that opened it. The outbox's own view (known
states, pending count) lives on that thread too and is swapped in whole after each commit,
so readers on the loop see the state of the last commit and never a half-applied batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import sqlite3
import types
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self, TypeVar

import structlog

from sutazai_agent.core.model import KnownState, State, Transition
from sutazai_agent.events import cloudevents as events
from sutazai_agent.web.metrics import Metrics

log = structlog.get_logger(__name__)

DB_NAME = "agent.db"
LOCK_NAME = "agent.lock"
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since TEXT NOT NULL,
    sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    routing_key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""
_T = TypeVar("_T")


class StateDirLockedError(RuntimeError):
    """Another process holds ``state_dir``'s lock (another agent uses this directory)."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event in the outbox, ready to publish."""

    id: str
    service: str
    sequence: int
    routing_key: str
    body: bytes
    created_at: datetime


class SqliteOutbox:
    """Durable, bounded, ordered outbox; implements ``EventSink`` for the monitor."""

    def __init__(
        self, state_dir: str | Path, agent_id: str, max_events: int, metrics: Metrics
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.path = Path(state_dir) / DB_NAME
        self._agent_id = agent_id
        self._max_events = max_events
        self._metrics = metrics
        self._executor: ThreadPoolExecutor | None = None
        # Owned by the worker thread; only ever replaced whole.
        self._db: sqlite3.Connection | None = None
        self._known: Mapping[str, KnownState] = types.MappingProxyType({})
        self._pending = 0
        self._lock: StateDirLock | None = None
        self.epoch = ""

    # --- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        if self._executor is not None:
            raise RuntimeError("the outbox is already open")
        self._lock = StateDirLock(self.path.parent)
        self._lock.acquire()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            self._lock.release()
            raise
        log.info(
            "outbox_opened",
            path=str(self.path),
            epoch=self.epoch,
            pending=self._pending,
            services=len(self._known),
        )

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)
            if self._lock is not None:
                self._lock.release()
        log.info("outbox_closed", pending=self._pending)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # --- EventSink ----------------------------------------------------------------------
    async def append(self, transitions: Sequence[Transition]) -> None:
        """Write the transitions and the services' new states in one durable commit."""
        if transitions:
            await self._call(self._append_sync, list(transitions))

    def known_states(self) -> Mapping[str, KnownState]:
        return self._known

    def pending(self) -> int:
        return self._pending

    # --- read by the publisher ------------------------------------------------------------
    async def peek(self, limit: int, exclude: Collection[str] = ()) -> list[StoredEvent]:
        """The oldest ``limit`` events, oldest first, leaving out the ``exclude`` services."""
        return await self._call(self._peek_sync, limit, sorted(exclude))

    async def ack(self, ids: Iterable[str]) -> int:
        """Delete events the broker has confirmed; returns how many were still there."""
        wanted = list(ids)
        if not wanted:
            return 0
        return await self._call(self._ack_sync, wanted)

    # --- the worker thread ----------------------------------------------------------------
    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        if self._executor is None:
            raise RuntimeError("the outbox is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the outbox is not open")
        return self._db

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            _prepare(db, self.path)
            epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
            known = {
                name: KnownState(State(state), datetime.fromisoformat(since), sequence)
                for name, state, since, sequence in db.execute(
                    "SELECT name, state, since, sequence FROM services"
                )
            }
            pending = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        except BaseException:
            db.close()
            raise
        self._db = db
        self.epoch = epoch
        self._known = types.MappingProxyType(known)
        self._set_pending(pending)

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _append_sync(self, transitions: list[Transition]) -> None:
        db = self._conn()
        changed: dict[str, KnownState] = {}
        created_at = datetime.now(UTC).isoformat()
        rows = []
        for transition in transitions:
            previous = changed.get(transition.service) or self._known.get(transition.service)
            sequence = (previous.sequence if previous is not None else 0) + 1
            event = events.build_event(
                transition, agent_id=self._agent_id, sequence=sequence, epoch=self.epoch
            )
            key = events.routing_key(transition.service, transition.current)
            rows.append(
                (event["id"], transition.service, sequence, key, events.encode(event), created_at)
            )
            changed[transition.service] = KnownState(transition.current, transition.at, sequence)
        dropped: list[tuple[str, int]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO events (id, service, sequence, routing_key, body, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO services (name, state, since, sequence) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET"
                " state = excluded.state, since = excluded.since, sequence = excluded.sequence",
                [
                    (name, state.state.value, state.since.isoformat(), state.sequence)
                    for name, state in changed.items()
                ],
            )
            excess = self._pending + len(rows) - self._max_events
            if excess > 0:
                dropped = db.execute(
                    "DELETE FROM events WHERE pos IN"
                    " (SELECT pos FROM events ORDER BY pos LIMIT ?)"
                    " RETURNING service, sequence",
                    (excess,),
                ).fetchall()
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._known = types.MappingProxyType({**self._known, **changed})
        self._set_pending(self._pending + len(rows) - len(dropped))
        if dropped:
            self._metrics.events_dropped.inc(len(dropped))
            log.error(
                "outbox_full_events_dropped",
                dropped=len(dropped),
                max_events=self._max_events,
                oldest=[f"{service}#{sequence}" for service, sequence in dropped[:5]],
            )

    def _peek_sync(self, limit: int, exclude: list[str]) -> list[StoredEvent]:
        where = f" WHERE service NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
        query = f"SELECT id, service, sequence, routing_key, body, created_at FROM events{where}"  # noqa: S608 - placeholders only
        cursor = self._conn().execute(f"{query} ORDER BY pos LIMIT ?", (*exclude, limit))
        return [
            StoredEvent(
                id=row[0],
                service=row[1],
                sequence=row[2],
                routing_key=row[3],
                body=row[4].encode(),
                created_at=datetime.fromisoformat(row[5]),
            )
            for row in cursor
        ]

    def _ack_sync(self, ids: list[str]) -> int:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = sum(
                db.execute("DELETE FROM events WHERE id = ?", (event_id,)).rowcount
                for event_id in ids
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._set_pending(self._pending - deleted)
        return deleted

    def _set_pending(self, pending: int) -> None:
        self._pending = pending
        self._metrics.events_pending.set(pending)


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is still open, never hiding the error that got us here: SQLite has
    already rolled back after some errors (``database or disk is full``), and a ROLLBACK then
    fails with ``cannot rollback - no transaction is active``."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """WAL with full fsync on commit (durable), then the schema."""
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise RuntimeError(f"{path}: cannot use WAL journal mode (got {mode})")
    db.execute("PRAGMA synchronous=FULL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{path}: schema version {version} is newer than this agent's")
    db.executescript(_SCHEMA)
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', ?) ON CONFLICT (key) DO NOTHING",
        (str(uuid.uuid4()),),
    )
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


class StateDirLock:
    """An exclusive ``flock`` on ``state_dir/agent.lock``, held while the outbox is open.

    The kernel releases it when the process dies, so a crash never leaves it stale. The file
    names the holder's pid, for the message the second agent prints."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirLockedError(
                f"{self.path.parent} is in use by another agent (pid {holder} holds {self.path})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # the pid is for the message only (disk full)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
