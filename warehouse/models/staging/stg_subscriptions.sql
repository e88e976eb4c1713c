-- name: stg_subscriptions
-- grain: one row per organization with a subscription (its most recently updated one)
-- key: organization_id
-- description: The billing mirror's view of each paying organization (empty until billing is synced).
-- columns:
--   organization_id: the paying organization
--   status: trialing, active, past_due, canceled, unpaid, incomplete, incomplete_expired or paused
--   seats: seats bought (subscription quantity)
--   plan: the plan's lookup key or product name
SELECT organization_id, status, seats, plan
FROM (
    SELECT *, row_number() OVER (PARTITION BY organization_id ORDER BY updated_at DESC) AS recency
    FROM {subscriptions}
    WHERE filename = (SELECT max(filename) FROM {subscriptions})
)
WHERE recency = 1
