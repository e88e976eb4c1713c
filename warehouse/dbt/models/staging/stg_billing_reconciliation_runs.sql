SELECT id AS run_id, started_at, finished_at, status, repair, usage_source, discrepancy_count, repaired_count
FROM {{ source('lake', 'billing_reconciliation_runs') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'billing_reconciliation_runs') }})
