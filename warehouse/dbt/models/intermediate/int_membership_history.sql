-- Each membership's state over time: what each daily snapshot said (the day's last copy: the state
-- at the end of that day), for the days that snapshot describes (int_snapshot_ranges); a membership
-- first seen in a snapshot is valid from the day it began.
SELECT
    m.membership_id,
    m.snapshot_date,
    m.organization_id,
    m.user_id,
    m.role,
    m.status,
    m.created_at,
    CASE
        WHEN row_number() OVER (PARTITION BY m.membership_id ORDER BY m.snapshot_date) = 1 THEN CAST(m.created_at AS DATE)
        ELSE greatest(r.valid_from, CAST(m.created_at AS DATE))
    END AS valid_from,
    r.valid_to
FROM {{ ref('stg_memberships') }} m
JOIN {{ ref('int_snapshot_ranges') }} r ON r.snapshot_of = 'memberships' AND r.snapshot_date = m.snapshot_date
