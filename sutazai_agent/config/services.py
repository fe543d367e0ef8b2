"""Service entries of the configuration: one pydantic model per probe kind.

Names are DNS labels; each kind knows its probe target (``target()``), from which the registered
address and port default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sutazai_agent.config.extras import missing_extra
from sutazai_agent.core.secrets import redact_url

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
META_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
META_VALUE_MAX = 512
META_PAIRS_MAX = 64
"""Consul's limits on service meta (the agent's own keys count too)."""
AGENT_META_KEYS = ("managed-by", "agent-id", "kind")
"""Meta keys the agent sets on every registration."""
MIN_INTERVAL_S = 0.1
"""The shortest probe interval accepted: below it the probes are a load test."""


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
IntervalSeconds = Annotated[float, Field(ge=MIN_INTERVAL_S)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    return value


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


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
    interval_s: IntervalSeconds | None = None
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
        """Consul's rules, checked here rather than by a 400 at every resync."""
        reserved = set(AGENT_META_KEYS) & set(value)
        if reserved:
            raise ValueError(f"keys {sorted(reserved)} are set by the agent")
        bad = sorted(key for key in value if not META_KEY_RE.fullmatch(key))
        if bad:
            raise ValueError(f"keys {bad} are not Consul meta keys ([A-Za-z0-9_-], at most 128)")
        prefixed = sorted(key for key in value if key.startswith("consul-"))
        if prefixed:
            raise ValueError(f"keys {prefixed} use the prefix 'consul-', reserved by Consul")
        long = sorted(key for key, text in value.items() if len(text) > META_VALUE_MAX)
        if long:
            raise ValueError(f"values of {long} are longer than {META_VALUE_MAX} characters")
        room = META_PAIRS_MAX - len(AGENT_META_KEYS)
        if len(value) > room:
            raise ValueError(f"at most {room} pairs (Consul allows {META_PAIRS_MAX}, 3 are ours)")
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

    @model_validator(mode="after")
    def _head_has_no_body(self) -> HttpService:
        if self.method == "HEAD" and self.body_regex is not None:
            # The field goes in the message: the loc of a model check is the service itself.
            raise ValueError("body_regex: a HEAD response has no body to match; use method: GET")
        return self

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
    ca_file: ExistingFile | None = None
    server_name: str | None = Field(default=None, min_length=1)

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
