"""deploy/docker-compose.yml: valid Compose, the seed's ports, health, and a coherent stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from sutazai_agent import config
from tests.deploy.support import (
    AGENT,
    AGENT_CONFIG,
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    DEPLOYMENT_DOC,
    ENV_EXAMPLE,
    STATUS_KEY_MARKER,
    InterpolationError,
    PortMapping,
    compose,
    describe,
    duration_s,
    environment,
    interpolate,
    ports,
    raw_compose,
    read_dotenv,
    run,
)

# The seed's architecture: service -> {(host_ip, published, target, protocol)}.
# Only Kong's proxy is published on every interface ("" = all); admin APIs, Consul, the
# broker, Prometheus and the agent are bound to the host's loopback.
SEED_PORTS = {
    "kong": {("", 10005, 8000, "tcp"), ("127.0.0.1", 8001, 8001, "tcp")},
    "consul": {
        ("127.0.0.1", 10006, 8500, "tcp"),
        ("127.0.0.1", 8600, 8600, "tcp"),
        ("127.0.0.1", 8600, 8600, "udp"),
    },
    "rabbitmq": {("127.0.0.1", 10007, 5672, "tcp"), ("127.0.0.1", 10008, 15672, "tcp")},
    "prometheus": {("127.0.0.1", 10200, 9090, "tcp")},
    "grafana": {("127.0.0.1", 10201, 3000, "tcp")},
    AGENT: {("127.0.0.1", 10220, 10220, "tcp")},
}
NETWORK = "sutazai-network"
UP = "deploy/up"
COMPOSE_UP = 'docker compose -f "$here/docker-compose.yml" up -d --build "$@"'
# What compose falls back to without deploy/.env: RabbitMQ credentials that say what they are
# (tolerable because the broker's ports are bound to 127.0.0.1), and no status API key at all.
DEV_RABBITMQ_USER = "sutazai"
DEV_RABBITMQ_PASS = "dev-only-rabbitmq-password"
STATUS_KEY_SAFE = re.compile(r"[A-Za-z0-9._~-]+")


def agent_config(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None
) -> config.AgentConfig:
    """deploy/sutazai-agent.yaml loaded with the agent container's environment (compose run
    with `env` as deploy/.env; the example file by default)."""
    for name in [n for n in os.environ if n.startswith("SUTAZAI_AGENT_")]:
        monkeypatch.delenv(name)
    for name, value in environment(compose(env)["services"][AGENT]).items():
        monkeypatch.setenv(name, value)
    return config.load(AGENT_CONFIG)


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_rejects() -> None:
    # The vendored schema must be the real one: it knows the keys and their types.
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    broken = compose()
    broken["services"]["kong"]["healthchek"] = broken["services"]["kong"].pop("healthcheck")
    broken["services"][AGENT]["depends_on"]["consul"]["condition"] = "service_ready"
    messages = [error.message for error in validator.iter_errors(broken)]
    assert len(messages) == 2, messages


def test_every_service_has_a_pinned_image_a_healthcheck_and_a_restart_policy() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image!r} has no tag"
        assert tag not in {"latest", ""}, f"{name}: {image!r} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image!r} is not pinned to a patch"
        test = service["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert len(test) > 1, name
        assert not service["healthcheck"].get("disable"), name
        assert service["restart"] == "unless-stopped", name


def test_the_images_are_the_issue_versions() -> None:
    services = compose()["services"]
    assert services["kong"]["image"].startswith("kong:3.5.")
    assert services["consul"]["image"].startswith("hashicorp/consul:1.17.")
    assert re.fullmatch(r"rabbitmq:3\.12\.\d+-management", services["rabbitmq"]["image"])
    assert services["prometheus"]["image"].startswith("prom/prometheus:v2.")


def test_ports_match_the_seed_and_only_the_gateway_is_public() -> None:
    services = compose()["services"]
    published = {
        name: {(p.host_ip, p.published, p.target, p.protocol) for p in ports(service)}
        for name, service in services.items()
    }
    assert published == SEED_PORTS


def test_the_amqp_bind_address_comes_from_the_env_file() -> None:
    env = read_dotenv(ENV_EXAMPLE) | {"RABBITMQ_AMQP_BIND": "0.0.0.0"}
    mapped = ports(compose(env)["services"]["rabbitmq"])
    assert PortMapping("0.0.0.0", 10007, 5672, "tcp") in mapped
    assert PortMapping("127.0.0.1", 10008, 15672, "tcp") in mapped  # management stays local


def test_kong_admin_is_bound_to_loopback_only() -> None:
    kong = ports(compose()["services"]["kong"])
    admin = [p for p in kong if p.target == 8001]
    assert admin == [PortMapping("127.0.0.1", 8001, 8001, "tcp")]
    assert all(p.target != 8100 for p in kong), "the status listener is for the network only"


def test_everything_is_on_the_shared_sutazai_network_which_compose_does_not_own() -> None:
    data = compose()
    # External: the seed (or deploy/up) creates it with `docker network create`, so compose
    # neither refuses an existing network it did not label nor removes it on `down`; named,
    # so it is `sutazai-network` and not a project-prefixed `sutazai_sutazai-network`.
    assert data["networks"] == {NETWORK: {"external": True, "name": NETWORK}}
    for name, service in data["services"].items():
        assert service["networks"] == [NETWORK], name


def test_deploy_up_makes_the_network_only_when_missing_then_runs_compose() -> None:
    # tests/deploy/test_network.py runs the script against a real dockerd; here its text.
    script = (COMPOSE_FILE.parent / "up").read_text(encoding="utf-8")
    commands = [line.strip() for line in script.splitlines() if line.strip()]
    commands = [c for c in commands if not c.startswith("#")]
    assert commands[-1] == f"exec {COMPOSE_UP}"
    assert 'if ! docker network inspect "$network"' in script
    assert 'docker network create "$network"' in script
    assert "network=sutazai-network" in commands


def sh_commands(block: str) -> list[str]:
    """The commands of a shell snippet, trailing comments dropped, continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_compose_header_and_the_docs_bring_the_stack_up_with_one_command() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    header = text[: text.index("\nname: ")]
    assert sh_commands("\n".join(re.findall(r"^#   (\S.*)$", header, re.MULTILINE))) == [UP]
    assert "external: true" in header  # how the other SutazAI projects join the network
    bring_up = DEPLOYMENT_DOC.read_text(encoding="utf-8").split("\n## Bring-up\n")[1]
    bring_up = bring_up.split("\n## ")[0]
    assert "name: sutazai-network" in bring_up
    assert "external: true" in bring_up
    blocks = re.split(r"```sh\n(.*?)```", bring_up, flags=re.DOTALL)
    prose, snippets = blocks[0::2], blocks[1::2]
    assert sh_commands(snippets[0]) == [UP, "docker compose -f deploy/docker-compose.yml ps"]
    for before, snippet in zip(prose, snippets, strict=False):
        for command in sh_commands(snippet):
            assert not command.startswith("docker network"), command
            if command.startswith("cp "):
                assert "Optional" in before, "copying .env must read as optional"


