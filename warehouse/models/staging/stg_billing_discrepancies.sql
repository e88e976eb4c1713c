-- name: stg_billing_discrepancies
-- grain: one row per discrepancy a billing reconciliation run found
-- key: discrepancy_id
-- description: What reconcile-billing found between Stripe, the billing mirror and product use.
-- columns:
--   discrepancy_id: the discrepancy's id
--   run_id: the reconciliation run that found it
--   detected_at: when the run started
--   kind: missing_in_mirror, missing_in_stripe, status_mismatch, plan_mismatch, seat_count_mismatch, over_seat_limit, unpaid_active_usage, stale_mirror or unlinked_customer
--   severity: high, medium or low
--   organization_id: the organization concerned (null for an unlinked customer)
--   stripe_customer_id: the Stripe customer
--   stripe_subscription_id: the Stripe subscription, when one is concerned
--   expected: Stripe's value, or the limit a use went past
--   actual: the mirror's value, or the use measured
--   detail: what differs, in words
--   repaired: whether the run brought the mirror in line with Stripe
SELECT DISTINCT ON (id)
    id AS discrepancy_id, run_id, detected_at, kind, severity, organization_id, stripe_customer_id,
    stripe_subscription_id, expected, actual, detail, repaired
FROM {billing_discrepancies}
ORDER BY id
