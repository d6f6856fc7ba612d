"""Detection runs in event time: the same input read as one backlog or sent paced (a batch per few
minutes of event time, a timer tick after each) gives the same alerts, emission for emission; and an
alert never names an account whose first request came after the alert's event time."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec
import pytest

from streams.detection.rulebook import DetectorEngine
from streams.detection.rules.base import HOUR_MS, MINUTE_MS
from streams.synthetic.in_process import InProcessRun, run_in_process
from streams.synthetic.patterns import build_randomised
from streams.synthetic.scenarios import ScenarioSet

START = 1_793_000_000_000


@pytest.fixture(scope="module")
def traffic() -> ScenarioSet:
    return build_randomised(7, gamers=(1, 1), decoys=(1, 1), background_accounts=40)


@pytest.fixture(scope="module")
def backlog(traffic: ScenarioSet) -> InProcessRun:
    return run_in_process(traffic, paced=False, batch_size=5000)


@pytest.fixture(scope="module")
def paced(traffic: ScenarioSet) -> InProcessRun:
    return run_in_process(traffic, paced=True, pace_ms=10 * MINUTE_MS)


def _emissions(run: InProcessRun) -> list[tuple[Any, ...]]:
    return sorted((a["alert_id"], a["dedup_key"], a["status"], a["firings"], a["severity"], a["score"],
                   a["observed"], a["limit"], a["window_start"], a["window_end"], repr(a["evidence"]),
                   tuple(a["related_entities"]), tuple(a["counter_signals"])) for a in run.alerts)


def test_backlog_and_paced_give_the_same_alerts(backlog: InProcessRun, paced: InProcessRun) -> None:
    assert paced.batches > 20 * backlog.batches  # really paced: many batches, a timer tick after each
    assert len({a["rule_id"] for a in backlog.alerts}) >= 8  # the traffic makes most rules fire
    assert _emissions(backlog) == _emissions(paced)


@pytest.mark.parametrize("paced,batch_size", [(False, 5000), (False, 700), (True, 0)],
                         ids=["backlog", "backlog-small-batches", "paced"])
def test_six_partitions_read_in_any_order_give_the_alerts_of_one(traffic: ScenarioSet, backlog: InProcessRun,
                                                                 paced: bool, batch_size: int) -> None:
    """Accounts spread over six input partitions, each batch read partition by partition (one
    partition's events all before the next's, hours of event time apart in a backlog): the
    fingerprint rules, whose observations come from every partition, still see each fingerprint's
    observations in event order, so the alerts are those of one partition read in order."""
    spread = (run_in_process(traffic, paced=True, pace_ms=10 * MINUTE_MS, partitions=6) if paced
              else run_in_process(traffic, paced=False, batch_size=batch_size, partitions=6))
    assert any(a["entity_type"] in ("device", "payment", "prompt") for a in spread.alerts)
    assert _emissions(spread) == _emissions(backlog)


def test_no_alert_names_an_account_first_seen_after_it(traffic: ScenarioSet, backlog: InProcessRun) -> None:
    first = {}
    for ev in traffic.events:
        first.setdefault(ev["account_id"], ev["occurred_at"])
    named = 0
    for a in backlog.alerts:
        for r in a["related_entities"]:
            if r.startswith("account:"):
                named += 1
                assert first[r.split(":", 1)[1]] <= a["window_end"], (a["rule_id"], r)
    assert named


def test_alert_times_of_an_entity_never_go_backwards(backlog: InProcessRun) -> None:
    last: dict[tuple[str, str], int] = defaultdict(int)
    for a in backlog.alerts:
        key = (a["rule_id"], a["entity_id"])
        assert a["last_seen_at"] >= last[key]
        last[key] = a["last_seen_at"]


def _obs(account: str, t: int, i: int) -> dict[str, Any]:
    return {"event_id": f"{account}-{i}", "account_id": account, "occurred_at": t, "plan": "FREE",
            "category": "TOOL_USE", "list_micro": 15_000, "charged_micro": 10_000, "grant_funded_micro": 10_000,
            "debits": [(f"g-{account}", 10_000, 1_000_000)], "device_hash": "dev", "new_account": True}


def test_a_fingerprint_rule_counts_only_accounts_seen_by_its_event_time() -> None:
    """Observations of one device from two input partitions arrive out of event order: the later
    accounts first. Evaluated at an earlier event time, they are not counted."""
    eng = DetectorEngine(eval_every_events=1)
    state: dict[str, Any] = {}
    late = [_obs(f"late{k}", START + 10 * HOUR_MS + k * MINUTE_MS, k) for k in range(4)]
    for o in late:
        eng.observe_fingerprint("device", state, o)
    # Evaluated at an event time before any late account's first request: nothing to count yet.
    never_evaluated = {**state, "_": msgspec.structs.replace(state["_"], evaluated_at=None)}
    assert not [f for f in eng.evaluate_fingerprint(never_evaluated, START) if f.rule_id == "CF-004"]
    # Once the late accounts' time is reached, they are counted.
    fired = [f for f in eng.evaluate_fingerprint(state, START + 11 * HOUR_MS) if f.rule_id == "CF-004"]
    assert fired and {r for r in fired[0].related_entities} == {f"account:late{k}" for k in range(4)}