def test_named_volumes_keep_the_state_of_consul_rabbitmq_prometheus_and_the_agent() -> None:
    data = compose()
    expected = {
        "consul": "/consul/data",
        "rabbitmq": "/var/lib/rabbitmq",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
        AGENT: "/var/lib/sutazai-agent",
    }
    for name, target in expected.items():
        named = {
            volume.split(":")[0]
            for volume in data["services"][name]["volumes"]
            if volume.split(":")[1] == target
        }
        assert len(named) == 1, f"{name}: nothing mounted at {target}"
        assert named <= set(data["volumes"]), f"{name}: {named} is not a named volume"


def test_start_order_waits_for_health_where_it_matters() -> None:
    services = compose()["services"]
    assert services["kong"]["depends_on"] == {"consul": {"condition": "service_healthy"}}
    agent = services[AGENT]["depends_on"]
    assert agent["consul"] == {"condition": "service_healthy"}
    assert agent["rabbitmq"] == {"condition": "service_healthy"}
    # Kong is only a watched target: the agent must start (and report it) when it is unhealthy.
    assert agent["kong"] == {"condition": "service_started"}
    assert "depends_on" not in services["prometheus"]


def test_kong_runs_db_less_with_logs_on_stdio_and_a_status_listener() -> None:
    env = environment(compose()["services"]["kong"])
    assert env["KONG_DATABASE"] == "off"
    assert env["KONG_DECLARATIVE_CONFIG"]
    for name in ("KONG_PROXY_ACCESS_LOG", "KONG_ADMIN_ACCESS_LOG"):
        assert env[name] == "/dev/stdout"
    for name in ("KONG_PROXY_ERROR_LOG", "KONG_ADMIN_ERROR_LOG"):
        assert env[name] == "/dev/stderr"
    assert env["KONG_STATUS_LISTEN"] == "0.0.0.0:8100"
    assert env["KONG_ADMIN_LISTEN"] == "0.0.0.0:8001"
    assert env["KONG_PROXY_LISTEN"] == "0.0.0.0:8000"
    assert env["SUTAZAI_CONSUL_DNS"] == "consul:8600"
    assert "SRV" in env["KONG_DNS_ORDER"].split(",")


