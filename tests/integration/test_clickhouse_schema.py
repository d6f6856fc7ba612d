"""The ClickHouse schema on chDB (the real ClickHouse engine, in-process).

One chDB data path per process, so the whole module shares one path; tests that need exact totals
get their own database on that path (``fresh_db``) instead of a second path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from sinks import client as clickhouse_client
from sinks.columns import (
    ALERT_REVIEWS_COLUMNS,
    CREDIT_GRANTS_COLUMNS,
    CREDIT_LEDGER_COLUMNS,
    EVENTS_COLUMNS,
    GAMING_ALERTS_COLUMNS,
    INSERT_COLUMNS,
    SUBSCRIPTION_CHANGES_COLUMNS,
    dedup_settings,
)
from sinks.migrations import apply_migrations, discover, pending
from streams.cli.query import REPORT_SECTIONS, report_params

pytestmark = pytest.mark.integration

VIEWS = ("v_credits_by_feature", "v_feature_adoption", "v_grant_utilisation", "v_campaign_utilisation",
         "v_conversion", "v_alert_volume", "v_credit_balances", "v_programme_accounts", "v_programme_scorecard",
         "v_failure_modes", "v_integration_pain_points")
NOW = datetime.now(UTC).replace(microsecond=0)
# Inside the events TTL, and a fixed time of day so minute/hour buckets are predictable.
DAY0 = (NOW - timedelta(days=20)).replace(hour=10, minute=0, second=0)


@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("chdb") / "data"
    yield path
    clickhouse_client.close_all()


@pytest.fixture(scope="module")
def client(chdb_path: Path) -> Any:
    c = clickhouse_client.connect(f"chdb://{chdb_path}")
    apply_migrations(c, ttl_days=730)
    return c


@pytest.fixture
def fresh_db(client: Any, chdb_path: Path) -> Iterator[Any]:
    """A migrated, empty database on the module's chDB path, for tests that assert totals."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    client.command(f"CREATE DATABASE {name}")
    c = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=name)
    apply_migrations(c, ttl_days=730)
    try:
        yield c
    finally:
        c.close()
        client.command(f"DROP DATABASE {name} SYNC")


def event(event_id: str, account: str, at: datetime, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": event_id, "occurred_at": at, "processed_at": at + timedelta(seconds=1),
        "account_id": account, "team_id": None, "org_id": None, "plan": "FREE", "model": "m-large",
        "surface": "API", "session_id": "s1", "outcome": "SUCCESS", "error_code": None,
        "input_tokens": 100, "output_tokens": 50, "cached_tokens": 0, "thinking_tokens": 0,
        "context_window_tokens": 1000, "reasoning_steps": 0, "tool_calls": 0, "latency_ms": 200,
        "category": "STANDARD_CHAT", "is_extended_context": False, "is_complex_reasoning": False,
        "is_tool_use": False, "multiplier": "1.0", "priority": "LOW", "list_micro": 1_000_000,
        "charged_micro": 1_000_000, "subsidy_micro": 0, "grant_funded_micro": 0,
        "subscription_funded_micro": 1_000_000, "sampled": False, "policy_version": "2025.1",
        "source_partition": 0, "source_offset": 0,
    }
    row.update(over)
    return row


def columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[list[Any]]:
    return [[r[n] for r in rows] for n in names]


def insert(c: Any, table: str, rows: list[dict[str, Any]], token: str | None = None) -> None:
    names = INSERT_COLUMNS[table]
    c.insert(table, columns(rows, names), column_names=list(names), column_oriented=True,
             settings=dedup_settings(token) if token else None)


def scalar(c: Any, sql: str, **params: Any) -> Any:
    return c.query(sql, parameters=params).result_rows[0][0]


# ---- migrations -----------------------------------------------------------------------------

def test_migrations_applied_and_reapply_is_noop(client: Any) -> None:
    ids = [m.id for m in discover()]
    recorded = client.query("SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version")
    assert [f"{v:04d}_{n}" for v, n, _ in recorded.result_rows] == ids
    assert pending(client) == []
    assert apply_migrations(client, ttl_days=730) == []
    assert scalar(client, "SELECT count() FROM schema_migrations") == len(ids)


