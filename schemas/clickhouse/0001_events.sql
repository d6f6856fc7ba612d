-- Raw metered events: one row per UsageEnriched record (its `debits` go to credit_ledger).
-- Ordered by account and time because analysts and the detectors' back-tests slice per account;
-- event_id closes the key so a row's position is deterministic. Credits are Int64 micro-credits
-- (1 credit = 1,000,000) so sums are exact; views convert to Decimal.
-- non_replicated_deduplication_window makes insert_deduplication_token work on a plain MergeTree:
-- the sink replays a batch with the same token after a crash and ClickHouse drops the duplicate.
-- {ttl_days} is substituted by the migration runner from CREDITFLOW_EVENTS_TTL_DAYS.
CREATE TABLE IF NOT EXISTS events
(
    event_id                  String,
    occurred_at               DateTime64(3, 'UTC'),
    processed_at              DateTime64(3, 'UTC'),
    account_id                String,
    team_id                   Nullable(String),
    org_id                    Nullable(String),
    plan                      LowCardinality(String),
    model                     LowCardinality(String),
    surface                   LowCardinality(String),
    session_id                String,
    outcome                   LowCardinality(String),
    error_code                LowCardinality(Nullable(String)),
    input_tokens              Int64,
    output_tokens             Int64,
    cached_tokens             Int64,
    thinking_tokens           Int64,
    context_window_tokens     Int64,
    reasoning_steps           Int32,
    tool_calls                Int32,
    latency_ms                Int32,
    category                  LowCardinality(String),
    is_extended_context       Bool,
    is_complex_reasoning      Bool,
    is_tool_use               Bool,
    multiplier                LowCardinality(String) COMMENT 'exact decimal string, e.g. 3.5',
    priority                  LowCardinality(String),
    list_micro                Int64,
    charged_micro             Int64,
    subsidy_micro             Int64,
    grant_funded_micro        Int64,
    subscription_funded_micro Int64,
    sampled                   Bool,
    policy_version            LowCardinality(String),
    source_partition          Int32,
    source_offset             Int64,
    inserted_at               DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at, event_id)
TTL toDateTime(occurred_at) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