def test_consul_runs_a_single_server_with_ui_and_dns_forwarding() -> None:
    command = compose()["services"]["consul"]["command"]
    for flag in ("agent", "-server", "-bootstrap-expect=1", "-ui", "-client=0.0.0.0"):
        assert flag in command
    assert "-recursor=127.0.0.11" in command  # Kong still resolves container names


REAL_ENV = {
    "RABBITMQ_DEFAULT_USER": "ops",
    "RABBITMQ_DEFAULT_PASS": "Real-Secret-9f8e7d6c",
    "SUTAZAI_STATUS_API_KEY": "s" * 16 + "0123456789abcdef",
}


def broker_credentials(data: dict[str, object]) -> tuple[tuple[str, str], tuple[str, str]]:
    """(the broker's user/password, those in the agent's SUTAZAI_AGENT_RABBITMQ__URL)."""
    services = data["services"]
    assert isinstance(services, dict)
    broker = environment(services["rabbitmq"])
    url = urlsplit(environment(services[AGENT])["SUTAZAI_AGENT_RABBITMQ__URL"])
    return (
        (broker["RABBITMQ_DEFAULT_USER"], broker["RABBITMQ_DEFAULT_PASS"]),
        (url.username or "", url.password or ""),
    )


def test_the_stack_starts_without_an_env_file() -> None:
    # A fresh clone has no deploy/.env: no variable may be required (${VAR:?...}).
    assert not re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?", COMPOSE_FILE.read_text("utf-8"))
    data = compose({})  # raises InterpolationError on any required variable
    broker, agent = broker_credentials(data)
    assert broker == agent == (DEV_RABBITMQ_USER, DEV_RABBITMQ_PASS)
    assert "guest" not in broker
    assert "dev-only" in broker[1]  # says what it is
    # ... tolerable only because the broker is then reachable from this host alone.
    assert {p.host_ip for p in ports(data["services"]["rabbitmq"])} == {"127.0.0.1"}
    assert environment(data["services"]["kong"])["SUTAZAI_STATUS_API_KEY"] == ""


