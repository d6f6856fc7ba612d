-- Views for the programme's questions. Credits are converted from Int64 micro-credits with
-- CAST(x AS Decimal128(6)) / 1000000, which is exact for every integer x; ratios are Decimal
-- truncated to 6 places. Nothing here goes through Float64.

-- Credits and subsidy by feature, plan and model per UTC day (from the hourly rollup, so it stays
-- cheap over long ranges). Filter on `day`.
CREATE OR REPLACE VIEW v_credits_by_feature AS
SELECT
    toDate(bucket)                                               AS day,
    category,
    plan,
    model,
    sum(requests)                                                AS requests,
    sum(errors)                                                  AS errors,
    CAST(sum(list_micro) AS Decimal128(6)) / 1000000                AS list_credits,
    CAST(sum(charged_micro) AS Decimal128(6)) / 1000000             AS charged_credits,
    CAST(sum(subsidy_micro) AS Decimal128(6)) / 1000000             AS subsidy_credits,
    CAST(sum(grant_funded_micro) AS Decimal128(6)) / 1000000        AS grant_funded_credits,
    CAST(sum(subscription_funded_micro) AS Decimal128(6)) / 1000000 AS subscription_funded_credits
FROM usage_hour
GROUP BY day, category, plan, model
COMMENT 'Requests and list/charged/subsidy credits per day, feature category, plan and model';

-- Feature-adoption breadth per team and ISO week (Monday). Uses the per-request qualification
-- flags, not only the winning category, so a long-context tool-using request counts for both.
-- Accounts without a team are left out.
CREATE OR REPLACE VIEW v_feature_adoption AS
SELECT
    toMonday(occurred_at)                          AS week,
    assumeNotNull(team_id)                         AS team_id,
    uniqExact(account_id)                          AS accounts,
    count()                                        AS requests,
    uniqExact(category)                            AS distinct_categories,
    countIf(is_extended_context) > 0               AS used_extended_context,
    countIf(is_complex_reasoning) > 0              AS used_complex_reasoning,
    countIf(is_tool_use) > 0                       AS used_tool_use,
    countIf(category = 'STANDARD_CHAT') > 0        AS used_standard_chat,
    toUInt8(used_extended_context + used_complex_reasoning + used_tool_use + used_standard_chat)
                                                   AS features_used
-- Filtered in a subquery: the team_id alias above would shadow the column in a WHERE here.
FROM (SELECT * FROM events WHERE team_id IS NOT NULL)
GROUP BY week, team_id
COMMENT 'Feature-adoption breadth per team and week: distinct categories and per-feature flags';

-- One row per issued grant: amount, debited so far (credit_ledger), remaining, utilisation,
-- expiry and revocation. Remaining is what the grant has left, whether or not it can still be
-- spent; use the expired/revoked flags to tell.
CREATE OR REPLACE VIEW v_grant_utilisation AS
WITH
    issued AS (
        SELECT grant_id, account_id, ifNull(campaign, '') AS campaign, ifNull(amount_micro, 0) AS amount_micro,
               granted_at, expires_at
        FROM credit_grants FINAL
        WHERE event_type = 'ISSUED'
    ),
    revoked AS (
        SELECT account_id, grant_id, min(occurred_at) AS revoked_at
        FROM credit_grants FINAL
        WHERE event_type = 'REVOKED'
        GROUP BY account_id, grant_id
    ),
    used AS (
        SELECT account_id, grant_id, sum(amount_micro) AS used_micro, count() AS debits,
               max(occurred_at) AS last_debit_at
        FROM credit_ledger
        GROUP BY account_id, grant_id
    )
SELECT
    i.grant_id                                                          AS grant_id,
    i.account_id                                                        AS account_id,
    i.campaign                                                          AS campaign,
    i.granted_at                                                        AS granted_at,
    i.expires_at                                                        AS expires_at,
    CAST(i.amount_micro AS Decimal128(6)) / 1000000                        AS amount_credits,
    CAST(ifNull(u.used_micro, 0) AS Decimal128(6)) / 1000000               AS used_credits,
    CAST(i.amount_micro - ifNull(u.used_micro, 0) AS Decimal128(6)) / 1000000 AS remaining_credits,
    if(i.amount_micro = 0, NULL, CAST(ifNull(u.used_micro, 0) AS Decimal128(6)) / i.amount_micro)
                                                                        AS utilisation,
    ifNull(u.debits, 0)                                                 AS debits,
    i.expires_at IS NOT NULL AND i.expires_at <= now64(3)              AS expired,
    ifNull(r.grant_id, '') != ''                                        AS revoked,
    if(ifNull(r.grant_id, '') != '', r.revoked_at, NULL)                AS revoked_at
