"""Configuration: the schema (pydantic models), loading (YAML + env) and redaction.

Import configuration names from here; the modules behind it are an implementation detail.
"""

from sutazai_agent.config.schema import (
    CONFIG_ENV,
    ENV_PREFIX,
    KINDS,
    PROBE_DURATION_BUCKETS_S,
    AgentConfig,
    ConfigError,
    ConsulConfig,
    ConsulService,
    HttpService,
    KongService,
    RabbitmqConfig,
    RabbitmqService,
    ServiceConfig,
    TcpService,
    describe,
    load,
    query_secrets,
    redact_query,
    redact_url,
    registration_address,
    url_host_port,
    url_password,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KINDS",
    "PROBE_DURATION_BUCKETS_S",
    "AgentConfig",
    "ConfigError",
    "ConsulConfig",
    "ConsulService",
    "HttpService",
    "KongService",
    "RabbitmqConfig",
    "RabbitmqService",
    "ServiceConfig",
    "TcpService",
    "describe",
    "load",
    "query_secrets",
    "redact_query",
    "redact_url",
    "registration_address",
    "url_host_port",
    "url_password",
]
