"""``creditflow alerts`` / ``evaluate``: argument errors are one line and exit 2; the pure helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.cli.alerts import build_decision, human_line, matches
from streams.detection.rules.base import DAY_MS

REPO = Path(__file__).resolve().parents[3]
ALERT: dict[str, Any] = {
    "alert_id": "al-" + "0" * 32, "dedup_key": "CF-002|r1|account|u-1|20000", "rule_id": "CF-002",
    "rule_name": "scripted cadence", "entity_type": "account", "entity_id": "u-1",
    "related_entities": ["device:d1"], "severity": "HIGH", "score": 2.5, "observed": "0.05", "limit": "0.2",
    "estimated_credits_exposed_micro": 12_500_000, "status": "OPEN", "firings": 1,
    "last_seen_at": 1_793_000_000_000,
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter, as a reviewer runs it; the environment points nowhere that matters
    # because every case fails on its arguments before touching Kafka or ClickHouse.
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ("alerts", "review", "not-an-id", "--verdict", "confirmed", "--note", "x"),
    ("alerts", "review", "al-" + "0" * 32, "--verdict", "maybe", "--note", "x"),
    ("alerts", "review", "al-" + "0" * 32, "--verdict", "confirmed"),
    ("alerts", "review", "al-" + "0" * 32, "--verdict", "confirmed", "--note", "  "),
    ("alerts", "review", "al-" + "0" * 32, "--verdict", "confirmed", "--note", "x", "--allow-days", "3"),
    ("alerts", "review", "al-" + "0" * 32, "--verdict", "benign", "--note", "x", "--allow-days", "0"),
    ("alerts", "tail", "--severity", "huge"),
    ("alerts", "show", "nope"),
    ("alerts", "frobnicate"),
    ("evaluate", "--set", "huge"),
])
def test_argument_errors_are_one_line_exit_2(args: tuple[str, ...]) -> None:
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr


def test_matches_filters() -> None:
    assert matches(ALERT, None, (), None)
    assert matches(ALERT, "medium", (), None) and not matches(ALERT, "CRITICAL", (), None)
    assert matches(ALERT, None, ("cf-002",), None) and not matches(ALERT, None, ("CF-001",), None)
    assert matches(ALERT, None, (), "u-1") and matches(ALERT, None, (), "d1")
    assert not matches(ALERT, None, (), "u-2")
    assert "CF-002" in human_line(ALERT) and "account:u-1" in human_line(ALERT)


def test_false_positive_allow_list_runs_on_event_time() -> None:
    now = ALERT["last_seen_at"] - 5 * DAY_MS  # the alert is dated after "now" (a backfill)
    d = build_decision(ALERT, "false_positive", "ok", "rv", None, now)
    assert d["verdict"] == "FALSE_POSITIVE" and d["allow_until"] == ALERT["last_seen_at"] + 30 * DAY_MS
    assert d["entity_id"] == "u-1" and d["dedup_key"] == ALERT["dedup_key"]
    assert build_decision(ALERT, "confirmed", "ok", "rv", None, now)["allow_until"] is None
    assert build_decision(ALERT, "benign", "ok", "rv", 2, now)["allow_until"] == ALERT["last_seen_at"] + 2 * DAY_MS


def test_a_line_shows_the_rules_phrase_next_to_each_number() -> None:
    labelled = {**ALERT, "observed_label": "CV 0.05 over 40 gaps", "limit_label": "CV <= 0.2"}
    line = human_line(labelled)
    assert "observed CV 0.05 over 40 gaps (0.05) vs limit CV <= 0.2 (0.2)" in line
    # An alert written before GamingAlert v2 has no labels: the numbers alone.
    assert "observed 0.05 vs limit 0.2 " in human_line(ALERT)
    assert "observed 0.05 vs limit 0.2 " in human_line({**ALERT, "observed_label": "", "limit_label": ""})


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows


class _FakeClickHouse:
    """Answers the alert lookup with one stored row (v2 columns) and the usage query with none."""

    def __init__(self, labels: tuple[str, str]) -> None:
        self.labels = labels
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> _Rows:
        self.queries.append((sql, parameters))
        if "FROM gaming_alerts" not in sql:
            return _Rows([])
        return _Rows([(ALERT["alert_id"], ALERT["dedup_key"], "CF-003", "fast depletion", 1, "account", "u-1",
                       [], "FREE", "g1", 1_793_000_000_000, 1_793_003_600_000, "HIGH", 0.8, 16.3, 24.0, [],
                       '{"counts": {"events": 3}}', ["e1"], 2_000_000, "Hold the grant.", 1_793_003_600_000,
                       1_793_003_600_000, 1, "OPEN", *self.labels)])


def test_show_prints_the_stored_labels_with_the_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from streams.cli import alerts as cmd

    fake = _FakeClickHouse(("84% of the grant spent in 16.3h", "80% within 24h"))
    monkeypatch.setattr(cmd, "_settings", lambda: None)
    monkeypatch.setattr(cmd, "_clickhouse", lambda settings: fake)
    res = CliRunner().invoke(cmd.alerts, ["show", ALERT["alert_id"]], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "observed 84% of the grant spent in 16.3h (16.3) vs limit 80% within 24h (24)" in res.output
    assert fake.queries[0][1] == {"id": ALERT["alert_id"]}

    res = CliRunner().invoke(cmd.alerts, ["show", ALERT["alert_id"], "--json"])
    assert res.exit_code == 0, res.output
    stored = json.loads(res.output)["alert"]
    assert (stored["observed"], stored["observed_label"], stored["limit_label"]) == (
        16.3, "84% of the grant spent in 16.3h", "80% within 24h")

    # A v1 alert's row: empty labels, the numbers alone.
    monkeypatch.setattr(cmd, "_clickhouse", lambda settings: _FakeClickHouse(("", "")))
    res = CliRunner().invoke(cmd.alerts, ["show", ALERT["alert_id"]], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "observed 16.3 vs limit 24 " in res.output, res.output
