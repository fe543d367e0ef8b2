"""A strict, stateful fake Consul agent for tests: an aiohttp app on 127.0.0.1, port 0.

    clock = ManualClock()
    async with FakeConsul(clock=clock) as consul:
        ...  # point the client at consul.url
        clock.advance(31)  # TTLs expire and the reaper runs on this clock
        assert consul.check("sutazai:kong").status == "critical"

Endpoints (as documented by Consul): PUT /v1/agent/service/register,
PUT /v1/agent/service/deregister/<id>, GET /v1/agent/services, GET /v1/agent/checks,
PUT /v1/agent/check/update|pass|warn|fail/<id>, GET /v1/agent/service/<id>,
GET /v1/health/service/<name>, sessions and KV with blocking queries (``consul_kv``),
GET /v1/catalog/services, GET /v1/status/leader, GET /v1/status/peers. Another method on a
known path answers 405. Errors are plain text with the real status codes and messages; see
``consul_state`` for the decoding rules and the fake's deliberate limits.

Modes: ``acl_token`` (any other token gets 403 "Permission denied"), ``no_leader`` (health
and catalog reads answer 500 "No cluster leader", the leader is ""), ``legacy`` (Consul before
1.11: deregistering an unknown id answers 200 and updating an unknown check 500 "CheckID ...
does not have associated TTL", instead of 404s). ``stop()``/``start()`` simulate an outage
(state kept, same port); ``restart()`` wipes the state. ``requests`` counts calls per
(method, route); ``writes()`` sums the PUTs.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.fakes.consul_kv import KvNotFoundError, KvRoutes, KvServerError, KvStore
from tests.fakes.consul_state import (
    CHECK_STATUSES,
    CHECK_UPDATE_FIELDS,
    DEREGISTER_FLOOR_S,
    SERVICE_FIELDS,
    BadRequestError,
    FakeCheck,
    FakeService,
    NotFoundError,
    decode_checks,
    decode_struct,
    matches,
    parse_filter,
    reap_deadline,
    validate_meta,
)

NODE = "fake-consul"
NODE_ID = str(uuid.UUID(int=1))
SERVER = "127.0.0.1:8300"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServerError(Exception):
    """Answered as HTTP 500 with the message as the plain-text body, like Consul's errors."""


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConsul:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        acl_token: str | None = None,
        legacy: bool = False,
        reap_interval_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        evaluate_every_s: float = 0.0,
    ) -> None:
        """``evaluate_every_s``: expire TTLs and reap at most this often (0: before every
        request, exact). ``evaluate()`` walks every check, so with thousands of services
        the benchmarks' fake (``bench/consul_server.py``) throttles it."""
        self.clock = clock
        self.evaluate_every_s = evaluate_every_s
        self._evaluated_at: float | None = None
        self.ssl_context = ssl_context
        self.acl_token = acl_token
        self.legacy = legacy
        self.no_leader = False
        self.reap_interval_s = reap_interval_s
        self.requests: Counter[tuple[str, str]] = Counter()
        self.rate_limited_writes = 0
        """The next this many PUTs are refused with Consul's 429 "rate limit exceeded"."""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._wipe()

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeConsul is not started")
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(
            runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        await site.start()
        if not self.port:
            self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def restart(self) -> None:
        """Consul restarted without its data directory: every registration is gone."""
        self._wipe()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _wipe(self) -> None:
        self.services: dict[str, FakeService] = {}
        self.checks: dict[str, FakeCheck] = {}
        # Check IDs per service ID (a dict for its order): registering, deregistering and
        # reaping touch only the service's own checks, not all of them (O(N) per call at
        # 10,000 services was what held the benchmarks' fake down to ~500 calls/s).
        self._service_checks: dict[str, dict[str, None]] = {}
        self.started_at = self.clock()
        self.index = 10
        self.reaped: list[str] = []
        self.kv = KvStore(self.clock, self._next_index)

    # --- direct access for tests ---------------------------------------------------------
    def writes(self) -> int:
        return sum(n for (method, _), n in self.requests.items() if method == "PUT")

    def service(self, service_id: str) -> FakeService | None:
        self.evaluate()
        return self.services.get(service_id)

    def check(self, check_id: str) -> FakeCheck | None:
        self.evaluate()
        return self.checks.get(check_id)

    def passing(self, name: str) -> list[str]:
        """IDs of the instances of ``name`` that ``/v1/health/service/<name>?passing`` lists."""
        return [e["Service"]["ID"] for e in self._health(name, passing_only=True)]

    def evaluate(self) -> None:
        """Apply time: expire TTLs, then run the reaper for every tick that has passed."""
        now = self.clock()
        for check in self.checks.values():
            if check.status != "critical" and now >= check.expires_at:
                check.set_status("critical", "TTL expired", check.expires_at)
                check.modify_index = self._next_index()
        for check in list(self.checks.values()):
            deadline = reap_deadline(check, self.started_at, self.reap_interval_s)
            if deadline is not None and now >= deadline and check.service_id in self.services:
                self._remove_service(check.service_id)
                self.reaped.append(check.service_id)
        self.kv.evaluate()

    def _next_index(self) -> int:
        self.index += 1
        return self.index

    # --- the HTTP app ----------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        routes: list[tuple[str, str, Handler]] = [
            ("PUT", "/v1/agent/service/register", self._register),
            ("PUT", "/v1/agent/service/deregister/{service_id}", self._deregister),
            ("GET", "/v1/agent/services", self._agent_services),
            ("GET", "/v1/agent/service/{service_id}", self._agent_service),
            ("GET", "/v1/agent/checks", self._agent_checks),
            ("PUT", "/v1/agent/check/update/{check_id}", self._check_update),
            ("PUT", "/v1/agent/check/pass/{check_id}", self._check_pass),
            ("PUT", "/v1/agent/check/warn/{check_id}", self._check_warn),
            ("PUT", "/v1/agent/check/fail/{check_id}", self._check_fail),
            ("GET", "/v1/health/service/{name}", self._health_service),
            ("GET", "/v1/catalog/services", self._catalog_services),
            ("GET", "/v1/status/leader", self._leader),
            ("GET", "/v1/status/peers", self._peers),
        ]
        routes.extend(KvRoutes(lambda: self.kv, NODE).routes())
        for method, path, handler in routes:
            wrapped = handler if method == "*" else self._only(method, handler)
            app.router.add_route("*", path, wrapped)
        return app

    def _only(self, method: str, handler: Handler) -> Handler:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            if request.method != method:
                return web.Response(
                    status=405,
                    text=f"method {request.method} not allowed",
                    headers={"Allow": method},
                )
            return await handler(request)

        return dispatch

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else request.path
        self.requests[(request.method, route)] += 1
        now = self.clock()
        if self._evaluated_at is None or now - self._evaluated_at >= self.evaluate_every_s:
            self._evaluated_at = now
            self.evaluate()
        if self.acl_token is not None and not route.startswith("/v1/status/"):
            token = request.headers.get("X-Consul-Token") or request.query.get("token", "")
            if token != self.acl_token:
                return web.Response(status=403, text="Permission denied")
        if self.rate_limited_writes and request.method == "PUT":
            self.rate_limited_writes -= 1
            return web.Response(status=429, text="rate limit exceeded")
        try:
            return await handler(request)
        except BadRequestError as exc:
            return web.Response(status=400, text=str(exc))
        except NotFoundError as exc:
            return web.Response(status=404, text=str(exc))
        except (ServerError, KvServerError) as exc:
            return web.Response(status=500, text=str(exc))
        except KvNotFoundError as exc:
            return web.Response(status=404, text=str(exc))
        except web.HTTPException:
            raise
        except Exception as exc:
            return web.Response(status=500, text=f"fake consul error: {exc!r}")

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadRequestError(f"Request decode failed: {exc}") from None

    # --- agent services ----------------------------------------------------------------------
    async def _register(self, request: web.Request) -> web.StreamResponse:
        definition = decode_struct(await self._body(request), "ServiceDefinition", SERVICE_FIELDS)
        if not definition.get("Name"):
            raise BadRequestError("Missing service name")
        address = definition.get("Address", "")
        if address in ("0.0.0.0", "::", "[::]"):
            raise BadRequestError("Invalid service address")
        meta = definition.get("Meta", {})
        validate_meta(meta)
        service_id = definition.get("ID") or definition["Name"]
        checks = decode_checks(definition, service_id)
        now = self.clock()
        previous = self.services.get(service_id)
        index = self._next_index()
        self.services[service_id] = FakeService(
            id=service_id,
            name=definition["Name"],
            address=address,
            port=definition.get("Port", 0),
            tags=list(definition.get("Tags", [])),
            meta=dict(meta),
            enable_tag_override=definition.get("EnableTagOverride", False),
            create_index=previous.create_index if previous else index,
            modify_index=index,
        )
        if request.query.get("replace-existing-checks", "") in ("1", "true"):
            new_ids = {c["CheckID"] for c in checks}
            for check_id in list(self._service_checks.get(service_id, ())):
                if check_id not in new_ids:
                    self._drop_check(check_id)
        for spec in checks:
            self._add_check(spec, self.services[service_id], now, index)
        return web.Response(status=200)

    def _add_check(
        self, spec: dict[str, Any], service: FakeService, now: float, index: int
    ) -> None:
        after = spec.get("DeregisterCriticalServiceAfter")
        if after is not None and after <= 0:
            after = None
        if after is not None:
            after = max(after, DEREGISTER_FLOOR_S)  # Consul logs a warning and uses 1m
        check = FakeCheck(
            check_id=spec["CheckID"],
            name=spec.get("Name") or f"Service '{service.name}' check",
            service_id=service.id,
            service_name=service.name,
            ttl_s=spec["TTL"],
            expires_at=now + spec["TTL"],
            notes=spec.get("Notes", ""),
            deregister_after_s=after,
            create_index=index,
            modify_index=index,
        )
        previous = self.checks.get(check.check_id)
        if previous is not None:
            # Re-registration keeps the check's health whatever "Status" says.
            check.status, check.output = previous.status, previous.output
            check.critical_since = previous.critical_since
            check.create_index = previous.create_index
        else:
            check.set_status(spec.get("Status") or "critical", "", now)
        self.checks[check.check_id] = check
        own = self._service_checks.setdefault(service.id, {})
        own[check.check_id] = None
        if previous is not None and previous.service_id != service.id:
            # The ID moves to another service (rare): keep the index in ``checks`` order.
            self._service_checks.get(previous.service_id, {}).pop(check.check_id, None)
            self._service_checks[service.id] = {cid: None for cid in self.checks if cid in own}

    async def _deregister(self, request: web.Request) -> web.StreamResponse:
        service_id = request.match_info["service_id"]
        if service_id not in self.services:
            if self.legacy:
                return web.Response(status=200)
            raise NotFoundError(
                f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                "not the service name."
            )
        self._remove_service(service_id)
        return web.Response(status=200)

    def _remove_service(self, service_id: str) -> None:
        self.services.pop(service_id, None)
        for check_id in self._service_checks.pop(service_id, {}):
            self.checks.pop(check_id, None)

    def _drop_check(self, check_id: str) -> None:
        check = self.checks.pop(check_id, None)
        if check is not None:
            self._service_checks.get(check.service_id, {}).pop(check_id, None)

    def _service_check_list(self, service_id: str) -> list[FakeCheck]:
        return [self.checks[cid] for cid in self._service_checks.get(service_id, ())]

    def _service_json(self, service: FakeService) -> dict[str, Any]:
        return {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Meta": dict(service.meta),
            "Port": service.port,
            "Address": service.address,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": service.enable_tag_override,
            "Datacenter": "dc1",
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        }

    def _check_json(self, check: FakeCheck) -> dict[str, Any]:
        service = self.services.get(check.service_id)
        return {
            "Node": NODE,
            "CheckID": check.check_id,
            "Name": check.name,
            "Status": check.status,
            "Notes": check.notes,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": check.service_name,
            "ServiceTags": list(service.tags) if service else [],
            "Type": "ttl",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": check.create_index,
            "ModifyIndex": check.modify_index,
        }

    async def _agent_services(self, request: web.Request) -> web.StreamResponse:
        records = {sid: self._service_json(s) for sid, s in sorted(self.services.items())}
        expression = request.query.get("filter")
        if expression:
            fields = ("ID", "Service", "Tags", "Meta", "Port", "Address", "Kind")
            clauses = parse_filter(expression, fields)
            records = {k: v for k, v in records.items() if matches(clauses, v)}
        return web.json_response(records)

    async def _agent_service(self, request: web.Request) -> web.StreamResponse:
        service_id = request.match_info["service_id"]
        service = self.services.get(service_id)
        if service is None:
            raise NotFoundError(f"unknown service ID: {service_id}")
        record = self._service_json(service)
        record.pop("CreateIndex")
        record.pop("ModifyIndex")
        record["ContentHash"] = f"{service.modify_index:016x}"
        return web.json_response(record)

    async def _agent_checks(self, request: web.Request) -> web.StreamResponse:
        records = {cid: self._check_json(c) for cid, c in sorted(self.checks.items())}
        expression = request.query.get("filter")
        if expression:
            fields = ("CheckID", "Name", "Status", "ServiceID", "ServiceName", "ServiceTags")
            clauses = parse_filter(expression, fields)
            records = {k: v for k, v in records.items() if matches(clauses, v)}
        return web.json_response(records)

    # --- agent checks --------------------------------------------------------------------------
    def _ttl_check(self, check_id: str) -> FakeCheck:
        check = self.checks.get(check_id)
        if check is None:
            if self.legacy:
                raise ServerError(f'CheckID "{check_id}" does not have associated TTL')
            raise NotFoundError(
                f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                "not the check name."
            )
        return check

    def _update(self, check_id: str, status: str, output: str) -> web.StreamResponse:
        check = self._ttl_check(check_id)
        now = self.clock()
        check.set_status(status, output, now)
        check.expires_at = now + check.ttl_s
        check.modify_index = self._next_index()
        return web.Response(status=200)

    async def _check_update(self, request: web.Request) -> web.StreamResponse:
        update = decode_struct(await self._body(request), "checkUpdate", CHECK_UPDATE_FIELDS)
        status = update.get("Status", "")
        if status not in CHECK_STATUSES:
            raise BadRequestError(f"Invalid check status: '{status}'")
        return self._update(request.match_info["check_id"], status, update.get("Output", ""))

    async def _check_pass(self, request: web.Request) -> web.StreamResponse:
        return self._update(
            request.match_info["check_id"], "passing", request.query.get("note", "")
        )

    async def _check_warn(self, request: web.Request) -> web.StreamResponse:
        return self._update(
            request.match_info["check_id"], "warning", request.query.get("note", "")
        )

    async def _check_fail(self, request: web.Request) -> web.StreamResponse:
        return self._update(
            request.match_info["check_id"], "critical", request.query.get("note", "")
        )

    # --- health, catalog, status -----------------------------------------------------------------
    def _health(self, name: str, *, passing_only: bool) -> list[dict[str, Any]]:
        self.evaluate()
        node = {
            "ID": NODE_ID,
            "Node": NODE,
            "Address": "127.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "Meta": {},
        }
        serf = {
            "Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
            "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
        }  # fmt: skip
        entries = []
        for service in sorted(self.services.values(), key=lambda s: s.id):
            if service.name != name:
                continue
            checks = [serf] + [self._check_json(c) for c in self._service_check_list(service.id)]
            if passing_only and any(c["Status"] != "passing" for c in checks):
                continue
            entries.append({"Node": node, "Service": self._service_json(service), "Checks": checks})
        return entries

    async def _health_service(self, request: web.Request) -> web.StreamResponse:
        if self.no_leader:
            return web.Response(status=500, text="No cluster leader")
        passing = request.query.get("passing")
        if passing is not None and passing.lower() not in ("", "1", "0", "true", "false"):
            raise BadRequestError(f"Invalid value for ?passing: {passing!r}")
        only = passing is not None and passing.lower() in ("", "1", "true")
        return web.json_response(self._health(request.match_info["name"], passing_only=only))

    async def _catalog_services(self, _: web.Request) -> web.StreamResponse:
        if self.no_leader:
            return web.Response(status=500, text="No cluster leader")
        catalog: dict[str, list[str]] = {"consul": []}
        for service in self.services.values():
            tags = catalog.setdefault(service.name, [])
            tags.extend(t for t in service.tags if t not in tags)
        return web.json_response(catalog)

    async def _leader(self, _: web.Request) -> web.StreamResponse:
        return web.json_response("" if self.no_leader else SERVER)

    async def _peers(self, _: web.Request) -> web.StreamResponse:
        return web.json_response([] if self.no_leader else [SERVER])
