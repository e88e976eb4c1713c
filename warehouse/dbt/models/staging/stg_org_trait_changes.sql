-- The history of organizations' traits (group calls): what each call set, and when.
SELECT organization_id, message_id, user_id, traits, changed_at, received_at
FROM (
    SELECT
        organization_id, message_id, user_id, traits, "timestamp" AS changed_at, received_at,
        row_number() OVER (PARTITION BY organization_id, message_id ORDER BY seq) AS copy_number
    FROM {{ source('lake', 'org_trait_changes') }}
)
WHERE copy_number = 1
