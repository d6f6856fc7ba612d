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
    return out
