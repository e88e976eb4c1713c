SELECT DISTINCT ON (id)
    id AS discrepancy_id, run_id, detected_at, kind, severity, organization_id, stripe_customer_id,
    stripe_subscription_id, expected, actual, detail, repaired
FROM {{ source('lake', 'billing_discrepancies') }}
ORDER BY id
