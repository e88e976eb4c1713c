-- name: stg_identity_aliases
-- grain: one row per merged id (organization_id, previous_id), as of the latest daily snapshot
-- key: organization_id, previous_id
-- description: alias calls: an earlier id (an anonymous id, mostly) is the same person as user_id in this organization.
-- columns:
--   organization_id: the organization
--   previous_id: the earlier id
--   user_id: the user id it was merged into
--   aliased_at: when the alias call happened
SELECT organization_id, previous_id, user_id, "timestamp" AS aliased_at
FROM {identity_aliases}
WHERE filename = (SELECT max(filename) FROM {identity_aliases})
