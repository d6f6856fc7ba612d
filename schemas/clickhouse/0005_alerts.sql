-- Credit-gaming alerts. An alert is re-emitted as it accumulates firings; the newest version
-- (highest updated_at) wins on merge, so read with FINAL.
-- score, observed and limit_value are rule metrics, not money, hence Float64; exposure is credits.
CREATE TABLE IF NOT EXISTS gaming_alerts
(
    alert_id                       String,
    dedup_key                      String,
    rule_id                        LowCardinality(String),
    rule_name                      LowCardinality(String),
    rule_revision                  Int32,
    entity_type                    LowCardinality(String),
    entity_id                      String,
    related_entities               Array(String),
    plan                           LowCardinality(Nullable(String)),
    grant_id                       Nullable(String),
    window_start                   DateTime64(3, 'UTC'),
    window_end                     DateTime64(3, 'UTC'),
    severity                       LowCardinality(String),
    score                          Float64,
    observed                       Float64,
    limit_value                    Float64,
    counter_signals                Array(String),
    evidence                       String COMMENT 'JSON',
    sample_event_ids               Array(String),
    estimated_credits_exposed_micro Int64,
    suggested_action               LowCardinality(String),
    first_seen_at                  DateTime64(3, 'UTC'),
    last_seen_at                   DateTime64(3, 'UTC'),
    firings                        UInt32,
    status                         LowCardinality(String),
    updated_at                     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY alert_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Reviewer verdicts on alerts (CONFIRMED / FALSE_POSITIVE / ...). An alert may be reviewed more
-- than once; the latest decision per alert is its verdict.
CREATE TABLE IF NOT EXISTS alert_reviews
(
    decision_id String,
    alert_id    String,
    rule_id     LowCardinality(String),
    entity_type LowCardinality(String),
    entity_id   String,
    verdict     LowCardinality(String),
    reviewer    LowCardinality(String),
    note        String,
    decided_at  DateTime64(3, 'UTC'),
    allow_until Nullable(DateTime64(3, 'UTC'))
)
ENGINE = ReplacingMergeTree
ORDER BY (alert_id, decision_id)
SETTINGS non_replicated_deduplication_window = 10000;
