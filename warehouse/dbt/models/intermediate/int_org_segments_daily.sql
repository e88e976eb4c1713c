-- Which segment each organization was in each day, on every dimension: its plan (the current
-- subscription that day, int_subscription_history) and each organization trait any group call set
-- (int_org_trait_history, as of that day). '(none)' when it had no value that day.
WITH bounds AS (
    SELECT organization_id, min(day) AS first_day FROM {{ ref('stg_events') }} GROUP BY organization_id
),
calendar AS (
    SELECT organization_id, CAST(unnest(generate_series(first_day, (SELECT as_of FROM {{ ref('keel_params') }}), INTERVAL 1 DAY)) AS DATE) AS day
    FROM bounds
),
traits AS (
    SELECT DISTINCT trait FROM {{ ref('int_org_trait_history') }}
),
plans AS (
    SELECT c.organization_id, c.day, 'plan' AS dimension, coalesce(max(s.plan), '(none)') AS value
    FROM calendar c
    LEFT JOIN {{ ref('int_subscription_history') }} s
        ON s.organization_id = c.organization_id AND keel_valid_on(s.valid_from, s.valid_to, c.day)
    GROUP BY c.organization_id, c.day
),
org_traits AS (
    SELECT c.organization_id, c.day, 'trait:' || t.trait AS dimension, coalesce(max(h.value), '(none)') AS value
    FROM calendar c
    CROSS JOIN traits t
    LEFT JOIN {{ ref('int_org_trait_history') }} h
        ON h.organization_id = c.organization_id AND h.trait = t.trait AND keel_valid_on(h.valid_from, h.valid_to, c.day)
    GROUP BY c.organization_id, c.day, t.trait
)
SELECT * FROM plans
UNION ALL
SELECT * FROM org_traits
