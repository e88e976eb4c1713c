WITH params AS (SELECT as_of FROM {{ ref('keel_params') }}),
orgs AS (
    SELECT organization_id, name FROM {{ ref('stg_organizations') }} WHERE keel_org_is_live(deleted_at)
),
now_au AS (
    SELECT organization_id, wau AS wau_now, mau FROM {{ ref('org_active_users') }} WHERE day = (SELECT as_of FROM params)
),
past_au AS (
    -- A weekly figure the lake holds only part of (its first days) would make a false trend.
    SELECT organization_id, wau AS wau_4w_ago FROM {{ ref('org_active_users') }}
    WHERE day = (SELECT as_of FROM params) - 28 AND wau_complete
),
seats AS (
    SELECT organization_id, active_members, utilization FROM {{ ref('seat_utilization') }} WHERE day = (SELECT as_of FROM params)
),
members AS (
    SELECT organization_id, count(*) AS active_members FROM {{ ref('int_active_members') }} GROUP BY 1
),
last_event AS (
    SELECT organization_id, max(day) AS last_day FROM {{ ref('stg_events') }} WHERE day <= (SELECT as_of FROM params) GROUP BY 1
),
security AS (
    SELECT
        organization_id,
        count(*) FILTER (
            WHERE action IN ('member.role_changed', 'member.removed', 'member.invited', 'member.joined')
              AND (json_extract_string(metadata, '$.before.role') = 'owner'
                   OR json_extract_string(metadata, '$.after.role') = 'owner')
        ) AS owner_changes_30d,
        count(*) FILTER (WHERE action IN ('ingest_key.created', 'ingest_key.revoked')) AS key_churn_30d
    FROM {{ ref('stg_audit_log') }}
    WHERE CAST(occurred_at AS DATE) > (SELECT as_of FROM params) - 30
      AND CAST(occurred_at AS DATE) <= (SELECT as_of FROM params)
    GROUP BY organization_id
),
webhooks AS (
    SELECT organization_id, CAST(sum(attempts) AS BIGINT) AS webhook_attempts_7d,
           sum(succeeded) / sum(attempts) AS webhook_success_rate_7d
    FROM {{ ref('webhook_health') }}
    WHERE day > (SELECT as_of FROM params) - 7 AND day <= (SELECT as_of FROM params)
    GROUP BY organization_id
),
subscription AS (
    SELECT organization_id, status, seats, CAST(renewal_date AS DATE) AS renewal_date,
           CAST(trial_end AS DATE) AS trial_end
    FROM {{ ref('int_current_subscriptions') }}
),
-- Open discrepancies are those of the latest completed reconciliation run, unrepaired. A run
-- counts once the lake holds all it recorded (the runs snapshot and the discrepancies are
-- exported one after the other, so either may be a little ahead of the other).
held_runs AS (
    SELECT run_id, started_at FROM {{ ref('stg_billing_reconciliation_runs') }} r
    WHERE status = 'completed'
      AND discrepancy_count = (SELECT count(*) FROM {{ ref('stg_billing_discrepancies') }} d WHERE d.run_id = r.run_id)
    UNION
    SELECT DISTINCT run_id, detected_at FROM {{ ref('stg_billing_discrepancies') }}
),
latest_run AS (
    SELECT run_id FROM held_runs
    WHERE CAST(started_at AS DATE) <= (SELECT as_of FROM params)
    ORDER BY started_at DESC, run_id DESC
    LIMIT 1
),
open_discrepancies AS (
    SELECT
        organization_id,
        count(*) AS open_discrepancies,
        list(struct_pack(
            kind := 'risk',
            points := CASE severity WHEN 'high' THEN 20 WHEN 'medium' THEN 10 ELSE 5 END,
            reason := printf('Billing reconciliation on %s: %s, %s severity — %s (expected %s, found %s).',
                             strftime(detected_at, '%Y-%m-%d'), replace(kind, '_', ' '), severity, detail,
                             coalesce(expected, 'nothing'), coalesce(actual, 'nothing'))
        ) ORDER BY severity = 'high' DESC, severity = 'medium' DESC, kind, discrepancy_id)
            FILTER (WHERE kind <> 'over_seat_limit') AS discrepancy_risks,
        -- More members than seats is a sale to make, not a risk: the expansion signal below says it.
        min(strftime(detected_at, '%Y-%m-%d')) FILTER (WHERE kind = 'over_seat_limit') AS over_seat_recorded_on,
        min(printf('%s; %s', expected, actual)) FILTER (WHERE kind = 'over_seat_limit') AS over_seat_recorded
    FROM {{ ref('stg_billing_discrepancies') }}
    WHERE run_id = (SELECT run_id FROM latest_run) AND NOT repaired AND organization_id IS NOT NULL
    GROUP BY organization_id
),
disabled_endpoints AS (
    SELECT organization_id, count(*) AS webhook_endpoints_disabled_30d
    FROM {{ ref('stg_webhook_endpoints') }}
    WHERE deleted_at IS NULL AND NOT enabled
      AND CAST(disabled_at AS DATE) > (SELECT as_of FROM params) - 30
      AND CAST(disabled_at AS DATE) <= (SELECT as_of FROM params)
    GROUP BY organization_id
),
facts AS (
    SELECT
        o.organization_id,
        o.name,
        coalesce(n.wau_now, 0) AS wau_now,
        p.wau_4w_ago,
        CASE WHEN p.wau_4w_ago > 0 THEN coalesce(n.wau_now, 0) / p.wau_4w_ago - 1 END AS wau_trend,
        coalesce(n.mau, 0) AS mau,
        coalesce(m.active_members, 0) AS active_members,
        s.utilization AS seat_utilization,
        b.seats,
        -- The rule reconcile-billing applies too (warehouse/rules.py).
        keel_over_seat_limit(b.status, coalesce(m.active_members, 0), b.seats) AS over_seat_limit,
        b.status AS billing_status,
        b.renewal_date,
        b.trial_end,
        b.trial_end - (SELECT as_of FROM params) AS trial_days_left,
        (SELECT as_of FROM params) - b.renewal_date AS renewal_days_past,
        coalesce(od.open_discrepancies, 0) AS open_discrepancies,
        coalesce(od.discrepancy_risks, []) AS discrepancy_risks,
        od.over_seat_recorded_on,
        od.over_seat_recorded,
        coalesce(sec.owner_changes_30d, 0) AS owner_changes_30d,
        coalesce(sec.key_churn_30d, 0) AS key_churn_30d,
        CASE WHEN l.last_day IS NOT NULL THEN (SELECT as_of FROM params) - l.last_day END AS days_since_last_event,
        coalesce(w.webhook_attempts_7d, 0) AS webhook_attempts_7d,
        w.webhook_success_rate_7d,
        coalesce(de.webhook_endpoints_disabled_30d, 0) AS webhook_endpoints_disabled_30d
    FROM orgs o
    LEFT JOIN now_au n USING (organization_id)
    LEFT JOIN past_au p USING (organization_id)
    LEFT JOIN seats s USING (organization_id)
    LEFT JOIN members m USING (organization_id)
    LEFT JOIN last_event l USING (organization_id)
    LEFT JOIN security sec USING (organization_id)
    LEFT JOIN subscription b USING (organization_id)
    LEFT JOIN open_discrepancies od USING (organization_id)
    LEFT JOIN webhooks w USING (organization_id)
    LEFT JOIN disabled_endpoints de USING (organization_id)
),
found AS (
    SELECT
        *,
        list_concat(list_filter([
            CASE WHEN days_since_last_event IS NULL THEN struct_pack(kind := 'risk', points := 50, reason := 'No product activity recorded yet.')
                 WHEN days_since_last_event >= 14 THEN struct_pack(kind := 'risk', points := 50, reason := printf('No activity for %d days.', days_since_last_event)) END,
            CASE WHEN wau_trend <= -0.5 THEN struct_pack(kind := 'risk', points := 40, reason := printf('Weekly active users fell %.0f%% over four weeks (%d to %d).', -100 * wau_trend, wau_4w_ago, wau_now))
                 WHEN wau_trend <= -0.2 THEN struct_pack(kind := 'risk', points := 20, reason := printf('Weekly active users fell %.0f%% over four weeks (%d to %d).', -100 * wau_trend, wau_4w_ago, wau_now)) END,
            CASE WHEN seat_utilization < 0.3 THEN struct_pack(kind := 'risk', points := 25, reason := printf('Only %.0f%% of seats were used this month.', 100 * seat_utilization))
                 WHEN seat_utilization < 0.5 THEN struct_pack(kind := 'risk', points := 10, reason := printf('%.0f%% of seats were used this month.', 100 * seat_utilization)) END,
            CASE WHEN billing_status IN ('past_due', 'unpaid') THEN struct_pack(kind := 'risk', points := 30, reason := printf('The subscription is %s.', billing_status))
                 WHEN keel_subscription_is_ended(billing_status) THEN struct_pack(kind := 'risk', points := 40, reason := printf('The subscription is %s.', billing_status)) END,
            -- A trial about to end (or already over while the mirror still says trialing) needs a conversion call.
            CASE WHEN billing_status = 'trialing' AND trial_days_left BETWEEN 0 AND 14 THEN struct_pack(kind := 'risk', points := 15, reason := printf('The trial ends on %s (%s) and nothing is paid yet.', strftime(trial_end, '%Y-%m-%d'), CASE trial_days_left WHEN 0 THEN 'today' WHEN 1 THEN 'tomorrow' ELSE printf('in %d days', trial_days_left) END))
                 WHEN billing_status = 'trialing' AND trial_days_left < 0 THEN struct_pack(kind := 'risk', points := 15, reason := printf('The trial ended on %s, %d day(s) ago, and the subscription still says trialing.', strftime(trial_end, '%Y-%m-%d'), -trial_days_left)) END,
            -- A live subscription's period always ends in the future: a past one was not renewed, or the mirror is stale.
            CASE WHEN NOT keel_subscription_is_ended(billing_status) AND renewal_days_past > 0 THEN struct_pack(kind := 'risk', points := 15, reason := printf('The renewal date, %s, passed %d day(s) ago without a renewal: the subscription may have lapsed, or the billing mirror is out of date.', strftime(renewal_date, '%Y-%m-%d'), renewal_days_past)) END,
            CASE WHEN owner_changes_30d >= 2 THEN struct_pack(kind := 'risk', points := 10, reason := printf('%d owner changes in the last 30 days.', owner_changes_30d)) END,
            CASE WHEN key_churn_30d >= 3 THEN struct_pack(kind := 'risk', points := 5, reason := printf('%d ingest keys created or revoked in the last 30 days.', key_churn_30d)) END,
            -- A handful of attempts says little: the rate counts from 10 attempts in the week.
            CASE WHEN webhook_attempts_7d >= 10 AND webhook_success_rate_7d < 0.5 THEN struct_pack(kind := 'risk', points := 20, reason := printf('Only %.0f%% of %d webhook attempts succeeded in the last 7 days.', 100 * webhook_success_rate_7d, webhook_attempts_7d))
                 WHEN webhook_attempts_7d >= 10 AND webhook_success_rate_7d < 0.9 THEN struct_pack(kind := 'risk', points := 10, reason := printf('%.0f%% of %d webhook attempts succeeded in the last 7 days.', 100 * webhook_success_rate_7d, webhook_attempts_7d)) END,
            CASE WHEN webhook_endpoints_disabled_30d > 0 THEN struct_pack(kind := 'risk', points := 5, reason := printf('%d webhook endpoint(s) disabled in the last 30 days.', webhook_endpoints_disabled_30d)) END
        ], lambda x: x IS NOT NULL), discrepancy_risks, list_filter([
            CASE WHEN over_seat_limit THEN struct_pack(kind := 'expansion', points := 0, reason := printf('Expansion signal: %d active members on %d seats bought, %d over the seat limit%s.', active_members, seats, active_members - seats, CASE WHEN over_seat_recorded_on IS NOT NULL THEN printf(' (billing reconciliation recorded it on %s)', over_seat_recorded_on) ELSE '' END))
                 WHEN over_seat_recorded_on IS NOT NULL THEN struct_pack(kind := 'expansion', points := 0, reason := printf('Expansion signal: billing reconciliation on %s found more active members than seats bought (%s).', over_seat_recorded_on, over_seat_recorded)) END
        ], lambda x: x IS NOT NULL)) AS signals
    FROM facts
),
scored AS (
    SELECT
        *,
        CAST(greatest(0, 100 - coalesce(list_sum(list_transform(signals, lambda x: x.points)), 0)) AS INTEGER) AS score,
        len(list_filter(signals, lambda x: x.kind = 'risk')) AS risks
    FROM found
)
SELECT
    organization_id,
    name,
    score,
    CASE WHEN score >= 70 THEN 'healthy' WHEN score >= 40 THEN 'watch' ELSE 'at_risk' END AS label,
    wau_now,
    wau_4w_ago,
    wau_trend,
    mau,
    active_members,
    seat_utilization,
    seats,
    over_seat_limit,
    billing_status,
    renewal_date,
    trial_end,
    open_discrepancies,
    owner_changes_30d,
    key_churn_30d,
    days_since_last_event,
    webhook_attempts_7d,
    webhook_success_rate_7d,
    webhook_endpoints_disabled_30d,
    signals,
    CASE WHEN risks = 0 THEN list_concat(['Active, growing or steady use; no warning signs.'], list_transform(signals, lambda x: x.reason))
         ELSE list_transform(signals, lambda x: x.reason) END AS reasons
FROM scored
