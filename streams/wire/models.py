"""Typed shapes of the decoded Avro records: the generated contracts (``schemas/contracts.py``),
under the name the code has always imported them by.

Timestamps are epoch milliseconds (``int``), credits integer micro-credits; enum fields hold the Avro
symbol strings.
"""

from schemas.contracts import (
    AlertEvidence,
    AlertStatus,
    CreditGrant,
    DeadLetter,
    DeadLetterErrorKind,
    DeadLetterHeader,
    FeatureCategory,
    GamingAlert,
    GrantDebit,
    GrantEventType,
    InteractionEvent,
    Outcome,
    Plan,
    Priority,
    RefinementSample,
    ReviewDecision,
    SampleReason,
    Severity,
    SubscriptionChange,
    SubscriptionChangeType,
    Surface,
    UsageEnriched,
    Verdict,
)

__all__ = [
    "AlertEvidence", "AlertStatus", "CreditGrant", "DeadLetter", "DeadLetterErrorKind", "DeadLetterHeader",
    "FeatureCategory", "GamingAlert", "GrantDebit", "GrantEventType", "InteractionEvent", "Outcome", "Plan",
    "Priority", "RefinementSample", "ReviewDecision", "SampleReason", "Severity", "SubscriptionChange",
    "SubscriptionChangeType", "Surface", "UsageEnriched", "Verdict",
]
