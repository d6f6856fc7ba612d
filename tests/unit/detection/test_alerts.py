"""Alert builder: dedup, silent updates, re-emission, suppression, reviewer verdicts, stable ids."""

from __future__ import annotations

import copy
import json
from typing import Any

from streams.detection.alerts import (
    alert_id_for,
    apply_review,
    dedup_key,
    is_suppressed,
    new_alert_state,
    process_firing,
)
from streams.detection.rules.base import DAY_MS, HOUR_MS, Firing

T0 = 1_793_000_000_000 - (1_793_000_000_000 % DAY_MS)  # a day boundary keeps bucket maths obvious


def firing(t: int, severity: str = "MEDIUM", score: float = 0.65, entity: str = "acct-1",
           rule: str = "CF-001") -> Firing:
    return Firing(
        rule_id=rule, rule_name="Round-the-clock bot", rule_revision=1, entity_type="account",
        entity_id=entity, score=score, severity=severity, observed="22 active hours of 24", limit="20",
        window_start=t - DAY_MS, window_end=t, counter_signals=("quiet gap of 3h",),
        evidence={"counts": {"events": 90}, "credits_by_category": {"STANDARD_CHAT": 1_000_000},
                  "sample_event_ids": ["e1", "e2"]},
        estimated_credits_exposed_micro=2_500_000, plan="FREE",
        suggested_action="Rate-limit grant-funded usage.", observed_value=22, limit_value=20,
    )


def review(verdict: str, at: int, decision_id: str = "d1", allow_until: int | None = None) -> dict[str, Any]:
    return {"decision_id": decision_id, "alert_id": "x", "dedup_key": None, "entity_type": "account",
            "entity_id": "acct-1", "rule_id": "CF-001", "verdict": verdict, "reviewer": "staff-7",
            "note": "", "decided_at": at, "allow_until": allow_until}


def test_first_firing_opens_an_alert_with_every_field() -> None:
    state = new_alert_state()
    alert = process_firing(state, firing(T0 + HOUR_MS))
    assert alert is not None
    assert alert["status"] == "OPEN" and alert["firings"] == 1
    assert alert["alert_id"] == alert_id_for(alert["dedup_key"])
    assert alert["dedup_key"] == dedup_key(firing(T0 + HOUR_MS))
    for key in ("rule_id", "rule_name", "rule_revision", "entity_type", "entity_id", "related_entities",
                "plan",
                "grant_id", "window_start", "window_end", "severity", "score", "observed", "limit",
                "counter_signals", "evidence", "sample_event_ids", "estimated_credits_exposed_micro",
                "suggested_action", "first_seen_at", "last_seen_at", "firings", "status"):
        assert key in alert
    json.dumps(state)


def test_repeated_firings_update_silently_then_reemit_every_k() -> None:
    state = new_alert_state()
    first = process_firing(state, firing(T0 + HOUR_MS))
    assert first is not None
    emitted = [process_firing(state, firing(T0 + HOUR_MS + i * 60_000)) for i in range(1, 12)]
    published = [a for a in emitted if a is not None]
    assert len(published) == 1  # the 10th firing
    assert published[0]["firings"] == 10 and published[0]["status"] == "UPDATED"
    assert published[0]["alert_id"] == first["alert_id"]
    assert len(state["open"]) == 1
    (alert,) = state["open"].values()
    assert alert["firings"] == 12 and alert["last_seen_at"] == T0 + HOUR_MS + 11 * 60_000


def test_severity_rise_reemits_immediately() -> None:
    state = new_alert_state()
    process_firing(state, firing(T0 + HOUR_MS))
    assert process_firing(state, firing(T0 + 2 * HOUR_MS)) is None
    up = process_firing(state, firing(T0 + 3 * HOUR_MS, severity="CRITICAL", score=0.95))
    assert up is not None and up["severity"] == "CRITICAL" and up["firings"] == 3


def test_suppression_folds_the_next_window_into_the_open_alert() -> None:
    state = new_alert_state()
    a = process_firing(state, firing(T0 + 20 * HOUR_MS))
    # Next day's bucket, but within the 24h suppression: same alert, no new one.
    assert process_firing(state, firing(T0 + 30 * HOUR_MS)) is None
    assert len(state["open"]) == 1
    # After suppression: a new finding with its own id.
    b = process_firing(state, firing(T0 + 3 * DAY_MS))
    assert a is not None and b is not None and b["alert_id"] != a["alert_id"] and b["status"] == "OPEN"


def test_other_rules_and_entities_are_independent() -> None:
    state = new_alert_state()
    assert process_firing(state, firing(T0 + HOUR_MS)) is not None
    assert process_firing(state, firing(T0 + HOUR_MS, entity="acct-2")) is not None
    assert process_firing(state, firing(T0 + HOUR_MS, rule="CF-011")) is not None


def test_ids_are_deterministic_across_a_replay() -> None:
    fs = [firing(T0 + HOUR_MS * i, severity="HIGH" if i == 5 else "MEDIUM", score=0.8 if i == 5 else 0.65)
          for i in range(1, 30)]
    runs = []
    for _ in range(2):
        state = new_alert_state()
        runs.append([a for a in (process_firing(state, f) for f in fs) if a is not None])
    assert runs[0] == runs[1]
    restored = json.loads(json.dumps(new_alert_state()))
    assert process_firing(restored, fs[0]) == runs[0][0]


