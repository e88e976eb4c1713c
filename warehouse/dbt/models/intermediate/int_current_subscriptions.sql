-- The one definition of an organization's current subscription (warehouse/rules.py,
-- keel_subscription_rank), as of the warehouse's as-of date: the same rule the billing screen and
-- the reconciliation apply.
SELECT organization_id, status, seats, plan, amount, currency, renewal_date, trial_end, cancel_at_period_end, synced_at
FROM {{ ref('int_subscription_history') }}
WHERE keel_valid_on(valid_from, valid_to, (SELECT as_of FROM {{ ref('keel_params') }}))
