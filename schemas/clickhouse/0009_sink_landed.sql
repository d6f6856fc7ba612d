-- A store whose inserts all returned but whose offsets the sink could not commit (its partitions
-- were revoked meanwhile) is marked landed: its batches are inserted again with landed = true.
-- Whoever re-arms those partitions skips a landed store instead of re-forming it, which matters
-- when it cannot be re-formed (its partitions are now spread over several consumers).
-- No DEFAULT clause: the sink always writes it, and rows recorded before read false.
ALTER TABLE sink_batches ADD COLUMN IF NOT EXISTS landed Bool;
