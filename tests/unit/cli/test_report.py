"""``creditflow report``'s unpriced-models section: the active policy's priced models bound as one
Array(String) parameter, and the rows shown as a table (or JSON) like every other section."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from streams.cli import query as cmd
from streams.cli.clickhouse_target import Target
from streams.cli.query import REPORT_SECTIONS, priced_models, report_params

TITLE = "models metered at the '*' fallback price"
DAY = dt.date(2026, 11, 30)


def test_the_section_binds_its_values_and_never_formats_them_into_the_sql() -> None:
    sql = dict(REPORT_SECTIONS)[TITLE]
    assert "{priced_models:Array(String)}" in sql and "{days:UInt32}" in sql and "atlas" not in sql
    assert report_params(sql, 7, ("atlas-small",)) == {"days": 7, "priced_models": ["atlas-small"]}
    scorecard = dict(REPORT_SECTIONS)["programme scorecard: credit recipients vs the others"]
    assert report_params(scorecard, 7, ("atlas-small",)) == {}


def test_priced_models_are_the_price_table_without_its_fallback(tmp_path: Path) -> None:
    assert priced_models(None) == ["atlas-large", "atlas-medium", "atlas-small"]
    bad = tmp_path / "policy.toml"
    bad.write_text("version = ")
    with pytest.raises(click.ClickException, match="not valid TOML"):
        priced_models(bad)


class _Result:
    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.column_names, self.result_rows = columns, rows


class _FakeClickHouse:
    """Every section empty except the unpriced models, which answers one row."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None]] = []

    def query(self, sql: str, parameters: dict[str, Any] | None = None, settings: Any = None) -> _Result:
        self.calls.append((sql, parameters))
        if "priced_models" in sql:
            return _Result(["model", "events", "list_credits", "charged_credits", "first_day", "last_day"],
                           [("nova-preview", 1234, Decimal("56.000001"), Decimal("16"), DAY, DAY)])
        return _Result(["n"], [])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _FakeClickHouse:
    client = _FakeClickHouse()
    monkeypatch.setattr(cmd, "_client", lambda: Target(client, "a fake", {}))  # type: ignore[arg-type]
    return client


def test_report_lists_the_unpriced_models_with_events_and_credits(fake: _FakeClickHouse) -> None:
    res = CliRunner().invoke(cmd.report, ["--days", "7"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    (params,) = [p for s, p in fake.calls if "priced_models" in s]
    assert params == {"days": 7, "priced_models": ["atlas-large", "atlas-medium", "atlas-small"]}
    assert f"{TITLE} (credits)" in res.output
    row = next(line for line in res.output.splitlines() if "nova-preview" in line)
    assert "1234" in row and "56.000001" in row and "2026-11-30" in row

    as_json = CliRunner().invoke(cmd.report, ["--days", "7", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)[TITLE] == [
        {"model": "nova-preview", "events": 1234, "list_credits": "56.000001", "charged_credits": "16",
         "first_day": "2026-11-30", "last_day": "2026-11-30"}]
