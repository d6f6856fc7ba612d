"""``creditflow balance``: the human-readable answer, exact credits."""

from __future__ import annotations

from streams.cli.balance import render
from streams.credits.account_state import AccountUsage
from streams.credits.balances import balance_record


def test_render_shows_exact_credits_per_grant_and_the_source() -> None:
    grants = {"g1": {"amount": 25_000_000, "campaign": "launch", "granted_at": 0, "expires_at": 10**13,
                     "priority": 0, "revoked_at": None}}
    usage = AccountUsage(input_partition=1, applied_offset=9, spent_by_grant={"g1": 1_234_567},
                         subscription_funded_micro=5, event_time_ms=1, balance_seq=3)
    rec = balance_record("acct-7", grants, usage, "2026.11-1", 1, 0)
    text = render(rec, "worker http://x")
    assert text.splitlines()[0] == ("account acct-7: 23.765433 credits left (balance #3, policy 2026.11-1, "
                                    "from worker http://x)")
    assert "subscription-funded 0.000005" in text and "g1 (launch): 23.765433 of 25.000000 left, ACTIVE" in text
