-- name: seat_utilization
-- grain: one row per organization per UTC day (same days as org_daily_activity)
-- key: organization_id, day
-- description: Seats bought against members and users who are actually active.
-- columns:
--   organization_id: the organization
--   day: the UTC date
--   seats_purchased: seats on the organization's subscription, when known (billing mirror)
--   active_members: members whose membership is active now and began on or before that day
--   active_users: the organization's monthly active users on that day (org_active_users.mau)
--   utilization: active_users / seats_purchased (or / active_members without a known seat count)
WITH members AS (
    SELECT a.organization_id, a.day, count(m.membership_id) AS active_members
    FROM org_daily_activity a
    LEFT JOIN stg_memberships m
        ON m.organization_id = a.organization_id AND keel_membership_is_active(m.status) AND CAST(m.created_at AS DATE) <= a.day
    GROUP BY a.organization_id, a.day
)
SELECT
    m.organization_id,
    m.day,
    s.seats AS seats_purchased,
    m.active_members,
    u.mau AS active_users,
    CASE
        WHEN coalesce(s.seats, m.active_members) > 0 THEN u.mau / coalesce(s.seats, m.active_members)
    END AS utilization
FROM members m
JOIN org_active_users u USING (organization_id, day)
LEFT JOIN stg_subscriptions s USING (organization_id)
