SELECT id AS organization_id, name, slug, status, created_at, deleted_at, external_id, traits
FROM {{ source('lake', 'organizations') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'organizations') }})
