"""Typed shapes of the decoded Avro records.

TypedDicts, not classes: the codec already yields dicts, so agents get static typing without
constructing an object per event. Timestamps are epoch milliseconds (``int``), credits integer
micro-credits; enum fields hold the Avro symbol strings listed in the ``Literal`` aliases.
Field sets follow the latest catalogue version (older versions decode with defaults filled in).
"""

from __future__ import annotations

from typing import Literal, TypedDict

Plan = Literal["FREE", "PRO", "MAX", "TEAM", "ENTERPRISE"]
Surface = Literal["API", "CHAT", "AGENT", "IDE"]
Outcome = Literal["SUCCESS", "ERROR", "REFUSED", "TIMEOUT", "CLIENT_ABORT"]
FeatureCategory = Literal["EXTENDED_CONTEXT", "COMPLEX_REASONING", "TOOL_USE", "STANDARD_CHAT"]
Priority = Literal["VERY_HIGH", "HIGH", "MEDIUM", "LOW"]
GrantEventType = Literal["ISSUED", "REVOKED"]
SubscriptionChangeType = Literal["START", "UPGRADE", "DOWNGRADE", "CANCEL", "RENEW"]
Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
AlertStatus = Literal["OPEN", "UPDATED"]
Verdict = Literal["CONFIRMED", "FALSE_POSITIVE", "BENIGN", "NEEDS_INFO"]
SampleReason = Literal["FAILURE_KEPT", "PRIORITY_KEPT", "SAMPLED"]
DeadLetterErrorKind = Literal[
    "BAD_MAGIC",
    "UNKNOWN_SCHEMA",
    "TRUNCATED",
    "TRAILING_BYTES",
    "DECODE_ERROR",
    "REGISTRY_UNAVAILABLE",
    "VALIDATION",
]


class InteractionEvent(TypedDict):
    event_id: str
    occurred_at: int
    account_id: str
    team_id: str | None
    org_id: str | None
    plan: Plan
    credit_grant_id: str | None
    model: str
    surface: Surface
    session_id: str
    turn_index: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    context_window_tokens: int
    reasoning_steps: int
    thinking_tokens: int
    tool_calls: int
    tool_names: list[str]
    latency_ms: int
    outcome: Outcome
    error_code: str | None
    ip_hash: str | None
    device_hash: str | None
    payment_hash: str | None
    prompt_fingerprint: str | None
    context_uniqueness: float | None
    attributes: dict[str, str]


class GrantDebit(TypedDict):
    grant_id: str
    campaign: str
    amount_micro: int
    balance_after_micro: int


class UsageEnriched(TypedDict):
    event_id: str
    occurred_at: int
    processed_at: int
    account_id: str
    team_id: str | None
    org_id: str | None
    plan: Plan
    model: str
    surface: Surface
    session_id: str
    outcome: Outcome
    error_code: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    thinking_tokens: int
    context_window_tokens: int
    reasoning_steps: int
    tool_calls: int
    latency_ms: int
    category: FeatureCategory
    is_extended_context: bool
    is_complex_reasoning: bool
    is_tool_use: bool
    multiplier: str
    priority: Priority
    list_micro: int
    charged_micro: int
    subsidy_micro: int
    grant_funded_micro: int
    subscription_funded_micro: int
    debits: list[GrantDebit]
    sampled: bool
    policy_version: str
    source_partition: int
    source_offset: int


class CreditGrant(TypedDict):
    event_type: GrantEventType
    grant_id: str
    account_id: str
    campaign: str
    amount_micro: int
    granted_at: int
    expires_at: int
    priority: int
    occurred_at: int
    reason: str | None


class SubscriptionChange(TypedDict):
    change_id: str
    account_id: str
    change: SubscriptionChangeType
    from_plan: Plan | None
    to_plan: Plan | None
    occurred_at: int


class AlertEvidence(TypedDict):
    counts: dict[str, int]
    credits_by_category: dict[str, int]
    sample_event_ids: list[str]


class GamingAlert(TypedDict):
    alert_id: str
    dedup_key: str
    rule_id: str
    rule_name: str
    rule_revision: int
    entity_type: str
    entity_id: str
    related_entities: list[str]
    plan: Plan | None
    grant_id: str | None
    window_start: int
    window_end: int
    severity: Severity
    score: float
    observed: str
    limit: str
    counter_signals: list[str]
    evidence: AlertEvidence
    estimated_credits_exposed_micro: int
    suggested_action: str
    first_seen_at: int
    last_seen_at: int
    firings: int
    status: AlertStatus


class ReviewDecision(TypedDict):
    decision_id: str
    alert_id: str
    dedup_key: str | None
    entity_type: str
    entity_id: str
    rule_id: str
    verdict: Verdict
    reviewer: str
    note: str
    decided_at: int
    allow_until: int | None


class RefinementSample(TypedDict):
    event_id: str
    account_id: str
    occurred_at: int
    model: str
    category: FeatureCategory
    priority: Priority
    outcome: Outcome
    error_code: str | None
    reason: SampleReason
    input_tokens: int
    output_tokens: int
    thinking_tokens: int
    context_window_tokens: int
    reasoning_steps: int
    tool_calls: int
    surface: str
    tool_names: list[str]
    latency_ms: int
    policy_version: str
    prompt_fingerprint: str | None


class DeadLetterHeader(TypedDict):
    key: str
    value: bytes | None


class DeadLetter(TypedDict):
    dead_letter_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    original: bytes
    headers: list[DeadLetterHeader]
    error_kind: DeadLetterErrorKind
    message: str
    failed_at: int
