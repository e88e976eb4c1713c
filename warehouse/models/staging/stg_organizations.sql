-- name: stg_organizations
-- grain: one row per organization, as of the latest daily snapshot
-- key: organization_id
-- description: Organizations (deleted ones included, with deleted_at).
-- columns:
--   organization_id: the organization's id
--   name: display name
--   slug: URL name
--   status: active or suspended
--   created_at: when it was created
--   deleted_at: when it was deleted, if it was
SELECT id AS organization_id, name, slug, status, created_at, deleted_at
FROM {organizations}
WHERE filename = (SELECT max(filename) FROM {organizations})
