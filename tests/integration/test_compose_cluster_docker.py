"""The `cluster` compose profile against a real Docker engine: two ClickHouse replicas and Keeper take
the migrations rendered for CLICKHOUSE_CLUSTER, an insert through one replica is read from the
other, rollups follow it, and a replayed insert (same insert_deduplication_token) is dropped even
when it arrives through the other replica.

Runs only when ``CREDITFLOW_TEST_DOCKER=1`` and a Docker daemon answers; anywhere else it is skipped
("no Docker engine"). The rendering itself is covered without Docker by
tests/unit/sinks/test_cluster_ddl.py. Publishes the compose host ports 8124 and 8125.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.test_compose_docker import COMPOSE_FILE, ROOT, docker  # noqa: F401  (fixture)

pytestmark = [pytest.mark.docker, pytest.mark.integration]
CLUSTER = "creditflow"


@pytest.fixture(scope="module")
def replicas(docker: None) -> Iterator[tuple[Any, Any]]:  # noqa: F811
    from testcontainers.compose import DockerCompose

    from sinks.client import connect
    from sinks.cluster_ddl import session_settings

    user = os.environ.get("CLICKHOUSE_USER") or "creditflow"
    password = os.environ.get("CLICKHOUSE_PASSWORD") or "creditflow"
    nodes = DockerCompose(ROOT, compose_file_name=COMPOSE_FILE.name, profiles=["cluster"],
                          services=["clickhouse-keeper", "clickhouse-01", "clickhouse-02"], wait=True)
    with nodes:
        clients = [connect(f"http://{user}:{password}@localhost:{port}/default", **session_settings(CLUSTER))
                   for port in (8124, 8125)]
        yield clients[0], clients[1]


def _event(event_id: str, account: str) -> dict[str, Any]:
    from sinks.columns import EVENTS_COLUMNS

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    return {c: 0 for c in EVENTS_COLUMNS} | {
        "event_id": event_id, "occurred_at": now, "processed_at": now, "account_id": account, "team_id": None,
        "org_id": None, "plan": "PRO", "model": "m", "surface": "api", "session_id": "s", "outcome": "SUCCESS",
        "error_code": None, "category": "STANDARD_CHAT", "is_extended_context": False,
        "is_complex_reasoning": False, "is_tool_use": False, "multiplier": "1", "priority": "LOW",
        "list_micro": 1_000_000, "charged_micro": 1_000_000, "sampled": False, "policy_version": "p1"}


def _eventually(client: Any, sql: str, want: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = client.query(sql).result_rows
        if got == want:
            return
        time.sleep(0.5)
    raise AssertionError(f"{sql}: {got!r}, expected {want!r}")


def test_cluster_takes_migrations_and_deduplicates_across_replicas(replicas: tuple[Any, Any]) -> None:
    from sinks.columns import EVENTS_COLUMNS, dedup_settings
    from sinks.migrations import apply_migrations, discover, status

    first, second = replicas
    applied = apply_migrations(first, 730, cluster=CLUSTER)
    assert applied == [m.id for m in discover()]
    # Recorded once for the cluster: the other replica sees every migration applied.
    assert all(rec is not None for _, rec in status(second, cluster=CLUSTER))
    assert apply_migrations(second, 730, cluster=CLUSTER) == []
    engines = dict(second.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
                                "AND name IN ('events', 'events_local')").result_rows)
    assert engines == {"events": "Distributed", "events_local": "ReplicatedMergeTree"}

    rows = [_event(f"e{i}", f"acct-{i % 3}") for i in range(10)]
    data = [[r[c] for c in EVENTS_COLUMNS] for r in rows]
    token = "creditflow-sink:usage-enriched:0:0-9:events"
    first.insert("events", data, column_names=list(EVENTS_COLUMNS), settings=dedup_settings(token))
    _eventually(second, "SELECT count(), uniqExact(event_id) FROM events", [(10, 10)])
    _eventually(second, "SELECT sum(requests) FROM usage_minute", [(10,)])
    # The sink replays the batch after a crash, through the other replica: dropped, rollups too.
    second.insert("events", data, column_names=list(EVENTS_COLUMNS), settings=dedup_settings(token))
    first.insert("events", data, column_names=list(EVENTS_COLUMNS), settings=dedup_settings(token))
    for client in replicas:
        _eventually(client, "SELECT count() FROM events", [(10,)])
        _eventually(client, "SELECT sum(requests) FROM usage_minute", [(10,)])
        _eventually(client, "SELECT sum(requests) FROM usage_hour", [(10,)])
    # Every analyst view runs on the Distributed tables.
    views = [r[0] for r in second.query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                        "AND engine = 'View'").result_rows]
    assert len(views) >= 6
    for view in views:
        second.query(f"SELECT * FROM {view} LIMIT 1")
