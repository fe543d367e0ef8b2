"""Consul sessions and KV locks over ``ConsulClient``: what the identity lock and the group
membership are built on (Consul is the distributed engine; nothing here decides anything).

- a session has a TTL (10 s to 24 h); Consul invalidates it between one and two TTLs after
  the last renewal, and then releases or deletes (``Behavior``) the keys it holds;
- ``acquire`` is a compare-and-set on the key's ``Session``: ``True`` for the one holder;
- a key released by an invalidated session cannot be acquired for ``LockDelay``;
- a read with ``index`` blocks until the answer's ``X-Consul-Index`` moves past it, or
  ``wait_s`` passes (a blocking query).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

from sutazai_agent.consul.client import ConsulClient
from sutazai_agent.consul.ledger import go_duration
from sutazai_agent.consul.types import ConsulError, ConsulNotFoundError

SESSION_TTL_MIN_S = 10.0
"""Consul refuses a session TTL under 10 seconds."""
Behavior = Literal["release", "delete"]


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One key as ``GET /v1/kv/<key>`` lists it."""

    key: str
    value: bytes = b""
    session: str | None = None
    lock_index: int = 0
    modify_index: int = 0


class LockApi(Protocol):
    """What the group needs from Consul (``ConsulKv`` in production)."""

    async def create_session(
        self, name: str, ttl_s: float, lock_delay_s: float, behavior: Behavior
    ) -> str: ...

    async def renew_session(self, session_id: str) -> bool: ...

    async def destroy_session(self, session_id: str) -> None: ...

    async def acquire(self, key: str, session_id: str, value: bytes = b"") -> bool: ...

    async def read(
        self, key: str, *, recurse: bool = False, index: int = 0, wait_s: float = 0.0
    ) -> tuple[list[KvEntry], int]: ...


class ConsulKv:
    """Sessions and KV on one Consul agent, through ``client`` (which owns the HTTP pool)."""

    def __init__(self, client: ConsulClient) -> None:
        self._client = client

    async def create_session(
        self, name: str, ttl_s: float, lock_delay_s: float, behavior: Behavior
    ) -> str:
        """``PUT /v1/session/create``; the session's ID."""
        body = {
            "Name": name,
            "TTL": go_duration(max(ttl_s, SESSION_TTL_MIN_S)),
            "LockDelay": go_duration(lock_delay_s),
            "Behavior": behavior,
        }
        answer = await self._client.request(
            "session_create", "PUT", "/v1/session/create", body=body
        )
        data: Any = answer.data
        if not isinstance(data, dict) or not isinstance(data.get("ID"), str):
            raise ConsulError("session_create", 'expected {"ID": ...}', answer.status)
        return str(data["ID"])

    async def renew_session(self, session_id: str) -> bool:
        """``PUT /v1/session/renew/<id>``: ``False`` when the session is gone (invalidated)."""
        try:
            await self._client.request(
                "session_renew", "PUT", f"/v1/session/renew/{_path(session_id)}"
            )
        except ConsulNotFoundError:
            return False
        return True

    async def destroy_session(self, session_id: str) -> None:
        """``PUT /v1/session/destroy/<id>``: its keys are released or deleted at once."""
        await self._client.request(
            "session_destroy", "PUT", f"/v1/session/destroy/{_path(session_id)}"
        )

    async def acquire(self, key: str, session_id: str, value: bytes = b"") -> bool:
        """``PUT /v1/kv/<key>?acquire=<session>``: whether this session holds the key now."""
        answer = await self._client.request(
            "kv_acquire", "PUT", f"/v1/kv/{_path(key)}", data=value, params={"acquire": session_id}
        )
        return answer.data is True

    async def release(self, key: str, session_id: str) -> bool:
        """``PUT /v1/kv/<key>?release=<session>``."""
        answer = await self._client.request(
            "kv_release", "PUT", f"/v1/kv/{_path(key)}", params={"release": session_id}
        )
        return answer.data is True

    async def read(
        self, key: str, *, recurse: bool = False, index: int = 0, wait_s: float = 0.0
    ) -> tuple[list[KvEntry], int]:
        """``GET /v1/kv/<key>`` (a prefix with ``recurse``); blocking when ``index`` > 0.
        Returns the entries (none when the key is absent) and ``X-Consul-Index``."""
        params: dict[str, str] = {}
        if recurse:
            params["recurse"] = ""
        timeout_s = None
        if index > 0:
            params["index"] = str(index)
            params["wait"] = go_duration(wait_s)
            # Consul adds up to wait/16 of jitter before it answers.
            timeout_s = wait_s * 17 / 16 + 5.0
        answer = await self._client.request(
            "kv_read",
            "GET",
            f"/v1/kv/{_path(key)}",
            params=params,
            timeout_s=timeout_s,
            absent_ok=True,
        )
        return _entries(answer.data), answer.index


def _path(value: str) -> str:
    return quote(value, safe="/:@-_.~")


def _entries(data: Any) -> list[KvEntry]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConsulError("kv_read", "expected a JSON list")
    out = []
    try:
        for item in data:
            raw = item.get("Value")
            out.append(
                KvEntry(
                    key=str(item["Key"]),
                    value=base64.b64decode(raw) if raw else b"",
                    session=item.get("Session") or None,
                    lock_index=int(item.get("LockIndex") or 0),
                    modify_index=int(item.get("ModifyIndex") or 0),
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConsulError("kv_read", "malformed KV entry") from None
    return out
