-- name: feature_adoption
-- grain: one row per organization per event name
-- key: organization_id, event
-- description: Which features (event names) each organization uses, and how widely among its members.
-- columns:
--   organization_id: the organization
--   event: the event name (a feature)
--   first_seen: the first day it was used
--   last_seen: the last day it was used
--   users: distinct identified users who ever used it
--   users_30d: distinct identified users in the 30 days ending at the as-of date
--   active_members: the organization's active members now
--   share_of_active_members: users_30d / active_members, null without active members
WITH members AS (
    SELECT organization_id, count(*) AS active_members
    FROM stg_memberships WHERE keel_membership_is_active(status) GROUP BY organization_id
),
usage AS (
    SELECT
        organization_id,
        event,
        min(day) AS first_seen,
        max(day) AS last_seen,
        count(DISTINCT keel_active_user(user_id, anonymous_id)) AS users,
        count(DISTINCT keel_active_user(user_id, anonymous_id))
            FILTER (WHERE keel_in_mau_window(day, (SELECT as_of FROM keel_params))) AS users_30d
    FROM stg_events
    WHERE day <= (SELECT as_of FROM keel_params)
    GROUP BY organization_id, event
)
SELECT
    u.*,
    coalesce(m.active_members, 0) AS active_members,
    CASE WHEN m.active_members > 0 THEN u.users_30d / m.active_members END AS share_of_active_members
FROM usage u LEFT JOIN members m USING (organization_id)