def test_every_view_selects(client: Any) -> None:
    for view in VIEWS:
        client.query(f"SELECT * FROM {view} LIMIT 10")


def test_insert_column_lists_match_schema(client: Any) -> None:
    for table, names in INSERT_COLUMNS.items():
        actual = client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
            "AND default_kind = '' ORDER BY position", parameters={"t": table}).result_rows
        assert tuple(r[0] for r in actual) == names, table


def test_events_ttl_and_engine(client: Any) -> None:
    ddl = scalar(client, "SELECT create_table_query FROM system.tables "
                         "WHERE database = currentDatabase() AND name = 'events'")
    assert "TTL toDateTime(occurred_at) + toIntervalDay(730)" in ddl
    assert "non_replicated_deduplication_window = 10000" in ddl
    assert "PARTITION BY toYYYYMM(occurred_at)" in ddl


# ---- exactly-once: insert_deduplication_token -----------------------------------------------

def _counts(c: Any, account: str) -> tuple[int, int, int]:
    ev = scalar(c, "SELECT count() FROM events WHERE account_id = {a:String}", a=account)
    minute = scalar(c, "SELECT sum(requests) FROM usage_minute WHERE account_id = {a:String}", a=account)
    hour = scalar(c, "SELECT sum(requests) FROM usage_hour WHERE account_id = {a:String}", a=account)
    return ev, minute, hour


def test_same_token_lands_once_in_events_and_rollups(client: Any) -> None:
    account = f"acc-dedup-{uuid.uuid4().hex[:6]}"
    # Two months in one block: the insert splits into one part per partition, both deduplicated.
    rows = [event(f"{account}-{i}", account, DAY0 - timedelta(days=40 * (i % 2), minutes=i))
            for i in range(10)]
    insert(client, "events", rows, token="grp/usage-enriched/0/100-109")
    assert _counts(client, account) == (10, 10, 10)
    insert(client, "events", rows, token="grp/usage-enriched/0/100-109")
    assert _counts(client, account) == (10, 10, 10)
    insert(client, "events", rows, token="grp/usage-enriched/0/110-119")
    assert _counts(client, account) == (20, 20, 20)


def test_retry_fills_a_rollup_block_missing_after_the_events_block_landed(client: Any) -> None:
    """A crash between the events part and a view's part leaves events ahead of the rollup. The
    retry with the same token skips the events block and still writes the rollup block."""
    account = f"acc-repair-{uuid.uuid4().hex[:6]}"
    rows = [event(f"{account}-{i}", account, DAY0 + timedelta(minutes=i)) for i in range(5)]
    token = f"grp/usage-enriched/1/{account}"
    client.command("DETACH TABLE usage_hour_mv")
    try:
        insert(client, "events", rows, token=token)
    finally:
        client.command("ATTACH TABLE usage_hour_mv")
    assert _counts(client, account) == (5, 5, 0)
    insert(client, "events", rows, token=token)
    assert _counts(client, account) == (5, 5, 5)
    insert(client, "events", rows, token=token)
    assert _counts(client, account) == (5, 5, 5)


def test_same_token_lands_once_in_ledger(client: Any) -> None:
    account = f"acc-ledger-{uuid.uuid4().hex[:6]}"
    rows = [{"event_id": f"{account}-{i}", "occurred_at": DAY0, "account_id": account, "grant_id": "g1",
             "campaign": "c", "amount_micro": 10, "balance_after_micro": 100 - 10 * i,
             "policy_version": "p"} for i in range(3)]
    for _ in range(2):
        insert(client, "credit_ledger", rows, token=f"ledger/{account}")
    assert scalar(client, "SELECT sum(amount_micro) FROM credit_ledger WHERE account_id = {a:String}",
                  a=account) == 30


