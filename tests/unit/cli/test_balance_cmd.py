"""``creditflow balance``: the human-readable answer, exact credits."""

from __future__ import annotations

from streams.cli.balance import render
from streams.credits.balances import balance_record


def test_render_shows_exact_credits_per_grant_and_the_source() -> None:
    grants = {"g1": {"amount": 25_000_000, "campaign": "launch", "granted_at": 0, "expires_at": 10**13,
                     "priority": 0, "revoked_at": None}}
    rec = balance_record("acct-7", grants, {"p": 1, "o": 9, "spent": {"g1": 1_234_567}, "sub": 5, "t": 1, "v": 3},
                         "2026.11-1", 1, 0)
    text = render(rec, "worker http://x")
    assert text.splitlines()[0] == ("account acct-7: 23.765433 credits left (balance #3, policy 2026.11-1, "
                                    "from worker http://x)")
    assert "subscription-funded 0.000005" in text and "g1 (launch): 23.765433 of 25.000000 left, ACTIVE" in text
