"""Shared fixtures: one real Kafka broker per test session, per-test topic namespaces, and a fake
schema registry per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.kafka.launcher import LocalKafka
from streams.settings import Settings
from tests.fake_registry import FakeRegistry


@pytest.fixture(scope="session")
def kafka_bootstrap(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """Bootstrap address of a real broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local KRaft
    broker in a temp dir that is stopped when the session ends, whatever happened."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka-session"))
    # Registered before start so a broker that came up but then failed its readiness wait is
    # still stopped (start kills it on timeout, but not if the test run is interrupted).
    request.addfinalizer(broker.stop)
    yield broker.start(timeout=120)


@pytest.fixture
def topic_settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker with a topic prefix unique to this test, so tests
    (and parallel sessions on a shared broker) never see each other's topics or consumer groups."""
    token = uuid.uuid4().hex[:10]
    # The app id is the processors' consumer group; sharing one across tests would make unrelated
    # tests' workers rebalance against each other.
    return Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t{token}.",
        app_id=f"creditflow-t{token}",
        data_dir=tmp_path / "data",
    )


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    """A fake Confluent schema registry on a free port, closed after the test."""
    fake = FakeRegistry()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _release_chdb_paths() -> Iterator[None]:
    """chDB admits one data path per process: whatever path a test opened is closed after it, even
    when the test failed, so the next test can open its own. Paths opened by wider-scoped fixtures
    (before this test) stay open for them."""
    from sinks import client as clickhouse_client

    before = set(clickhouse_client._chdb_clients)
    yield
    for path in set(clickhouse_client._chdb_clients) - before:
        clickhouse_client.close(f"chdb://{path}")
