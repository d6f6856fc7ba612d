"""Synthetic subscription changes for the demo, so the programme scorecard has something to compare:
recent paid starts (conversions), and older starts some of which cancel inside their first billing
cycle (churn). Credit recipients are made to convert more and churn less, as the programme hopes;
deterministic for a seed."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from streams.synthetic.generator import DAY_MS, HOUR_MS

PAID = ("PRO", "MAX", "TEAM")
# (recipients, others)
CONVERT = (0.20, 0.08)
OLD_SUBSCRIBER = (0.15, 0.15)
CHURN_IN_FIRST_CYCLE = (0.20, 0.40)


def subscription_changes(accounts: Iterable[str], recipients: set[str], now_ms: int, seed: int) -> list[dict[str, Any]]:
    """START/CANCEL changes for some of ``accounts``: a recent start (after their first activity,
    within the last hour) or an older one 40-60 days ago, then perhaps a cancellation 5-25 days
    after it."""
    rng = random.Random(seed * 131 + 7)
    out: list[dict[str, Any]] = []
    for account in sorted(accounts):
        k = 0 if account in recipients else 1
        plan = rng.choice(PAID)
        if rng.random() < CONVERT[k]:
            out.append(_change(account, "START", None, plan, now_ms - rng.randint(1, 60) * 60_000))
        elif rng.random() < OLD_SUBSCRIBER[k]:
            start = now_ms - rng.randint(40, 60) * DAY_MS - rng.randint(0, 23) * HOUR_MS
            out.append(_change(account, "START", None, plan, start))
            if rng.random() < CHURN_IN_FIRST_CYCLE[k]:
                out.append(_change(account, "CANCEL", plan, None, start + rng.randint(5, 25) * DAY_MS))
    return out


def _change(account: str, change: str, from_plan: str | None, to_plan: str | None, at: int) -> dict[str, Any]:
    return {"change_id": f"sub-{account}-{change}-{at}", "account_id": account, "change": change,
            "from_plan": from_plan, "to_plan": to_plan, "occurred_at": at}
