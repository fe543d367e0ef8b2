"""The one secret scrubber: URLs with credentials, known secret values, secret header names.

Every place that shows text from outside (log lines, probe reasons, ``/status``, ``config``
output, error messages of the Consul and broker clients) passes it through here, so a secret
has one way out and one test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

_USERINFO = re.compile(r"(//[^/@\s:]*):[^/@\s]*@")
_QUERY_SECRET = re.compile(
    r"([?&;][^=&;#\s]*(?:token|passw|pwd|secret|key|signature|auth|credential)[^=&;#\s]*=)"
    r"[^&;#\s]+",
    re.IGNORECASE,
)
"""A query parameter whose name says it carries a credential (``?access_token=…``,
``&password=…``, ``api_key=…``), in a URL or in free text."""
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-consul-token"})


def redact_url(url: str) -> str:
    """``amqp://guest:secret@host/`` → ``amqp://guest:***@host/``; credential-carrying query
    parameters (``?access_token=s3cret``) → ``?access_token=***``."""
    url = redact_query(url)
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:
        return scrub_urls(url)
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:{MASK}@{host}"
    if port is not None:
        netloc += f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def scrub_urls(text: str) -> str:
    """Hide the password of any URL inside free text (``//user:secret@`` → ``//user:***@``)
    and credential-carrying query parameters (``?access_token=…`` → ``?access_token=***``)."""
    return redact_query(_USERINFO.sub(rf"\1:{MASK}@", text))


def redact_query(text: str) -> str:
    """``?access_token=abc&x=1`` → ``?access_token=***&x=1``, anywhere in ``text``."""
    return _QUERY_SECRET.sub(rf"\1{MASK}", text)


def query_secrets(url: str) -> list[str]:
    """The values of the credential-carrying query parameters of ``url``."""
    return [match.group(0)[len(match.group(1)) :] for match in _QUERY_SECRET.finditer(url)]


def is_secret_header(name: str) -> bool:
    """Header names whose values are credentials."""
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or any(w in lowered for w in ("token", "key", "secret"))


class Scrubber:
    """Replaces every known secret value with ``***`` (and URL passwords), at any depth."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return scrub_urls(value)

    def error(self, exc: BaseException, limit: int = 300) -> str:
        """``Type: message`` of an exception, scrubbed and bounded."""
        message = str(exc)
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        return self.text(text)[:limit]

    def deep(self, value: object) -> object:
        """Scrub strings inside mappings, lists and exceptions (structlog event dicts)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        if isinstance(value, BaseException):
            return self.text(repr(value))
        return value
