-- The refinement team's questions: failure modes in complex tasks, and integration pain points.
-- RefinementSample v3 carries the request's surface, tool names and latency; samples written
-- before it have '' / [] / 0 there.
-- (Type defaults, no DEFAULT expressions: the sink writes every column of the record.)
ALTER TABLE refinement_samples
    ADD COLUMN IF NOT EXISTS surface    LowCardinality(String),
    ADD COLUMN IF NOT EXISTS tool_names Array(LowCardinality(String)),
    ADD COLUMN IF NOT EXISTS latency_ms Int32;

-- Sampled requests per UTC day by feature category, model, outcome and error code, reasoning
-- depth and context-size band; `failures` counts every outcome but SUCCESS. Samples are drawn by
-- priority (complex reasoning and long context most), so compare rates within a category, not
-- raw counts across categories.
CREATE OR REPLACE VIEW v_failure_modes AS
SELECT
    toDate(occurred_at)                                           AS day,
    category,
    model,
    outcome,
    ifNull(error_code, '')                                        AS error_code,
    multiIf(reasoning_steps = 0, '0 steps', reasoning_steps <= 2, '1-2 steps', reasoning_steps <= 5, '3-5 steps',
            reasoning_steps <= 10, '6-10 steps', '>10 steps')     AS reasoning_depth,
    multiIf(context_window_tokens < 8000, '<8k', context_window_tokens < 32000, '8k-32k',
            context_window_tokens < 100000, '32k-100k', context_window_tokens < 200000, '100k-200k',
            '>=200k')                                             AS context_band,
    count()                                                       AS samples,
    countIf(outcome != 'SUCCESS')                                 AS failures
FROM refinement_samples FINAL
GROUP BY day, category, model, outcome, error_code, reasoning_depth, context_band
COMMENT 'Refinement samples by day, category, model, outcome/error, reasoning depth and context band';

-- Tool-use integration pain points per UTC day, tool and surface: sampled calls of each tool and
-- how they ended (tool-use errors, timeouts, client aborts). A request that called several tools
-- counts once for each.
CREATE OR REPLACE VIEW v_integration_pain_points AS
SELECT
    toDate(occurred_at)                                                  AS day,
    tool,
    if(surface = '', 'UNKNOWN', surface)                                 AS surface,
    count()                                                              AS samples,
    countIf(outcome = 'ERROR')                                           AS errors,
    countIf(outcome = 'TIMEOUT')                                         AS timeouts,
    countIf(outcome = 'CLIENT_ABORT')                                    AS aborts,
    errors + timeouts + aborts                                           AS failures,
    if(samples = 0, NULL, CAST(failures AS Decimal128(6)) / samples)     AS failure_rate,
    toUInt32(quantileExact(0.9)(latency_ms))                             AS p90_latency_ms
FROM refinement_samples FINAL
ARRAY JOIN tool_names AS tool
GROUP BY day, tool, surface
COMMENT 'Tool-use samples per day, tool and surface: errors, timeouts, aborts, failure rate, p90 latency';
