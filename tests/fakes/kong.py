"""A strict fake Kong 3.x: Admin API, status listener and proxy, each on its own port.

Written from Kong's Admin API documentation and its route handlers
(``kong/api/routes/kong.lua``, ``kong/api/routes/health.lua``, ``kong/status/ready.lua``):

- admin ``GET /`` node information (``version``, ``tagline``, ...);
- admin and status listener ``GET /status``: ``{"database": {"reachable": ...}, "memory":
  {"lua_shared_dicts": ..., "workers_lua_vms": ...}, "server": {"connections_*": ...,
  "total_requests": ...}, "configuration_hash": ...}`` (the hash only in DB-less mode);
  ``?unit=`` is validated like Kong (400 on an unknown unit);
- ``GET /status/ready``: 200 ``{"message": "ready"}`` or 503 ``{"message": "<why>"}``;
  404 ``{"message": "Not found"}`` when emulating Kong < 3.3, which has no such route;
- other methods on those routes: 405 ``{"message": "Method not allowed"}``; unknown admin
  paths: 404 ``{"message": "Not found"}``;
- proxy: 404 ``{"message": "no Route matched with those values", "request_id": ...}`` for
  every request no route matches, with Kong's ``Server``/``X-Kong-*`` headers.

Usage::

    async with FakeKong() as kong:
        kong.admin_url, kong.proxy_url, kong.status_url
        kong.set_ready(False, "no configuration available")
        await kong.stop_proxy(); await kong.start_proxy()
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

EMPTY_CONFIG_HASH = "00000000000000000000000000000000"
_UNITS = {"b": "", "k": " KiB", "m": " MiB", "g": " GiB"}


@dataclass
class _Listener:
    """One aiohttp app on a fixed 127.0.0.1 port that can be stopped and started again."""

    app: web.Application
    port: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self) -> None:
        if self.runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = runner.addresses[0][1]
        self.runner = runner

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class FakeKong:
    """Kong with switchable states: admin/proxy/status listener down, not ready, DB down."""

    def __init__(
        self,
        *,
        version: str = "3.9.1",
        dbless: bool = True,
        readiness_endpoint: bool = True,
    ) -> None:
        self.version = version
        self.dbless = dbless
        self.readiness_endpoint = readiness_endpoint
        self.ready = True
        self.not_ready_message = "no configuration available"
        self.database_reachable = True
        self.node_id = str(uuid.uuid4())
        self.configuration_hash = secrets.token_hex(16)
        self.requests: list[tuple[str, str, str]] = []
        """(listener, method, path) of every request received, in order."""
        self._routes: dict[str, tuple[int, dict[str, Any]]] = {}
        self._accepted = 0
        self._admin = _Listener(self._admin_app())
        self._status = _Listener(self._status_app())
        self._proxy = _Listener(self._proxy_app())

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> FakeKong:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        for listener in (self._admin, self._status, self._proxy):
            await listener.start()

    async def stop(self) -> None:
        for listener in (self._admin, self._status, self._proxy):
            await listener.stop()

    async def stop_admin(self) -> None:
        await self._admin.stop()

    async def start_admin(self) -> None:
        await self._admin.start()

    async def stop_proxy(self) -> None:
        await self._proxy.stop()

    async def start_proxy(self) -> None:
        await self._proxy.start()

    async def stop_status(self) -> None:
        await self._status.stop()

    async def start_status(self) -> None:
        await self._status.start()

    @property
    def admin_url(self) -> str:
        return self._admin.url

    @property
    def proxy_url(self) -> str:
        return self._proxy.url

    @property
    def status_url(self) -> str:
        return self._status.url

    # -- switches ---------------------------------------------------------------------------

    def set_ready(self, ready: bool, message: str = "no configuration available") -> None:
        """``/status/ready`` answers 200, or 503 with ``message`` (Kong's reasons, e.g.
        "no configuration available", "failed to connect to database")."""
        self.ready = ready
        self.not_ready_message = message

    def set_database_reachable(self, reachable: bool) -> None:
        self.database_reachable = reachable

    def add_route(self, path: str, status: int, body: dict[str, Any]) -> None:
        """Answer proxy requests under ``path`` with ``status`` and ``body`` — e.g. 502
        ``{"message": "An invalid response was received from the upstream server"}``."""
        self._routes[path] = (status, body)

    # -- responses --------------------------------------------------------------------------

    def _json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> web.Response:
        response = web.json_response(body, status=status)
        response.content_type = "application/json"
        response.charset = "utf-8"
        response.headers["Server"] = f"kong/{self.version}"
        response.headers.update(headers or {})
        return response

    def _admin_json(self, status: int, body: dict[str, Any]) -> web.Response:
        return self._json(
            status,
            body,
            {
                "Access-Control-Allow-Origin": "*",
                "X-Kong-Admin-Latency": "0",
                "X-Kong-Admin-Request-ID": secrets.token_hex(16),
            },
        )

    def _node_status(self, request: web.Request) -> web.Response:
        unit = request.query.get("unit", "m")
        if unit.lower() not in _UNITS:
            message = f"invalid unit '{unit}' (expected 'k/K', 'm/M', or 'g/G')"
            return self._admin_json(400, {"message": message})
        suffix = _UNITS[unit.lower()]
        self._accepted += 1
        body: dict[str, Any] = {
            "database": {"reachable": self.database_reachable},
            "memory": {
                "lua_shared_dicts": {
                    "kong": {"allocated_slabs": f"0.04{suffix}", "capacity": f"5.00{suffix}"},
                    "kong_db_cache": {
                        "allocated_slabs": f"0.80{suffix}",
                        "capacity": f"128.00{suffix}",
                    },
                },
                "workers_lua_vms": [{"http_allocated_gc": f"40.26{suffix}", "pid": 1317}],
            },
            "server": {
                "connections_accepted": self._accepted,
                "connections_active": 1,
                "connections_handled": self._accepted,
                "connections_reading": 0,
                "connections_waiting": 0,
                "connections_writing": 1,
                "total_requests": self._accepted,
            },
        }
        if self.dbless:
            body["configuration_hash"] = (
                self.configuration_hash if self.ready else EMPTY_CONFIG_HASH
            )
        return self._admin_json(200, body)

    def _readiness(self) -> web.Response:
        if not self.readiness_endpoint:
            return self._admin_json(404, {"message": "Not found"})
        if self.ready:
            return self._admin_json(200, {"message": "ready"})
        return self._admin_json(503, {"message": self.not_ready_message})

    def _node_info(self) -> web.Response:
        return self._admin_json(
            200,
            {
                "tagline": "Welcome to kong",
                "version": self.version,
                "edition": "community",
                "hostname": "fake-kong",
                "node_id": self.node_id,
                "lua_version": "LuaJIT 2.1.0-20231117",
                "timers": {"running": 0, "pending": 1},
                "plugins": {"available_on_server": {}, "enabled_in_cluster": []},
                "configuration": {"database": "off" if self.dbless else "postgres"},
            },
        )

    # -- apps -------------------------------------------------------------------------------

    def _api_app(self, name: str, routes: dict[str, Any]) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append((name, request.method, request.path))
            handler = routes.get(request.path)
            if handler is None:
                return self._admin_json(404, {"message": "Not found"})
            if request.method != "GET":
                return self._admin_json(405, {"message": "Method not allowed"})
            response: web.Response = handler(request)
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    def _admin_app(self) -> web.Application:
        return self._api_app(
            "admin",
            {
                "/": lambda _: self._node_info(),
                "/status": self._node_status,
                "/status/ready": lambda _: self._readiness(),
            },
        )

    def _status_app(self) -> web.Application:
        return self._api_app(
            "status",
            {"/status": self._node_status, "/status/ready": lambda _: self._readiness()},
        )

    def _proxy_app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append(("proxy", request.method, request.path))
            request_id = secrets.token_hex(16)
            headers = {"X-Kong-Response-Latency": "0", "X-Kong-Request-Id": request_id}
            for prefix, (status, body) in sorted(self._routes.items(), reverse=True):
                if request.path.startswith(prefix):
                    return self._json(status, {**body, "request_id": request_id}, headers)
            body = {"message": "no Route matched with those values", "request_id": request_id}
            return self._json(404, body, headers)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app
