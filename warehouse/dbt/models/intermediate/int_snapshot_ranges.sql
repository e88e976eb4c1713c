-- Which snapshot describes each day: the latest taken on or before it (valid_from) until the next
-- one (valid_to, exclusive); before the first snapshot the lake knows no other state, so the first
-- one stands for those days too (valid_from null).
WITH days AS (
    SELECT DISTINCT 'memberships' AS snapshot_of, snapshot_date FROM {{ ref('stg_memberships') }}
    UNION ALL
    SELECT DISTINCT 'subscriptions', snapshot_date FROM {{ ref('stg_subscriptions') }}
)
SELECT
    snapshot_of,
    snapshot_date,
    CASE WHEN row_number() OVER w > 1 THEN snapshot_date END AS valid_from,
    lead(snapshot_date) OVER w AS valid_to
FROM days
WINDOW w AS (PARTITION BY snapshot_of ORDER BY snapshot_date)
