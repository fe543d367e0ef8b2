"""Configuration: one pydantic model, read from YAML with ``SUTAZAI_AGENT_*`` env overrides.

Every validation error names the field (``services[2].timeout_s``) so that ``cli`` can print
one clear line and exit 2.
"""

from __future__ import annotations

import os
import re
import socket
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sutazai_agent.config.extras import missing_extra

ENV_PREFIX = "SUTAZAI_AGENT_"
CONFIG_ENV = "SUTAZAI_AGENT_CONFIG"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CONSUL_MIN_DEREGISTER_S = 60.0
PROBE_DURATION_BUCKETS_S = (0.005, 0.025, 0.1, 0.5, 2.5)
"""Default buckets of ``probe_duration_seconds``: 8 series per service (5 + +Inf, sum, count)."""


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


def _url(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ValueError(f"must be a {' or '.join(schemes)} URL, got {redact_url(value)!r}")
        if not parts.hostname:
            raise ValueError(f"has no host: {redact_url(value)!r}")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"has an invalid port: {redact_url(value)!r}") from None
        return value

    return AfterValidator(check)


HttpUrl = Annotated[str, _url("http", "https")]
AmqpUrl = Annotated[str, _url("amqp", "amqps")]
RedisUrl = Annotated[str, _url("redis", "rediss")]
PostgresDsn = Annotated[str, _url("postgresql", "postgres")]
PositiveSeconds = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


def redact_url(url: str) -> str:
    """``amqp://guest:secret@host/`` → ``amqp://guest:***@host/``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


_DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "amqp": 5672,
    "amqps": 5671,
    "redis": 6379,
    "rediss": 6379,
    "postgresql": 5432,
    "postgres": 5432,
}


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme, 0)
    return parts.hostname or "", parts.port or default


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP field name (an RFC 9110 token)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ServiceBase(_Strict):
    """Fields every kind of service shares."""

    name: str
    interval_s: PositiveSeconds | None = None
    timeout_s: PositiveSeconds | None = None
    rise: Annotated[int, Field(ge=1)] | None = None
    fall: Annotated[int, Field(ge=1)] | None = None
    service_id: str | None = None
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = Field(default_factory=dict)
    # "register" itself would shadow BaseModel.register (pydantic models are ABCs).
    register_service: bool = Field(default=True, alias="register")
    address: str | None = None
    port: Port | None = None
    tls_verify: bool = True

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a DNS label ([a-z0-9-], at most 63, no edge '-')")
        return value

    @field_validator("meta")
    @classmethod
    def _meta_keys(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = {"managed-by", "agent-id", "kind"} & set(value)
        if reserved:
            raise ValueError(f"keys {sorted(reserved)} are set by the agent")
        return value

    @property
    def id(self) -> str:
        return self.service_id or self.name


class HttpService(ServiceBase):
    kind: Literal["http"]
    url: HttpUrl
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: tuple[int, ...] = ()
    body_regex: str | None = None
    follow_redirects: bool = False
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [code for code in value if not 100 <= code <= 599]
        if bad:
            raise ValueError(f"not HTTP status codes: {bad}")
        return value

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"not a valid header name: {name!r}")
            if any(char in text for char in "\r\n\0"):
                # The value is not echoed: header values are often tokens.
                raise ValueError(f"value of {name!r} must not contain CR, LF or NUL")
        return value

    def target(self) -> tuple[str, int]:
        return url_host_port(self.url)


class TcpService(ServiceBase):
    kind: Literal["tcp"]
    host: str = Field(min_length=1)
    port: Port  # required here: it is the target

    def target(self) -> tuple[str, int]:
        return self.host, self.port


class KongService(ServiceBase):
    kind: Literal["kong"]
    admin_url: HttpUrl
    proxy_url: HttpUrl
    status_url: HttpUrl | None = None

    def target(self) -> tuple[str, int]:
        return url_host_port(self.proxy_url)


class ConsulService(ServiceBase):
    kind: Literal["consul"]
    url: HttpUrl
    register_service: bool = Field(default=False, alias="register")

    def target(self) -> tuple[str, int]:
        return url_host_port(self.url)


class RabbitmqService(ServiceBase):
    kind: Literal["rabbitmq"]
    amqp_url: AmqpUrl
    management_url: HttpUrl | None = None

    def target(self) -> tuple[str, int]:
        return url_host_port(self.amqp_url)


def _no_query_password(value: str) -> str:
    """Passwords live in the userinfo only, where redaction and the log scrubber find them."""
    if "password" in parse_qs(urlsplit(value).query):
        raise ValueError("put the password in the userinfo (user:password@host), not the query")
    return value


class _ExtraService(ServiceBase):
    """A kind whose client library is an optional extra: configuring it needs the extra."""

    @field_validator("kind", check_fields=False)
    @classmethod
    def _installed(cls, kind: str) -> str:
        problem = missing_extra(kind)
        if problem:
            raise ValueError(problem)
        return kind


class RedisService(_ExtraService):
    kind: Literal["redis"]
    url: RedisUrl

    @field_validator("url")
    @classmethod
    def _password_in_userinfo(cls, value: str) -> str:
        return _no_query_password(value)

    @field_validator("url")
    @classmethod
    def _database(cls, value: str) -> str:
        path = urlsplit(value).path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the path must be a database number, got {path!r}")
        return value

    def target(self) -> tuple[str, int]:
        return url_host_port(self.url)


class PostgresService(_ExtraService):
    kind: Literal["postgres"]
    dsn: PostgresDsn
    primary: bool = False

    @field_validator("dsn")
    @classmethod
    def _password_in_userinfo(cls, value: str) -> str:
        return _no_query_password(value)

    @field_validator("tls_verify")
    @classmethod
    def _tls_from_dsn(cls, value: bool) -> bool:
        if not value:
            raise ValueError("postgres TLS is set by the DSN's sslmode (require, verify-full)")
        return value

    def target(self) -> tuple[str, int]:
        return url_host_port(self.dsn)


class GrpcService(_ExtraService):
    kind: Literal["grpc"]
    host: str = Field(min_length=1)
    port: Port  # required here: it is the target
    grpc_service: str = ""
    tls: bool = False
    ca_file: Path | None = None
    server_name: str | None = Field(default=None, min_length=1)

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("ca_file", "server_name")
    @classmethod
    def _needs_tls(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and not info.data.get("tls"):
            raise ValueError("needs tls: true")
        return value

    @field_validator("tls_verify")
    @classmethod
    def _always_verified(cls, value: bool) -> bool:
        if not value:
            raise ValueError("gRPC always verifies the server; trust its CA with ca_file")
        return value

    def target(self) -> tuple[str, int]:
        return self.host, self.port


def registration_address(service: ServiceConfig) -> tuple[str, int]:
    """Address and port registered in Consul: explicit, else the probed target's."""
    host, port = service.target()
    return service.address or host, service.port or port


