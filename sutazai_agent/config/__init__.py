"""Configuration: the schema (pydantic models), loading (YAML + env) and redaction.

Import configuration names from here; the modules behind it are an implementation detail.
"""

from sutazai_agent.config.diff import (
    RESTART_KEYS,
    ConfigDiff,
    ServiceDiff,
    ServiceSpec,
    applicable,
    diff_config,
    diff_services,
    service_specs,
)
from sutazai_agent.config.loading import ConfigError, describe, load
from sutazai_agent.config.schema import (
    CONFIG_ENV,
    ENV_PREFIX,
    PROBE_DURATION_BUCKETS_S,
    AgentConfig,
    ConsulConfig,
    RabbitmqConfig,
)
from sutazai_agent.config.services import (
    KINDS,
    ConsulService,
    GrpcService,
    HttpService,
    KongService,
    PostgresService,
    RabbitmqService,
    RedisService,
    ServiceConfig,
    TcpService,
    registration_address,
    url_host_port,
)
from sutazai_agent.core.secrets import redact_url, url_password

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KINDS",
    "PROBE_DURATION_BUCKETS_S",
    "RESTART_KEYS",
    "AgentConfig",
    "ConfigDiff",
    "ConfigError",
    "ConsulConfig",
    "ConsulService",
    "GrpcService",
    "HttpService",
    "KongService",
    "PostgresService",
    "RabbitmqConfig",
    "RabbitmqService",
    "RedisService",
    "ServiceConfig",
    "ServiceDiff",
    "ServiceSpec",
    "TcpService",
    "applicable",
    "describe",
    "diff_config",
    "diff_services",
    "load",
    "redact_url",
    "registration_address",
    "service_specs",
    "url_host_port",
    "url_password",
]