FROM issued AS i
LEFT JOIN used AS u ON u.account_id = i.account_id AND u.grant_id = i.grant_id
LEFT JOIN revoked AS r ON r.account_id = i.account_id AND r.grant_id = i.grant_id
COMMENT 'Per issued grant: amount, used, remaining, utilisation ratio, expiry and revocation';

-- Grant utilisation rolled up per campaign. expired_unused_credits is the balance that expired
-- before it was spent (revoked grants excluded: their balance was withdrawn, not left to lapse).
CREATE OR REPLACE VIEW v_campaign_utilisation AS
SELECT
    g.campaign                                               AS campaign,
    count()                                                  AS grants,
    uniqExact(g.account_id)                                  AS accounts,
    sum(g.amount_credits)                                    AS granted_credits,
    sum(g.used_credits)                                      AS used_credits,
    sum(g.remaining_credits)                                 AS remaining_credits,
    if(granted_credits = 0, NULL, used_credits / granted_credits) AS utilisation,
    sumIf(g.remaining_credits, g.expired AND NOT g.revoked)  AS expired_unused_credits,
    countIf(g.expired)                                       AS expired_grants,
    countIf(g.revoked)                                       AS revoked_grants
FROM v_grant_utilisation AS g
GROUP BY g.campaign
COMMENT 'Grant utilisation per campaign: granted, used, remaining and expired-unused credits';

-- Conversion of credit recipients vs non-recipients to a paid plan. Cohort: every account seen in
-- events or issued a grant. Anchor: first grant for recipients, first event for the others.
-- Converted: a START or UPGRADE to a non-FREE plan at or after the anchor.
CREATE OR REPLACE VIEW v_conversion AS
WITH
    per_account AS (
        SELECT
            account_id,
            countIf(is_grant) > 0                               AS recipient,
            if(recipient, minIf(at, is_grant), min(at))         AS anchor_at
        FROM
        (
            SELECT account_id, occurred_at AS at, false AS is_grant FROM events
            UNION ALL
            SELECT account_id, ifNull(granted_at, occurred_at) AS at, true AS is_grant
            FROM credit_grants FINAL
            WHERE event_type = 'ISSUED'
        )
        GROUP BY account_id
    ),
    converted_accounts AS (
        SELECT DISTINCT p.account_id AS account_id
        FROM per_account AS p
        INNER JOIN
        (
            SELECT account_id, occurred_at
            FROM subscription_changes FINAL
            WHERE change IN ('START', 'UPGRADE') AND ifNull(to_plan, 'FREE') != 'FREE'
        ) AS c ON c.account_id = p.account_id
        WHERE c.occurred_at >= p.anchor_at
    )
SELECT
    if(recipient, 'credit_recipient', 'non_recipient')                        AS cohort,
    count()                                                                   AS accounts,
    countIf(account_id IN (SELECT account_id FROM converted_accounts))        AS converted,
    if(accounts = 0, NULL, CAST(converted AS Decimal128(6)) / accounts)       AS conversion_rate
FROM per_account
GROUP BY cohort
COMMENT 'Conversion to a paid plan: credit recipients (after first grant) vs others (after first seen)';

-- Alert volume per day (of first firing), rule and severity, with reviewer verdicts. An alert's
-- verdict is its latest review. precision = confirmed / (confirmed + false_positive).
CREATE OR REPLACE VIEW v_alert_volume AS
WITH
    latest AS (
        SELECT alert_id, argMax(verdict, (decided_at, decision_id)) AS verdict
        FROM alert_reviews FINAL
        GROUP BY alert_id
    )
SELECT
    toDate(a.first_seen_at)                                               AS day,
    a.rule_id                                                             AS rule_id,
    a.rule_name                                                           AS rule_name,
    a.severity                                                            AS severity,
    count()                                                               AS alerts,
    sum(a.firings)                                                        AS firings,
    CAST(sum(a.estimated_credits_exposed_micro) AS Decimal128(6)) / 1000000  AS credits_exposed,
    countIf(ifNull(l.verdict, '') != '')                                  AS reviewed,
    countIf(l.verdict = 'CONFIRMED')                                      AS confirmed,
    countIf(l.verdict = 'FALSE_POSITIVE')                                 AS false_positive,
    if(confirmed + false_positive = 0, NULL,
       CAST(confirmed AS Decimal128(6)) / (confirmed + false_positive))   AS precision
FROM gaming_alerts AS a FINAL
LEFT JOIN latest AS l ON l.alert_id = a.alert_id
GROUP BY day, rule_id, rule_name, severity
COMMENT 'Alerts per day, rule and severity; verdict counts and precision from alert_reviews';
