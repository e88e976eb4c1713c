-- name: stg_subscriptions
-- grain: one row per organization with a subscription: its current one (keel_subscription_rank: not ended first, then the most recently created, then the greatest id)
-- key: organization_id
-- description: The billing mirror's view of each paying organization, from the latest daily snapshot (empty until billing is synced).
-- columns:
--   organization_id: the paying organization
--   status: trialing, active, past_due, canceled, unpaid, incomplete, incomplete_expired or paused
--   seats: seats bought (subscription quantity)
--   plan: the plan's lookup key or product name
--   amount: per billing interval, in the currency's minor units (unit amount x seats)
--   currency: ISO currency code, lower case
--   renewal_date: the end of the current billing period
--   trial_end: when the trial ends (null without a trial)
--   cancel_at_period_end: whether the subscription ends at the renewal date
--   synced_at: when the mirror last confirmed this subscription against Stripe
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
    FROM {subscriptions}
    WHERE filename = (SELECT max(filename) FROM {subscriptions})
)
WHERE recency = 1
