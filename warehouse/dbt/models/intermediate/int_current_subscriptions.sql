-- The one definition of an organization's current subscription (warehouse/rules.py,
-- keel_subscription_rank): the same rule the billing screen and the reconciliation apply.
SELECT organization_id, status, seats, plan, amount, currency, renewal_date, trial_end, cancel_at_period_end, synced_at
FROM (
    SELECT
        organization_id,
        status,
        seats,
        plan,
        unit_amount * seats AS amount,
        currency,
        current_period_end AS renewal_date,
        trial_end,
        cancel_at_period_end,
        synced_at,
        row_number() OVER (
            PARTITION BY organization_id
            ORDER BY keel_subscription_rank(status, created_at, stripe_subscription_id) DESC
        ) AS recency
    FROM {{ ref('stg_subscriptions') }}
)
WHERE recency = 1
