"""Sessions, KV and blocking queries of the fake Consul (``tests/fakes/consul.py``).

Written from Consul's HTTP API documentation (session, kv, blocking queries) and checked
against a real Consul 1.8 agent:

- ``PUT /v1/session/create``: ``TTL`` between 10s and 24h (else 500 ``Invalid Session TTL
  '<ns>', must be between [10s=24h0m0s]``), ``LockDelay`` (default 15s), ``Behavior``
  ``release`` (default) or ``delete`` (else 500 ``Invalid Behavior setting '<b>'``), ``Name``;
  answers ``{"ID": ...}``. Unknown fields are ignored, as the real agent does.
- A session not renewed is invalidated exactly ``2 x TTL`` after its creation or last renewal
  (Consul's ``SessionTTLMultiplier``), on the injectable clock. Invalidating (or destroying) a
  session releases its locks (``release``) or deletes its keys (``delete``), and keys it held
  cannot be acquired by another session for its ``LockDelay``.
- ``PUT /v1/session/renew/<id>``: 200 with the session list; unknown → 404 ``Session id '<id>'
  not found``. ``/v1/session/destroy/<id>``: ``true`` even for an unknown id.
  ``GET /v1/session/info/<id>``: ``[session]`` or ``[]``.
- ``GET /v1/kv/<key>`` (``?recurse`` for a prefix): a JSON list of entries with ``Value``
  base64 (``null`` when empty), ``Session`` only while locked, ``LockIndex``, ``Flags``,
  ``CreateIndex``, ``ModifyIndex``; 404 with an empty body when nothing matches. Every read
  carries ``X-Consul-Index``; with ``?index=N`` greater or equal to it the read blocks until
  something changes or ``wait`` (default 5m, max 10m) passes.
- ``PUT /v1/kv/<key>`` with ``?acquire=<session>`` / ``?release=<session>`` / ``?cas=<index>``
  answers ``true`` or ``false``; acquire with an unknown session is 500 ``invalid session
  "<id>"``; ``?acquire=`` empty is 500 ``missing session``.
  ``DELETE /v1/kv/<key>`` (``?recurse``) answers ``true``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.consul_state import go_duration_s

SESSION_TTL_MIN_S = 10.0
SESSION_TTL_MAX_S = 86400.0
SESSION_TTL_MULTIPLIER = 2.0
DEFAULT_LOCK_DELAY_S = 15.0
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0


class KvServerError(Exception):
    """Answered as HTTP 500 with the message as the plain-text body."""


class KvNotFoundError(Exception):
    """Answered as HTTP 404 with the message as the plain-text body."""


@dataclass
class FakeSession:
    id: str
    name: str
    ttl_s: float | None
    lock_delay_s: float
    behavior: str
    renewed_at: float
    create_index: int
    modify_index: int

    def expires_at(self) -> float | None:
        if self.ttl_s is None:
            return None
        return self.renewed_at + SESSION_TTL_MULTIPLIER * self.ttl_s

    def to_json(self, node: str) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": node,
            "LockDelay": round(self.lock_delay_s * 1e9),
            "Behavior": self.behavior,
            "TTL": "" if self.ttl_s is None else _go_seconds(self.ttl_s),
            "NodeChecks": ["serfHealth"],
            "ServiceChecks": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class FakeKey:
    key: str
    value: bytes
    flags: int
    session: str | None
    lock_index: int
    create_index: int
    modify_index: int

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


def _go_seconds(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds}s"


class KvStore:
    """Sessions and keys; ``next_index`` is the agent's shared Raft index."""

    def __init__(self, clock: Callable[[], float], next_index: Callable[[], int]) -> None:
        self.clock = clock
        self._next_index = next_index
        self.sessions: dict[str, FakeSession] = {}
        self.keys: dict[str, FakeKey] = {}
        self.lock_delays: dict[str, float] = {}
        self.kv_index = 1
        self.invalidated: list[str] = []
        self._changed = asyncio.Event()

    # --- time and change -----------------------------------------------------------------
    def evaluate(self) -> None:
        now = self.clock()
        for session in list(self.sessions.values()):
            expires = session.expires_at()
            if expires is not None and now >= expires:
                self.invalidate(session.id)

    def _touch(self) -> int:
        self.kv_index = self._next_index()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return self.kv_index

    async def wait_change(self, index: int, wait_s: float) -> None:
        """Block while ``kv_index <= index``, at most ``wait_s`` (a blocking query)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.kv_index <= index:
            left = deadline - loop.time()
            if left <= 0:
                return
            # Wake at least every 100 ms to apply time (session TTLs) on the fake's clock.
            try:
                async with asyncio.timeout(min(left, 0.1)):
                    await self._changed.wait()
            except TimeoutError:
                self.evaluate()

    # --- sessions --------------------------------------------------------------------------
    def create_session(self, body: dict[str, Any]) -> str:
        fields = {k.lower(): v for k, v in body.items()}
        ttl_s: float | None = None
        if fields.get("ttl"):
            ttl_s = go_duration_s(fields["ttl"])
            if ttl_s != 0 and not SESSION_TTL_MIN_S <= ttl_s <= SESSION_TTL_MAX_S:
                raise KvServerError(
                    f"Invalid Session TTL '{round(ttl_s * 1e9)}', must be between [10s=24h0m0s]"
                )
            ttl_s = ttl_s or None
        behavior = fields.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise KvServerError(f"Invalid Behavior setting '{behavior}'")
        delay = fields.get("lockdelay")
        lock_delay_s = DEFAULT_LOCK_DELAY_S if delay is None else go_duration_s(delay)
        if isinstance(delay, int | float) and not isinstance(delay, bool) and delay < 1e6:
            lock_delay_s = float(delay)  # Consul reads a small number as seconds
        index = self._next_index()
        session = FakeSession(
            id=str(uuid.uuid4()),
            name=str(fields.get("name") or ""),
            ttl_s=ttl_s,
            lock_delay_s=lock_delay_s,
            behavior=behavior,
            renewed_at=self.clock(),
            create_index=index,
            modify_index=index,
        )
        self.sessions[session.id] = session
        return session.id

    def renew_session(self, session_id: str) -> FakeSession:
        self.evaluate()
        session = self.sessions.get(session_id)
        if session is None:
            raise KvNotFoundError(f"Session id '{session_id}' not found")
        session.renewed_at = self.clock()
        return session

    def invalidate(self, session_id: str) -> None:
        """Destroyed or expired: release or delete its keys, start their lock delays."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self.invalidated.append(session_id)
        now = self.clock()
        touched = False
        for key in list(self.keys.values()):
            if key.session != session_id:
                continue
            touched = True
            if session.lock_delay_s > 0:
                self.lock_delays[key.key] = now + session.lock_delay_s
            if session.behavior == "delete":
                del self.keys[key.key]
            else:
                key.session = None
                key.modify_index = self._next_index()
        if touched:
            self._touch()

    # --- keys ------------------------------------------------------------------------------
    def get(self, key: str, recurse: bool) -> list[FakeKey]:
        self.evaluate()
        if recurse:
            return [self.keys[k] for k in sorted(self.keys) if k.startswith(key)]
        found = self.keys.get(key)
        return [] if found is None else [found]

    def put(self, key: str, value: bytes, query: dict[str, str]) -> bool:
        self.evaluate()
        now = self.clock()
        existing = self.keys.get(key)
        flags = int(query.get("flags", "0") or 0)
        if "cas" in query:
            cas = int(query["cas"])
            if (cas == 0 and existing is not None) or (
                cas != 0 and (existing is None or existing.modify_index != cas)
            ):
                return False
        if "acquire" in query:
            session_id = query["acquire"]
            if not session_id:
                raise KvServerError("missing session")
            if session_id not in self.sessions:
                raise KvServerError(f'invalid session "{session_id}"')
            if existing is not None and existing.session not in (None, session_id):
                return False
            if existing is None or existing.session != session_id:
                until = self.lock_delays.get(key)
                if until is not None and now < until:
                    return False
            lock_index = 0 if existing is None else existing.lock_index
            if existing is None or existing.session != session_id:
                lock_index += 1
            self._write(key, value, flags, session_id, lock_index)
            return True
        if "release" in query:
            session_id = query["release"]
            if existing is None or existing.session != session_id or not session_id:
                return False
            self._write(key, value, flags, None, existing.lock_index)
            return True
        holder = None if existing is None else existing.session
        self._write(key, value, flags, holder, 0 if existing is None else existing.lock_index)
        return True

    def _write(
        self, key: str, value: bytes, flags: int, session: str | None, lock_index: int
    ) -> None:
        index = self._touch()
        existing = self.keys.get(key)
        self.keys[key] = FakeKey(
            key=key,
            value=value,
            flags=flags,
            session=session,
            lock_index=lock_index,
            create_index=index if existing is None else existing.create_index,
            modify_index=index,
        )

    def delete(self, key: str, recurse: bool) -> None:
        self.evaluate()
        doomed = [k for k in self.keys if k.startswith(key)] if recurse else [key]
        removed = [self.keys.pop(k) for k in doomed if k in self.keys]
        if removed:
            self._touch()


