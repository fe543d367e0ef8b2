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
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from sutazai_agent.config.sources import SourceError, check_environment, read_yaml

ENV_PREFIX = "SUTAZAI_AGENT_"
CONFIG_ENV = "SUTAZAI_AGENT_CONFIG"
NON_FIELD_ENV = frozenset({CONFIG_ENV, "SUTAZAI_AGENT_ID"})
"""Variables with the prefix that are not fields: the config file, and the agent id that
``deploy/.env`` hands to Compose (which passes it on as ``SUTAZAI_AGENT_AGENT_ID``)."""
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
AGENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""``agent_id`` goes into the CloudEvents ``source``, Consul meta and a Consul filter."""
META_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
META_VALUE_MAX = 512
META_PAIRS_MAX = 64
"""Consul's limits on service meta (the agent's own three keys count too)."""
MIN_INTERVAL_S = 0.1
"""The shortest probe interval accepted: below it the probes are a load test."""
MIN_CONSUL_TTL_S = 1.0
"""Consul's TTL checks have a practical floor of a second (its timers, the heartbeats)."""
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
PositiveSeconds = Annotated[float, Field(gt=0)]
IntervalSeconds = Annotated[float, Field(ge=MIN_INTERVAL_S)]
Port = Annotated[int, Field(ge=1, le=65535)]


_QUERY_SECRET = re.compile(
    r"([?&;][^=&;#\s]*(?:token|passw|pwd|secret|key|signature|auth|credential)[^=&;#\s]*=)"
    r"[^&;#\s]+",
    re.IGNORECASE,
)
"""A query parameter whose name says it carries a credential (``?access_token=…``,
``&password=…``, ``api_key=…``), in a URL or in free text."""


def redact_query(text: str) -> str:
    """``?access_token=abc&x=1`` → ``?access_token=***&x=1``, anywhere in ``text``."""
    return _QUERY_SECRET.sub(r"\1***", text)


def query_secrets(url: str) -> list[str]:
    """The values of the credential-carrying query parameters of ``url``."""
    return [match.group(0)[len(match.group(1)) :] for match in _QUERY_SECRET.finditer(url)]


def redact_url(url: str) -> str:
    """``amqp://guest:secret@host/`` → ``amqp://guest:***@host/``; credential-carrying query
    parameters (``?access_token=s3cret``) → ``?access_token=***``."""
    url = redact_query(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
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


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443, "amqp": 5672, "amqps": 5671}.get(parts.scheme, 0)
    return parts.hostname or "", parts.port or default


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP field name (an RFC 9110 token)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


AGENT_META_KEYS = ("managed-by", "agent-id", "kind")
"""Meta keys the agent sets on every registration."""


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
            # Reported on body_regex: the loc of a model check is the service itself.
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


def registration_address(service: ServiceConfig) -> tuple[str, int]:
    """Address and port registered in Consul: explicit, else the probed target's."""
    host, port = service.target()
    return service.address or host, service.port or port


ServiceConfig = Annotated[
    HttpService | TcpService | KongService | ConsulService | RabbitmqService,
    Field(discriminator="kind"),
]
KINDS = ("http", "tcp", "kong", "consul", "rabbitmq")


class HttpListen(_Strict):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 10220


class ConsulConfig(_Strict):
    url: HttpUrl = "http://localhost:10006"
    token: SecretStr = SecretStr("")
    ttl_s: Annotated[float, Field(ge=MIN_CONSUL_TTL_S)] = 30.0
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

    agent_id: str = Field(default_factory=socket.gethostname)
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
                )
                if value
            )
            found.update(v for k, v in getattr(service, "headers", {}).items() if _secret_header(k))
        found.update(p for p in (url_password(u) for u in urls) if p)
        found.update(secret for url in urls for secret in query_secrets(url))
        return frozenset(s for s in found if len(s) >= 3)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data: every secret that is set shows as
        ``***``, one that is not set as ``""`` (so an operator sees which are set)."""
        redacted: dict[str, Any] = _redact(self.model_dump(mode="json", by_alias=True))
        redacted["consul"]["token"] = "***" if self.consul.token.get_secret_value() else ""
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
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


_NAMED_MESSAGE = re.compile(r"([a-z_]+): (.*)", re.DOTALL)


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
        elif field.endswith("]") and (named := _NAMED_MESSAGE.match(message)):
            # ... and so do a service's: "services[0]" + "body_regex: ...".
            field, message = f"{field}.{named[1]}", named[2]
        lines.append(f"{field}: {message}")
    return "\n".join(lines)


def load(path: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Read the YAML file (if any), apply env overrides, validate. Raises ``ConfigError``."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    try:
        check_environment(os.environ, AgentConfig, ENV_PREFIX, NON_FIELD_ENV)
        if path is not None:
            loaded = read_yaml(path)
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path}: the top level must be a mapping")
            data = loaded
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    except SettingsError as exc:  # a value check_environment did not foresee
        raise ConfigError(f"environment: {exc}") from None
