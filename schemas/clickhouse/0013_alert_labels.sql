-- GamingAlert v2 carries the rule's phrases for people next to its numbers: `observed` and
-- `limit_value` stay numbers (Float64, for ranking and thresholds), `observed_label` and
-- `limit_label` say them the way the rule does ("84% of the grant spent in 16.3h", "80% within 24h").
-- Alerts written before v2 have '' there.
-- (Type defaults, no DEFAULT expressions: the sink writes every column of the record.)
ALTER TABLE gaming_alerts
    ADD COLUMN IF NOT EXISTS observed_label String,
    ADD COLUMN IF NOT EXISTS limit_label    String;