def test_false_positive_allow_lists_until_expiry_and_closes_the_alert() -> None:
    state = new_alert_state()
    process_firing(state, firing(T0 + HOUR_MS))
    assert apply_review(state, review("FALSE_POSITIVE", T0 + 2 * HOUR_MS, allow_until=T0 + 10 * DAY_MS))
    assert not state["open"]
    assert process_firing(state, firing(T0 + 5 * DAY_MS, severity="CRITICAL", score=0.99)) is None
    assert is_suppressed(state, "CF-001", "account", "acct-1", T0 + 5 * DAY_MS)
    assert process_firing(state, firing(T0 + 11 * DAY_MS)) is not None


def test_benign_extends_suppression_and_confirmed_marks_and_resets() -> None:
    state = new_alert_state()
    process_firing(state, firing(T0 + HOUR_MS))
    apply_review(state, review("BENIGN", T0 + 2 * HOUR_MS))  # default: 7 days
    assert state["suppress"]["CF-001|account|acct-1"] == T0 + 2 * HOUR_MS + 7 * DAY_MS
    # Folded into the open alert while suppressed, nothing new.
    assert process_firing(state, firing(T0 + 4 * DAY_MS)) is None
    assert len(state["open"]) == 1
    apply_review(state, review("CONFIRMED", T0 + 4 * DAY_MS, decision_id="d2"))
    assert state["marked"]["account|acct-1"]["rule_id"] == "CF-001"
    assert "CF-001|account|acct-1" not in state["suppress"]
    assert process_firing(state, firing(T0 + 5 * DAY_MS)) is not None


def test_needs_info_changes_nothing_and_reviews_are_idempotent() -> None:
    state = new_alert_state()
    process_firing(state, firing(T0 + HOUR_MS))
    before = copy.deepcopy(state)
    assert not apply_review(state, review("NEEDS_INFO", T0 + 2 * HOUR_MS, decision_id="n1"))
    state["decisions"] = before["decisions"]
    assert state == before
    assert apply_review(state, review("BENIGN", T0 + 2 * HOUR_MS, decision_id="b1"))
    snapshot = copy.deepcopy(state)
    assert not apply_review(state, review("BENIGN", T0 + 2 * HOUR_MS, decision_id="b1"))
    assert state == snapshot


def test_the_wire_alert_carries_the_rules_numbers_not_parsed_text() -> None:
    from streams.detection.alerts import to_avro
    from streams.wire.codec import Decoder, encode_single_object

    alert = process_firing(new_alert_state(), firing(T0 + HOUR_MS))
    assert alert is not None
    assert alert["observed"] == "22 active hours of 24" and alert["observed_value"] == 22
    wire = to_avro(alert)
    assert (wire["observed"], wire["limit"]) == ("22", "20")
    # The rule's phrases travel next to the numbers (GamingAlert v2), never instead of them.
    assert (wire["observed_label"], wire["limit_label"]) == ("22 active hours of 24", "20")
    assert "observed_value" not in wire and "sample_event_ids" not in wire
    decoded = Decoder("GamingAlert").decode(encode_single_object(wire, "GamingAlert"))
    assert (decoded["observed"], decoded["observed_label"]) == ("22", "22 active hours of 24")
    # A label whose first number is not the measure ("top 3 of ...") no longer decides the value.
    labelled = firing(T0 + HOUR_MS)
    odd = process_firing(new_alert_state(), Firing(**{**labelled.to_dict(), "observed": "top 3 prompts: 0.91",
                                                      "observed_value": 0.91, "counter_signals": (),
                                                      "related_entities": ()}))
    assert odd is not None and to_avro(odd)["observed"] == "0.91"


def test_an_updated_alert_carries_the_labels_of_its_strongest_firing() -> None:
    from streams.detection.alerts import to_avro

    state = new_alert_state()
    process_firing(state, firing(T0 + HOUR_MS))
    stronger = Firing(**{**firing(T0 + 2 * HOUR_MS, severity="CRITICAL", score=0.95).to_dict(),
                         "observed": "24 active hours of 24", "observed_value": 24.0,
                         "counter_signals": (), "related_entities": ()})
    up = process_firing(state, stronger)
    assert up is not None
    wire = to_avro(up)
    assert (wire["observed"], wire["observed_label"]) == ("24", "24 active hours of 24")


def test_measure_text_puts_the_phrase_first_and_keeps_the_number() -> None:
    from streams.detection.alerts import measure_text

    assert measure_text("16.3", "84% of the grant spent in 16.3h") == "84% of the grant spent in 16.3h (16.3)"
    assert measure_text(24.0, "80% within 24h") == "80% within 24h (24)"  # the table's Float64
    assert measure_text("20", "20") == "20"  # a label that is the number says nothing more
    assert measure_text("0.05", "") == "0.05" and measure_text(0.05, None) == "0.05"  # v1: no label
