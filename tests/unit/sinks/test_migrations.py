"""Pure parts of the migration runner: discovery and ordering, statement splitting, checksums,
and the runner's bookkeeping against a fake client (the real engine is in the integration tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest

from sinks.migrations import (
    MIGRATIONS_DIR,
    MigrationError,
    apply_migrations,
    checksum,
    discover,
    pending,
    render,
    split_statements,
)
from streams.cli.query import check_read_only, parse_params, to_json, to_text


def test_shipped_migrations_are_contiguous_and_ordered() -> None:
    ms = discover()
    assert [m.version for m in ms] == list(range(1, len(ms) + 1))
    assert ms[0].id == "0001_events"
    for m in ms:
        assert m.statements(730), m.id


def test_only_events_migration_uses_the_ttl_placeholder() -> None:
    users = [m.id for m in discover() if "{ttl_days}" in m.sql]
    assert users == ["0001_events"]
    assert "INTERVAL 30 DAY" in render(discover()[0].sql, 30)


def test_discover_orders_numerically_and_rejects_bad_names(tmp_path: Path) -> None:
    (tmp_path / "0010_later.sql").write_text("SELECT 10;")
    (tmp_path / "0002_early.sql").write_text("SELECT 2;")
    assert [m.id for m in discover(tmp_path)] == ["0002_early", "0010_later"]
    (tmp_path / "3_bad.sql").write_text("SELECT 3;")
    with pytest.raises(MigrationError, match="NNNN_name"):
        discover(tmp_path)


def test_discover_rejects_duplicate_versions(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share version 0001"):
        discover(tmp_path)


def test_split_on_semicolon_at_line_end_only() -> None:
    sql = """
-- header comment; with a semicolon at end;
CREATE TABLE a (x String DEFAULT 'a;
b;') ENGINE = Memory;
/* block; comment;
*/
SELECT 'x' AS `odd;
name`, 1; -- trailing comment
SELECT 2; SELECT 3
;
-- only a comment;
"""
    parts = split_statements(sql)
    assert len(parts) == 3
    assert parts[0].endswith("ENGINE = Memory")
    assert "'a;\nb;'" in parts[0]
    assert "`odd;\nname`, 1" in parts[1]
    # A comment after the ";" rides with the next statement, harmlessly.
    assert parts[2].endswith("SELECT 2; SELECT 3")


def test_split_handles_escaped_quotes() -> None:
    parts = split_statements("SELECT 'it''s;\n', 'a\\';\n';\nSELECT 2;\n")
    assert len(parts) == 2


def test_split_rejects_unterminated_string() -> None:
    with pytest.raises(MigrationError, match="unterminated"):
        split_statements("SELECT 'oops;\n")


def test_checksum_is_stable_across_line_endings() -> None:
    assert checksum("a\nb\n") == checksum("a\r\nb\r\n")
    assert checksum("a\nb\n") != checksum("a\nc\n")


def test_render_rejects_bad_ttl() -> None:
    with pytest.raises(MigrationError):
        render("{ttl_days}", 0)


class FakeClient:
    """Records commands; keeps schema_migrations rows in memory."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.rows: list[tuple[int, str, str, datetime]] = []
        self.fail_on: str | None = None

    def command(self, sql: str) -> None:
        if self.fail_on and self.fail_on in sql:
            raise RuntimeError(f"Code: 62. boom in {self.fail_on}\nstack...")
        self.commands.append(sql)

    def query(self, sql: str, **_: Any) -> Any:
        assert "schema_migrations" in sql
        return type("R", (), {"result_rows": list(self.rows)})()

    def insert(self, table: str, data: list[list[Any]], column_names: list[str]) -> None:
        assert table == "schema_migrations" and column_names == ["version", "name", "checksum"]
        for v, n, c in data:
            self.rows.append((v, n, c, datetime.now(UTC)))


def _dir(tmp_path: Path) -> Path:
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE IF NOT EXISTS t (x Int64) ENGINE = Memory;\n"
                                           "CREATE TABLE IF NOT EXISTS u TTL {ttl_days};\n")
    (tmp_path / "0002_two.sql").write_text("SELECT 2;\n")
    return tmp_path


def test_apply_records_and_is_idempotent(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    c = FakeClient()
    assert apply_migrations(c, 7, d) == ["0001_one", "0002_two"]
    assert any("TTL 7" in s for s in c.commands)
    assert [r[0] for r in c.rows] == [1, 2]
    before = list(c.commands)
    assert apply_migrations(c, 7, d) == []
    assert [s for s in c.commands if "schema_migrations" not in s] == \
        [s for s in before if "schema_migrations" not in s]
    assert pending(c, d) == []


def test_edited_applied_migration_is_refused(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    c = FakeClient()
    apply_migrations(c, 7, d)
    (d / "0001_one.sql").write_text("CREATE TABLE t (x Int32) ENGINE = Memory;\n")
    with pytest.raises(MigrationError, match="0001_one was edited"):
        apply_migrations(c, 7, d)


def test_failed_statement_is_not_recorded(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    c = FakeClient()
    c.fail_on = "SELECT 2"
    with pytest.raises(MigrationError, match=r"0002_two statement 1 failed: Code: 62\. boom"):
        apply_migrations(c, 7, d)
    assert [r[0] for r in c.rows] == [1]
    c.fail_on = None
    assert apply_migrations(c, 7, d) == ["0002_two"]


def test_migrations_dir_is_the_shipped_one() -> None:
    assert MIGRATIONS_DIR.name == "clickhouse" and MIGRATIONS_DIR.is_dir()


# ---- query command's pure helpers ------------------------------------------------------------

def test_params_parse_and_reject() -> None:
    assert parse_params(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for bad in (["nope"], ["1a=2"], ["a=1", "a=2"]):
        with pytest.raises(click.UsageError):
            parse_params(bad)


@pytest.mark.parametrize("sql", [
    "SELECT 1", "  with x AS (SELECT 1) SELECT * FROM x", "-- hi\nSHOW TABLES", "(SELECT 1)",
    "DESCRIBE events", "EXPLAIN SELECT 1", "SELECT 1;",
])
def test_read_only_statements_pass(sql: str) -> None:
    assert check_read_only(sql, {})


@pytest.mark.parametrize("sql", [
    "INSERT INTO t VALUES (1)", "DROP TABLE events", "SELECT 1;\nDROP TABLE events;", "",
    "ALTER TABLE events DELETE WHERE 1", "/* SELECT */ TRUNCATE events",
])
def test_writes_are_refused(sql: str) -> None:
    with pytest.raises(click.UsageError):
        check_read_only(sql, {})


def test_param_needs_server_side_placeholder() -> None:
    assert check_read_only("SELECT {d:Date}", {"d": "2025-01-01"})
    with pytest.raises(click.UsageError, match="placeholder"):
        check_read_only("SELECT %(d)s", {"d": "2025-01-01"})


def test_values_render_exactly() -> None:
    from decimal import Decimal

    assert to_text(Decimal("1.500000")) == "1.5"
    assert to_text(Decimal("0.000001")) == "0.000001"
    assert to_text(Decimal("2.000000")) == "2"
    assert to_text(Decimal("1E+2")) == "100"
    assert to_json({"a": [Decimal("0.1"), None, b"\xff"]}) == {"a": ["0.1", None, "ff"]}
