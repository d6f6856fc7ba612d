"""The Docker deployment files agree with the code: docker-compose.yml only sets variables that
Settings reads, the workers of one deployment share their wiring, the commands parse with the real
command line, and deploy/Dockerfile runs the console script pyproject declares.

No Docker engine is needed: the files are parsed, the compose `${VAR:-default}` interpolation is
done here with the defaults (an empty host environment)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import pytest
import yaml

from streams.settings import Role, Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
WORKERS = ("processor", "sink")
CREDITFLOW_SERVICES = ("migrate", *WORKERS)

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation for the forms this project uses: ``${VAR}``,
    ``${VAR:-default}``, ``${VAR-default}`` and ``$$``."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group("name"), m.group("op"), m.group("default") or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(sub, str(value))


def settings_env_names() -> dict[str, str]:
    """Environment variable name -> Settings field, read from the model itself."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names[alias if isinstance(alias, str) else f"{prefix}{field_name}".upper()] = field_name
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form (JSON) arguments of the last ``name`` instruction of deploy/Dockerfile."""
    found = [
        line.split(None, 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip().upper().startswith(f"{name} ")
    ]
    assert found, f"deploy/Dockerfile has no {name}"
    args = json.loads(found[-1])
    assert isinstance(args, list), f"{name} must use the exec (JSON) form"
    return [str(a) for a in args]


def cli_group() -> click.Group:
    from streams.cli.main import _register, cli

    _register()
    return cli


def parse_with_cli(argv: list[str]) -> click.Context:
    """Parse ``creditflow <argv>`` with the real command line, without running anything: unknown
    commands, unknown options and bad --role choices raise click.UsageError."""
    group = cli_group()
    name, *rest = argv
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"'creditflow {name}' is not a command"
    return command.make_context(name, list(rest))


# ---------------------------------------------------------------------------------------- services


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "clickhouse", *CREDITFLOW_SERVICES} <= set(services)


def test_creditflow_services_build_from_deploy_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    images = set()
    for name in CREDITFLOW_SERVICES:
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name}: build must name deploy/Dockerfile"
        context = ROOT / build.get("context", ".")
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        images.add(services[name].get("image"))
    assert len(images) == 1, f"one image for every creditflow service, got {images}"


def test_kafka_is_a_single_kraft_node_with_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    listener_names = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(entry.split(":") for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listener_names <= set(protocol_map)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert kafka.get("healthcheck", {}).get("test")


def test_clickhouse_has_http_credentials_and_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    clickhouse = services["clickhouse"]
    assert str(clickhouse["image"]).startswith("clickhouse/clickhouse-server")
    env = env_of(clickhouse)
    assert env.get("CLICKHOUSE_USER") and env.get("CLICKHOUSE_PASSWORD")
    assert clickhouse.get("healthcheck", {}).get("test")


def test_dependencies_wait_for_health_and_migrations(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert command_of(services["migrate"])[0] == "migrate"
    assert services["migrate"].get("restart", "no") == "no", "migrate is a one-shot job"
    for name in WORKERS:
        deps = services[name]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"


def test_processor_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    # `--scale processor=N` fails on a fixed container name or a published host port.
    processor = services["processor"]
    assert "container_name" not in processor
    assert not processor.get("ports")


# ---------------------------------------------------------------------------------- environment


def test_every_creditflow_variable_is_a_settings_field(services: dict[str, dict[str, Any]]) -> None:
    known = settings_env_names()
    for name in CREDITFLOW_SERVICES:
        unknown = set(env_of(services[name])) - set(known)
        assert not unknown, f"{name} sets variables Settings does not read: {sorted(unknown)}"


def test_shared_environment_comes_from_one_anchor() -> None:
    text = COMPOSE.read_text()
    anchors = re.findall(r"^(x-[\w-]+):\s*&([\w-]+)", text, flags=re.M)
    env_anchor = next((a for key, a in anchors if "env" in key), None)
    assert env_anchor, "an x- extension field with an anchor holds the shared environment"
    assert text.count(f"<<: *{env_anchor}") >= len(CREDITFLOW_SERVICES)


def test_services_share_their_wiring(services: dict[str, dict[str, Any]]) -> None:
    envs = {name: env_of(services[name]) for name in CREDITFLOW_SERVICES}
    shared = {k: v for k, v in envs["processor"].items() if k != "CREDITFLOW_ROLE"}
    for key in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "CLICKHOUSE_URL",
        "CREDITFLOW_TOPIC_PREFIX",
        "CREDITFLOW_APP_ID",
        "CREDITFLOW_PARTITIONS",
    ):
        assert key in shared, f"the workers must set {key}"
    for name, env in envs.items():
        assert {k: v for k, v in env.items() if k != "CREDITFLOW_ROLE"} == shared, f"{name} differs from processor"


def test_bootstrap_servers_name_the_kafka_listener(services: dict[str, dict[str, Any]]) -> None:
    bootstrap = env_of(services["processor"])["KAFKA_BOOTSTRAP_SERVERS"]
    advertised = env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    for server in bootstrap.split(","):
        assert f"://{server}" in advertised, f"{server} is not an advertised listener ({advertised})"
        assert server.split(":")[0] == "kafka"


def test_clickhouse_url_matches_the_server(services: dict[str, dict[str, Any]]) -> None:
    url = urlparse(env_of(services["processor"])["CLICKHOUSE_URL"])
    server = env_of(services["clickhouse"])
    assert url.scheme == "http"
    assert (url.hostname, url.port) == ("clickhouse", 8123)
    assert (url.username, url.password) == (server["CLICKHOUSE_USER"], server["CLICKHOUSE_PASSWORD"])
    # A host override of the credentials must reach both sides.
    override = {"CLICKHOUSE_USER": "alice", "CLICKHOUSE_PASSWORD": "s3cret"}
    raw_url = services["processor"]["environment"]["CLICKHOUSE_URL"]
    raw_server = services["clickhouse"]["environment"]
    url = urlparse(interpolate(raw_url, override))
    assert (url.username, url.password) == (
        interpolate(raw_server["CLICKHOUSE_USER"], override),
        interpolate(raw_server["CLICKHOUSE_PASSWORD"], override),
    )


@pytest.mark.parametrize("name", CREDITFLOW_SERVICES)
def test_environment_loads_into_settings(
    name: str, services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = settings_env_names()
    for var in known:
        monkeypatch.delenv(var, raising=False)
    env = env_of(services[name])
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.kafka_bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.clickhouse_url == env["CLICKHOUSE_URL"]
    assert settings.topic_prefix == env["CREDITFLOW_TOPIC_PREFIX"]
    assert settings.app_id == env["CREDITFLOW_APP_ID"]
    assert settings.partitions == int(env["CREDITFLOW_PARTITIONS"])


# ------------------------------------------------------------------------------------- commands


@pytest.mark.parametrize("name", CREDITFLOW_SERVICES)
def test_service_commands_parse(name: str, services: dict[str, dict[str, Any]]) -> None:
    parse_with_cli(command_of(services[name]))


@pytest.mark.parametrize("name", WORKERS)
def test_worker_roles_are_valid_and_match_the_environment(name: str, services: dict[str, dict[str, Any]]) -> None:
    command = command_of(services[name])
    assert command[0] == "worker"
    role = parse_with_cli(command).params["role"]
    assert role == name
    assert Role(role) in (Role.PROCESSOR, Role.SINK)
    env_role = env_of(services[name]).get("CREDITFLOW_ROLE")
    assert env_role in (None, role), f"{name}: CREDITFLOW_ROLE={env_role} contradicts --role {role}"


# ----------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    assert len(entrypoint) == 1 and entrypoint[0] in scripts
    assert scripts[entrypoint[0]] == "streams.cli.main:main"


def test_dockerfile_default_command_is_a_valid_worker() -> None:
    cmd = dockerfile_instruction("CMD")
    assert cmd[0] == "worker"
    assert Role(parse_with_cli(cmd).params["role"]) is Role.ALL


def test_dockerfile_base_install_and_user() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert bases and all(b == "python:3.11-slim" for b in bases)
    assert re.search(r"pip (install|wheel)\b.*\s\.(\s|$)", text, flags=re.M), "installs the package from ."
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    # The workers' data dir must be writable by that user.
    assert "CREDITFLOW_DATA_DIR" in text and "chown" in text


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".creditflow", ".mypy_cache", ".pytest_cache", ".ruff_cache", "bench-results"):
        assert required in patterns, f".dockerignore should exclude {required}"
    # ...but never what `pip install .` needs.
    for needed in ("pyproject.toml", "streams", "sinks", "schemas", "deploy", "README.md"):
        assert needed not in patterns


# ------------------------------------------------------------------------------- Kubernetes (optional)

K8S = ROOT / "deploy" / "k8s" / "creditflow.yaml"


@pytest.mark.skipif(not K8S.exists(), reason="no Kubernetes manifests")
def test_k8s_manifests_match_compose(services: dict[str, dict[str, Any]]) -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    env: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            env.update(doc["data"])
        elif doc["kind"] == "Secret":
            env.update(doc.get("stringData", {}))
    assert not set(env) - set(settings_env_names()), "the manifests set variables Settings does not read"
    assert set(env) == set(env_of(services["processor"])) - {"CREDITFLOW_ROLE"}, "same variables as compose"
    workloads = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }
    for name, command in (
        ("creditflow-processor", ["worker", "--role", "processor"]),
        ("creditflow-sink", ["worker", "--role", "sink"]),
        ("creditflow-migrate", ["migrate"]),
    ):
        container = workloads[name]
        assert container["args"] == command == command_of(services[name.removeprefix("creditflow-")])
        parse_with_cli(container["args"])
