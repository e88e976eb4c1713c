-- name: stg_audit_log
-- grain: one row per audit entry
-- key: id
-- description: Audit entries from the lake (Keel's own actions and product-sent ones), with their hashes.
-- columns:
--   id: the entry's id
--   organization_id: the organization whose chain holds it (empty for platform-level entries)
--   seq: position in the organization's hash chain
--   occurred_at: when the action happened (UTC)
--   actor_type: user, staff, api_key, system or stripe
--   actor_id: who acted
--   action: what was done, e.g. member.role_changed
--   resource_type: the kind of thing acted on
--   resource_id: the thing acted on
--   metadata: details, including before and after (JSON text)
--   hash: the entry's SHA-256 chain hash
SELECT id, organization_id, seq, occurred_at, actor_type, actor_id, action, resource_type, resource_id, metadata, hash
FROM (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY export_seq) AS copy_number FROM {audit_log}
)
WHERE copy_number = 1
