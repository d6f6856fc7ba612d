"""The programme scorecard views on the real engine (chDB): recipients against non-recipients on
conversion, adoption breadth per account and per team, and first-cycle churn, with exact rates."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sinks.client import close, connect
from sinks.migrations import apply_migrations

pytestmark = pytest.mark.integration

DAY = 86_400_000
# Four months ago: every first billing cycle here is over, and the events are inside their TTL.
T0 = (int(time.time() * 1000) // DAY - 120) * DAY


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    c = connect(url)
    apply_migrations(c, 730)
    yield c
    close(url)


def _event(c: Any, account: str, team: str | None, at: int, category: str, ext: bool = False, reasoning: bool = False,
           tool: bool = False) -> None:
    when = dt.datetime.fromtimestamp(at / 1000, tz=dt.UTC)
    c.insert("events", [[f"e-{account}-{at}-{category}", account, team, when, category, ext, reasoning, tool]],
             column_names=["event_id", "account_id", "team_id", "occurred_at", "category", "is_extended_context",
                           "is_complex_reasoning", "is_tool_use"])


def _grant(c: Any, account: str, at: int) -> None:
    c.command("INSERT INTO credit_grants (event_type, grant_id, account_id, campaign, amount_micro, granted_at, "
              "occurred_at) VALUES ('ISSUED', {g:String}, {a:String}, 'c', 1000000, "
              "fromUnixTimestamp64Milli({t:Int64}), fromUnixTimestamp64Milli({t:Int64}))",
              parameters={"g": f"g-{account}", "a": account, "t": at})


def _change(c: Any, account: str, change: str, to_plan: str, at: int) -> None:
    c.command("INSERT INTO subscription_changes (change_id, account_id, change, from_plan, to_plan, occurred_at) "
              "VALUES ({id:String}, {a:String}, {c:String}, NULL, {p:String}, fromUnixTimestamp64Milli({t:Int64}))",
              parameters={"id": f"{account}-{change}-{at}", "a": account, "c": change, "p": to_plan, "t": at})


def test_scorecard_compares_recipients_with_everyone_else(client: Any) -> None:
    # Recipients: r1 (extended context + tool use, team A), r2 (chat, team A), r3 (no usage).
    for account in ("r1", "r2", "r3"):
        _grant(client, account, T0)
    _event(client, "r1", "A", T0 + DAY, "EXTENDED_CONTEXT", ext=True, tool=True)
    _event(client, "r2", "A", T0 + DAY, "STANDARD_CHAT")
    # Non-recipients: n1 (chat, team B), n2 (reasoning and chat, team B), n3 (chat, no team).
    _event(client, "n1", "B", T0, "STANDARD_CHAT")
    _event(client, "n2", "B", T0, "COMPLEX_REASONING", reasoning=True)
    _event(client, "n2", "B", T0 + DAY, "STANDARD_CHAT")
    _event(client, "n3", None, T0, "STANDARD_CHAT")
    # r1 converts after its grant and cancels within its first cycle; r3 paid before its grant (not
    # a conversion) and stays; n1 converts and downgrades only after its first cycle.
    _change(client, "r1", "START", "PRO", T0 + 2 * DAY)
    _change(client, "r1", "CANCEL", "FREE", T0 + 10 * DAY)
    _change(client, "r3", "START", "PRO", T0 - DAY)
    _change(client, "n1", "START", "MAX", T0 + DAY)
    _change(client, "n1", "DOWNGRADE", "FREE", T0 + 40 * DAY)

    rows = client.query("SELECT metric, recipients, non_recipients, ratio, recipients_base, non_recipients_base "
                        "FROM v_programme_scorecard").result_rows
    got = {r[0]: r[1:] for r in rows}
    assert [r[0] for r in rows] == ["conversion to paid", "features used per account", "features used per team",
                                    "churn in first billing cycle"]
    assert got["conversion to paid"] == (Decimal("0.333333"), Decimal("0.333333"), Decimal("1"), 3, 3)
    assert got["features used per account"] == (Decimal("1"), Decimal("1.333333"), Decimal("0.75"), 3, 3)
    assert got["features used per team"] == (Decimal("3"), Decimal("2"), Decimal("1.5"), 1, 1)
    assert got["churn in first billing cycle"] == (Decimal("0.5"), Decimal("0"), None, 2, 1)
