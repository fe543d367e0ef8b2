# sutazai-agent image: wheels are built in the first stage, only installed in the second, so the
# runtime has no compilers, no build backend and no pip cache.
#
#   docker build -t sutazai-agent:0.1.0 .
#   docker run --rm -p 127.0.0.1:10220:10220 --stop-timeout 20 \
#     -v sutazai-agent-state:/var/lib/sutazai-agent sutazai-agent:0.1.0
#
# Base: the official CPython slim image, pinned to a patch release on Debian bookworm. glibc
# (not Alpine's musl) lets pip install the manylinux wheels of aiohttp, pydantic-core and uvloop
# instead of compiling them; slim keeps the image small. Pin by digest as well
# (python:3.12.10-slim-bookworm@sha256:...) where builds must be reproducible.
#
# Any Debian-like base with `python3` (3.11 or newer) and its venv module works as well, e.g.
# a debootstrapped bookworm with Debian's python3 and python3-venv where Docker Hub cannot be
# reached (scripts/debootstrap-base makes one; tests/deploy/test_container.py builds on it):
#
#   docker build --build-arg PYTHON_IMAGE=sutazai-base:bookworm -t sutazai-agent:0.1.0 .
#
# Both stages therefore call `python3` (the slim image has it too) and install into a virtual
# environment, never into the base's own Python: Debian's is "externally managed" (PEP 668).
ARG PYTHON_IMAGE=python:3.12.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Where the builder reaches PyPI only through a mirror or a TLS-inspecting proxy: pass the
# index as build arguments (`--build-arg PIP_INDEX_URL=...`, HTTP(S)_PROXY are predefined)
# and the proxy's CA bundle as a build secret (`--secret id=pip-ca,src=/etc/ssl/certs/...`);
# the secret is mounted for the one RUN that needs it and is never stored in a layer.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sutazai_agent/ sutazai_agent/
# The agent and every dependency, with every extra (`all`: uvloop and the client libraries of
# the redis, postgres and grpc probes), as wheels in /wheels, made by the pip of a throw-away
# venv (Debian's python3 has no pip of its own).
RUN --mount=type=secret,id=pip-ca \
    python3 -m venv /opt/build \
 && if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/build/bin/python -m pip wheel --wheel-dir /wheels ".[all]"

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="sutazai-agent" \
      org.opencontainers.image.description="Health and service-discovery sidecar for the SutazAI stack: probes services, registers the healthy ones in Consul, publishes state changes to RabbitMQ, serves Prometheus metrics." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deployment.md" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    SUTAZAI_AGENT_STATE_DIR=/var/lib/sutazai-agent \
    PATH=/opt/sutazai-agent/bin:$PATH

# An unprivileged system user owning only the state directory.
RUN groupadd --system --gid 10001 sutazai \
 && useradd --system --uid 10001 --gid sutazai --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sutazai \
 && install -d -o sutazai -g sutazai -m 0750 /var/lib/sutazai-agent

# Install into /opt/sutazai-agent (on PATH above) from the first stage's wheels only
# (--no-index): nothing is fetched or compiled here, and the wheels never become a layer of
# this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/sutazai-agent \
 && /opt/sutazai-agent/bin/python -m pip install --no-index --find-links /wheels \
      "sutazai-agent[all]"

USER 10001:10001
WORKDIR /var/lib/sutazai-agent
# The outbox and the last known states (SQLite): keep them across container re-creation.
VOLUME ["/var/lib/sutazai-agent"]
EXPOSE 10220

# SIGTERM starts the graceful shutdown: stop probing, flush the outbox for up to
# outbox.flush_on_shutdown_s (5 s) within shutdown_grace_s (10 s), exit 0. Docker's default
# stop timeout is 10 s: give it at least 20 s (`docker run --stop-timeout 20`, compose
# `stop_grace_period: 20s`), or the flush is cut short by SIGKILL.
STOPSIGNAL SIGTERM

# The slim image has no curl: the agent checks its own /healthz (200 while the scheduler ticks).
# With a different http.port, override the check (`--url http://127.0.0.1:PORT/healthz`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sutazai-agent", "healthcheck"]

ENTRYPOINT ["sutazai-agent"]
CMD ["run"]
