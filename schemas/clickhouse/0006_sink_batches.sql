-- The sink's progress journal: each batch's partition and offset range is recorded before its
-- insert, so after a crash the sink re-forms exactly that batch and re-inserts it with the same
-- insert_deduplication_token. guard_before/guard_after bound the offsets the batch covers.
CREATE TABLE IF NOT EXISTS sink_batches
(
    consumer_group String,
    topic          LowCardinality(String),
    `partition`    Int32,
    start_offset   Int64,
    end_offset     Int64,
    guard_before   Int64,
    guard_after    Int64,
    rows           UInt64,
    planned_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (consumer_group, topic, `partition`, start_offset);
