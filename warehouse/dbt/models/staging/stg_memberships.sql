SELECT id AS membership_id, organization_id, user_id, role, status, created_at
FROM {{ source('lake', 'memberships') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'memberships') }})
