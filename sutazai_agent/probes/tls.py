"""TLS client contexts for probes: one per distinct setting, built once and shared.

Building an ``ssl.SSLContext`` loads the system's CA bundle (about 35 ms and 0.8 MB each), so
a context per ``https`` service made 2,000 services take a minute and 1.6 GiB before the
agent served. A context is safe to share between connections and event loops; probes with
the same TLS settings get the same one.
"""

from __future__ import annotations

import functools
import ssl

CONTEXTS_MAX = 64
"""Distinct TLS settings kept (a handful in practice: verify on or off)."""


@functools.lru_cache(maxsize=CONTEXTS_MAX)
def client_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """The shared client context for these settings (``ca_file``: extra trusted CAs)."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
