"""The agent's configuration model: ``AgentConfig`` and its sections.

``AgentConfig`` reads ``SUTAZAI_AGENT_*`` environment variables (nested with ``__``) over the
YAML file's values; every validation error names the field so that the CLI can print one clear
line and exit 2 (``loading``).
"""

from __future__ import annotations

import re
import socket
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sutazai_agent.config.services import (
    AmqpUrl,
    ConsulService,
    ExistingFile,
    HttpUrl,
    IntervalSeconds,
    KongService,
    PositiveSeconds,
    RabbitmqService,
    ServiceBase,
    ServiceConfig,
    _Strict,
)
from sutazai_agent.core.secrets import (
    MASK,
    is_secret_header,
    query_secrets,
    redact_url,
    url_password,
)

ENV_PREFIX = "SUTAZAI_AGENT_"
CONFIG_ENV = "SUTAZAI_AGENT_CONFIG"
NON_FIELD_ENV = frozenset({CONFIG_ENV, "SUTAZAI_AGENT_ID"})
"""Variables with the prefix that are not fields: the config file, and the agent id that
``deploy/.env`` hands to Compose (which passes it on as ``SUTAZAI_AGENT_AGENT_ID``)."""
AGENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""``agent_id`` goes into the CloudEvents ``source``, Consul meta and a Consul filter."""
MIN_CONSUL_TTL_S = 1.0
"""Consul's TTL checks have a practical floor of a second (its timers, the heartbeats)."""
PROBE_DURATION_BUCKETS_S = (0.005, 0.025, 0.1, 0.5, 2.5)
"""Default buckets of ``probe_duration_seconds``: 8 series per service (5 + +Inf, sum, count)."""


class HttpListen(_Strict):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 10220


class ConsulConfig(_Strict):
    url: HttpUrl = "http://localhost:10006"
    token: SecretStr = SecretStr("")
    ttl_s: Annotated[float, Field(ge=MIN_CONSUL_TTL_S)] = 30.0
    deregister_critical_after_s: PositiveSeconds = 60.0
    on_down: Literal["deregister", "critical"] = "deregister"
    resync_interval_s: PositiveSeconds = 60.0
    timeout_s: PositiveSeconds = 5.0
    ca_file: ExistingFile | None = None
    tls_verify: bool = True


class RabbitmqConfig(_Strict):
    url: AmqpUrl = "amqp://guest:guest@localhost:10007/"
    exchange: str = Field(default="sutazai.health", min_length=1, max_length=255)


class OutboxConfig(_Strict):
    max_events: Annotated[int, Field(ge=1)] = 100_000
    flush_on_shutdown_s: Annotated[float, Field(ge=0)] = 5.0


class MetricsConfig(_Strict):
    probe_duration_buckets_s: tuple[PositiveSeconds, ...] = PROBE_DURATION_BUCKETS_S
    per_service_histogram: bool = True
    """False: no per-service ``probe_duration_seconds`` (a last-duration gauge per service and
    a histogram per kind instead): 8 series per service rather than 18."""

    @field_validator("probe_duration_buckets_s")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(later <= earlier for earlier, later in pairwise(value)):
            raise ValueError("must be strictly increasing")
        return value


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def _default_services() -> list[Any]:
    return [
        KongService(
            name="kong",
            kind="kong",
            admin_url="http://localhost:8001",
            proxy_url="http://localhost:10005",
            address="localhost",
            port=10005,
            tags=("gateway",),
        ),
        ConsulService(name="consul", kind="consul", url="http://localhost:10006"),
        RabbitmqService(
            name="rabbitmq",
            kind="rabbitmq",
            amqp_url="amqp://guest:guest@localhost:10007/",
            management_url="http://localhost:10008",
            address="localhost",
            port=10007,
        ),
    ]


