"""Column lists of the tables the sink writes, in insert order.

Use them with column-oriented inserts::

    client.insert("events", columns, column_names=EVENTS_COLUMNS, column_oriented=True,
                  settings=dedup_settings(token))

where ``columns[i]`` is the list of values of ``EVENTS_COLUMNS[i]``. Columns filled by a DEFAULT
(``inserted_at``) are left out on purpose. Value types clickhouse-connect expects: DateTime64
columns take timezone-aware ``datetime`` (or naive UTC); Bool takes bool; Nullable columns take
None; String takes str or bytes; Map takes dict. Non-nullable columns reject None.
``tests/integration/test_clickhouse_schema.py`` checks these lists against the migrated schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.contracts import (
    CREDIT_BALANCE_FIELDS,
    CREDIT_GRANT_FIELDS,
    CREDIT_NOTIFICATION_FIELDS,
    DEAD_LETTER_FIELDS,
    GAMING_ALERT_FIELDS,
    REFINEMENT_SAMPLE_FIELDS,
    SUBSCRIPTION_CHANGE_FIELDS,
    USAGE_ENRICHED_FIELDS,
)


def _without(fields: tuple[str, ...], left_out: Iterable[str]) -> tuple[str, ...]:
    gone = set(left_out)
    unknown = gone - set(fields)
    if unknown:
        raise ValueError(f"not fields of the record: {sorted(unknown)}")
    return tuple(f for f in fields if f not in gone)


# Table columns follow the Avro records they store: a field added to the contract reaches the table's
# insert list by itself (and the schema test then asks for the migration that adds the column).
# Debits go to credit_ledger, one row each; the fingerprints are detection's, not analysts'.
EVENTS_COLUMNS: tuple[str, ...] = _without(
    USAGE_ENRICHED_FIELDS,
    ("debits", "ip_hash", "device_hash", "payment_hash", "prompt_fingerprint", "context_uniqueness"),
)

CREDIT_LEDGER_COLUMNS: tuple[str, ...] = (
    "event_id", "occurred_at", "account_id", "grant_id", "campaign", "amount_micro",
    "balance_after_micro", "policy_version",
)

CREDIT_GRANTS_COLUMNS: tuple[str, ...] = _without(CREDIT_GRANT_FIELDS, ("reason",))

SUBSCRIPTION_CHANGES_COLUMNS: tuple[str, ...] = SUBSCRIPTION_CHANGE_FIELDS

REFINEMENT_SAMPLES_COLUMNS: tuple[str, ...] = REFINEMENT_SAMPLE_FIELDS

DEAD_LETTERS_COLUMNS: tuple[str, ...] = DEAD_LETTER_FIELDS

# The table as migration 0005 made it from GamingAlert v1 (``limit`` is a keyword there, so
# ``limit_value``; sample ids lifted out of evidence; ``updated_at`` the version column), then every
# field the contract gained since, in contract order: the columns later migrations append.
_GAMING_ALERTS_V1_COLUMNS: tuple[str, ...] = (
    "alert_id", "dedup_key", "rule_id", "rule_name", "rule_revision", "entity_type", "entity_id",
    "related_entities", "plan", "grant_id", "window_start", "window_end", "severity", "score",
    "observed", "limit_value", "counter_signals", "evidence", "sample_event_ids",
    "estimated_credits_exposed_micro", "suggested_action", "first_seen_at", "last_seen_at",
    "firings", "status", "updated_at",
)
GAMING_ALERTS_COLUMNS: tuple[str, ...] = (
    *_GAMING_ALERTS_V1_COLUMNS,
    *GAMING_ALERT_FIELDS[GAMING_ALERT_FIELDS.index("status") + 1:],  # v1's last field is status
)

ALERT_REVIEWS_COLUMNS: tuple[str, ...] = (
    "decision_id", "alert_id", "rule_id", "entity_type", "entity_id", "verdict", "reviewer", "note",
    "decided_at", "allow_until",
)

SINK_BATCHES_COLUMNS: tuple[str, ...] = (
    "consumer_group", "topic", "partition", "start_offset", "end_offset", "guard_before",
    "guard_after", "rows", "planned_at", "store", "landed",
)

# A balance's grants become parallel arrays, one per grant field (``sinks/routing.py``).
CREDIT_BALANCES_COLUMNS: tuple[str, ...] = (
    *_without(CREDIT_BALANCE_FIELDS, ("grants",)),
    "grant_ids", "grant_campaigns", "grant_amount_micro", "grant_spent_micro", "grant_remaining_micro",
    "grant_expires_at", "grant_statuses",
)

CREDIT_NOTIFICATIONS_COLUMNS: tuple[str, ...] = CREDIT_NOTIFICATION_FIELDS

INSERT_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": EVENTS_COLUMNS,
    "credit_ledger": CREDIT_LEDGER_COLUMNS,
    "credit_grants": CREDIT_GRANTS_COLUMNS,
    "subscription_changes": SUBSCRIPTION_CHANGES_COLUMNS,
    "refinement_samples": REFINEMENT_SAMPLES_COLUMNS,
    "dead_letters": DEAD_LETTERS_COLUMNS,
    "gaming_alerts": GAMING_ALERTS_COLUMNS,
    "alert_reviews": ALERT_REVIEWS_COLUMNS,
    "sink_batches": SINK_BATCHES_COLUMNS,
    "credit_balances": CREDIT_BALANCES_COLUMNS,
    "credit_notifications": CREDIT_NOTIFICATIONS_COLUMNS,
}


def dedup_settings(token: str) -> dict[str, Any]:
    """Insert settings that make a replayed block land once, in the table and in every
    materialized view fed from it (verified on chDB / ClickHouse 26.9; see the schema tests).
    The token must be derived from exactly what the batch holds (topic, partition, offset range):
    the same token with different rows would be silently dropped."""
    if not token:
        raise ValueError("an insert_deduplication_token must not be empty")
    return {
        "insert_deduplication_token": token,
        "insert_deduplicate": 1,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }
