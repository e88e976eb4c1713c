-- name: stg_billing_reconciliation_runs
-- grain: one row per billing reconciliation run, as of the latest daily snapshot
-- key: run_id
-- description: Every run of reconcile-billing: when, whether it completed, and how many discrepancies it recorded.
-- columns:
--   run_id: the run's id
--   started_at: when it started (its discrepancies' detected_at)
--   finished_at: when it finished
--   status: completed, or failed (Stripe could not be read; nothing was compared)
--   repair: whether the run brought the mirror in line with Stripe
--   usage_source: where monthly active users came from: warehouse or postgres (none for a failed run)
--   discrepancy_count: discrepancies the run recorded (stg_billing_discrepancies rows with its run_id)
--   repaired_count: how many of them it repaired
SELECT id AS run_id, started_at, finished_at, status, repair, usage_source, discrepancy_count, repaired_count
FROM {billing_reconciliation_runs}
WHERE filename = (SELECT max(filename) FROM {billing_reconciliation_runs})