ServiceConfig = Annotated[
    HttpService
    | TcpService
    | KongService
    | ConsulService
    | RabbitmqService
    | RedisService
    | PostgresService
    | GrpcService,
    Field(discriminator="kind"),
]
KINDS = ("http", "tcp", "kong", "consul", "rabbitmq", "redis", "postgres", "grpc")


class HttpListen(_Strict):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 10220


class ConsulConfig(_Strict):
    url: HttpUrl = "http://localhost:10006"
    token: SecretStr = SecretStr("")
    ttl_s: PositiveSeconds = 30.0
    deregister_critical_after_s: PositiveSeconds = 60.0
    resync_interval_s: PositiveSeconds = 60.0
    timeout_s: PositiveSeconds = 5.0
    ca_file: Path | None = None
    tls_verify: bool = True

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


class RabbitmqConfig(_Strict):
    url: AmqpUrl = "amqp://guest:guest@localhost:10007/"
    exchange: str = Field(default="sutazai.health", min_length=1, max_length=255)


class OutboxConfig(_Strict):
    max_events: Annotated[int, Field(ge=1)] = 100_000
    flush_on_shutdown_s: Annotated[float, Field(ge=0)] = 5.0


class MetricsConfig(_Strict):
    probe_duration_buckets_s: tuple[PositiveSeconds, ...] = PROBE_DURATION_BUCKETS_S

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

    agent_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    interval_s: PositiveSeconds = 10.0
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
            found.update(v for k, v in getattr(service, "headers", {}).items() if _secret_header(k))
        found.update(p for p in (url_password(u) for u in urls) if p)
        return frozenset(s for s in found if len(s) >= 3)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, every secret replaced by ``***``."""
        redacted: dict[str, Any] = _redact(self.model_dump(mode="json", by_alias=True))
        return redacted


def _secret_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in {"authorization", "proxy-authorization", "cookie", "x-consul-token"} or (
        "token" in lowered or "key" in lowered or "secret" in lowered
    )


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if key == "headers":
            return {k: ("***" if _secret_header(k) else v) for k, v in value.items()}
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str):
        if key == "token":
            return "***" if value and value != "**********" else ""
        if "://" in value:
            return redact_url(value)
    return value


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in KINDS:
            pass  # the branch of the services union, not a field
        elif not part.startswith(("function-", "tagged-union")):
            out += f".{part}" if out else part
        previous = part
    return out


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the field."""
    lines = []
    for item in error.errors(include_url=False):
        field = _format_loc(tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in {"union_tag_invalid", "union_tag_not_found"}:
            field = f"{field}.kind"
            message = f"must be one of {', '.join(KINDS)}"
        elif not item["loc"]:
            # Cross-field checks carry their field in the message: "timeout_s: must be ...".
            field, _, message = message.partition(": ")
        lines.append(f"{field}: {message}")
    return "\n".join(lines)


def load(path: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Read the YAML file (if any), apply env overrides, validate. Raises ``ConfigError``."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
        data = loaded
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
