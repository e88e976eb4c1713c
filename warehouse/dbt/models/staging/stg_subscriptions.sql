-- Every daily snapshot of the billing mirror the lake holds (one file per snapshot_date).
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
    created_at,
    CAST(regexp_extract(filename, 'snapshot_date=(\d{4}-\d{2}-\d{2})', 1) AS DATE) AS snapshot_date
FROM {{ source('lake', 'subscriptions') }}
