"""The demo's pure parts: mixing gaming into traffic, the labelled sample, subscription changes and
the alerts-by-rule summary."""

from __future__ import annotations

import time

from streams.synthetic.demo import DEMO_SCENARIOS, alerts_by_rule, explain, interleave
from streams.synthetic.scenarios import DAY_MS, SCENARIO_RULE, Label, gaming_sample
from streams.synthetic.subscriptions import subscription_changes
from streams.wire.validation import validate_subscription_change


def test_interleave_spreads_the_mix_and_keeps_both_orders() -> None:
    background = [{"b": i} for i in range(10)]
    mixed = [{"m": i} for i in range(3)]
    out = interleave(background, mixed)
    assert len(out) == 13
    assert [e["b"] for e in out if "b" in e] == list(range(10))
    assert [e["m"] for e in out if "m" in e] == [0, 1, 2]
    positions = [i for i, e in enumerate(out) if "m" in e]
    assert positions[0] > 0 and positions[-1] < 12  # spread, not bunched at one end
    assert interleave(background, []) == background


def test_gaming_sample_has_only_the_named_schemes_under_the_prefix() -> None:
    now = int(time.time() * 1000)
    sample = gaming_sample(DEMO_SCENARIOS, 7, now - 6 * DAY_MS, account_prefix="run-acct-gaming-")
    assert {label.scenario for label in sample.labels.values()} == set(DEMO_SCENARIOS)
    assert all(e["account_id"].startswith("run-acct-gaming-") for e in sample.events)
    assert all(g["account_id"].startswith("run-acct-gaming-") for g in sample.grants)
    assert max(e["occurred_at"] for e in sample.events) <= now
    assert [e["occurred_at"] for e in sample.events] == sorted(e["occurred_at"] for e in sample.events)


def test_subscription_changes_are_valid_and_deterministic() -> None:
    now = int(time.time() * 1000)
    accounts = [f"a{i}" for i in range(400)]
    recipients = set(accounts[:200])
    changes = subscription_changes(accounts, recipients, now, seed=3)
    assert changes == subscription_changes(accounts, recipients, now, seed=3)
    assert all(validate_subscription_change(c, now) is None for c in changes)
    starts = {c["account_id"] for c in changes if c["change"] == "START"}
    assert {c["account_id"] for c in changes if c["change"] == "CANCEL"} <= starts
    assert len(starts & recipients) > len(starts - recipients)


def test_alerts_by_rule_names_the_planted_scheme_each_rule_caught() -> None:
    labels = {"acct-1": Label("round_the_clock", True, frozenset({"CF-001"}), "gamer"),
              "acct-2": Label("farming", True, frozenset({"CF-004"}), "gamer")}
    alerts = [
        {"rule_id": "CF-001", "rule_name": "Round-the-clock bot", "severity": "HIGH", "exposed_micro": 1_500_000,
         "entity_type": "account", "entity_id": "acct-1", "related_entities": []},
        {"rule_id": "CF-001", "rule_name": "Round-the-clock bot", "severity": "CRITICAL", "exposed_micro": 500_000,
         "entity_type": "account", "entity_id": "acct-9", "related_entities": []},
        {"rule_id": "CF-004", "rule_name": "Multi-account farming", "severity": "MEDIUM", "exposed_micro": 0,
         "entity_type": "device", "entity_id": "dev", "related_entities": ["account:acct-2", "account:acct-3"]},
    ]
    assert alerts_by_rule(alerts, labels) == [
        ("CF-001", "Round-the-clock bot", 2, "CRITICAL", "2.00", "round_the_clock"),
        ("CF-004", "Multi-account farming", 1, "MEDIUM", "0.00", "farming"),
    ]
    assert SCENARIO_RULE["farming"] == "CF-004"


def test_one_alert_explained_names_the_rule_signal_scheme_and_next_command() -> None:
    labels = {"acct-1": Label("round_the_clock", True, frozenset({"CF-001"}), "gamer")}
    alert = {"alert_id": "al-1", "rule_id": "CF-001", "rule_name": "Round-the-clock bot", "severity": "CRITICAL",
             "score": 1.0, "entity_type": "account", "entity_id": "acct-1", "related_entities": [],
             "observed": 24.0, "limit": 20.0, "exposed_micro": 3_390_000, "counter_signals": [],
             "evidence": '{"counts": {"active_hours": 24}}', "suggested_action": "Rate-limit."}
    text = "\n".join(explain(alert, labels))
    assert "planted by the 'round_the_clock' scenario" in text
    assert "why it fires: Requests in at least" in text
    assert "observed 24 against a limit of 20; 3.39 credits exposed" in text
    assert "evidence: active_hours=24" in text and "creditflow alerts show al-1" in text
    labelled = {**alert, "observed_label": "24 active hours of 24", "limit_label": "20"}
    assert "observed 24 active hours of 24 (24) against a limit of 20; " in "\n".join(explain(labelled, labels))
