"""deploy/kong/kong.yml: a declarative config Kong 3.5 would load, routing what the issue asks.

No Kong validator installs here (decK and Kong are Go/Lua binaries outside the registries), so
the structure is checked against Kong 3.5's own schema facts, copied below with their source.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml

from tests.deploy.support import AGENT, KONG_FILE, STATUS_KEY_MARKER, compose, ports

# Kong 3.5 BUNDLED_PLUGINS: kong/constants.lua of Kong/kong at the 3.4/3.5 releases (the list
# that added proxy-wasm and precedes the ai-* plugins of 3.6).
BUNDLED_PLUGINS_3_5 = frozenset(
    {
        "jwt", "acl", "correlation-id", "cors", "oauth2", "tcp-log", "udp-log", "file-log",
        "http-log", "key-auth", "hmac-auth", "basic-auth", "proxy-wasm", "ip-restriction",
        "request-transformer", "response-transformer", "request-size-limiting",
        "rate-limiting", "response-ratelimiting", "syslog", "loggly", "datadog", "ldap-auth",
        "statsd", "bot-detection", "aws-lambda", "request-termination", "prometheus",
        "proxy-cache", "session", "acme", "grpc-gateway", "grpc-web", "pre-function",
        "post-function", "azure-functions", "zipkin", "opentelemetry",
    }
)  # fmt: skip

# `config` fields of the plugins used, from kong/plugins/<name>/schema.lua (Kong 3.5). Kong
# rejects the whole declarative file on an unknown field, so a typo here stops the gateway.
PLUGIN_CONFIG_FIELDS = {
    "key-auth": {
        "key_names", "hide_credentials", "anonymous", "key_in_header", "key_in_query",
        "key_in_body", "run_on_preflight",
    },
    "rate-limiting": {
        "second", "minute", "hour", "day", "month", "year", "limit_by", "header_name", "path",
        "policy", "fault_tolerant", "redis_host", "redis_port", "redis_password",
        "redis_username", "redis_ssl", "redis_ssl_verify", "redis_server_name",
        "redis_timeout", "redis_database", "hide_client_headers", "error_code",
        "error_message", "sync_rate",
    },
    "correlation-id": {"header_name", "generator", "echo_downstream"},
    "prometheus": {
        "per_consumer", "status_code_metrics", "latency_metrics", "bandwidth_metrics",
        "upstream_health_metrics",
    },
}  # fmt: skip

# Entity fields (kong/db/schema/entities/*.lua, Kong 3.5) plus the nesting keys of the
# declarative format (routes and plugins under a service, credentials under a consumer).
TOP_LEVEL = {
    "_format_version", "_transform", "_comment", "services", "routes", "consumers", "plugins",
    "upstreams", "targets", "certificates", "ca_certificates", "snis", "vaults",
}  # fmt: skip
SERVICE_FIELDS = {
    "id", "name", "protocol", "host", "port", "path", "url", "retries", "connect_timeout",
    "write_timeout", "read_timeout", "tags", "client_certificate", "tls_verify",
    "tls_verify_depth", "ca_certificates", "enabled", "routes", "plugins",
}  # fmt: skip
ROUTE_FIELDS = {
    "id", "name", "protocols", "methods", "hosts", "paths", "headers", "snis", "sources",
    "destinations", "https_redirect_status_code", "regex_priority", "strip_path",
    "path_handling", "preserve_host", "request_buffering", "response_buffering", "tags",
    "service", "plugins",
}  # fmt: skip
CONSUMER_FIELDS = {"id", "username", "custom_id", "tags", "plugins", "keyauth_credentials"}
KEYAUTH_FIELDS = {"id", "key", "tags", "ttl"}
PLUGIN_FIELDS = {"id", "name", "config", "enabled", "protocols", "tags", "instance_name"}
GLOBAL_PLUGINS = {"rate-limiting", "correlation-id", "prometheus"}


def declarative() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(KONG_FILE.read_text(encoding="utf-8"))
    return data


def all_routes(data: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(service name, route) for nested and top-level routes."""
    nested = [(s["name"], r) for s in data.get("services", []) for r in s.get("routes", [])]
    top = [((r.get("service") or {}).get("name"), r) for r in data.get("routes", [])]
    return nested + top