def test_rabbitmq_credentials_come_from_the_env_file_when_there_is_one() -> None:
    raw = environment(raw_compose()["services"]["rabbitmq"])
    assert raw["RABBITMQ_DEFAULT_USER"] == f"${{RABBITMQ_DEFAULT_USER:-{DEV_RABBITMQ_USER}}}"
    assert raw["RABBITMQ_DEFAULT_PASS"] == f"${{RABBITMQ_DEFAULT_PASS:-{DEV_RABBITMQ_PASS}}}"
    broker, agent = broker_credentials(compose(REAL_ENV))
    assert broker == agent == (REAL_ENV["RABBITMQ_DEFAULT_USER"], REAL_ENV["RABBITMQ_DEFAULT_PASS"])
    example = read_dotenv(ENV_EXAMPLE)
    broker, agent = broker_credentials(compose(example))
    assert broker == agent == (example["RABBITMQ_DEFAULT_USER"], example["RABBITMQ_DEFAULT_PASS"])
    assert example["RABBITMQ_DEFAULT_USER"] != "guest"
    assert "guest" in ENV_EXAMPLE.read_text(encoding="utf-8")  # the development-only note


def test_the_status_api_key_has_no_default() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    uses = re.findall(r"(?<!\$)\$\{SUTAZAI_STATUS_API_KEY([^}]*)\}", text)  # not $$
    assert uses == [":-"], uses  # passed through as is; unset -> empty, never a known value
    kong = raw_compose()["services"]["kong"]
    assert environment(kong)["SUTAZAI_STATUS_API_KEY"] == "${SUTAZAI_STATUS_API_KEY:-}"
    for env in ({}, {"SUTAZAI_STATUS_API_KEY": ""}):
        assert environment(compose(env)["services"]["kong"])["SUTAZAI_STATUS_API_KEY"] == ""
    key = REAL_ENV["SUTAZAI_STATUS_API_KEY"]
    assert environment(compose(REAL_ENV)["services"]["kong"])["SUTAZAI_STATUS_API_KEY"] == key
    # Copying .env.example must not install a publicly known key either.
    assert read_dotenv(ENV_EXAMPLE)["SUTAZAI_STATUS_API_KEY"] == ""


def string_leaves(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in string_leaves(value)]
    if isinstance(node, list):
        return [s for value in node for s in string_leaves(value)]
    return [node] if isinstance(node, str) else []


def test_no_credential_is_written_into_the_deploy_files() -> None:
    deploy = Path(AGENT_CONFIG).parent
    for path in [*deploy.rglob("*.yml"), *deploy.rglob("*.yaml")]:
        text = path.read_text(encoding="utf-8")
        if path == COMPOSE_FILE:
            # The dev-only password may appear only as the default of its own variable.
            text = re.sub(
                r"\$\{RABBITMQ_DEFAULT_PASS:-" + re.escape(DEV_RABBITMQ_PASS) + r"\}", "", text
            )
        for secret in (DEV_RABBITMQ_PASS, REAL_ENV["RABBITMQ_DEFAULT_PASS"]):
            assert secret not in text, f"{path} contains a credential"
        assert "guest:guest" not in text, path
        # No userinfo in any URL value: credentials only through SUTAZAI_AGENT_RABBITMQ__URL.
        for value in string_leaves(yaml.safe_load(path.read_text(encoding="utf-8"))):
            for url in re.findall(r"[a-z]+://[^\s\"']+", value):
                assert "@" not in url or url.startswith("amqp://${"), f"{path}: {url}"
    assert ".env" in (deploy / ".gitignore").read_text(encoding="utf-8").split()


