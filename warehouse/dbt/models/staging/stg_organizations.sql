-- Organizations: each key's latest version (the lake holds every version an export saw; a lake
-- an older Keel wrote holds daily snapshots instead, of which the latest wins).
SELECT id AS organization_id, name, slug, status, created_at, deleted_at, external_id, traits
FROM {{ source('lake', 'organizations') }}
QUALIFY row_number() OVER (PARTITION BY id ORDER BY lake_version DESC NULLS LAST, filename DESC) = 1