def all_plugins(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(scope, plugin) with scope 'global', 'service:<name>', 'route:<name>', ..."""
    found = [("global", p) for p in data.get("plugins", [])]
    for kind in ("services", "consumers"):
        for entity in data.get(kind, []):
            label = entity.get("name") or entity.get("username")
            found += [(f"{kind}:{label}", p) for p in entity.get("plugins", [])]
    for _, route in all_routes(data):
        found += [(f"route:{route['name']}", p) for p in route.get("plugins", [])]
    return found


def test_format_version_and_top_level_keys() -> None:
    data = declarative()
    assert data["_format_version"] == "3.0"
    assert set(data) <= TOP_LEVEL


def test_entities_use_only_fields_kong_knows() -> None:
    data = declarative()
    for service in data["services"]:
        assert set(service) <= SERVICE_FIELDS, service["name"]
    for _, route in all_routes(data):
        assert set(route) <= ROUTE_FIELDS, route["name"]
    for consumer in data.get("consumers", []):
        assert set(consumer) <= CONSUMER_FIELDS, consumer["username"]
        for credential in consumer.get("keyauth_credentials", []):
            assert set(credential) <= KEYAUTH_FIELDS
    for scope, plugin in all_plugins(data):
        assert set(plugin) <= PLUGIN_FIELDS, (scope, plugin["name"])


def test_every_route_belongs_to_an_existing_service() -> None:
    data = declarative()
    services = {service["name"] for service in data["services"]}
    routes = all_routes(data)
    assert routes
    for service, route in routes:
        assert service in services, f"route {route['name']} -> {service!r}"
        assert route.get("paths") or route.get("hosts"), route["name"]
        for path in route.get("paths", []):
            assert path.startswith(("/", "~/")), path


def test_names_are_unique() -> None:
    data = declarative()
    names = {
        "services": [s["name"] for s in data["services"]],
        "routes": [r["name"] for _, r in all_routes(data)],
        "consumers": [c["username"] for c in data.get("consumers", [])],
    }
    for kind, values in names.items():
        duplicates = [name for name, count in Counter(values).items() if count > 1]
        assert not duplicates, f"duplicate {kind}: {duplicates}"
    per_scope = Counter((scope, plugin["name"]) for scope, plugin in all_plugins(data))
    assert [key for key, count in per_scope.items() if count > 1] == []


def test_plugins_are_bundled_with_kong_3_5_and_configured_with_real_fields() -> None:
    plugins = all_plugins(declarative())
    assert plugins
    for scope, plugin in plugins:
        name = plugin["name"]
        assert name in BUNDLED_PLUGINS_3_5, f"{scope}: {name} is not a bundled Kong 3.5 plugin"
        fields = set(plugin.get("config", {}))
        assert fields <= PLUGIN_CONFIG_FIELDS[name], f"{scope}: {name}: {fields}"


def test_the_plugin_list_knows_the_real_names() -> None:
    # Guards the list itself: a misspelt or invented plugin must be rejected.
    assert "key-auth" in BUNDLED_PLUGINS_3_5
    assert not {"keyauth", "rate-limit", "correlation_id", "ai-proxy"} & BUNDLED_PLUGINS_3_5


def test_the_issue_plugins_are_global_and_key_auth_is_not() -> None:
    global_names = {plugin["name"] for plugin in declarative().get("plugins", [])}
    assert global_names >= GLOBAL_PLUGINS
    assert "key-auth" not in global_names  # would lock the backend API away


def test_the_backend_api_is_routed_to_consul_dns() -> None:
    services = {service["name"]: service for service in declarative()["services"]}
    backend = services["backend-api"]
    assert backend["host"] == "backend.service.consul"
    assert any("/api" in route["paths"] for route in backend["routes"])


def test_the_agent_status_is_behind_key_auth_and_nothing_else_of_it_is_routed() -> None:
    data = declarative()
    agent_services = [s for s in data["services"] if s["host"] == AGENT]
    assert [s["name"] for s in agent_services] == ["sutazai-agent-status"]
    status = agent_services[0]
    assert (status["port"], status["path"]) == (10220, "/status")
    for route in status["routes"]:
        assert route["methods"] == ["GET"]
    auth = [p for p in status.get("plugins", []) if p["name"] == "key-auth"]
    assert len(auth) == 1
    assert auth[0]["config"]["key_in_query"] is False  # keys in URLs reach the access logs
    assert auth[0]["config"]["hide_credentials"] is True
    # ... and it is the port the agent container listens on.
    assert status["port"] in {p.target for p in ports(compose()["services"][AGENT])}


def test_no_secret_in_the_file_only_the_marker_the_start_command_renders() -> None:
    data = declarative()
    keys = [
        credential["key"]
        for consumer in data.get("consumers", [])
        for credential in consumer.get("keyauth_credentials", [])
    ]
    assert keys == [STATUS_KEY_MARKER]
    assert STATUS_KEY_MARKER in compose()["services"]["kong"]["command"][0]


def test_the_mounted_file_is_this_one() -> None:
    volumes = compose()["services"]["kong"]["volumes"]
    assert "./kong/kong.yml:/kong/kong.yml:ro" in volumes
