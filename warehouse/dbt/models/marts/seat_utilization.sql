-- Every day with that day's members and seats (the history models), not today's.
WITH members AS (
    SELECT a.organization_id, a.day, count(m.membership_id) AS active_members
    FROM {{ ref('org_daily_activity') }} a
    LEFT JOIN {{ ref('int_membership_history') }} m
        ON m.organization_id = a.organization_id AND keel_membership_is_active(m.status)
       AND keel_valid_on(m.valid_from, m.valid_to, a.day)
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
JOIN {{ ref('org_active_users') }} u USING (organization_id, day)
LEFT JOIN {{ ref('int_subscription_history') }} s
    ON s.organization_id = m.organization_id AND keel_valid_on(s.valid_from, s.valid_to, m.day)
