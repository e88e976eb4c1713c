-- Every daily snapshot the lake holds (the day's last copy: one file per snapshot_date), so the
-- history models can tell who was a member on any past day.
SELECT
    id AS membership_id,
    organization_id,
    user_id,
    role,
    status,
    created_at,
    CAST(regexp_extract(filename, 'snapshot_date=(\d{4}-\d{2}-\d{2})', 1) AS DATE) AS snapshot_date
FROM {{ source('lake', 'memberships') }}
