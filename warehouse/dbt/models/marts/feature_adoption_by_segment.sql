-- Feature adoption by segment: each day, for each feature (event name) and each dimension (the plan,
-- each organization trait) and value, how many organizations of that segment used it, out of the
-- segment's organizations that day, and how many people (identities merged by alias).
WITH segments AS (
    SELECT * FROM {{ ref('int_org_segments_daily') }}
),
sizes AS (
    SELECT day, dimension, value, count(*) AS segment_orgs FROM segments GROUP BY 1, 2, 3
),
usage AS (
    SELECT organization_id, day, event, keel_active_user(user_id, anonymous_id, aliased_user_id) AS user_id
    FROM {{ ref('int_events_identified') }}
    WHERE day <= (SELECT as_of FROM {{ ref('keel_params') }})
)
SELECT
    u.day, u.event, s.dimension, s.value,
    count(DISTINCT u.organization_id) AS adopting_orgs,
    z.segment_orgs,
    count(DISTINCT u.organization_id) / z.segment_orgs AS adoption_rate,
    count(DISTINCT (u.organization_id, u.user_id)) FILTER (WHERE u.user_id IS NOT NULL) AS users
FROM usage u
JOIN segments s USING (organization_id, day)
JOIN sizes z USING (day, dimension, value)
GROUP BY u.day, u.event, s.dimension, s.value, z.segment_orgs
