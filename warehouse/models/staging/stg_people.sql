-- name: stg_people
-- grain: one row per person of an organization (organization_id, user_id), as of the latest daily snapshot
-- key: organization_id, user_id
-- description: People as Segment identify, group and alias calls made them, with their latest traits.
-- columns:
--   organization_id: the organization
--   user_id: the person's user id
--   traits: the latest traits (JSON text)
--   first_seen_at: the earliest call that named them
--   last_seen_at: the latest call that named them
SELECT organization_id, user_id, traits, first_seen_at, last_seen_at
FROM {people}
WHERE filename = (SELECT max(filename) FROM {people})