def test_the_agent_config_loads_with_the_compose_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_env = environment(compose()["services"][AGENT])
    # The services come from sutazai-agent.yaml: an env list would replace it wholesale.
    assert "SUTAZAI_AGENT_SERVICES" not in agent_env
    assert "services" in yaml.safe_load(AGENT_CONFIG.read_text(encoding="utf-8"))
    cfg = agent_config(monkeypatch)
    example = read_dotenv(ENV_EXAMPLE)
    assert cfg.agent_id == example["SUTAZAI_AGENT_ID"]
    assert cfg.http.host == "0.0.0.0"
    assert cfg.http.port == 10220
    assert str(cfg.state_dir) == "/var/lib/sutazai-agent"
    assert cfg.consul.url == "http://consul:8500"
    broker = urlsplit(cfg.rabbitmq.url)
    assert (broker.hostname, broker.port) == ("rabbitmq", 5672)
    assert broker.username == example["RABBITMQ_DEFAULT_USER"]
    assert broker.password == example["RABBITMQ_DEFAULT_PASS"]
    services = {service.name: service for service in cfg.services}
    assert set(services) == {"kong", "consul", "rabbitmq", "backend"}
    kong = services["kong"]
    assert isinstance(kong, config.KongService)
    assert (kong.admin_url, kong.proxy_url, kong.status_url) == (
        "http://kong:8001",
        "http://kong:8000",
        "http://kong:8100",
    )
    consul = services["consul"]
    assert isinstance(consul, config.ConsulService)
    assert consul.url == cfg.consul.url
    assert not consul.register_service
    rabbitmq = services["rabbitmq"]
    assert isinstance(rabbitmq, config.RabbitmqService)
    assert rabbitmq.amqp_url == cfg.rabbitmq.url  # credentials included
    assert rabbitmq.management_url == "http://rabbitmq:15672"
    assert (rabbitmq.address, rabbitmq.port) == ("rabbitmq", 5672)
    backend = services["backend"]
    assert isinstance(backend, config.HttpService)
    # Kong routes the backend API to backend.service.consul: the agent registers it.
    assert backend.register_service
    assert config.registration_address(backend) == ("backend", 10010)


@pytest.mark.parametrize(
    ("env", "user", "password"),
    [
        ({}, DEV_RABBITMQ_USER, DEV_RABBITMQ_PASS),
        (REAL_ENV, REAL_ENV["RABBITMQ_DEFAULT_USER"], REAL_ENV["RABBITMQ_DEFAULT_PASS"]),
    ],
    ids=["no-env-file", "env-file"],
)
def test_the_rabbitmq_probe_gets_its_credentials_from_the_broker_url(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], user: str, password: str
) -> None:
    # In the file: no credentials. Loaded: those of SUTAZAI_AGENT_RABBITMQ__URL.
    written = yaml.safe_load(AGENT_CONFIG.read_text(encoding="utf-8"))["services"]
    [entry] = [s for s in written if s["kind"] == "rabbitmq"]
    assert entry["amqp_url"] == "amqp://rabbitmq:5672/"
    cfg = agent_config(monkeypatch, env)
    assert os.environ["SUTAZAI_AGENT_RABBITMQ__URL"] == cfg.rabbitmq.url
    [probe] = [s for s in cfg.services if isinstance(s, config.RabbitmqService)]
    url = urlsplit(probe.amqp_url)
    assert (url.username, url.password, url.hostname, url.port) == (
        user,
        password,
        "rabbitmq",
        5672,
    )
    assert probe.amqp_url == cfg.rabbitmq.url
    assert password in cfg.secrets()  # redacted from logs and /status


def test_the_agent_reaches_each_service_where_it_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    data = compose()
    listening: dict[str, set[int]] = {
        name: {p.target for p in ports(service)} for name, service in data["services"].items()
    }
    kong_env = environment(data["services"]["kong"])
    listening["kong"] |= {
        int(kong_env[name].rpartition(":")[2])
        for name in ("KONG_PROXY_LISTEN", "KONG_ADMIN_LISTEN", "KONG_STATUS_LISTEN")
    }
    cfg = agent_config(monkeypatch)
    urls = [cfg.consul.url, cfg.rabbitmq.url]
    for service in cfg.services:
        urls += [
            url
            for attr in (
                "url",
                "amqp_url",
                "management_url",
                "admin_url",
                "proxy_url",
                "status_url",
            )
            if (url := getattr(service, attr, None))
        ]
    for url in urls:
        host, port = config.url_host_port(url)
        if host == "backend":
            continue  # the SutazAI backend runs in its own compose project on the same network
        assert host in listening, f"{config.redact_url(url)}: no service {host!r} in compose"
        assert port in listening[host], f"{config.redact_url(url)}: {host} does not listen there"


