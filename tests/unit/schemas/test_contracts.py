"""The generated contracts module is the .avsc files, as Python."""

from __future__ import annotations

from schemas import contracts, generate
from sinks.columns import EVENTS_COLUMNS, GAMING_ALERTS_COLUMNS, REFINEMENT_SAMPLES_COLUMNS
from streams.wire.validation import PLANS


def test_contracts_module_is_up_to_date() -> None:
    assert generate.main(["--check"]) == 0, "run `python -m schemas.generate`"


def test_enums_and_fields_come_from_the_avro_files() -> None:
    assert contracts.PLAN_SYMBOLS == ("FREE", "PRO", "MAX", "TEAM", "ENTERPRISE")
    assert frozenset(contracts.PLAN_SYMBOLS) == PLANS
    assert contracts.USAGE_ENRICHED_FIELDS[:3] == ("event_id", "occurred_at", "processed_at")
    assert "debits" in contracts.USAGE_ENRICHED_FIELDS and "debits" not in EVENTS_COLUMNS
    assert REFINEMENT_SAMPLES_COLUMNS == contracts.REFINEMENT_SAMPLE_FIELDS


def test_every_alert_field_is_a_gaming_alerts_column() -> None:
    # ``limit`` is a keyword in ClickHouse: its column is ``limit_value`` (sinks/routing.py).
    wanted = {"limit_value" if f == "limit" else f for f in contracts.GAMING_ALERT_FIELDS}
    assert wanted <= set(GAMING_ALERTS_COLUMNS)
    assert len(set(GAMING_ALERTS_COLUMNS)) == len(GAMING_ALERTS_COLUMNS)
    # Fields added after v1 are appended, in contract order, as their migrations append columns.
    assert GAMING_ALERTS_COLUMNS[-3:] == ("updated_at", "observed_label", "limit_label")


def test_an_enum_with_two_meanings_is_refused() -> None:
    writer = generate._Writer()
    writer.type_of({"type": "enum", "name": "Plan", "symbols": ["A"]})
    try:
        writer.type_of({"type": "enum", "name": "Plan", "symbols": ["B"]})
    except SystemExit as exc:
        assert "Plan" in str(exc)
    else:
        raise AssertionError("conflicting enum accepted")
