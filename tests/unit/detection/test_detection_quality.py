"""The small labelled scenario set through the offline engine and the alert builder must meet the
issue's targets. Adversarial variants are scored apart and only reported."""

from __future__ import annotations

import pytest

from streams.detection.rulebook import DETECTORS
from streams.synthetic.evaluation import EvaluationResult, evaluate_offline, render_table
from streams.synthetic.scenarios import build


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    return evaluate_offline(build("small", seed=11))


def test_overall_precision_and_recall(result: EvaluationResult) -> None:
    assert result.precision >= 0.95
    assert result.recall >= 0.90


def test_no_decoy_flagged_high_or_above(result: EvaluationResult) -> None:
    assert not result.decoy_flagged_high


def test_every_detector_catches_its_own_scenario(result: EvaluationResult) -> None:
    assert set(result.detectors_catch_own) == {d.id for d in DETECTORS}
    assert all(result.detectors_catch_own.values()), result.detectors_catch_own


def test_dedup_turns_many_firings_into_few_alerts(result: EvaluationResult) -> None:
    assert result.alerts * 5 < result.raw_firings


def test_scenario_set_is_deterministic_and_small() -> None:
    a, b = build("small", seed=11), build("small", seed=11)
    assert a.events == b.events and a.grants == b.grants and a.labels == b.labels
    assert len(a.events) < 10_000
    assert build("small", seed=12).events != a.events


def test_table_renders(result: EvaluationResult) -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(result))
    text = console.export_text()
    assert "precision" in text and "round_the_clock" in text
