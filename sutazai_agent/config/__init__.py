"""Configuration: the schema (pydantic models), loading (YAML + env) and redaction.

Import configuration names from here; the modules behind it are an implementation detail.
"""

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
    HttpService,
    KongService,
    RabbitmqService,
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
    "redact_url",
    "registration_address",
    "url_host_port",
    "url_password",
]
