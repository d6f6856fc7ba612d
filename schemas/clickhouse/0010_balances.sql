-- Credit balances (credit-balances): one row per account after merges, the one with the highest
-- balance_seq (a per-account sequence the processor raises with every balance it publishes; a batch
-- replayed after a crash repeats the number it had, and of equal versions ReplacingMergeTree keeps
-- the last inserted, which the sink inserts in topic order). Read with FINAL or the view below.
-- Grants are parallel arrays in burn order (soonest-expiring first).
CREATE TABLE IF NOT EXISTS credit_balances
(
    account_id                String,
    balance_seq               UInt64,
    total_remaining_micro     Int64,
    grant_funded_micro        Int64,
    subscription_funded_micro Int64,
    policy_version            LowCardinality(String),
    source_partition          Int32,
    source_offset             Int64,
    event_time                DateTime64(3, 'UTC'),
    updated_at                DateTime64(3, 'UTC'),
    grant_ids                 Array(String),
    grant_campaigns           Array(LowCardinality(String)),
    grant_amount_micro        Array(Int64),
    grant_spent_micro         Array(Int64),
    grant_remaining_micro     Array(Int64),
    grant_expires_at          Array(DateTime64(3, 'UTC')),
    grant_statuses            Array(LowCardinality(String)),
    inserted_at               DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(balance_seq)
ORDER BY account_id
SETTINGS non_replicated_deduplication_window = 10000;

-- The latest balance of every account, merged or not.
CREATE VIEW IF NOT EXISTS v_credit_balances AS
SELECT account_id, balance_seq, total_remaining_micro, grant_funded_micro, subscription_funded_micro,
       policy_version, source_partition, source_offset, event_time, updated_at, grant_ids, grant_campaigns,
       grant_amount_micro, grant_spent_micro, grant_remaining_micro, grant_expires_at, grant_statuses
FROM credit_balances FINAL;

-- Credit notifications (credit-notifications): once per grant and threshold. A notification the
-- processor re-sent after a crash has the same notification_id and collapses on merge; read with FINAL.
CREATE TABLE IF NOT EXISTS credit_notifications
(
    notification_id       String,
    account_id            String,
    kind                  LowCardinality(String),
    grant_id              Nullable(String),
    campaign              LowCardinality(Nullable(String)),
    threshold_pct         Nullable(Int32),
    grant_remaining_micro Int64,
    total_remaining_micro Int64,
    floor_micro           Int64,
    expires_at            Nullable(DateTime64(3, 'UTC')),
    balance_seq           UInt64,
    policy_version        LowCardinality(String),
    event_time            DateTime64(3, 'UTC'),
    created_at            DateTime64(3, 'UTC'),
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, notification_id)
SETTINGS non_replicated_deduplication_window = 10000;
