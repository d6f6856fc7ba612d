"""Signals do not depend on price: the same traffic on a cheap model and on a model missing from
the policy's price table (metered at its fallback price, 3.75x the cheap one) gives the same alerts.
Grants are large, so no grant runs dry on either: exhausting a grant is a matter of credits by nature."""

from __future__ import annotations

from typing import Any

import pytest

from streams.credits.policy import load_policy
from streams.synthetic.in_process import InProcessRun, run_in_process
from streams.synthetic.patterns import UNPRICED_MODELS, build_randomised
from streams.synthetic.scenarios import ScenarioSet


def _on_model(traffic: ScenarioSet, model: str) -> ScenarioSet:
    events = [{**ev, "model": model} for ev in traffic.events]
    grants = [{**g, "amount_micro": 100_000 * 1_000_000} for g in traffic.grants]
    return ScenarioSet(events, grants, traffic.labels, traffic.start_ms, traffic.end_ms, traffic.seed, traffic.size)


@pytest.fixture(scope="module")
def runs() -> tuple[InProcessRun, InProcessRun]:
    traffic = build_randomised(8, gamers=(1, 1), decoys=(1, 1), background_accounts=40)
    unpriced = UNPRICED_MODELS[0]
    assert load_policy().prices.get(unpriced) is None
    return run_in_process(_on_model(traffic, "atlas-small")), run_in_process(_on_model(traffic, unpriced))


def _alerts(run: InProcessRun) -> set[tuple[Any, ...]]:
    return {(a["dedup_key"], a["rule_id"], a["entity_id"], a["severity"], a["firings"],
             tuple(a["related_entities"]), repr(a["evidence"]["counts"]).count(":")) for a in run.latest}


def test_same_alerts_on_a_cheap_and_on_an_unpriced_model(runs: tuple[InProcessRun, InProcessRun]) -> None:
    cheap, unpriced = runs
    assert cheap.unknown_model_events == 0 and unpriced.unknown_model_events > 0
    charged = [sum(c for spent in run.usage.values() for _t, c in spent) for run in runs]
    assert charged[1] > 3 * charged[0]  # the fallback price really is higher
    assert len({a["rule_id"] for a in cheap.latest}) >= 8
    assert _alerts(cheap) == _alerts(unpriced)
