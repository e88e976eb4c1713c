-- People as Segment identify, group and alias calls made them, with their latest traits.
SELECT organization_id, user_id, traits, first_seen_at, last_seen_at
FROM {{ source('lake', 'people') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'people') }})
