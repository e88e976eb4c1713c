-- Each organization's current subscription over time: in every daily snapshot of the billing
-- mirror, the one the rule picks (keel_subscription_rank, warehouse/rules.py), for the days that
-- snapshot describes (int_snapshot_ranges).
SELECT organization_id, snapshot_date, valid_from, valid_to, status, seats, plan, amount, currency, renewal_date, trial_end,
       cancel_at_period_end, synced_at
FROM (
    SELECT
        s.organization_id,
        s.snapshot_date,
        r.valid_from,
        r.valid_to,
        s.status,
        s.seats,
        s.plan,
        s.unit_amount * s.seats AS amount,
        s.currency,
        s.current_period_end AS renewal_date,
        s.trial_end,
        s.cancel_at_period_end,
        s.synced_at,
        row_number() OVER (
            PARTITION BY s.organization_id, s.snapshot_date
            ORDER BY keel_subscription_rank(s.status, s.created_at, s.stripe_subscription_id) DESC
        ) AS recency
    FROM {{ ref('stg_subscriptions') }} s
    JOIN {{ ref('int_snapshot_ranges') }} r ON r.snapshot_of = 'subscriptions' AND r.snapshot_date = s.snapshot_date
)
WHERE recency = 1
