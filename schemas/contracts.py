"""The Avro contracts as Python: enums and record shapes, generated from schemas/avro by
``python -m schemas.generate``. Do not edit; change the .avsc files and regenerate.

TypedDicts, not classes: the codec yields dicts, so the code gets static typing without an
object per event. Each record follows its latest catalogue version.
"""

from __future__ import annotations

from typing import Literal, TypedDict

AlertStatus = Literal["OPEN", "UPDATED"]
ALERT_STATUS_SYMBOLS: tuple[AlertStatus, ...] = ("OPEN", "UPDATED",)
DeadLetterErrorKind = Literal["BAD_MAGIC", "UNKNOWN_SCHEMA", "TRUNCATED", "TRAILING_BYTES", "DECODE_ERROR",
    "REGISTRY_UNAVAILABLE", "VALIDATION", "DUPLICATE"]
DEAD_LETTER_ERROR_KIND_SYMBOLS: tuple[DeadLetterErrorKind, ...] = ("BAD_MAGIC", "UNKNOWN_SCHEMA", "TRUNCATED",
    "TRAILING_BYTES", "DECODE_ERROR", "REGISTRY_UNAVAILABLE", "VALIDATION", "DUPLICATE",)
FeatureCategory = Literal["EXTENDED_CONTEXT", "COMPLEX_REASONING", "TOOL_USE", "STANDARD_CHAT"]
FEATURE_CATEGORY_SYMBOLS: tuple[FeatureCategory, ...] = ("EXTENDED_CONTEXT", "COMPLEX_REASONING", "TOOL_USE",
    "STANDARD_CHAT",)
GrantEventType = Literal["ISSUED", "REVOKED"]
GRANT_EVENT_TYPE_SYMBOLS: tuple[GrantEventType, ...] = ("ISSUED", "REVOKED",)
GrantStatus = Literal["ACTIVE", "EXHAUSTED", "EXPIRED", "REVOKED", "NOT_STARTED"]
GRANT_STATUS_SYMBOLS: tuple[GrantStatus, ...] = ("ACTIVE", "EXHAUSTED", "EXPIRED", "REVOKED", "NOT_STARTED",)
NotificationKind = Literal["USAGE_THRESHOLD", "GRANT_EXHAUSTED", "LOW_BALANCE", "GRANT_EXPIRING"]
NOTIFICATION_KIND_SYMBOLS: tuple[NotificationKind, ...] = ("USAGE_THRESHOLD", "GRANT_EXHAUSTED", "LOW_BALANCE",
    "GRANT_EXPIRING",)
Outcome = Literal["SUCCESS", "ERROR", "REFUSED", "TIMEOUT", "CLIENT_ABORT"]
OUTCOME_SYMBOLS: tuple[Outcome, ...] = ("SUCCESS", "ERROR", "REFUSED", "TIMEOUT", "CLIENT_ABORT",)
Plan = Literal["FREE", "PRO", "MAX", "TEAM", "ENTERPRISE"]
PLAN_SYMBOLS: tuple[Plan, ...] = ("FREE", "PRO", "MAX", "TEAM", "ENTERPRISE",)
Priority = Literal["VERY_HIGH", "HIGH", "MEDIUM", "LOW"]
PRIORITY_SYMBOLS: tuple[Priority, ...] = ("VERY_HIGH", "HIGH", "MEDIUM", "LOW",)
SampleReason = Literal["FAILURE_KEPT", "PRIORITY_KEPT", "SAMPLED"]
SAMPLE_REASON_SYMBOLS: tuple[SampleReason, ...] = ("FAILURE_KEPT", "PRIORITY_KEPT", "SAMPLED",)
Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
SEVERITY_SYMBOLS: tuple[Severity, ...] = ("LOW", "MEDIUM", "HIGH", "CRITICAL",)
SubscriptionChangeType = Literal["START", "UPGRADE", "DOWNGRADE", "CANCEL", "RENEW"]
SUBSCRIPTION_CHANGE_TYPE_SYMBOLS: tuple[SubscriptionChangeType, ...] = ("START", "UPGRADE", "DOWNGRADE", "CANCEL",
    "RENEW",)
Surface = Literal["API", "CHAT", "AGENT", "IDE"]
SURFACE_SYMBOLS: tuple[Surface, ...] = ("API", "CHAT", "AGENT", "IDE",)
Verdict = Literal["CONFIRMED", "FALSE_POSITIVE", "BENIGN", "NEEDS_INFO"]
VERDICT_SYMBOLS: tuple[Verdict, ...] = ("CONFIRMED", "FALSE_POSITIVE", "BENIGN", "NEEDS_INFO",)


class GrantBalance(TypedDict):
    grant_id: str
    campaign: str
    amount_micro: int
    spent_micro: int
    remaining_micro: int
    granted_at: int
    expires_at: int
    revoked_at: int | None
    status: GrantStatus


class CreditBalance(TypedDict):
    account_id: str
    balance_seq: int
    total_remaining_micro: int
    grant_funded_micro: int
    subscription_funded_micro: int
    grants: list[GrantBalance]
    policy_version: str
    source_partition: int
    source_offset: int
    event_time: int
    updated_at: int


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


