WITH user_days AS (
    SELECT DISTINCT organization_id, day, keel_active_user(user_id, anonymous_id, aliased_user_id) AS user_id FROM {{ ref('int_events_identified') }}
    WHERE keel_active_user(user_id, anonymous_id, aliased_user_id) IS NOT NULL
),
-- The lake's history starts on its first event; an organization active on that day may have been
-- active before it too, so its trailing windows are whole only once they fit inside the lake.
lake_start AS (
    SELECT min(day) AS first_day FROM {{ ref('int_events_identified') }}
),
org_start AS (
    SELECT organization_id, min(day) AS first_day FROM {{ ref('int_events_identified') }} GROUP BY organization_id
),
windows AS (
    SELECT
        a.organization_id,
        a.day,
        count(DISTINCT u.user_id) FILTER (WHERE u.day = a.day) AS dau,
        count(DISTINCT u.user_id) FILTER (WHERE keel_in_trailing_days(u.day, a.day, 7)) AS wau,
        count(DISTINCT u.user_id) AS mau
    FROM {{ ref('org_daily_activity') }} a
    LEFT JOIN user_days u
        ON u.organization_id = a.organization_id AND keel_in_mau_window(u.day, a.day)
    GROUP BY a.organization_id, a.day
)
SELECT
    w.organization_id, w.day, w.dau, w.wau, w.mau, CASE WHEN w.mau > 0 THEN w.dau / w.mau END AS dau_mau,
    o.first_day > l.first_day OR w.day >= l.first_day + 6 AS wau_complete,
    o.first_day > l.first_day OR w.day >= l.first_day + 29 AS mau_complete
FROM windows w
JOIN org_start o USING (organization_id)
CROSS JOIN lake_start l