def test_the_agent_container_mounts_its_config_and_state(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = compose()["services"][AGENT]
    env = environment(agent)
    mounts = dict(volume.split(":")[1::-1] for volume in agent["volumes"])
    assert mounts[env["SUTAZAI_AGENT_CONFIG"]] == "./sutazai-agent.yaml"
    assert mounts[str(agent_config(monkeypatch).state_dir)] == "agent-state"
    assert agent["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert agent["init"] is True


def test_the_stop_grace_period_covers_the_agent_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = compose()["services"][AGENT]
    cfg = agent_config(monkeypatch)
    assert agent["stop_signal"] == "SIGTERM"
    needed = cfg.shutdown_grace_s + cfg.outbox.flush_on_shutdown_s
    assert duration_s(agent["stop_grace_period"]) >= needed + 2


def test_the_agent_healthcheck_probes_its_own_port(monkeypatch: pytest.MonkeyPatch) -> None:
    test = compose()["services"][AGENT]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "sutazai-agent", "healthcheck"]
    url = test[test.index("--url") + 1]
    assert urlsplit(url).port == agent_config(monkeypatch).http.port
    assert urlsplit(url).path == "/healthz"


# --- Kong's start command ------------------------------------------------------------------


def kong_start_script(tmp_path: Path) -> tuple[str, Path]:
    """The Kong container's shell command, made runnable here: Kong's entrypoint becomes `env`
    and the mounted template becomes a copy in tmp_path."""
    kong = compose()["services"]["kong"]
    assert kong["entrypoint"] == ["/bin/sh", "-ec"]
    script = kong["command"][0]
    start = "exec /docker-entrypoint.sh kong docker-start"
    assert start in script
    template = tmp_path / "kong.yml"
    template.write_text((Path(AGENT_CONFIG).parent / "kong" / "kong.yml").read_text("utf-8"))
    assert "/kong/kong.yml" in script
    script = script.replace(start, "exec env").replace("/kong/kong.yml", str(template))
    return script, template


def fake_getent(tmp_path: Path, answer: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    getent = bin_dir / "getent"
    body = f"printf '%s\\n' '{answer}'" if answer else "exit 2"
    getent.write_text(f'#!/bin/sh\n[ "$1" = ahostsv4 ] && [ "$2" = consul ] || exit 2\n{body}\n')
    getent.chmod(0o755)
    return bin_dir


def run_kong_start(
    tmp_path: Path, *, key: str | None, answer: str = "172.20.0.5      STREAM consul"
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Kong's start command with SUTAZAI_STATUS_API_KEY = key (None: not in the environment)."""
    script, _ = kong_start_script(tmp_path)
    bin_dir = fake_getent(tmp_path, answer)
    env = environment(compose()["services"]["kong"])
    env |= {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "KONG_DECLARATIVE_CONFIG": str(tmp_path / "rendered.yml"),
    }
    env.pop("SUTAZAI_STATUS_API_KEY", None)
    if key is not None:
        env["SUTAZAI_STATUS_API_KEY"] = key
    return run(["/bin/sh", "-ec", script], env=env, timeout_s=30), tmp_path / "rendered.yml"


def rendered_keys(rendered: Path) -> list[str]:
    declarative = yaml.safe_load(rendered.read_text(encoding="utf-8"))
    return [
        credential["key"]
        for consumer in declarative["consumers"]
        for credential in consumer.get("keyauth_credentials", [])
    ]


def test_kong_start_points_dns_at_consul_and_renders_the_status_key(tmp_path: Path) -> None:
    key = "k" * 16 + "0123456789abcdef-_.~"
    result, rendered = run_kong_start(tmp_path, key=key)
    assert result.returncode == 0, describe(result)
    started_with = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    assert started_with["KONG_DNS_RESOLVER"] == "172.20.0.5:8600"
    assert "SUTAZAI_STATUS_API_KEY" not in started_with  # Kong never sees the raw variable
    assert rendered_keys(rendered) == [key]
    assert STATUS_KEY_MARKER not in rendered.read_text(encoding="utf-8")
    assert key not in result.stdout + result.stderr


@pytest.mark.parametrize("unset", [None, ""], ids=["unset", "empty"])
def test_kong_start_without_a_key_renders_a_random_one_it_does_not_print(
    tmp_path: Path, unset: str | None
) -> None:
    keys = []
    for attempt in ("first", "second"):
        directory = tmp_path / attempt
        directory.mkdir()
        result, rendered = run_kong_start(directory, key=unset)
        assert result.returncode == 0, describe(result)
        [key] = rendered_keys(rendered)
        assert key != STATUS_KEY_MARKER
        assert STATUS_KEY_MARKER not in rendered.read_text(encoding="utf-8")
        assert len(key) >= 32
        assert STATUS_KEY_SAFE.fullmatch(key), key
        assert key not in result.stdout + result.stderr  # not in Kong's logs
        assert "not set" in result.stderr  # but the operator is told why /agent/status is closed
        started_with = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
        assert "SUTAZAI_STATUS_API_KEY" not in started_with
        assert started_with["KONG_DNS_RESOLVER"] == "172.20.0.5:8600"
        keys.append(key)
    assert keys[0] != keys[1], "the generated key must be random, not a fixed default"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("too-short-0123456789", "at least 32"),
        ("x" * 31, "at least 32"),
        ("x" * 32 + "/evil", "may only contain"),
        ("x" * 32 + " space", "may only contain"),
    ],
)
def test_kong_refuses_to_start_with_a_bad_status_key(
    tmp_path: Path, key: str, message: str
) -> None:
    result, rendered = run_kong_start(tmp_path, key=key)
    assert result.returncode != 0, describe(result)
    assert message in result.stderr
    assert not rendered.exists()


def test_kong_refuses_to_start_when_consul_does_not_resolve(tmp_path: Path) -> None:
    result, _ = run_kong_start(tmp_path, key="x" * 40, answer="")
    assert result.returncode != 0, describe(result)
    assert "cannot resolve consul" in result.stderr


def test_interpolation_follows_the_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$HOME ${SET} $SET", env) == "$HOME v v"
    assert interpolate("${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "d  d"
    assert interpolate("${SET:?e}", env) == "v"
    with pytest.raises(InterpolationError):
        interpolate("${EMPTY:?e}", env)


def test_compose_v1_parses_the_file_apart_from_the_project_name(tmp_path: Path) -> None:
    # Debian bookworm packages Compose v1 only (docker-compose 1.29). It predates the top-level
    # `name:` of the Compose Specification and rejects it; everything else it parses and
    # interpolates like v2 (services, healthchecks, depends_on conditions, the external network).
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing (scripts/test installs Debian's docker-compose)"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "\nname: sutazai\n" in text
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace("\nname: sutazai\n", "\n"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    command = [binary, "-f", str(copy), "--project-directory", str(COMPOSE_FILE.parent), "config"]
    result = run(command, env=env)
    assert result.returncode == 0, describe(result)
    parsed = yaml.safe_load(result.stdout)
    assert parsed["networks"] == {NETWORK: {"external": True, "name": NETWORK}}
    assert set(parsed["services"]) == set(raw_compose()["services"])
    original = run([binary, "-f", str(COMPOSE_FILE), "config", "-q"], env=env)
    assert original.returncode != 0
    assert "'name' does not match" in original.stderr, describe(original)
