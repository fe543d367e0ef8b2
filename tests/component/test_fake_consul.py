"""The fake Consul is strict: it rejects what Consul rejects, with the same status and body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.fakes.consul import FakeConsul, ManualClock

WEB = {"ID": "web-1", "Name": "web", "Port": 80, "Check": {"TTL": "10s", "Status": "passing"}}


class Http:
    def __init__(self, session: aiohttp.ClientSession, consul: FakeConsul) -> None:
        self.session = session
        self.consul = consul

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, str]:
        data = body if isinstance(body, str | None) else json.dumps(body)
        headers = {"X-Consul-Token": token} if token else {}
        url = self.consul.url + path
        async with self.session.request(method, url, data=data, headers=headers) as response:
            return response.status, await response.text()

    async def json(self, path: str) -> Any:
        status, text = await self.call("GET", path)
        assert status == 200, text
        return json.loads(text)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def http(clock: ManualClock) -> AsyncIterator[Http]:
    async with FakeConsul(clock=clock) as consul, aiohttp.ClientSession() as session:
        yield Http(session, consul)


REJECTED = [
    ("unknown field", {"Name": "web", "Bogus": 1},
     'Request decode failed: json: unknown field "Bogus"'),
    ("unknown check field", {"Name": "web", "Check": {"TTL": "10s", "Bogus": True}},
     'Request decode failed: json: unknown field "Bogus"'),
    ("missing name", {"ID": "web-1"}, "Missing service name"),
    ("bad TTL", {"Name": "web", "Check": {"TTL": "abc"}},
     'Request decode failed: time: invalid duration "abc"'),
    ("bad deregister duration",
     {"Name": "web", "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "5 minutes"}},
     'Request decode failed: time: invalid duration "5 minutes"'),
    ("port as string", {"Name": "web", "Port": "80"},
     "json: cannot unmarshal string into Go struct field ServiceDefinition.Port of type int"),
    ("bad check status", {"Name": "web", "Check": {"TTL": "10s", "Status": "ok"}},
     "Status for checks must 'passing', 'warning', 'critical'"),
    ("check without type", {"Name": "web", "Check": {"Interval": "10s"}},
     "Invalid check: Must provide TTL"),
    ("zero TTL", {"Name": "web", "Check": {"TTL": "0s"}}, "Invalid check: TTL must be > 0"),
    ("reserved meta", {"Name": "web", "Meta": {"consul-x": "1"}}, "Invalid Service Meta"),
    ("bad meta key", {"Name": "web", "Meta": {"a b": "1"}}, "Key contains invalid characters"),
    ("any address", {"Name": "web", "Address": "0.0.0.0"}, "Invalid service address"),
    ("not JSON", "{not json", "Request decode failed"),
    ("not an object", [1], "Request decode failed: json: cannot unmarshal array"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "message"), REJECTED, ids=[c[0] for c in REJECTED])
async def test_register_rejects_what_consul_rejects(
    http: Http, case: str, body: Any, message: str
) -> None:
    status, text = await http.call("PUT", "/v1/agent/service/register", body)
    assert (status, message in text) == (400, True), (case, text)
    assert http.consul.services == {}


WRONG_METHOD = [
    ("GET", "/v1/agent/service/register"),
    ("POST", "/v1/agent/service/deregister/web-1"),
    ("PUT", "/v1/agent/services"),
    ("PUT", "/v1/agent/checks"),
    ("GET", "/v1/agent/check/update/service:web-1"),
    ("GET", "/v1/agent/check/pass/service:web-1"),
    ("DELETE", "/v1/health/service/web"),
    ("PUT", "/v1/status/leader"),
]


@pytest.mark.parametrize(("method", "path"), WRONG_METHOD)
async def test_wrong_method_is_405(http: Http, method: str, path: str) -> None:
    status, _ = await http.call(method, path)
    assert status == 405


UNKNOWN = [
    (False, "/v1/agent/service/deregister/nope", None, 404, 'Unknown service ID "nope"'),
    (True, "/v1/agent/service/deregister/nope", None, 200, ""),
    (False, "/v1/agent/check/update/nope", {"Status": "passing"}, 404, 'Unknown check ID "nope"'),
    (True, "/v1/agent/check/update/nope", {"Status": "passing"}, 500,
     'CheckID "nope" does not have associated TTL'),
    (False, "/v1/agent/check/pass/nope", None, 404, 'Unknown check ID "nope"'),
]  # fmt: skip


@pytest.mark.parametrize(("legacy", "path", "body", "status", "message"), UNKNOWN)
async def test_unknown_ids_answer_like_the_consul_version(
    http: Http, legacy: bool, path: str, body: Any, status: int, message: str
) -> None:
    http.consul.legacy = legacy
    got, text = await http.call("PUT", path, body)
    assert (got, message in text) == (status, True), text


CHECK_UPDATES = [
    ({"Status": "bogus"}, 400, "Invalid check status: 'bogus'"),
    ({"Status": "passing", "Note": "x"}, 400, 'json: unknown field "Note"'),
    ({"status": "warning", "output": "slow"}, 200, ""),
]


@pytest.mark.parametrize(("body", "status", "message"), CHECK_UPDATES)
async def test_check_update_validates_its_body(
    http: Http, body: Any, status: int, message: str
) -> None:
    assert (await http.call("PUT", "/v1/agent/service/register", WEB))[0] == 200
    got, text = await http.call("PUT", "/v1/agent/check/update/service:web-1", body)
    assert (got, message in text) == (status, True), text


async def test_fields_match_case_insensitively_like_go(http: Http) -> None:
    body = {"name": "web", "id": "w1", "port": 80, "check": {"ttl": "1m30s", "checkid": "c1"}}
    assert (await http.call("PUT", "/v1/agent/service/register", body))[0] == 200
    services = await http.json("/v1/agent/services")
    assert services["w1"]["Service"] == "web"
    assert services["w1"]["Port"] == 80
    check = http.consul.check("c1")
    assert check is not None
    assert check.ttl_s == 90


async def test_ttl_check_is_critical_until_passed_unless_registered_with_status(
    http: Http,
) -> None:
    await http.call("PUT", "/v1/agent/service/register", {"Name": "a", "Check": {"TTL": "10s"}})
    await http.call("PUT", "/v1/agent/service/register", WEB)
    checks = await http.json("/v1/agent/checks")
    assert checks["service:a"]["Status"] == "critical"
    assert checks["service:web-1"]["Status"] == "passing"
    await http.call("PUT", "/v1/agent/check/pass/service:a")
    assert (await http.json("/v1/agent/checks"))["service:a"]["Status"] == "passing"


async def test_reregistering_keeps_the_check_status_whatever_status_says(http: Http) -> None:
    await http.call("PUT", "/v1/agent/service/register", WEB)
    await http.call("PUT", "/v1/agent/check/fail/service:web-1")
    await http.call("PUT", "/v1/agent/service/register", WEB)  # says "passing"
    assert (await http.json("/v1/agent/checks"))["service:web-1"]["Status"] == "critical"


async def test_ttl_expiry_makes_the_check_critical(http: Http, clock: ManualClock) -> None:
    await http.call("PUT", "/v1/agent/service/register", WEB)
    clock.advance(9.9)
    assert http.consul.passing("web") == ["web-1"]
    clock.advance(0.2)
    check = (await http.json("/v1/agent/checks"))["service:web-1"]
    assert (check["Status"], check["Output"]) == ("critical", "TTL expired")
    assert await http.json("/v1/health/service/web?passing") == []
    await http.call("PUT", "/v1/agent/check/update/service:web-1", {"Status": "passing"})
    assert http.consul.passing("web") == ["web-1"]


async def test_critical_service_is_reaped_after_the_one_minute_floor_at_a_reaper_tick(
    http: Http, clock: ManualClock
) -> None:
    body = {**WEB, "Check": {**WEB["Check"], "DeregisterCriticalServiceAfter": "10s"}}
    await http.call("PUT", "/v1/agent/service/register", body)
    clock.advance(10 + 10 + 1)  # critical for 11 s: beyond 10 s, under the 1 minute floor
    assert http.consul.service("web-1") is not None
    clock.advance(59)  # critical for 70 s, but the reaper runs every 30 s (next: t=90)
    assert http.consul.service("web-1") is not None
    clock.advance(10)
    assert http.consul.service("web-1") is None
    assert http.consul.check("service:web-1") is None
    assert http.consul.reaped == ["web-1"]


async def test_health_passing_lists_only_all_passing_instances(http: Http) -> None:
    await http.call("PUT", "/v1/agent/service/register", WEB)
    await http.call("PUT", "/v1/agent/service/register", {**WEB, "ID": "web-2"})
    await http.call("PUT", "/v1/agent/check/warn/service:web-2")
    everything = await http.json("/v1/health/service/web")
    assert [e["Service"]["ID"] for e in everything] == ["web-1", "web-2"]
    passing = await http.json("/v1/health/service/web?passing")
    assert [e["Service"]["ID"] for e in passing] == ["web-1"]
    assert passing[0]["Checks"][0]["CheckID"] == "serfHealth"
    status, _ = await http.call("GET", "/v1/health/service/web?passing=maybe")
    assert status == 400


FILTERS = [
    ('Meta["owner"] == "me"', ["a"]),
    ('Meta["owner"] == "me" and Meta["zone"] == "z1"', ["a"]),
    ("Meta.owner != `me`", ["b", "c"]),
    ('"blue" in Tags', ["b"]),
    ('Service == "svc-c"', ["c"]),
]


@pytest.mark.parametrize(("expression", "ids"), FILTERS)
async def test_agent_services_filter(http: Http, expression: str, ids: list[str]) -> None:
    for sid, meta, tags in (
        ("a", {"owner": "me", "zone": "z1"}, []),
        ("b", {"owner": "you"}, ["blue"]),
        ("c", {}, []),
    ):
        body = {"ID": sid, "Name": f"svc-{sid}", "Meta": meta, "Tags": tags}
        assert (await http.call("PUT", "/v1/agent/service/register", body))[0] == 200
    params = quote(expression, safe="")
    assert sorted(await http.json(f"/v1/agent/services?filter={params}")) == ids


async def test_invalid_filter_is_400(http: Http) -> None:
    status, text = await http.call("GET", "/v1/agent/services?filter=Bogus%20%3D%3D%20%22x%22")
    assert status == 400
    assert "Failed to create boolean expression evaluator" in text


async def test_acl_mode_refuses_a_wrong_token(clock: ManualClock) -> None:
    async with FakeConsul(clock=clock, acl_token="right") as consul, aiohttp.ClientSession() as s:
        http = Http(s, consul)
        assert await http.call("PUT", "/v1/agent/service/register", WEB, "wrong") == (
            403,
            "Permission denied",
        )
        assert (await http.call("GET", "/v1/agent/services"))[0] == 403
        assert (await http.call("PUT", "/v1/agent/service/register", WEB, "right"))[0] == 200
        assert (await http.call("GET", "/v1/status/leader"))[0] == 200


async def test_no_leader_mode_fails_catalog_reads_but_not_the_agent(http: Http) -> None:
    http.consul.no_leader = True
    assert await http.call("GET", "/v1/health/service/web") == (500, "No cluster leader")
    assert await http.call("GET", "/v1/catalog/services") == (500, "No cluster leader")
    assert await http.json("/v1/status/leader") == ""
    assert await http.json("/v1/status/peers") == []
    assert (await http.call("PUT", "/v1/agent/service/register", WEB))[0] == 200
    http.consul.no_leader = False
    assert await http.json("/v1/catalog/services") == {"consul": [], "web": []}
    assert await http.json("/v1/status/leader") == "127.0.0.1:8300"


async def test_request_counter_and_writes(http: Http) -> None:
    await http.call("PUT", "/v1/agent/service/register", WEB)
    await http.call("PUT", "/v1/agent/check/update/service:web-1", {"Status": "passing"})
    await http.call("PUT", "/v1/agent/check/update/service:web-1", {"Status": "passing"})
    await http.call("GET", "/v1/agent/services")
    assert http.consul.requests[("PUT", "/v1/agent/check/update/{check_id}")] == 2
    assert http.consul.writes() == 3


async def test_stop_keeps_state_and_port_restart_wipes(http: Http) -> None:
    consul = http.consul
    await http.call("PUT", "/v1/agent/service/register", WEB)
    port = consul.port
    await consul.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.call("GET", "/v1/agent/services")
    await consul.start()
    assert consul.port == port
    assert list(await http.json("/v1/agent/services")) == ["web-1"]
    consul.restart()
    assert await http.json("/v1/agent/services") == {}