class KvRoutes:
    """The HTTP handlers over a ``KvStore``; ``FakeConsul`` mounts them."""

    def __init__(self, store: Callable[[], KvStore], node: str) -> None:
        self._store = store
        self._node = node

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("PUT", "/v1/session/create", self._create),
            ("PUT", "/v1/session/renew/{session_id}", self._renew),
            ("PUT", "/v1/session/destroy/{session_id}", self._destroy),
            ("GET", "/v1/session/info/{session_id}", self._info),
            ("*", "/v1/kv/{key:.*}", self._kv),
        ]

    async def _create(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise KvServerError("Request decode failed: expected a JSON object")
        return web.json_response({"ID": self._store().create_session(body)})

    async def _renew(self, request: web.Request) -> web.StreamResponse:
        session = self._store().renew_session(request.match_info["session_id"])
        return web.json_response([session.to_json(self._node)])

    async def _destroy(self, request: web.Request) -> web.StreamResponse:
        self._store().invalidate(request.match_info["session_id"])
        return web.json_response(True)

    async def _info(self, request: web.Request) -> web.StreamResponse:
        store = self._store()
        store.evaluate()
        session = store.sessions.get(request.match_info["session_id"])
        found = [] if session is None else [session.to_json(self._node)]
        return web.json_response(found, headers={"X-Consul-Index": str(store.kv_index)})

    async def _kv(self, request: web.Request) -> web.StreamResponse:
        store = self._store()
        key = request.match_info["key"]
        query = dict(request.query)
        recurse = "recurse" in query
        if request.method == "GET":
            return await self._read(store, key, recurse, query)
        if request.method == "PUT":
            return web.json_response(store.put(key, await request.read(), query))
        if request.method == "DELETE":
            store.delete(key, recurse)
            return web.json_response(True)
        return web.Response(status=405, text=f"method {request.method} not allowed")

    async def _read(
        self, store: KvStore, key: str, recurse: bool, query: dict[str, str]
    ) -> web.StreamResponse:
        store.evaluate()
        if "index" in query:
            index = int(query["index"] or 0)
            wait_s = go_duration_s(query["wait"]) if query.get("wait") else DEFAULT_WAIT_S
            wait_s = min(wait_s, MAX_WAIT_S)
            # Consul adds up to wait/16 of jitter; the fake answers at ``wait`` exactly.
            await store.wait_change(index, wait_s if math.isfinite(wait_s) else MAX_WAIT_S)
        entries = store.get(key, recurse)
        headers = {"X-Consul-Index": str(store.kv_index), "X-Consul-Knownleader": "true"}
        if not entries:
            return web.Response(status=404, headers=headers)
        return web.json_response([e.to_json() for e in entries], headers=headers)
