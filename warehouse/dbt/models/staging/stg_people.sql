-- People as Segment identify, group and alias calls made them, with their latest traits: each
-- key's latest version (the lake holds every version an export saw; a lake an older Keel wrote
-- holds daily snapshots instead, of which the latest wins).
SELECT
    organization_id, user_id, traits, first_seen_at, last_seen_at, coalesce(anonymous, false) AS anonymous,
    merged_into
FROM {{ source('lake', 'people') }}
QUALIFY row_number() OVER (
    PARTITION BY organization_id, user_id ORDER BY lake_version DESC NULLS LAST, filename DESC
) = 1