def test_latest_balance_wins_and_a_resent_notification_lands_once(client: Any) -> None:
    from sinks.routing import ROUTES
    from streams.credits.balances import balance_record
    from streams.credits.notifications import notifications_for
    from streams.credits.policy import load_policy

    account = f"acc-bal-{uuid.uuid4().hex[:6]}"
    t = int(DAY0.timestamp() * 1000)
    grants = {"g1": {"amount": 10_000_000, "campaign": "c", "granted_at": t - 1, "expires_at": t + 10**10,
                     "priority": 0, "revoked_at": None}}
    make = {r.topic_key: r.tables[0][1] for r in ROUTES}
    for seq, spent in ((2, 6_000_000), (1, 1_000_000)):  # the newer one first: the version decides
        rec = balance_record(account, grants, {"p": 0, "o": seq, "spent": {"g1": spent}, "t": t, "v": seq}, "p", 0,
                             t)
        insert(client, "credit_balances", list(make["credit-balances"](rec)))
        if seq == 2:
            notes, _ = notifications_for(load_policy(), rec, [], t)
    assert [n["kind"] for n in notes] == ["USAGE_THRESHOLD"]
    for _ in range(2):  # a processor replay re-sends the same notification
        insert(client, "credit_notifications", list(make["credit-notifications"](notes[0])))
    latest = client.query("SELECT balance_seq, total_remaining_micro, grant_spent_micro FROM v_credit_balances "
                          "WHERE account_id = {a:String}", parameters={"a": account}).result_rows
    assert latest == [(2, 4_000_000, [6_000_000])]
    assert scalar(client, "SELECT count() FROM credit_notifications FINAL WHERE account_id = {a:String}",
                  a=account) == 1


# ---- analyst views: exact numbers -----------------------------------------------------------

