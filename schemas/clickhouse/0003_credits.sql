-- Grant debits: one row per GrantDebit of a UsageEnriched record. Ordered per account and grant
-- so utilisation (sum per grant) and a grant's history read a contiguous range. Never TTL'd: the
-- ledger is the record of what each grant paid for.
CREATE TABLE IF NOT EXISTS credit_ledger
(
    event_id            String,
    occurred_at         DateTime64(3, 'UTC'),
    account_id          String,
    grant_id            String,
    campaign            LowCardinality(String),
    amount_micro        Int64,
    balance_after_micro Int64,
    policy_version      LowCardinality(String),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, grant_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- CreditGrant events as received (ISSUED / REVOKED). A replayed event lands on the same key and
-- collapses on merge; read with FINAL. Fields an event type does not carry are NULL.
CREATE TABLE IF NOT EXISTS credit_grants
(
    event_type   LowCardinality(String),
    grant_id     String,
    account_id   String,
    campaign     LowCardinality(Nullable(String)),
    amount_micro Nullable(Int64),
    granted_at   Nullable(DateTime64(3, 'UTC')),
    expires_at   Nullable(DateTime64(3, 'UTC')),
    priority     Nullable(Int32),
    occurred_at  DateTime64(3, 'UTC'),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(occurred_at)
ORDER BY (account_id, grant_id, event_type)
SETTINGS non_replicated_deduplication_window = 10000;

-- Subscription lifecycle (START / UPGRADE / DOWNGRADE / CANCEL), for conversion analysis.
CREATE TABLE IF NOT EXISTS subscription_changes
(
    change_id   String,
    account_id  String,
    change      LowCardinality(String),
    from_plan   LowCardinality(Nullable(String)),
    to_plan     LowCardinality(Nullable(String)),
    occurred_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, occurred_at, change_id)
SETTINGS non_replicated_deduplication_window = 10000;
