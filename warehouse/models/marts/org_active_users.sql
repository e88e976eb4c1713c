-- name: org_active_users
-- grain: one row per organization per UTC day (same days as org_daily_activity)
-- key: organization_id, day
-- description: Daily, weekly and monthly active users (identified users), on trailing windows ending that day.
-- columns:
--   organization_id: the organization
--   day: the UTC date the windows end on
--   dau: distinct users active that day
--   wau: distinct users active in the 7 days ending that day
--   mau: distinct users active in the 30 days ending that day
--   dau_mau: dau / mau (stickiness), null when mau is 0
WITH user_days AS (
    SELECT DISTINCT organization_id, day, user_id FROM stg_events WHERE user_id IS NOT NULL
),
windows AS (
    SELECT
        a.organization_id,
        a.day,
        count(DISTINCT u.user_id) FILTER (WHERE u.day = a.day) AS dau,
        count(DISTINCT u.user_id) FILTER (WHERE u.day > a.day - 7) AS wau,
        count(DISTINCT u.user_id) AS mau
    FROM org_daily_activity a
    LEFT JOIN user_days u
        ON u.organization_id = a.organization_id AND u.day BETWEEN a.day - 29 AND a.day
    GROUP BY a.organization_id, a.day
)
SELECT organization_id, day, dau, wau, mau, CASE WHEN mau > 0 THEN dau / mau END AS dau_mau
FROM windows