class AgentConfig(BaseSettings):
    """The whole configuration. See ``docs/configuration.md`` for every field."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    agent_id: str = Field(default_factory=socket.gethostname)
    group: str = Field(default="", max_length=128, pattern=r"^[A-Za-z0-9_.-]*$")
    interval_s: IntervalSeconds = 10.0
    timeout_s: PositiveSeconds = 5.0
    rise: Annotated[int, Field(ge=1)] = 2
    fall: Annotated[int, Field(ge=1)] = 2
    max_concurrency: Annotated[int, Field(ge=1)] = 256
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 10.0
    http: HttpListen = HttpListen()
    state_dir: Path = Path("./state")
    consul: ConsulConfig = ConsulConfig()
    rabbitmq: RabbitmqConfig = RabbitmqConfig()
    outbox: OutboxConfig = OutboxConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    services: list[ServiceConfig] = Field(default_factory=_default_services)

    _secret_fields: ClassVar[tuple[str, ...]] = ("consul.token",)

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, value: str) -> str:
        if not AGENT_ID_RE.fullmatch(value):
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise ValueError(f"{shown!r} must be 1 to 128 of [A-Za-z0-9._-]")
        return value

    @field_validator("services")
    @classmethod
    def _some_services(cls, value: list[ServiceConfig]) -> list[ServiceConfig]:
        if not value:
            raise ValueError("must list at least one service (the agent would watch nothing)")
        return value

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (it would be the working directory)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment overrides the YAML file (passed as init kwargs), never the other way.
        return env_settings, init_settings

    @model_validator(mode="before")
    @classmethod
    def _broker_credentials(cls, data: Any) -> Any:
        """A rabbitmq service whose ``amqp_url`` has no credentials uses ``rabbitmq.url``'s,
        so the password lives in one place (one env variable) and not in the service list."""
        if not isinstance(data, dict) or not isinstance(data.get("services"), list):
            return data
        broker = data.get("rabbitmq")
        url = broker.get("url") if isinstance(broker, dict) else None
        parts = urlsplit(url if isinstance(url, str) else RabbitmqConfig().url)
        if parts.username is None:
            return data
        userinfo = parts.netloc.rpartition("@")[0]
        services = []
        for entry in data["services"]:
            amqp = entry.get("amqp_url") if isinstance(entry, dict) else None
            if isinstance(amqp, str) and entry.get("kind") == "rabbitmq" and "@" not in amqp:
                target = urlsplit(amqp)
                netloc = f"{userinfo}@{target.netloc}"
                services.append({**entry, "amqp_url": urlunsplit(target._replace(netloc=netloc))})
            else:
                services.append(entry)
        return {**data, "services": services}

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        if self.timeout_s >= self.interval_s:
            raise ValueError("timeout_s: must be less than interval_s")
        names: set[str] = set()
        ids: set[str] = set()
        for index, service in enumerate(self.services):
            where = f"services[{index}]"
            if service.name in names:
                raise ValueError(f"{where}.name: duplicate service name {service.name!r}")
            if service.id in ids:
                raise ValueError(f"{where}.service_id: duplicate service id {service.id!r}")
            names.add(service.name)
            ids.add(service.id)
            if self.timeout_for(service) >= self.interval_for(service):
                raise ValueError(f"{where}.timeout_s: must be less than interval_s")
        return self

    def interval_for(self, service: ServiceBase) -> float:
        return service.interval_s or self.interval_s

    def timeout_for(self, service: ServiceBase) -> float:
        return service.timeout_s or self.timeout_s

    def rise_for(self, service: ServiceBase) -> int:
        return service.rise or self.rise

    def fall_for(self, service: ServiceBase) -> int:
        return service.fall or self.fall

    def secrets(self) -> frozenset[str]:
        """Every secret value in the configuration, for the log scrubber."""
        found = {self.consul.token.get_secret_value()}
        urls = [self.rabbitmq.url, self.consul.url]
        for service in self.services:
            urls.extend(
                value
                for value in (
                    getattr(service, "url", None),
                    getattr(service, "amqp_url", None),
                    getattr(service, "management_url", None),
                    getattr(service, "admin_url", None),
                    getattr(service, "proxy_url", None),
                    getattr(service, "status_url", None),
                    getattr(service, "dsn", None),
                )
                if value
            )
            headers = getattr(service, "headers", {})
            found.update(v for k, v in headers.items() if is_secret_header(k))
        found.update(p for p in (url_password(u) for u in urls) if p)
        found.update(secret for url in urls for secret in query_secrets(url))
        return frozenset(s for s in found if len(s) >= 3)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data: every secret that is set shows as
        ``***``, one that is not set as ``""`` (so an operator sees which are set)."""
        redacted: dict[str, Any] = _redact(self.model_dump(mode="json", by_alias=True))
        redacted["consul"]["token"] = MASK if self.consul.token.get_secret_value() else ""
        return redacted


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if key == "headers":
            return {k: (MASK if is_secret_header(k) else v) for k, v in value.items()}
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value
