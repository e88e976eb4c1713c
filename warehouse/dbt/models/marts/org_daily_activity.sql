WITH bounds AS (
    SELECT organization_id, min(day) AS first_day FROM {{ ref('int_events_identified') }} GROUP BY organization_id
),
calendar AS (
    SELECT organization_id, CAST(unnest(generate_series(first_day, (SELECT as_of FROM {{ ref('keel_params') }}), INTERVAL 1 DAY)) AS DATE) AS day
    FROM bounds
),
daily AS (
    SELECT organization_id, day, count(*) AS events, count(DISTINCT keel_active_user(user_id, anonymous_id, aliased_user_id)) AS active_users
    FROM {{ ref('int_events_identified') }} GROUP BY organization_id, day
),
first_seen AS (
    SELECT organization_id, keel_active_user(user_id, anonymous_id, aliased_user_id) AS user_id, min(day) AS day FROM {{ ref('int_events_identified') }}
    WHERE keel_active_user(user_id, anonymous_id, aliased_user_id) IS NOT NULL GROUP BY 1, 2
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