def test_views_compute_exact_numbers(fresh_db: Any) -> None:
    c = fresh_db
    d = DAY0
    insert(c, "events", [
        # acc1 (team T1, a grant recipient): extended context + tool use, and a reasoning error.
        event("e1", "acc1", d, team_id="T1", category="EXTENDED_CONTEXT", is_extended_context=True,
              is_tool_use=True, multiplier="3.5", list_micro=3_500_001, charged_micro=1_000_000,
              subsidy_micro=2_500_001, grant_funded_micro=1_000_000, subscription_funded_micro=0),
        event("e2", "acc1", d + timedelta(minutes=5), team_id="T1", category="COMPLEX_REASONING",
              is_complex_reasoning=True, multiplier="2.0", outcome="ERROR", error_code="overloaded",
              list_micro=3, charged_micro=2, subsidy_micro=1, grant_funded_micro=2,
              subscription_funded_micro=0),
        # acc2 (team T1, no grant): plain chat twice.
        event("e3", "acc2", d + timedelta(hours=1), team_id="T1"),
        event("e4", "acc2", d + timedelta(hours=2), team_id="T1"),
        # acc3 (no team, no grant), on a model the policy may not price.
        event("e5", "acc3", d + timedelta(hours=3), plan="PRO", model="nova-preview"),
    ])
    far = NOW + timedelta(days=30)
    insert(c, "credit_grants", [
        {"event_type": "ISSUED", "grant_id": "g1", "account_id": "acc1", "campaign": "launch",
         "amount_micro": 4_000_000, "granted_at": d - timedelta(days=1), "expires_at": far,
         "priority": 0, "occurred_at": d - timedelta(days=1)},
        {"event_type": "ISSUED", "grant_id": "g2", "account_id": "acc4", "campaign": "launch",
         "amount_micro": 2_000_000, "granted_at": d - timedelta(days=10), "expires_at": d - timedelta(days=2),
         "priority": 0, "occurred_at": d - timedelta(days=10)},
        {"event_type": "ISSUED", "grant_id": "g3", "account_id": "acc1", "campaign": "research",
         "amount_micro": 1_000_000, "granted_at": d, "expires_at": far, "priority": 1, "occurred_at": d},
        {"event_type": "REVOKED", "grant_id": "g3", "account_id": "acc1", "campaign": None,
         "amount_micro": None, "granted_at": None, "expires_at": None, "priority": None,
         "occurred_at": d + timedelta(days=1)},
    ])
    # Replayed grant event: must not double the grant.
    insert(c, "credit_grants", [
        {"event_type": "ISSUED", "grant_id": "g1", "account_id": "acc1", "campaign": "launch",
         "amount_micro": 4_000_000, "granted_at": d - timedelta(days=1), "expires_at": far,
         "priority": 0, "occurred_at": d - timedelta(days=1)}])
    insert(c, "credit_ledger", [
        {"event_id": "e1", "occurred_at": d, "account_id": "acc1", "grant_id": "g1", "campaign": "launch",
         "amount_micro": 1_000_000, "balance_after_micro": 3_000_000, "policy_version": "2025.1"},
        {"event_id": "e2", "occurred_at": d + timedelta(minutes=5), "account_id": "acc1", "grant_id": "g1",
         "campaign": "launch", "amount_micro": 2, "balance_after_micro": 2_999_998,
         "policy_version": "2025.1"},
        {"event_id": "e0", "occurred_at": d - timedelta(days=5), "account_id": "acc4", "grant_id": "g2",
         "campaign": "launch", "amount_micro": 500_000, "balance_after_micro": 1_500_000,
         "policy_version": "2025.1"},
    ])
    insert(c, "subscription_changes", [
        # acc1 upgrades after its grant: a converted recipient.
        {"change_id": "s1", "account_id": "acc1", "change": "UPGRADE", "from_plan": "FREE", "to_plan": "PRO",
         "occurred_at": d + timedelta(days=2)},
        # acc2 started PRO before it was first seen: not a conversion.
        {"change_id": "s2", "account_id": "acc2", "change": "START", "from_plan": None, "to_plan": "PRO",
         "occurred_at": d - timedelta(days=3)},
        # acc3 converts after first seen.
        {"change_id": "s3", "account_id": "acc3", "change": "START", "from_plan": None, "to_plan": "MAX",
         "occurred_at": d + timedelta(days=1)},
        # acc4 moves to FREE: not a paid plan.
        {"change_id": "s4", "account_id": "acc4", "change": "START", "from_plan": None, "to_plan": "FREE",
         "occurred_at": d},
    ])
    alert = {"dedup_key": "k", "rule_name": "Velocity", "rule_revision": 1, "entity_type": "account",
             "related_entities": [], "plan": "FREE", "grant_id": None, "window_start": d,
             "window_end": d + timedelta(hours=1), "severity": "HIGH", "score": 0.9, "observed": 10.0,
             "limit_value": 5.0, "counter_signals": [], "evidence": "{}", "sample_event_ids": ["e1"],
             "suggested_action": "REVIEW", "first_seen_at": d, "last_seen_at": d, "status": "OPEN",
             "observed_label": "10 requests in 1h", "limit_label": "5"}
    insert(c, "gaming_alerts", [
        {**alert, "alert_id": "a1", "rule_id": "velocity", "entity_id": "acc1", "firings": 1,
         "estimated_credits_exposed_micro": 1_500_000, "updated_at": d},
        # a1 again with more firings: the newer version replaces the older one.
        {**alert, "alert_id": "a1", "rule_id": "velocity", "entity_id": "acc1", "firings": 3,
         "estimated_credits_exposed_micro": 1_500_000, "updated_at": d + timedelta(minutes=1)},
        {**alert, "alert_id": "a2", "rule_id": "velocity", "entity_id": "acc2", "firings": 1,
         "estimated_credits_exposed_micro": 250_000, "updated_at": d},
        {**alert, "alert_id": "a3", "rule_id": "velocity", "entity_id": "acc3", "firings": 1,
         "estimated_credits_exposed_micro": 1, "updated_at": d},
    ])
    review = {"rule_id": "velocity", "entity_type": "account", "reviewer": "r", "note": "",
              "allow_until": None}
    insert(c, "alert_reviews", [
        {**review, "decision_id": "d1", "alert_id": "a1", "entity_id": "acc1", "verdict": "FALSE_POSITIVE",
         "decided_at": d + timedelta(hours=1)},
        # a1's later decision overrides the first.
        {**review, "decision_id": "d2", "alert_id": "a1", "entity_id": "acc1", "verdict": "CONFIRMED",
         "decided_at": d + timedelta(hours=2)},
        {**review, "decision_id": "d3", "alert_id": "a2", "entity_id": "acc2", "verdict": "FALSE_POSITIVE",
         "decided_at": d + timedelta(hours=1)},
    ])

    day = d.date()
    rows = c.query("SELECT category, plan, model, requests, errors, list_credits, charged_credits, "
                   "subsidy_credits, grant_funded_credits, subscription_funded_credits "
                   "FROM v_credits_by_feature WHERE day = {d:Date} ORDER BY category, plan",
                   parameters={"d": day}).result_rows
    assert rows == [
        ("COMPLEX_REASONING", "FREE", "m-large", 1, 1, Decimal("0.000003"), Decimal("0.000002"),
         Decimal("0.000001"), Decimal("0.000002"), Decimal("0")),
        ("EXTENDED_CONTEXT", "FREE", "m-large", 1, 0, Decimal("3.500001"), Decimal("1"),
         Decimal("2.500001"), Decimal("1"), Decimal("0")),
        ("STANDARD_CHAT", "FREE", "m-large", 2, 0, Decimal("2"), Decimal("2"), Decimal("0"), Decimal("0"),
         Decimal("2")),
        ("STANDARD_CHAT", "PRO", "nova-preview", 1, 0, Decimal("1"), Decimal("1"), Decimal("0"), Decimal("0"),
         Decimal("1")),
    ]
    assert isinstance(rows[0][5], Decimal)

    adoption = c.query("SELECT team_id, accounts, requests, distinct_categories, used_extended_context, "
                       "used_complex_reasoning, used_tool_use, used_standard_chat, features_used "
                       "FROM v_feature_adoption").result_rows
    assert adoption == [("T1", 2, 4, 3, True, True, True, True, 4)]

    grants = c.query("SELECT grant_id, account_id, campaign, amount_credits, used_credits, "
                     "remaining_credits, utilisation, debits, expired, revoked "
                     "FROM v_grant_utilisation ORDER BY grant_id"
                     ).result_rows
    assert grants == [
        ("g1", "acc1", "launch", Decimal("4"), Decimal("1.000002"), Decimal("2.999998"), Decimal("0.25"),
         2, False, False),
        ("g2", "acc4", "launch", Decimal("2"), Decimal("0.5"), Decimal("1.5"), Decimal("0.25"),
         1, True, False),
        ("g3", "acc1", "research", Decimal("1"), Decimal("0"), Decimal("1"), Decimal("0"), 0, False, True),
    ]

    campaigns = c.query("SELECT campaign, grants, accounts, granted_credits, used_credits, "
                        "remaining_credits, utilisation, expired_unused_credits, expired_grants, "
                        "revoked_grants "
                        "FROM v_campaign_utilisation ORDER BY campaign").result_rows
    assert campaigns == [
        ("launch", 2, 2, Decimal("6"), Decimal("1.500002"), Decimal("4.499998"), Decimal("0.250000"),
         Decimal("1.5"), 1, 0),
        ("research", 1, 1, Decimal("1"), Decimal("0"), Decimal("1"), Decimal("0"), Decimal("0"), 0, 1),
    ]

    conversion = c.query("SELECT cohort, accounts, converted, conversion_rate FROM v_conversion "
                         "ORDER BY cohort").result_rows
    assert conversion == [
        ("credit_recipient", 2, 1, Decimal("0.5")),
        ("non_recipient", 2, 1, Decimal("0.5")),
    ]

    # The report's unpriced models: every model the policy's price table does not name.
    unpriced = dict(REPORT_SECTIONS)["models metered at the '*' fallback price"]
    assert c.query(unpriced, parameters=report_params(unpriced, 30, ["atlas-small", "m-large"])).result_rows == [
        ("nova-preview", 1, Decimal("1"), Decimal("1"), day, day)]
    assert c.query(unpriced, parameters=report_params(unpriced, 30, [])).result_rows == [
        ("m-large", 4, Decimal("5.500004"), Decimal("3.000002"), day, day),
        ("nova-preview", 1, Decimal("1"), Decimal("1"), day, day)]
    assert c.query(unpriced, parameters=report_params(unpriced, 30, ["m-large", "nova-preview"])).result_rows == []
    assert c.query(unpriced, parameters=report_params(unpriced, 7, [])).result_rows == []  # 20 days ago

    alerts = c.query("SELECT rule_id, severity, alerts, firings, credits_exposed, reviewed, confirmed, "
                     "false_positive, precision FROM v_alert_volume WHERE day = {d:Date}",
                     parameters={"d": day}).result_rows
    assert alerts == [("velocity", "HIGH", 3, 5, Decimal("1.750001"), 2, 1, 1, Decimal("0.5"))]


