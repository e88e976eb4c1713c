WITH members AS (
    SELECT organization_id, count(*) AS active_members
    FROM {{ ref('int_active_members') }} GROUP BY organization_id
),
usage AS (
    SELECT
        organization_id,
        event,
        min(day) AS first_seen,
        max(day) AS last_seen,
        count(DISTINCT keel_active_user(user_id, anonymous_id, aliased_user_id)) AS users,
        count(DISTINCT keel_active_user(user_id, anonymous_id, aliased_user_id))
            FILTER (WHERE keel_in_mau_window(day, (SELECT as_of FROM {{ ref('keel_params') }}))) AS users_30d
    FROM {{ ref('int_events_identified') }}
    WHERE day <= (SELECT as_of FROM {{ ref('keel_params') }})
    GROUP BY organization_id, event
)
SELECT
    u.*,
    coalesce(m.active_members, 0) AS active_members,
    CASE WHEN m.active_members > 0 THEN u.users_30d / m.active_members END AS share_of_active_members
FROM usage u LEFT JOIN members m USING (organization_id)
