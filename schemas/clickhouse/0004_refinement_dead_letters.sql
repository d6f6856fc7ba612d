-- Requests sampled for the model-refinement loop. Counts and hashes only, never prompt text.
-- Ordered by category and time: the refinement team pulls "recent samples of feature X".
CREATE TABLE IF NOT EXISTS refinement_samples
(
    event_id              String,
    account_id            String,
    occurred_at           DateTime64(3, 'UTC'),
    model                 LowCardinality(String),
    category              LowCardinality(String),
    priority              LowCardinality(String),
    outcome               LowCardinality(String),
    error_code            LowCardinality(Nullable(String)),
    reason                LowCardinality(String),
    input_tokens          Int64,
    output_tokens         Int64,
    cached_tokens         Int64,
    thinking_tokens       Int64,
    context_window_tokens Int64,
    reasoning_steps       Int32,
    tool_calls            Int32,
    policy_version        LowCardinality(String),
    prompt_fingerprint    Nullable(String),
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (category, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Input that could not be decoded or validated, with the original bytes so it can be replayed.
-- Keyed by source position: one dead letter per source offset however often it is replayed.
CREATE TABLE IF NOT EXISTS dead_letters
(
    dead_letter_id   String,
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    key              String COMMENT 'Kafka key bytes; empty when the record had none',
    original         String COMMENT 'original value bytes, verbatim',
    headers          Map(String, String),
    error_kind       LowCardinality(String),
    message          String,
    failed_at        DateTime64(3, 'UTC'),
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, source_partition, source_offset)
SETTINGS non_replicated_deduplication_window = 10000;