class CreditNotification(TypedDict):
    notification_id: str
    account_id: str
    kind: NotificationKind
    grant_id: str | None
    campaign: str | None
    threshold_pct: int | None
    grant_remaining_micro: int
    total_remaining_micro: int
    floor_micro: int
    expires_at: int | None
    balance_seq: int
    policy_version: str
    event_time: int
    created_at: int


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
    observed_label: str
    limit_label: str


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
    cached_tokens: int
    thinking_tokens: int
    context_window_tokens: int
    reasoning_steps: int
    tool_calls: int
    policy_version: str
    prompt_fingerprint: str | None
    surface: str
    tool_names: list[str]
    latency_ms: int


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


class SubscriptionChange(TypedDict):
    change_id: str
    account_id: str
    change: SubscriptionChangeType
    from_plan: Plan | None
    to_plan: Plan | None
    occurred_at: int


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
    ip_hash: str | None
    device_hash: str | None
    payment_hash: str | None
    prompt_fingerprint: str | None
    context_uniqueness: float | None

GRANT_BALANCE_FIELDS: tuple[str, ...] = ("grant_id", "campaign", "amount_micro", "spent_micro", "remaining_micro",
    "granted_at", "expires_at", "revoked_at", "status",)
CREDIT_BALANCE_FIELDS: tuple[str, ...] = ("account_id", "balance_seq", "total_remaining_micro", "grant_funded_micro",
    "subscription_funded_micro", "grants", "policy_version", "source_partition", "source_offset", "event_time",
    "updated_at",)
CREDIT_GRANT_FIELDS: tuple[str, ...] = ("event_type", "grant_id", "account_id", "campaign", "amount_micro",
    "granted_at", "expires_at", "priority", "occurred_at", "reason",)
CREDIT_NOTIFICATION_FIELDS: tuple[str, ...] = ("notification_id", "account_id", "kind", "grant_id", "campaign",
    "threshold_pct", "grant_remaining_micro", "total_remaining_micro", "floor_micro", "expires_at", "balance_seq",
    "policy_version", "event_time", "created_at",)
DEAD_LETTER_HEADER_FIELDS: tuple[str, ...] = ("key", "value",)
DEAD_LETTER_FIELDS: tuple[str, ...] = ("dead_letter_id", "source_topic", "source_partition", "source_offset", "key",
    "original", "headers", "error_kind", "message", "failed_at",)
ALERT_EVIDENCE_FIELDS: tuple[str, ...] = ("counts", "credits_by_category", "sample_event_ids",)
GAMING_ALERT_FIELDS: tuple[str, ...] = ("alert_id", "dedup_key", "rule_id", "rule_name", "rule_revision",
    "entity_type", "entity_id", "related_entities", "plan", "grant_id", "window_start", "window_end", "severity",
    "score", "observed", "limit", "counter_signals", "evidence", "estimated_credits_exposed_micro",
    "suggested_action", "first_seen_at", "last_seen_at", "firings", "status", "observed_label", "limit_label",)
INTERACTION_EVENT_FIELDS: tuple[str, ...] = ("event_id", "occurred_at", "account_id", "team_id", "org_id", "plan",
    "credit_grant_id", "model", "surface", "session_id", "turn_index", "input_tokens", "output_tokens",
    "cached_tokens", "context_window_tokens", "reasoning_steps", "thinking_tokens", "tool_calls", "tool_names",
    "latency_ms", "outcome", "error_code", "ip_hash", "device_hash", "payment_hash", "prompt_fingerprint",
    "context_uniqueness", "attributes",)
REFINEMENT_SAMPLE_FIELDS: tuple[str, ...] = ("event_id", "account_id", "occurred_at", "model", "category", "priority",
    "outcome", "error_code", "reason", "input_tokens", "output_tokens", "cached_tokens", "thinking_tokens",
    "context_window_tokens", "reasoning_steps", "tool_calls", "policy_version", "prompt_fingerprint", "surface",
    "tool_names", "latency_ms",)
REVIEW_DECISION_FIELDS: tuple[str, ...] = ("decision_id", "alert_id", "dedup_key", "entity_type", "entity_id",
    "rule_id", "verdict", "reviewer", "note", "decided_at", "allow_until",)
SUBSCRIPTION_CHANGE_FIELDS: tuple[str, ...] = ("change_id", "account_id", "change", "from_plan", "to_plan",
    "occurred_at",)
GRANT_DEBIT_FIELDS: tuple[str, ...] = ("grant_id", "campaign", "amount_micro", "balance_after_micro",)
USAGE_ENRICHED_FIELDS: tuple[str, ...] = ("event_id", "occurred_at", "processed_at", "account_id", "team_id",
    "org_id", "plan", "model", "surface", "session_id", "outcome", "error_code", "input_tokens", "output_tokens",
    "cached_tokens", "thinking_tokens", "context_window_tokens", "reasoning_steps", "tool_calls", "latency_ms",
    "category", "is_extended_context", "is_complex_reasoning", "is_tool_use", "multiplier", "priority", "list_micro",
    "charged_micro", "subsidy_micro", "grant_funded_micro", "subscription_funded_micro", "debits", "sampled",
    "policy_version", "source_partition", "source_offset", "ip_hash", "device_hash", "payment_hash",
    "prompt_fingerprint", "context_uniqueness",)
