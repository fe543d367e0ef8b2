"""core.secrets: the one scrubber behind logs, probe reasons, client errors and `config`."""

from __future__ import annotations

import pytest

from sutazai_agent.core.secrets import Scrubber, is_secret_header, redact_url, scrub_urls


def test_scrub_urls_hides_passwords_but_keeps_the_rest() -> None:
    assert scrub_urls("amqp://guest:s3cret@rabbit:5672/ and http://h/") == (
        "amqp://guest:***@rabbit:5672/ and http://h/"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:secret@mq:5672/vh", "amqp://guest:***@mq:5672/vh"),
        ("http://[::1]:8500/", "http://[::1]:8500/"),
        ("http://u:p@[::1]:8500/x", "http://u:***@[::1]:8500/x"),
        ("http://consul:8500/", "http://consul:8500/"),
        ("http://u:p@h:notaport/", "http://u:***@h:notaport/"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_scrubber_replaces_known_secrets_longest_first_and_url_passwords() -> None:
    scrubber = Scrubber(["tok", "tok-long", ""])
    assert scrubber.text("a tok-long b tok c") == "a *** b *** c"
    assert scrubber.text("see amqp://app:other@mq/") == "see amqp://app:***@mq/"


def test_scrubber_describes_errors_bounded_and_scrubbed() -> None:
    scrubber = Scrubber(["hunter22"])
    assert scrubber.error(ValueError("bad hunter22")) == "ValueError: bad ***"
    assert scrubber.error(TimeoutError()) == "TimeoutError"
    assert len(scrubber.error(ValueError("x" * 1000))) == 300


def test_scrubber_goes_deep() -> None:
    scrubber = Scrubber(["s3"])
    assert scrubber.deep({"a": ["s3", 1, ("x s3",)], "b": {"c": "s3"}}) == {
        "a": ["***", 1, ["x ***"]],
        "b": {"c": "***"},
    }


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("X-Consul-Token", True),
        ("X-Api-Key", True),
        ("Cookie", True),
        ("Accept", False),
        ("X-Request-Id", False),
    ],
)
def test_secret_header_names(name: str, secret: bool) -> None:
    assert is_secret_header(name) is secret
