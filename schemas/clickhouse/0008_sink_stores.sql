-- With chDB there is one sink, and it stores every partition batch that is due in one insert per
-- table (an insert's cost is mostly fixed). Such a store's deduplication token is derived from all
-- of its batches, so after a crash the sink must re-form the whole store: each batch's plan names
-- its store. Empty for a batch stored on its own (a ClickHouse server, or plans written before).
ALTER TABLE sink_batches ADD COLUMN IF NOT EXISTS store String;
