-- People of each organization, one row per person: an id an alias call (or an identify carrying
-- both ids) merged into a user id (stg_identity_aliases; people.merged_into) is that user. First
-- seen is the earliest of the merged ids, last seen the latest; the traits are the person's own (the
-- user id's), else those of the id seen last. Anonymous: known by an anonymous id alone.
WITH merged AS (
    SELECT
        p.organization_id, coalesce(a.user_id, p.merged_into, p.user_id) AS person_id, p.user_id, p.traits,
        p.first_seen_at, p.last_seen_at, p.anonymous AND a.user_id IS NULL AND p.merged_into IS NULL AS anonymous
    FROM {{ ref('stg_people') }} p
    LEFT JOIN {{ ref('stg_identity_aliases') }} a ON a.organization_id = p.organization_id AND a.previous_id = p.user_id
)
SELECT
    organization_id,
    person_id AS user_id,
    arg_max(traits, row(user_id = person_id, last_seen_at, user_id)) AS traits,
    min(first_seen_at) AS first_seen_at,
    max(last_seen_at) AS last_seen_at,
    coalesce(list_sort(list(user_id) FILTER (WHERE user_id <> person_id)), CAST([] AS VARCHAR[])) AS merged_ids,
    bool_and(anonymous) AS anonymous
FROM merged
GROUP BY organization_id, person_id
