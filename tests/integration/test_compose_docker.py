"""docker-compose.yml against a real Docker engine: `docker compose config` accepts the file, and
the compose Kafka + ClickHouse pair comes up healthy and takes the project's topics and migrations.

Runs only when ``CREDITFLOW_TEST_DOCKER=1`` and a Docker daemon answers ``docker info``; anywhere
else every test is skipped ("no Docker engine"). The pipeline behaviour itself (exact totals,
crashes, rebalances, dead letters) is covered without Docker by tests/integration/test_pipeline.py
against the local KRaft broker and chDB; tests/unit/test_compose.py checks the compose wiring
statically. The pair test publishes the compose host ports 29092 and 8123, which must be free.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def _docker_ready() -> bool:
    if os.environ.get("CREDITFLOW_TEST_DOCKER") != "1" or shutil.which("docker") is None:
        return False
    try:
        return _run("docker", "info", timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def docker() -> None:
    if not _docker_ready():
        pytest.skip("no Docker engine")
    try:
        compose = _run("docker", "compose", "version", timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("no Docker engine")
    if compose.returncode != 0:
        pytest.skip("the Docker engine answers but the compose plugin is missing")


def test_compose_config_is_valid(docker: None) -> None:
    result = _run("docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    services = config["services"]
    assert {"kafka", "clickhouse", "migrate", "processor", "sink"} <= set(services)
    for name in ("processor", "sink"):
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["CLICKHOUSE_URL"].startswith("http://") and "@clickhouse:8123/" in env["CLICKHOUSE_URL"]
        assert services[name]["command"] == ["worker", "--role", name]


@pytest.fixture(scope="module")
def kafka_clickhouse(docker: None) -> Iterator[Settings]:
    from testcontainers.compose import DockerCompose

    user = os.environ.get("CLICKHOUSE_USER") or "creditflow"
    password = os.environ.get("CLICKHOUSE_PASSWORD") or "creditflow"
    pair = DockerCompose(ROOT, compose_file_name=COMPOSE_FILE.name, services=["kafka", "clickhouse"], wait=True)
    with pair:
        token = uuid.uuid4().hex[:10]
        yield Settings(
            kafka_bootstrap_servers="localhost:29092",
            clickhouse_url=f"http://{user}:{password}@localhost:8123/default",
            topic_prefix=f"t{token}.",
            app_id=f"creditflow-t{token}",
            partitions=3,
        )


def test_pair_takes_topics_and_migrations(kafka_clickhouse: Settings) -> None:
    from sinks.client import close, connect
    from sinks.migrations import apply_migrations, status
    from streams.runtime.topics import ensure_topics, topic_names

    settings = kafka_clickhouse
    assert settings.kafka_bootstrap_servers is not None
    created = asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, settings))
    assert set(created) == set(topic_names(settings).values())
    assert asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, settings)) == []

    url = settings.resolved_clickhouse_url
    try:
        client = connect(url)
        apply_migrations(client, settings.events_ttl_days)
        assert all(record is not None for _, record in status(client))
        assert apply_migrations(client, settings.events_ttl_days) == []
    finally:
        close(url)
