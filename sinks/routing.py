"""Which topic lands in which ClickHouse tables, and how a decoded record becomes rows there."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.runtime.topics import (
    CREDIT_BALANCES,
    CREDIT_GRANTS,
    CREDIT_NOTIFICATIONS,
    DEAD_LETTERS,
    GAMING_ALERTS,
    GAMING_REVIEWS,
    REFINEMENT_FEED,
    SUBSCRIPTION_CHANGES,
    USAGE_ENRICHED,
)

RowMaker = Callable[[Mapping[str, Any]], Iterable[Mapping[str, Any]]]


def _one(record: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    return (record,)


def _ledger(record: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for d in record["debits"]:
        yield {
            "event_id": record["event_id"],
            "occurred_at": record["occurred_at"],
            "account_id": record["account_id"],
            "grant_id": d["grant_id"],
            "campaign": d["campaign"],
            "amount_micro": d["amount_micro"],
            "balance_after_micro": d["balance_after_micro"],
            "policy_version": record["policy_version"],
        }


def dead_letter_rows(record: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    row = dict(record)
    headers = record.get("headers") or []
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    # Bytes land as String columns (ClickHouse strings are byte strings), so nothing is lost.
    pairs = [(h["key"], h["value"]) if isinstance(h, Mapping) else (h[0], h[1]) for h in headers]
    row["headers"] = {k: v or b"" for k, v in pairs}
    row["key"] = record.get("key") or b""
    return (row,)


def _alert(record: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    row = dict(record)
    evidence = record.get("evidence")
    if isinstance(evidence, Mapping):
        row.setdefault("sample_event_ids", list(evidence.get("sample_event_ids") or []))
        row["evidence"] = json.dumps(evidence, sort_keys=True, default=str)
    row.setdefault("limit_value", record.get("limit"))
    row.setdefault("updated_at", record.get("last_seen_at"))
    return (row,)


def _balance(record: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    grants = record["grants"]
    row = dict(record)
    row.update({
        "grant_ids": [g["grant_id"] for g in grants],
        "grant_campaigns": [g["campaign"] for g in grants],
        "grant_amount_micro": [g["amount_micro"] for g in grants],
        "grant_spent_micro": [g["spent_micro"] for g in grants],
        "grant_remaining_micro": [g["remaining_micro"] for g in grants],
        "grant_expires_at": [g["expires_at"] for g in grants],
        "grant_statuses": [g["status"] for g in grants],
    })
    return (row,)


@dataclass(frozen=True)
class Route:
    topic_key: str
    schema: str
    tables: tuple[tuple[str, RowMaker], ...]
    # Records of usage-enriched carry their input partition/offset; a processor replay re-sends some,
    # and the sink drops every record at or below the highest input offset it already stored.
    guarded: bool = False
    # Inputs no processor reads: the sink itself turns what it cannot decode into dead letters.
    dead_letters_here: bool = False
    # Written by platform services or operators, not by creditflow: with a schema registry their
    # records may be Confluent-framed, so they pass the schema gate and decode with registry schemas.
    registry_framed: bool = False


ROUTES: tuple[Route, ...] = (
    Route(USAGE_ENRICHED, "UsageEnriched", (("events", _one), ("credit_ledger", _ledger)), guarded=True),
    Route(REFINEMENT_FEED, "RefinementSample", (("refinement_samples", _one),)),
    Route(DEAD_LETTERS, "DeadLetter", (("dead_letters", dead_letter_rows),)),
    Route(GAMING_ALERTS, "GamingAlert", (("gaming_alerts", _alert),)),
    Route(GAMING_REVIEWS, "ReviewDecision", (("alert_reviews", _one),), dead_letters_here=True,
          registry_framed=True),
    Route(CREDIT_GRANTS, "CreditGrant", (("credit_grants", _one),), registry_framed=True),
    Route(SUBSCRIPTION_CHANGES, "SubscriptionChange", (("subscription_changes", _one),), dead_letters_here=True,
          registry_framed=True),
    Route(CREDIT_BALANCES, "CreditBalance", (("credit_balances", _balance),)),
    Route(CREDIT_NOTIFICATIONS, "CreditNotification", (("credit_notifications", _one),)),
)
