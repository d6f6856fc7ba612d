"""``creditflow alerts`` / ``evaluate``: argument errors are one line and exit 2; the pure helpers."""

from __future__ import annotations

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
