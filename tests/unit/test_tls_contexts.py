"""https probes share one TLS context per distinct TLS setting instead of building their own."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import pytest

from sutazai_agent.config import HttpService
from sutazai_agent.probes import build_probe
from sutazai_agent.probes.tls import client_context


async def test_probes_with_the_same_tls_settings_build_one_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client_context.cache_clear()
    built: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = create(*args, **kwargs)
        built.append(context)
        return context

    monkeypatch.setattr(ssl, "create_default_context", counting)
    services = [
        HttpService(name=f"s{i}", kind="http", url=f"https://h{i}.example:8443/", tls_verify=i < 50)
        for i in range(60)
    ]
    async with aiohttp.ClientSession() as session:
        for service in services:
            build_probe(service, session, 1.0)
    assert len(built) == 2  # verify on, verify off
    assert client_context(True) is not client_context(False)
    assert client_context(False).verify_mode == ssl.CERT_NONE
    assert client_context(True).verify_mode == ssl.CERT_REQUIRED
    client_context.cache_clear()
