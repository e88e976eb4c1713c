SELECT
    id AS subscription_id,
    organization_id,
    stripe_subscription_id,
    stripe_customer_id,
    plan,
    status,
    seats,
    unit_amount,
    currency,
    "interval" AS billing_interval,
    current_period_start,
    current_period_end,
    trial_end,
    cancel_at_period_end,
    canceled_at,
    synced_at,
    created_at
FROM {{ source('lake', 'subscriptions') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'subscriptions') }})
