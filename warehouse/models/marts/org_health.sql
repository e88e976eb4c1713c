-- name: org_health
-- grain: one row per live organization, as of the as-of date
-- key: organization_id
-- description: A 0-100 health score with its label (healthy >= 70, watch >= 40, at_risk below) and the reasons, in words.
-- columns:
--   organization_id: the organization
--   name: its name
--   score: 0-100; starts at 100, each signal below takes points off
--   label: healthy, watch or at_risk
--   wau_now: weekly active users at the as-of date
--   wau_4w_ago: weekly active users 28 days earlier
--   wau_trend: wau_now / wau_4w_ago - 1 (null when there was no activity four weeks ago)
--   mau: monthly active users at the as-of date
--   active_members: active members now
--   seat_utilization: mau / seats (or / active members)
--   billing_status: the subscription status, when the billing mirror knows it
--   owner_changes_30d: owner role grants, removals and changes in the last 30 days
--   key_churn_30d: ingest keys created or revoked in the last 30 days
--   days_since_last_event: days between the last event and the as-of date
--   webhook_attempts_7d: outbound webhook attempts to the organization's endpoints in the 7 days to the as-of date
--   webhook_success_rate_7d: the share of those attempts answered 2xx (null without attempts)
--   webhook_endpoints_disabled_30d: endpoints disabled in the last 30 days (410 Gone, five days of failures, or by hand)
--   reasons: why the score is what it is, one sentence per signal
WITH params AS (SELECT as_of FROM keel_params),
orgs AS (
    SELECT organization_id, name FROM stg_organizations WHERE deleted_at IS NULL
),
now_au AS (
    SELECT organization_id, wau AS wau_now, mau FROM org_active_users WHERE day = (SELECT as_of FROM params)
),
past_au AS (
    SELECT organization_id, wau AS wau_4w_ago FROM org_active_users WHERE day = (SELECT as_of FROM params) - 28
),
seats AS (
    SELECT organization_id, active_members, utilization FROM seat_utilization WHERE day = (SELECT as_of FROM params)
),
members AS (
    SELECT organization_id, count(*) AS active_members FROM stg_memberships WHERE status = 'active' GROUP BY 1
),
last_event AS (
    SELECT organization_id, max(day) AS last_day FROM stg_events WHERE day <= (SELECT as_of FROM params) GROUP BY 1
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
    FROM stg_audit_log
    WHERE CAST(occurred_at AS DATE) > (SELECT as_of FROM params) - 30
      AND CAST(occurred_at AS DATE) <= (SELECT as_of FROM params)
    GROUP BY organization_id
),
webhooks AS (
    SELECT organization_id, CAST(sum(attempts) AS BIGINT) AS webhook_attempts_7d,
           sum(succeeded) / sum(attempts) AS webhook_success_rate_7d
    FROM webhook_health
    WHERE day > (SELECT as_of FROM params) - 7 AND day <= (SELECT as_of FROM params)
    GROUP BY organization_id
),
disabled_endpoints AS (
    SELECT organization_id, count(*) AS webhook_endpoints_disabled_30d
    FROM stg_webhook_endpoints
    WHERE deleted_at IS NULL AND NOT enabled
      AND CAST(disabled_at AS DATE) > (SELECT as_of FROM params) - 30
      AND CAST(disabled_at AS DATE) <= (SELECT as_of FROM params)
    GROUP BY organization_id
),
signals AS (
    SELECT
        o.organization_id,
        o.name,
        coalesce(n.wau_now, 0) AS wau_now,
        p.wau_4w_ago,
        CASE WHEN p.wau_4w_ago > 0 THEN coalesce(n.wau_now, 0) / p.wau_4w_ago - 1 END AS wau_trend,
        coalesce(n.mau, 0) AS mau,
        coalesce(m.active_members, 0) AS active_members,
        s.utilization AS seat_utilization,
        b.status AS billing_status,
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
    LEFT JOIN stg_subscriptions b USING (organization_id)
    LEFT JOIN webhooks w USING (organization_id)
    LEFT JOIN disabled_endpoints de USING (organization_id)
),
penalties AS (
    SELECT
        *,
        list_filter([
            CASE WHEN days_since_last_event IS NULL THEN struct_pack(points := 50, reason := 'No product activity recorded yet.')
                 WHEN days_since_last_event >= 14 THEN struct_pack(points := 50, reason := printf('No activity for %d days.', days_since_last_event)) END,
            CASE WHEN wau_trend <= -0.5 THEN struct_pack(points := 40, reason := printf('Weekly active users fell %.0f%% over four weeks (%d to %d).', -100 * wau_trend, wau_4w_ago, wau_now))
                 WHEN wau_trend <= -0.2 THEN struct_pack(points := 20, reason := printf('Weekly active users fell %.0f%% over four weeks (%d to %d).', -100 * wau_trend, wau_4w_ago, wau_now)) END,
            CASE WHEN seat_utilization < 0.3 THEN struct_pack(points := 25, reason := printf('Only %.0f%% of seats were used this month.', 100 * seat_utilization))
                 WHEN seat_utilization < 0.5 THEN struct_pack(points := 10, reason := printf('%.0f%% of seats were used this month.', 100 * seat_utilization)) END,
            CASE WHEN billing_status IN ('past_due', 'unpaid') THEN struct_pack(points := 30, reason := printf('The subscription is %s.', billing_status))
                 WHEN billing_status IN ('canceled', 'incomplete_expired') THEN struct_pack(points := 40, reason := printf('The subscription is %s.', billing_status)) END,
            CASE WHEN owner_changes_30d >= 2 THEN struct_pack(points := 10, reason := printf('%d owner changes in the last 30 days.', owner_changes_30d)) END,
            CASE WHEN key_churn_30d >= 3 THEN struct_pack(points := 5, reason := printf('%d ingest keys created or revoked in the last 30 days.', key_churn_30d)) END,
            -- A handful of attempts says little: the rate counts from 10 attempts in the week.
            CASE WHEN webhook_attempts_7d >= 10 AND webhook_success_rate_7d < 0.5 THEN struct_pack(points := 20, reason := printf('Only %.0f%% of %d webhook attempts succeeded in the last 7 days.', 100 * webhook_success_rate_7d, webhook_attempts_7d))
                 WHEN webhook_attempts_7d >= 10 AND webhook_success_rate_7d < 0.9 THEN struct_pack(points := 10, reason := printf('%.0f%% of %d webhook attempts succeeded in the last 7 days.', 100 * webhook_success_rate_7d, webhook_attempts_7d)) END,
            CASE WHEN webhook_endpoints_disabled_30d > 0 THEN struct_pack(points := 5, reason := printf('%d webhook endpoint(s) disabled in the last 30 days.', webhook_endpoints_disabled_30d)) END
        ], lambda x: x IS NOT NULL) AS found
    FROM signals
),
scored AS (
    SELECT
        *,
        CAST(greatest(0, 100 - coalesce(list_sum(list_transform(found, lambda x: x.points)), 0)) AS INTEGER) AS score
    FROM penalties
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
    billing_status,
    owner_changes_30d,
    key_churn_30d,
    days_since_last_event,
    webhook_attempts_7d,
    webhook_success_rate_7d,
    webhook_endpoints_disabled_30d,
    CASE WHEN len(found) = 0 THEN ['Active, growing or steady use; no warning signs.']
         ELSE list_transform(found, lambda x: x.reason) END AS reasons
FROM scored
