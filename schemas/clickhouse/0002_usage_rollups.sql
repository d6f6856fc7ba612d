-- Per-minute and per-hour usage rollups, fed by materialized views from `events`.
-- AggregatingMergeTree with SimpleAggregateFunction(sum) for the additive columns (read them
-- with sum()) and a quantilesState for latency (read it with quantilesMerge(0.5, 0.9, 0.99)).
-- Always aggregate again when reading: background merges are eventual.
-- The dedup window on the targets lets a replayed insert (same insert_deduplication_token,
-- deduplicate_blocks_in_dependent_materialized_views=1) be dropped in the rollups too, and lets a
-- retry fill a rollup block that was missing when the events block already landed.
-- team_id is '' for accounts without a team: nullable columns cannot be in a sorting key.
CREATE TABLE IF NOT EXISTS usage_minute
(
    bucket                    DateTime('UTC'),
    account_id                String,
    team_id                   String,
    plan                      LowCardinality(String),
    category                  LowCardinality(String),
    model                     LowCardinality(String),
    requests                  SimpleAggregateFunction(sum, UInt64),
    errors                    SimpleAggregateFunction(sum, UInt64),
    input_tokens              SimpleAggregateFunction(sum, Int64),
    output_tokens             SimpleAggregateFunction(sum, Int64),
    cached_tokens             SimpleAggregateFunction(sum, Int64),
    thinking_tokens           SimpleAggregateFunction(sum, Int64),
    list_micro                SimpleAggregateFunction(sum, Int64),
    charged_micro             SimpleAggregateFunction(sum, Int64),
    subsidy_micro             SimpleAggregateFunction(sum, Int64),
    grant_funded_micro        SimpleAggregateFunction(sum, Int64),
    subscription_funded_micro SimpleAggregateFunction(sum, Int64),
    latency_ms_quantiles      AggregateFunction(quantiles(0.5, 0.9, 0.99), Int32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, account_id, team_id, plan, category, model)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS usage_hour AS usage_minute
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, account_id, team_id, plan, category, model)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    account_id,
    ifNull(team_id, '')                     AS team_id,
    plan,
    category,
    model,
    toUInt64(count())                       AS requests,
    toUInt64(countIf(outcome != 'SUCCESS')) AS errors,
    sum(input_tokens)                       AS input_tokens,
    sum(output_tokens)                      AS output_tokens,
    sum(cached_tokens)                      AS cached_tokens,
    sum(thinking_tokens)                    AS thinking_tokens,
    sum(list_micro)                         AS list_micro,
    sum(charged_micro)                      AS charged_micro,
    sum(subsidy_micro)                      AS subsidy_micro,
    sum(grant_funded_micro)                 AS grant_funded_micro,
    sum(subscription_funded_micro)          AS subscription_funded_micro,
    quantilesState(0.5, 0.9, 0.99)(latency_ms) AS latency_ms_quantiles
FROM events
GROUP BY bucket, account_id, team_id, plan, category, model;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hour_mv TO usage_hour AS
SELECT
    toDateTime(toStartOfHour(occurred_at), 'UTC') AS bucket,
    account_id,
    ifNull(team_id, '')                     AS team_id,
    plan,
    category,
    model,
    toUInt64(count())                       AS requests,
    toUInt64(countIf(outcome != 'SUCCESS')) AS errors,
    sum(input_tokens)                       AS input_tokens,
    sum(output_tokens)                      AS output_tokens,
    sum(cached_tokens)                      AS cached_tokens,
    sum(thinking_tokens)                    AS thinking_tokens,
    sum(list_micro)                         AS list_micro,
    sum(charged_micro)                      AS charged_micro,
    sum(subsidy_micro)                      AS subsidy_micro,
    sum(grant_funded_micro)                 AS grant_funded_micro,
    sum(subscription_funded_micro)          AS subscription_funded_micro,
    quantilesState(0.5, 0.9, 0.99)(latency_ms) AS latency_ms_quantiles
FROM events
GROUP BY bucket, account_id, team_id, plan, category, model;
