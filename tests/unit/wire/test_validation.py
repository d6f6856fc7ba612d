"""Semantic validation of decoded records: what the Avro types cannot say."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.wire.codec import Decoder, encode_single_object
from streams.wire.validation import (
    EARLIEST_MS,
    MAX_TOOL_NAMES,
    decoded_event_passes,
    validate_event,
    validate_grant,
    validate_subscription_change,
)
from tests.unit.wire.test_codec import sample_event

NOW = 1_700_000_000_000
MIN = 60_000

COUNTS = [
    "turn_index",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "context_window_tokens",
    "reasoning_steps",
    "thinking_tokens",
    "tool_calls",
    "latency_ms",
]


def test_sample_event_is_valid() -> None:
    assert validate_event(sample_event(), NOW) is None


@pytest.mark.parametrize("field", COUNTS)
def test_negative_counts_are_rejected_naming_the_field(field: str) -> None:
    reason = validate_event(sample_event(**{field: -1}), NOW)
    assert reason is not None and field in reason and "negative" in reason


@pytest.mark.parametrize("field", COUNTS)
def test_zero_counts_are_fine(field: str) -> None:
    assert validate_event(sample_event(**{field: 0}), NOW) is None


@pytest.mark.parametrize("field", ["turn_index", "latency_ms", "tool_calls", "reasoning_steps"])
def test_int_fields_beyond_avro_int_are_rejected(field: str) -> None:
    reason = validate_event(sample_event(**{field: 2**31}), NOW)
    assert reason is not None and field in reason


@pytest.mark.parametrize("field", ["event_id", "account_id", "session_id", "model"])
@pytest.mark.parametrize("value", ["", "   ", None, 42, "x" * 257])
def test_ids_must_be_non_empty_strings(field: str, value: Any) -> None:
    reason = validate_event(sample_event(**{field: value}), NOW)
    assert reason is not None and reason.startswith(field)


def test_future_limit_is_ten_minutes_by_default() -> None:
    assert validate_event(sample_event(occurred_at=NOW + 9 * MIN), NOW) is None
    assert validate_event(sample_event(occurred_at=NOW + 10 * MIN), NOW) is None
    reason = validate_event(sample_event(occurred_at=NOW + 10 * MIN + 1), NOW)
    assert reason is not None and "occurred_at" in reason and "future" in reason
    assert validate_event(sample_event(occurred_at=NOW + 20 * MIN), NOW, max_future_ms=30 * MIN) is None


def test_absurdly_old_and_seconds_instead_of_millis_are_rejected() -> None:
    assert validate_event(sample_event(occurred_at=EARLIEST_MS), NOW) is None
    reason = validate_event(sample_event(occurred_at=NOW // 1000), NOW)
    assert reason is not None and "occurred_at" in reason and "2020" in reason
    # Old but plausible (late-arriving) events stay valid: windows and lateness are the processor's call.
    assert validate_event(sample_event(occurred_at=NOW - 90 * 24 * 60 * MIN), NOW) is None


def test_occurred_at_must_be_int_millis() -> None:
    reason = validate_event(sample_event(occurred_at=float(NOW)), NOW)
    assert reason is not None and "occurred_at" in reason


def test_tool_calls_may_be_fewer_than_tool_names_but_names_are_bounded() -> None:
    assert validate_event(sample_event(tool_calls=0, tool_names=["a", "b", "c"]), NOW) is None
    assert validate_event(sample_event(tool_names=["t"] * MAX_TOOL_NAMES), NOW) is None
    reason = validate_event(sample_event(tool_names=["t"] * (MAX_TOOL_NAMES + 1)), NOW)
    assert reason is not None and "tool_names" in reason
    reason = validate_event(sample_event(tool_names=["ok", ""]), NOW)
    assert reason is not None and "tool_names" in reason


@pytest.mark.parametrize("value", [-0.01, 1.0001, math.nan, math.inf, "0.5"])
def test_context_uniqueness_outside_unit_interval(value: Any) -> None:
    reason = validate_event(sample_event(context_uniqueness=value), NOW)
    assert reason is not None and "context_uniqueness" in reason


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 0.5, None])
def test_context_uniqueness_inside_unit_interval(value: Any) -> None:
    assert validate_event(sample_event(context_uniqueness=value), NOW) is None


def test_bools_are_not_counts() -> None:
    reason = validate_event(sample_event(tool_calls=True), NOW)
    assert reason is not None and "tool_calls" in reason


def test_enums_and_optional_strings_are_checked() -> None:
    assert "plan" in (validate_event(sample_event(plan="GOLD"), NOW) or "")
    assert "outcome" in (validate_event(sample_event(outcome="success"), NOW) or "")
    assert "ip_hash" in (validate_event(sample_event(ip_hash=123), NOW) or "")
    assert "attributes" in (validate_event(sample_event(attributes={"k": 1}), NOW) or "")


def test_missing_required_field_and_non_dict() -> None:
    ev = sample_event()
    del ev["input_tokens"]
    assert validate_event(ev, NOW) == "input_tokens is missing"
    assert validate_event([], NOW) is not None  # type: ignore[arg-type]


def test_validation_is_cheap() -> None:
    import time

    ev = sample_event()
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        validate_event(ev, NOW)
    per_event_us = (time.perf_counter() - t) / n * 1e6
    assert per_event_us < 50  # generous for loaded CI; typically a few microseconds


# -- grants --------------------------------------------------------------------------------------


def grant(**kw: Any) -> dict[str, Any]:
    g: dict[str, Any] = {
        "event_type": "ISSUED",
        "grant_id": "g1",
        "account_id": "a1",
        "campaign": "launch",
        "amount_micro": 25_000_000,
        "granted_at": NOW,
        "expires_at": NOW + 30 * 24 * 60 * MIN,
        "priority": 0,
        "occurred_at": NOW,
        "reason": None,
    }
    g.update(kw)
    return g


def test_valid_grants() -> None:
    assert validate_grant(grant(), NOW) is None
    assert validate_grant(grant(event_type="REVOKED", amount_micro=0, reason="abuse"), NOW) is None
    # A grant may start in the future (scheduled campaign); only occurred_at is clock-checked.
    assert (
        validate_grant(grant(granted_at=NOW + 7 * 24 * 60 * MIN, expires_at=NOW + 8 * 24 * 60 * MIN), NOW)
        is None
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount_micro": -1}, "amount_micro"),
        ({"amount_micro": 0}, "amount_micro"),
        ({"amount_micro": 1.5}, "amount_micro"),
        ({"grant_id": ""}, "grant_id"),
        ({"campaign": None}, "campaign"),
        ({"event_type": "EXPIRED"}, "event_type"),
        ({"expires_at": NOW}, "expires_at"),
        ({"occurred_at": NOW + 11 * MIN}, "occurred_at"),
        ({"granted_at": 5}, "granted_at"),
        ({"priority": "high"}, "priority"),
    ],
)
def test_invalid_grants(overrides: dict[str, Any], field: str) -> None:
    reason = validate_grant(grant(**overrides), NOW)
    assert reason is not None and field in reason


# -- subscription changes ------------------------------------------------------------------------


def change(**kw: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "change_id": "c1",
        "account_id": "a1",
        "change": "UPGRADE",
        "from_plan": "FREE",
        "to_plan": "PRO",
        "occurred_at": NOW,
    }
    c.update(kw)
    return c


def test_valid_subscription_changes() -> None:
    assert validate_subscription_change(change(), NOW) is None
    assert validate_subscription_change(change(change="START", from_plan=None), NOW) is None
    assert validate_subscription_change(change(change="CANCEL", from_plan="PRO", to_plan=None), NOW) is None
    assert validate_subscription_change(change(change="RENEW", from_plan="PRO", to_plan="PRO"), NOW) is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"change": "PAUSE"}, "change"),
        ({"to_plan": "GOLD"}, "to_plan"),
        ({"to_plan": None}, "to_plan"),
        ({"from_plan": None}, "from_plan"),
        ({"to_plan": "FREE"}, "from_plan"),  # UPGRADE FREE -> FREE
        ({"change": "CANCEL", "from_plan": None, "to_plan": None}, "from_plan"),
        ({"account_id": " "}, "account_id"),
        ({"occurred_at": 1}, "occurred_at"),
    ],
)
def test_invalid_subscription_changes(overrides: dict[str, Any], field: str) -> None:
    reason = validate_subscription_change(change(**overrides), NOW)
    assert reason is not None and field in reason


# Values an Avro-decoded InteractionEvent can hold that ``validate_event`` may refuse.
_EDGE_VALUES: dict[str, list[Any]] = {
    **{name: ["", " ", "\t\n", "x" * 256, "x" * 257, "ok"] for name in ("event_id", "account_id", "session_id",
                                                                         "model")},
    **{name: [-1, 0, 1, -(2**31)] for name in COUNTS},
    "occurred_at": [0, EARLIEST_MS - 1, EARLIEST_MS, NOW + 10 * MIN, NOW + 10 * MIN + 1],
    "tool_names": [[], ["a"], [""], ["x" * 257], ["a"] * MAX_TOOL_NAMES, ["a"] * (MAX_TOOL_NAMES + 1)],
    "context_uniqueness": [None, 0.0, 1.0, -0.0, 1.0000001, -1e-9, math.nan, math.inf],
}


@given(st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in _EDGE_VALUES.items()}))
@settings(max_examples=400, deadline=None)
def test_the_decoded_fast_check_passes_exactly_what_validate_event_accepts(changes: dict[str, Any]) -> None:
    # Through the wire, so the record is what the meter's decoder hands over.
    ev = Decoder("InteractionEvent").decode(encode_single_object({**sample_event(), **changes}, "InteractionEvent"))
    assert decoded_event_passes(ev, NOW) == (validate_event(ev, NOW) is None)


def test_the_decoded_fast_check_refuses_what_is_not_a_decoded_record() -> None:
    ev = sample_event()
    assert decoded_event_passes(ev, NOW)
    for broken in ({k: v for k, v in ev.items() if k != "latency_ms"}, {**ev, "account_id": 7},
                   {**ev, "tool_names": None}):
        assert not decoded_event_passes(broken, NOW)
