"""The randomised pattern generator and its scoring: deterministic per seed, every pattern and its
decoy present with drawn parameters, training and test seeds disjoint; the score counts what it says."""

from __future__ import annotations

from typing import Any

import click
import pytest

from streams.cli.evaluate import parse_seeds, pattern_targets_met
from streams.credits.policy import load_policy
from streams.synthetic.evaluation import merge_patterns, score_patterns
from streams.synthetic.patterns import PATTERNS, TEST_SEEDS, TRAINING_SEEDS, UNPRICED_MODELS, build_randomised
from streams.synthetic.scenarios import DECOY, GAMER, GENUINE, Label

RULES = {name: rule for name, (rule, _g, _d) in PATTERNS.items()}


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    a = build_randomised(1, background_accounts=20)
    b = build_randomised(1, background_accounts=20)
    assert a.events == b.events and a.grants == b.grants and a.labels == b.labels
    assert build_randomised(2, background_accounts=20).events != a.events


def test_every_pattern_has_gamers_and_a_decoy_and_unpriced_models_appear() -> None:
    s = build_randomised(3, background_accounts=20)
    scenarios = {lab.scenario for lab in s.labels.values()}
    for name in PATTERNS:
        assert name in scenarios and f"decoy:{name}" in scenarios
    assert all(lab.is_gamer == (lab.kind == GAMER) for lab in s.labels.values())
    models = {ev["model"] for ev in s.events}
    assert models & set(UNPRICED_MODELS)
    assert all(load_policy().prices.get(m) is None for m in UNPRICED_MODELS)
    assert s.events == sorted(s.events, key=lambda e: (e["occurred_at"], e["event_id"]))


def test_training_and_test_seeds_are_disjoint() -> None:
    assert not set(TRAINING_SEEDS) & set(TEST_SEEDS)
    assert parse_seeds("test") == list(TEST_SEEDS) and parse_seeds("training") == list(TRAINING_SEEDS)
    assert parse_seeds("101-103,7") == [101, 102, 103, 7]
    with pytest.raises(click.BadParameter):
        parse_seeds("1x")


def _alert(account: str, rule: str, severity: str, at: int) -> dict[str, Any]:
    return {"entity_type": "account", "entity_id": account, "related_entities": [], "first_seen_at": at,
            "severity": severity, "rule_id": rule}


def test_score_counts_recall_decoys_by_severity_and_early_alerts() -> None:
    labels = {"g1": Label("spike", True, frozenset({"CF-011"}), GAMER),
              "g2": Label("spike", True, frozenset({"CF-011"}), GAMER),
              "d1": Label("decoy:spike", False, frozenset(), DECOY),
              "h1": Label("genuine", False, frozenset(), GENUINE)}
    usage = {"g1": [(10, 100), (20, 900)], "g2": [(10, 500), (20, 500)], "d1": [(10, 1)]}
    alerts = [_alert("g1", "CF-011", "HIGH", 15), _alert("g2", "CF-001", "MEDIUM", 10),
              _alert("d1", "CF-011", "LOW", 10)]
    r = score_patterns(labels, alerts, usage, RULES)
    spike = next(s for s in r.patterns if s.pattern == "spike")
    assert (spike.gamers, spike.caught, spike.caught_by_rule) == (2, 2, 1)
    assert spike.early == 1  # g1: 100 of 1000 before its alert; g2: 500 of 1000
    assert spike.decoys_by_severity == {"LOW": 1} and r.decoy_high == 0
    assert r.precision == pytest.approx(2 / 3) and r.recall == 1.0 and r.early_share == 0.5
    merged = merge_patterns([r, r])
    assert merged.precision == pytest.approx(2 / 3) and merged.flagged == 6
    failed = pattern_targets_met(merged)
    assert any("precision" in f for f in failed) and any("20%" in f for f in failed)
    assert not any("pattern recall" in f for f in failed)
