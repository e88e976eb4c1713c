SELECT id, organization_id, seq, occurred_at, actor_type, actor_id, action, resource_type, resource_id, metadata, hash
FROM (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY export_seq) AS copy_number FROM {{ source('lake', 'audit_log') }}
)
WHERE copy_number = 1
