"""The evaluate command's verdicts: which quality targets failed, in words an operator can act on."""

from __future__ import annotations

from streams.cli.evaluate import pattern_targets_met, targets_met
from streams.synthetic.evaluation import EvaluationResult, PatternScore, PatternsResult


def _scenario_result(precision: float, recall: float, **overrides: object) -> EvaluationResult:
    fields: dict[str, object] = {
        "scenarios": [], "precision": precision, "recall": recall, "genuine_fpr": 0.0, "decoy_fpr": 0.0,
        "decoy_flagged_high": False, "detectors_catch_own": {"CF-001": True}, "adversarial_recall": None,
        "raw_firings": 0, "alerts": 0, **overrides,
    }
    return EvaluationResult(**fields)  # type: ignore[arg-type]


def _patterns_result(precision: float, recall: float, **overrides: object) -> PatternsResult:
    fields: dict[str, object] = {
        "patterns": [PatternScore("spike", "CF-011", gamers=4, caught=4)], "precision": precision,
        "recall": recall, "early_share": 1.0, "genuine": 10, "genuine_flagged": 0, "flagged": 4,
        "true_positives": 4, "decoy_high": 0, "alerts": 4, **overrides,
    }
    return PatternsResult(**fields)  # type: ignore[arg-type]


def test_targets_that_hold_fail_nothing() -> None:
    assert targets_met(_scenario_result(0.95, 0.90)) == []
    assert pattern_targets_met(_patterns_result(0.95, 0.90)) == []


def test_low_precision_and_recall_are_named_the_same_way_for_scenarios_and_patterns() -> None:
    expected = ["precision 0.940 < 0.95", "recall 0.500 < 0.9"]
    assert targets_met(_scenario_result(0.94, 0.5)) == expected
    assert pattern_targets_met(_patterns_result(0.94, 0.5)) == expected


def test_each_kind_keeps_its_own_targets_after_the_shared_ones() -> None:
    assert targets_met(_scenario_result(0.5, 1.0, decoy_flagged_high=True,
                                        detectors_catch_own={"CF-002": False, "CF-001": True})) == [
        "precision 0.500 < 0.95", "a decoy was flagged at HIGH or above",
        "detectors missed their own scenario: CF-002"]
    weak = PatternScore("spike", "CF-011", gamers=4, caught=1)
    assert pattern_targets_met(_patterns_result(1.0, 0.5, patterns=[weak], decoy_high=2, early_share=0.5)) == [
        "recall 0.500 < 0.9", "pattern recall < 0.8: spike 0.25", "2 decoy(s) flagged at HIGH or above",
        "alerted before 20% of credits 0.500 < 0.8"]
