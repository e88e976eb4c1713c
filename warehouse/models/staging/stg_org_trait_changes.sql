-- name: stg_org_trait_changes
-- grain: one row per group call that set traits (organization_id, message_id), deduplicated
-- key: organization_id, message_id
-- description: The history of organizations' traits (group calls): what each call set, and when.
-- columns:
--   organization_id: the organization
--   message_id: the call's message id
--   user_id: the user who sent it (when known)
--   traits: the traits it set (JSON text), merged key by key into the latest ones
--   changed_at: when it happened (UTC, clock-skew corrected)
--   received_at: when Keel received it
SELECT organization_id, message_id, user_id, traits, changed_at, received_at
FROM (
    SELECT
        organization_id, message_id, user_id, traits, "timestamp" AS changed_at, received_at,
        row_number() OVER (PARTITION BY organization_id, message_id ORDER BY seq) AS copy_number
    FROM {org_trait_changes}
)
WHERE copy_number = 1
