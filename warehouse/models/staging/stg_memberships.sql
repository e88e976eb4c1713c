-- name: stg_memberships
-- grain: one row per membership (organization x user), as of the latest daily snapshot
-- key: membership_id
-- description: Who belongs to which organization, with role and status.
-- columns:
--   membership_id: the membership's id
--   organization_id: the organization
--   user_id: the member
--   role: owner, admin, billing, member or viewer
--   status: invited, active or removed
--   created_at: when the membership began
SELECT id AS membership_id, organization_id, user_id, role, status, created_at
FROM {memberships}
WHERE filename = (SELECT max(filename) FROM {memberships})
