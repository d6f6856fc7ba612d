"""The migrations rendered for a ClickHouse cluster (sinks/cluster_ddl.py): every object ON CLUSTER,
Replicated tables with the {shard}/{replica} macros and a Distributed table in front under the
original name, materialized views wired local to local, deduplication windows carried over, and
every statement accepted by ClickHouse's own parser (chDB). A last test runs the rendered schema on
chDB with the cluster parts swapped for single-node equivalents, so the wiring (views, rollups,
ALTERs) is executed, not only read."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sinks.cluster_ddl import (
    ClusterDDLError,
    created_tables,
    render_statement,
    rendered_by_version,
    session_settings,
    sharding_key,
)
from sinks.migrations import MIGRATIONS_TABLE, apply_migrations, discover, migrations_table_ddl
from streams.settings import Settings

CLUSTER = "creditflow"
TTL = 730


@pytest.fixture(scope="module")
def single() -> dict[int, list[str]]:
    return dict(rendered_by_version(discover(), TTL, None))


@pytest.fixture(scope="module")
def rendered() -> list[str]:
    by_version = rendered_by_version(discover(), TTL, CLUSTER)
    return [*migrations_table_ddl(CLUSTER), *(s for v in sorted(by_version) for s in by_version[v])]


@pytest.fixture(scope="module")
def tables(single: dict[int, list[str]]) -> set[str]:
    return created_tables(s for stmts in single.values() for s in stmts) | {MIGRATIONS_TABLE}


def _creates(rendered: list[str], name: str) -> str:
    found = [s for s in rendered if re.match(rf"CREATE TABLE (IF NOT EXISTS )?{name} ON CLUSTER", s)]
    assert len(found) == 1, (name, found)
    return found[0]


def test_the_shipped_migrations_create_the_expected_tables(tables: set[str]) -> None:
    assert {"events", "usage_minute", "usage_hour", "credit_ledger", "credit_grants", "subscription_changes",
            "refinement_samples", "dead_letters", "gaming_alerts", "alert_reviews", "sink_batches",
            MIGRATIONS_TABLE} <= tables
    assert not any(t.endswith("_mv") or t.startswith("v_") for t in tables)


def test_every_statement_runs_on_the_cluster(rendered: list[str]) -> None:
    for stmt in rendered:
        assert f" ON CLUSTER {CLUSTER} " in stmt, stmt[:120]


def test_every_table_is_replicated_with_macros_and_fronted_by_a_distributed_table(
        rendered: list[str], tables: set[str]) -> None:
    for name in tables:
        local = _creates(rendered, f"{name}_local")
        engine = re.search(r"ENGINE = (Replicated\w*MergeTree)\('([^']*)', '([^']*)'", local)
        assert engine, local
        assert engine.group(2) == f"/clickhouse/tables/{{shard}}/{{database}}/{name}_local"
        assert engine.group(3) == "{replica}"
        front = _creates(rendered, name)
        assert f"AS {name}_local\nENGINE = Distributed('{CLUSTER}', currentDatabase(), '{name}_local', cityHash64(" \
            in front, front


def test_engine_arguments_and_families_are_kept(rendered: list[str]) -> None:
    grants = _creates(rendered, "credit_grants_local")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/credit_grants_local', " \
           "'{replica}', occurred_at)" in grants
    assert "ReplicatedAggregatingMergeTree(" in _creates(rendered, "usage_minute_local")
    assert "ReplicatedMergeTree(" in _creates(rendered, "events_local")
    # usage_hour copies usage_minute's columns: from the local table, not the Distributed one.
    assert "AS usage_minute_local\nENGINE = ReplicatedAggregatingMergeTree(" in _creates(rendered, "usage_hour_local")
    assert "TTL toDateTime(occurred_at) + INTERVAL 730 DAY" in _creates(rendered, "events_local")


def test_deduplication_windows_carry_over_to_the_replicated_tables(
        single: dict[int, list[str]], rendered: list[str]) -> None:
    assert not any("non_replicated_deduplication_window" in s for s in rendered)
    windows = {m.group(1): m.group(2) for stmts in single.values() for s in stmts
               if (m := re.search(r"CREATE TABLE IF NOT EXISTS (\w+)[\s\S]*non_replicated_deduplication_window "
                                  r"= (\d+)", s))}
    assert {"events", "usage_minute", "usage_hour", "credit_ledger", "dead_letters", "gaming_alerts"} <= set(windows)
    for name, window in windows.items():
        assert f"replicated_deduplication_window = {window}" in _creates(rendered, f"{name}_local"), name


def test_sharding_keeps_an_account_and_every_sorting_key_on_one_shard(rendered: list[str]) -> None:
    assert "cityHash64(account_id))" in _creates(rendered, "events")
    assert "cityHash64(account_id))" in _creates(rendered, "credit_ledger")
    assert "cityHash64(alert_id))" in _creates(rendered, "gaming_alerts")
    assert "cityHash64(source_topic, source_partition, source_offset))" in _creates(rendered, "dead_letters")
    assert sharding_key(["a", "b"]) == "cityHash64(a, b)"
    assert sharding_key(["bucket", "account_id"]) == "cityHash64(account_id)"


def test_materialized_views_read_and_write_local_tables(rendered: list[str], tables: set[str]) -> None:
    views = [s for s in rendered if s.startswith("CREATE MATERIALIZED VIEW")]
    assert {re.search(r"VIEW IF NOT EXISTS (\w+)", v).group(1) for v in views} == {  # type: ignore[union-attr]
        "usage_minute_mv", "usage_hour_mv"}
    for view in views:
        target = re.search(r" TO (\w+) AS", view).group(1)  # type: ignore[union-attr]
        sources = re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", view)
        assert target.endswith("_local") and target.removesuffix("_local") in tables, view
        assert sources == ["events_local"], view


def test_plain_views_read_the_distributed_tables(rendered: list[str]) -> None:
    views = [s for s in rendered if s.startswith("CREATE OR REPLACE VIEW")]
    assert len(views) >= 6
    for view in views:
        assert "_local" not in view, view


def test_alter_reaches_both_tables_for_columns_and_the_local_one_otherwise() -> None:
    tables = frozenset({"sink_batches", "events"})
    assert render_statement("ALTER TABLE sink_batches ADD COLUMN IF NOT EXISTS store String", "c", tables) == [
        "ALTER TABLE sink_batches_local ON CLUSTER c ADD COLUMN IF NOT EXISTS store String",
        "ALTER TABLE sink_batches ON CLUSTER c ADD COLUMN IF NOT EXISTS store String",
    ]
    assert render_statement("ALTER TABLE events MODIFY TTL toDateTime(occurred_at) + INTERVAL 1 DAY", "c",
                            tables) == ["ALTER TABLE events_local ON CLUSTER c MODIFY TTL toDateTime(occurred_at) "
                                        "+ INTERVAL 1 DAY"]
    assert render_statement("DROP TABLE IF EXISTS events", "c", tables) == [
        "DROP TABLE IF EXISTS events ON CLUSTER c SYNC", "DROP TABLE IF EXISTS events_local ON CLUSTER c SYNC"]


@pytest.mark.parametrize("sql", [
    "INSERT INTO events SELECT * FROM other",
    "ALTER TABLE unknown_table ADD COLUMN x String",
    "CREATE TABLE t (a String) ENGINE = Memory",
    "CREATE TABLE t (a String) ENGINE = ReplicatedMergeTree('/p', 'r') ORDER BY a",
    "CREATE TABLE t (a String) ENGINE = MergeTree",
    "CREATE MATERIALIZED VIEW mv TO elsewhere AS SELECT 1",
])
def test_unknown_shapes_are_refused(sql: str) -> None:
    with pytest.raises(ClusterDDLError):
        render_statement(sql, "c", frozenset({"events"}))


def test_single_node_rendering_is_the_files_unchanged(single: dict[int, list[str]]) -> None:
    for m in discover():
        assert single[m.version] == m.statements(TTL)
    assert migrations_table_ddl(None)[0].startswith(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}")


def test_clickhouse_parses_every_rendered_statement(rendered: list[str]) -> None:
    chdb = pytest.importorskip("chdb")
    for stmt in rendered:
        chdb.query(f"EXPLAIN AST {stmt}", "CSV")
    # The parser does reject what is malformed, so the loop above checked something.
    with pytest.raises(Exception, match=r"SYNTAX_ERROR|Syntax error"):
        chdb.query(f"EXPLAIN AST {rendered[1].replace('ENGINE = ', 'ENGINE = (', 1)}", "CSV")


class _Recorder:
    def __init__(self) -> None:
        self.commands: list[str] = []
        self.rows: list[tuple[int, str, str, datetime]] = []

    def command(self, sql: str) -> None:
        self.commands.append(sql)

    def query(self, sql: str, **_: Any) -> Any:
        return type("R", (), {"result_rows": list(self.rows)})()

    def insert(self, table: str, data: list[list[Any]], column_names: list[str]) -> None:
        self.rows.extend((v, n, c, datetime.now(UTC)) for v, n, c in data)


def test_apply_migrations_runs_the_rendered_statements_and_records_file_checksums(rendered: list[str]) -> None:
    client = _Recorder()
    applied = apply_migrations(client, TTL, cluster=CLUSTER)
    assert applied == [m.id for m in discover()]
    ddl = [c for c in client.commands if not c.startswith(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}")]
    assert ddl == rendered[len(migrations_table_ddl(CLUSTER)):]
    assert {r[2] for r in client.rows} == {m.checksum for m in discover()}


def test_cluster_setting_and_session() -> None:
    assert Settings(CLICKHOUSE_CLUSTER="prod_1").clickhouse_cluster == "prod_1"
    with pytest.raises(ValueError, match="identifier"):
        Settings(CLICKHOUSE_CLUSTER="prod; DROP")
    assert session_settings(None) == {}
    assert session_settings("c")["insert_distributed_sync"] == 1


def _single_node(stmt: str) -> str:
    """A rendered statement with its cluster parts swapped for single-node ones chDB can run:
    no ON CLUSTER, plain engines without the Keeper path, and a Merge table for Distributed."""
    stmt = stmt.replace(f" ON CLUSTER {CLUSTER}", "").replace(" SYNC", "")
    stmt = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"\1(", stmt)
    stmt = stmt.replace("replicated_deduplication_window", "non_replicated_deduplication_window")
    return re.sub(r"ENGINE = Distributed\('[^']*', currentDatabase\(\), '(\w+)', .*\)$",
                  r"ENGINE = Merge(currentDatabase(), '^\1$')", stmt, flags=re.S)


def test_rendered_schema_wires_rollups_and_views_on_the_engine(rendered: list[str], tmp_path: Path) -> None:
    from sinks.client import connect
    from sinks.columns import EVENTS_COLUMNS

    client = connect(f"chdb://{tmp_path / 'ch'}")
    client.command("CREATE DATABASE IF NOT EXISTS cluster_wiring")
    client.command("USE cluster_wiring")
    for stmt in rendered:
        client.command(_single_node(stmt))
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    row = {c: 0 for c in EVENTS_COLUMNS} | {
        "event_id": "e1", "occurred_at": now, "processed_at": now, "account_id": "a1", "team_id": None,
        "org_id": None, "plan": "PRO", "model": "m", "surface": "api", "session_id": "s", "outcome": "SUCCESS",
        "error_code": None, "category": "STANDARD_CHAT", "is_extended_context": False,
        "is_complex_reasoning": False, "is_tool_use": False, "multiplier": "1", "priority": "LOW",
        "list_micro": 5_000_000, "charged_micro": 5_000_000, "sampled": False, "policy_version": "p1"}
    # What a shard does with its share of a Distributed insert: into the local table, which feeds the rollups.
    client.insert("events_local", [[row[c] for c in EVENTS_COLUMNS]], column_names=list(EVENTS_COLUMNS))
    assert client.query("SELECT count() FROM events").result_rows == [(1,)]
    assert client.query("SELECT sum(requests), sum(list_micro) FROM usage_minute").result_rows == [(1, 5_000_000)]
    assert client.query("SELECT sum(requests) FROM usage_hour").result_rows == [(1,)]
    assert client.query("SELECT requests, list_credits FROM v_credits_by_feature").result_rows[0][0] == 1
    # 0008's ALTER reached both the local table and the table in front.
    for table in ("sink_batches_local", "sink_batches"):
        cols = {r[0] for r in client.query(f"DESCRIBE TABLE {table}").result_rows}
        assert "store" in cols, table
