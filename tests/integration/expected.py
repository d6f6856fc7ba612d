"""An independent recomputation of what the pipeline must produce, written from the published
policy table with decimal arithmetic, sharing no code with ``streams.credits.policy`` or ``streams.credits.ledger``."""

from __future__ import annotations

import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

POLICY = Path(__file__).resolve().parents[2] / "schemas" / "policy" / "credit_policy.toml"
MICRO = Decimal("0.000001")


@dataclass
class Totals:
    events: int = 0
    list_credits: Decimal = Decimal(0)
    charged: Decimal = Decimal(0)
    subsidy: Decimal = Decimal(0)


@dataclass
class Expected:
    by_account_category: dict[tuple[str, str], Totals] = field(default_factory=lambda: defaultdict(Totals))
    grant_used: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    grant_funded_by_event: dict[str, Decimal] = field(default_factory=dict)
    # A grant's balance right after each debit of it: (event id, grant id) -> credits left.
    balance_after: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    # Per account: its final balance (credits), computed here from the grants and the debits above.
    balances: dict[str, ExpectedBalance] = field(default_factory=dict)


@dataclass
class ExpectedBalance:
    total_remaining: Decimal
    grant_funded: Decimal
    subscription_funded: Decimal
    # grant id -> (remaining, status at the account's latest event time)
    grants: dict[str, tuple[Decimal, str]]


def _policy() -> dict[str, Any]:
    return tomllib.loads(POLICY.read_text())


def category_of(ev: Mapping[str, Any], p: Mapping[str, Any]) -> str:
    c = p["categories"]
    qualifying = []
    if ev["context_window_tokens"] >= c["extended_context"]["min_context_window_tokens"]:
        qualifying.append(("EXTENDED_CONTEXT", Decimal(c["extended_context"]["multiplier"])))
    if ev["reasoning_steps"] >= c["complex_reasoning"]["min_reasoning_steps"] or \
            ev["thinking_tokens"] >= c["complex_reasoning"]["min_thinking_tokens"]:
        qualifying.append(("COMPLEX_REASONING", Decimal(c["complex_reasoning"]["multiplier"])))
    if ev["tool_calls"] >= c["tool_use"]["min_tool_calls"]:
        qualifying.append(("TOOL_USE", Decimal(c["tool_use"]["multiplier"])))
    qualifying.append(("STANDARD_CHAT", Decimal(c["standard_chat"]["multiplier"])))
    return max(qualifying, key=lambda q: q[1])[0]


def price(ev: Mapping[str, Any], p: Mapping[str, Any]) -> tuple[str, Decimal, Decimal]:
    prices = p["prices"].get(ev["model"]) or p["prices"]["*"]
    per_1k = (Decimal(ev["input_tokens"]) * Decimal(prices["input"])
              + Decimal(ev["output_tokens"]) * Decimal(prices["output"])
              + Decimal(ev.get("cached_tokens", 0)) * Decimal(prices["cached"])
              + Decimal(ev["thinking_tokens"]) * Decimal(prices["thinking"]))
    list_credits = (per_1k / 1000).quantize(MICRO, rounding=ROUND_HALF_EVEN)
    category = category_of(ev, p)
    key = {"EXTENDED_CONTEXT": "extended_context", "COMPLEX_REASONING": "complex_reasoning",
           "TOOL_USE": "tool_use", "STANDARD_CHAT": "standard_chat"}[category]
    charged = (list_credits / Decimal(p["categories"][key]["multiplier"])).quantize(MICRO, rounding=ROUND_HALF_EVEN)
    return category, list_credits, charged


def expected(events: Iterable[Mapping[str, Any]], grants: Iterable[Mapping[str, Any]]) -> Expected:
    """Events must be given in per-account production order (one partition per account keeps it)."""
    p = _policy()
    out = Expected()
    balances: dict[str, list[dict[str, Any]]] = defaultdict(list)
    subscription: dict[str, Decimal] = {}
    latest: dict[str, int] = {}
    for g in grants:
        balances[g["account_id"]].append({**g, "left": Decimal(g["amount_micro"]) * MICRO})
    for ev in events:
        category, list_credits, charged = price(ev, p)
        t = out.by_account_category[(ev["account_id"], category)]
        t.events += 1
        t.list_credits += list_credits
        t.charged += charged
        t.subsidy += list_credits - charged
        need = charged
        funded = Decimal(0)
        usable = sorted(
            (g for g in balances[ev["account_id"]]
             if g["granted_at"] <= ev["occurred_at"] < g["expires_at"] and g["left"] > 0),
            key=lambda g: (g["expires_at"], -g["priority"], g["granted_at"], g["grant_id"]),
        )
        for g in usable:
            if need == 0:
                break
            take = min(g["left"], need)
            g["left"] -= take
            need -= take
            funded += take
            out.grant_used[g["grant_id"]] += take
            out.balance_after[(ev["event_id"], g["grant_id"])] = g["left"]
        out.grant_funded_by_event[ev["event_id"]] = funded
        subscription[ev["account_id"]] = subscription.get(ev["account_id"], Decimal(0)) + charged - funded
        latest[ev["account_id"]] = max(latest.get(ev["account_id"], 0), ev["occurred_at"])
    for account in set(latest) | set(balances):
        at = max([latest.get(account, 0), *(g["occurred_at"] for g in balances.get(account, []))])
        grants_now: dict[str, tuple[Decimal, str]] = {}
        for g in balances.get(account, []):
            if g.get("revoked_at") is not None and at >= g["revoked_at"]:
                status = "REVOKED"
            elif at < g["granted_at"]:
                status = "NOT_STARTED"
            elif at >= g["expires_at"]:
                status = "EXPIRED"
            elif g["left"] == 0:
                status = "EXHAUSTED"
            else:
                status = "ACTIVE"
            grants_now[g["grant_id"]] = (g["left"], status)
        out.balances[account] = ExpectedBalance(
            total_remaining=sum((left for left, status in grants_now.values() if status == "ACTIVE"), Decimal(0)),
            grant_funded=sum((out.grant_used.get(gid, Decimal(0)) for gid in grants_now), Decimal(0)),
            subscription_funded=subscription.get(account, Decimal(0)),
            grants=grants_now,
        )
    return out
