-- alias calls: an earlier id (an anonymous id, mostly) is the same person as user_id in this organization.
SELECT organization_id, previous_id, user_id, "timestamp" AS aliased_at
FROM {{ source('lake', 'identity_aliases') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'identity_aliases') }})