# ---- insert throughput ------------------------------------------------------------------------

def test_insert_rate_100k_events_column_oriented(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    n = 100_000
    account_count = 1_000
    base = DAY0
    cols: dict[str, list[Any]] = {name: [] for name in EVENTS_COLUMNS}
    template = event("x", "x", base)
    for name in EVENTS_COLUMNS:
        cols[name] = [template[name]] * n
    cols["event_id"] = [f"bench-{i}" for i in range(n)]
    cols["account_id"] = [f"bench-acc-{i % account_count}" for i in range(n)]
    cols["occurred_at"] = [base + timedelta(milliseconds=37 * i) for i in range(n)]
    cols["processed_at"] = cols["occurred_at"]
    cols["source_offset"] = list(range(n))
    data = [cols[name] for name in EVENTS_COLUMNS]
    started = time.perf_counter()
    client.insert("events", data, column_names=list(EVENTS_COLUMNS), column_oriented=True,
                  settings=dedup_settings("bench/0/0-99999"))
    elapsed = time.perf_counter() - started
    assert scalar(client, "SELECT count() FROM events WHERE startsWith(account_id, 'bench-acc-')") == n
    assert scalar(client, "SELECT sum(requests) FROM usage_hour "
                          "WHERE startsWith(account_id, 'bench-acc-')") == n
    with capsys.disabled():
        print(f"\n[chdb insert] {n} events rows column-oriented (2 MVs, dedup token) in {elapsed:.2f}s "
              f"= {n / elapsed:,.0f} rows/s")


def test_unused_column_lists_are_importable() -> None:
    # The sink imports these by name; keep them exported.
    assert CREDIT_LEDGER_COLUMNS and CREDIT_GRANTS_COLUMNS and SUBSCRIPTION_CHANGES_COLUMNS
    assert GAMING_ALERTS_COLUMNS and ALERT_REVIEWS_COLUMNS


# ---- CLI: migrate / query / report (a subprocess: its own process, so its own chDB path) ------

def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLICKHOUSE_URL": f"chdb://{tmp / 'cli-chdb'}", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "streams.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[2], timeout=120)


def test_cli_migrate_query_report(tmp_path: Path) -> None:
    first = _cli(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applied now") == len(discover())
    again = _cli(tmp_path, "migrate")
    assert again.returncode == 0 and "applied now" not in again.stdout and "pending" not in again.stdout

    q = _cli(tmp_path, "query", "SELECT {n:UInt32} + 1 AS n, CAST(1500001 AS Decimal128(6)) / 1000000 AS c",
             "--param", "n=41", "--format", "json")
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == [{"n": 42, "c": "1.500001"}]

    csv_out = _cli(tmp_path, "query",
                   "SELECT name FROM system.tables WHERE database = currentDatabase() "
                   "AND name LIKE {p:String} "
                   "ORDER BY name",
                   "-p", "p=v_%", "--format", "csv")
    assert csv_out.stdout.splitlines() == ["name", *sorted(VIEWS)]

    report = _cli(tmp_path, "report", "--days", "7", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert list(json.loads(report.stdout)) == [
        "programme scorecard: credit recipients vs the others", "credits by feature", "feature adoption by week",
        "grant utilisation by campaign", "conversion to paid plans", "failure modes (refinement samples)",
        "failure rate by reasoning depth and context size", "integration pain points by tool and surface",
        "models metered at the '*' fallback price", "alert volume and verdicts"]

    for args in (("query", "DROP TABLE events"), ("query", "SELECT 1", "-p", "x"),
                 ("query", "SELECT 1", "-p", "x=1"), ("report", "--days", "0")):
        bad = _cli(tmp_path, *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("error: ")
    broken = _cli(tmp_path, "query", "SELECT * FROM no_such_table")
    assert broken.returncode == 1 and broken.stderr.startswith("error: ")
    assert _cli(tmp_path, "query", "SELECT count() FROM events", "--format", "csv").stdout == "count()\n0\n"
