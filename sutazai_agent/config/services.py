"""Service entries of the configuration: one pydantic model per probe kind.

Names are DNS labels; each kind knows its probe target (``target()``), from which the registered
address and port default.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from sutazai_agent.core.secrets import redact_url

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


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
Port = Annotated[int, Field(ge=1, le=65535)]


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443, "amqp": 5672, "amqps": 5671}.get(parts.scheme, 0)
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


def registration_address(service: ServiceConfig) -> tuple[str, int]:
    """Address and port registered in Consul: explicit, else the probed target's."""
    host, port = service.target()
    return service.address or host, service.port or port


ServiceConfig = Annotated[
    HttpService | TcpService | KongService | ConsulService | RabbitmqService,
    Field(discriminator="kind"),
]
KINDS = ("http", "tcp", "kong", "consul", "rabbitmq")
