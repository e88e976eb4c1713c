-- name: org_daily_activity
-- grain: one row per organization per UTC day, from its first event to the as-of date (quiet days are zeros)
-- key: organization_id, day
-- description: How much each organization used the product each day.
-- columns:
--   organization_id: the organization
--   day: the UTC date
--   events: events that day
--   active_users: distinct identified users with at least one event that day
--   new_users: identified users whose first event in this organization was that day
WITH bounds AS (
    SELECT organization_id, min(day) AS first_day FROM stg_events GROUP BY organization_id
),
calendar AS (
    SELECT organization_id, CAST(unnest(generate_series(first_day, (SELECT as_of FROM keel_params), INTERVAL 1 DAY)) AS DATE) AS day
    FROM bounds
),
daily AS (
    SELECT organization_id, day, count(*) AS events, count(DISTINCT keel_active_user(user_id, anonymous_id)) AS active_users
    FROM stg_events GROUP BY organization_id, day
),
first_seen AS (
    SELECT organization_id, keel_active_user(user_id, anonymous_id) AS user_id, min(day) AS day FROM stg_events
    WHERE keel_active_user(user_id, anonymous_id) IS NOT NULL GROUP BY 1, 2
),
newcomers AS (
    SELECT organization_id, day, count(*) AS new_users FROM first_seen GROUP BY 1, 2
)
SELECT
    c.organization_id,
    c.day,
    coalesce(d.events, 0) AS events,
    coalesce(d.active_users, 0) AS active_users,
    coalesce(n.new_users, 0) AS new_users
FROM calendar c
LEFT JOIN daily d USING (organization_id, day)
LEFT JOIN newcomers n USING (organization_id, day)
