-- The programme's own scorecard: credit recipients against non-recipients on conversion to a paid
-- plan, feature-adoption breadth (per account and per team) and churn in the first billing cycle.
-- Rates are exact Decimal128(6), truncated; ratio = recipients / non-recipients.

-- One row per account seen in events or issued a grant.
-- recipient: issued at least one grant. anchor: first grant (recipients) or first event (others).
-- converted: a START or UPGRADE to a non-FREE plan at or after the anchor.
-- first paid start: the first START/UPGRADE to a non-FREE plan; a billing cycle is one calendar
-- month. churned_first_cycle: a CANCEL (or a DOWNGRADE to FREE) within one cycle of that start.
-- first_cycle_judged: the cycle is over, or the account churned inside it (a cycle still running
-- without a cancellation is not counted either way).
CREATE OR REPLACE VIEW v_programme_accounts AS
WITH
    accounts AS (
        SELECT account_id FROM events
        UNION DISTINCT
        SELECT account_id FROM credit_grants FINAL WHERE event_type = 'ISSUED'
    ),
    grants AS (
        SELECT account_id, min(ifNull(granted_at, occurred_at)) AS first_grant_at
        FROM credit_grants FINAL
        WHERE event_type = 'ISSUED'
        GROUP BY account_id
    ),
    usage AS (
        SELECT account_id,
               anyIf(team_id, team_id IS NOT NULL)             AS team,
               min(occurred_at)                                AS first_seen_at,
               countIf(is_extended_context) > 0                AS used_extended_context,
               countIf(is_complex_reasoning) > 0               AS used_complex_reasoning,
               countIf(is_tool_use) > 0                        AS used_tool_use,
               countIf(category = 'STANDARD_CHAT') > 0         AS used_standard_chat
        FROM events
        GROUP BY account_id
    ),
    changes AS (
        SELECT account_id,
               countIf(change IN ('START', 'UPGRADE') AND ifNull(to_plan, 'FREE') != 'FREE') > 0 AS paid_started,
               minIf(occurred_at, change IN ('START', 'UPGRADE') AND ifNull(to_plan, 'FREE') != 'FREE')
                                                                                                AS first_paid_at,
               groupArray((occurred_at, change, ifNull(to_plan, 'FREE')))                      AS history
        FROM subscription_changes FINAL
        GROUP BY account_id
    )
SELECT
    a.account_id                                                         AS account_id,
    ifNull(u.team, '')                                                   AS team_id,
    g.account_id != ''                                                   AS recipient,
    if(recipient, g.first_grant_at, u.first_seen_at)                     AS anchor_at,
    u.used_extended_context                                              AS used_extended_context,
    u.used_complex_reasoning                                             AS used_complex_reasoning,
    u.used_tool_use                                                      AS used_tool_use,
    u.used_standard_chat                                                 AS used_standard_chat,
    toUInt8(used_extended_context + used_complex_reasoning + used_tool_use + used_standard_chat)
                                                                         AS features_used,
    c.account_id != '' AND arrayExists(h -> h.2 IN ('START', 'UPGRADE') AND h.3 != 'FREE' AND h.1 >= anchor_at,
                                       c.history)                        AS converted,
    c.account_id != '' AND c.paid_started                                AS paid_started,
    paid_started AND arrayExists(h -> (h.2 = 'CANCEL' OR (h.2 = 'DOWNGRADE' AND h.3 = 'FREE'))
                                      AND h.1 > c.first_paid_at AND h.1 <= addMonths(c.first_paid_at, 1),
                                 c.history)                              AS churned_first_cycle,
    paid_started AND (churned_first_cycle OR addMonths(c.first_paid_at, 1) <= now64(3))
                                                                         AS first_cycle_judged
FROM accounts AS a
LEFT JOIN grants AS g ON g.account_id = a.account_id
LEFT JOIN usage AS u ON u.account_id = a.account_id
LEFT JOIN changes AS c ON c.account_id = a.account_id
SETTINGS join_use_nulls = 0
COMMENT 'Per account: credit recipient or not, features used, conversion, first-cycle churn';

-- Three comparisons, one row each (four with adoption per team), recipients against the others.
-- A team counts as a recipient team when any of its accounts received credits.
CREATE OR REPLACE VIEW v_programme_scorecard AS
WITH
    cohorts AS (
        SELECT
            recipient,
            count()                                                                  AS accounts,
            countIf(converted)                                                       AS converted,
            sum(features_used)                                                       AS features,
            countIf(first_cycle_judged)                                              AS judged,
            countIf(churned_first_cycle)                                             AS churned
        FROM v_programme_accounts
        GROUP BY recipient
    ),
    teams AS (
        SELECT
            recipient,
            count()                                                                  AS teams,
            sum(features)                                                            AS features
        FROM
        (
            SELECT team_id, max(recipient) AS recipient,
                   toUInt8(max(used_extended_context) + max(used_complex_reasoning) + max(used_tool_use)
                           + max(used_standard_chat)) AS features
            FROM v_programme_accounts
            WHERE team_id != ''
            GROUP BY team_id
        )
        GROUP BY recipient
    ),
    metrics AS (
        SELECT 1 AS ord, 'conversion to paid' AS metric, 'accounts' AS base, recipient, accounts AS n,
               if(accounts = 0, NULL, CAST(converted AS Decimal128(6)) / accounts) AS value
        FROM cohorts
        UNION ALL
        SELECT 2, 'features used per account', 'accounts', recipient, accounts,
               if(accounts = 0, NULL, CAST(features AS Decimal128(6)) / accounts)
        FROM cohorts
        UNION ALL
        SELECT 3, 'features used per team', 'teams', recipient, teams,
               if(teams = 0, NULL, CAST(features AS Decimal128(6)) / teams)
        FROM teams
        UNION ALL
        SELECT 4, 'churn in first billing cycle', 'paid starts judged', recipient, judged,
               if(judged = 0, NULL, CAST(churned AS Decimal128(6)) / judged)
        FROM cohorts
    )
SELECT
    metric,
    anyIf(value, recipient)                                                          AS recipients,
    anyIf(value, NOT recipient)                                                      AS non_recipients,
    if(ifNull(non_recipients, 0) = 0, NULL, recipients / non_recipients)             AS ratio,
    any(base)                                                                        AS base,
    sumIf(n, recipient)                                                              AS recipients_base,
    sumIf(n, NOT recipient)                                                          AS non_recipients_base,
    min(ord)                                                                         AS ord
FROM metrics
GROUP BY metric
ORDER BY ord
COMMENT 'Recipients vs non-recipients: conversion, adoption breadth per account and team, first-cycle churn';
