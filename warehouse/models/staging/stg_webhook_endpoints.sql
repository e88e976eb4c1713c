-- name: stg_webhook_endpoints
-- grain: one row per webhook endpoint, as of the latest daily snapshot
-- key: endpoint_id
-- description: Customers' webhook receivers (URL without query string; secrets never leave Postgres).
-- columns:
--   endpoint_id: the endpoint's id
--   organization_id: the organization it belongs to
--   url: scheme, host and path of the receiver
--   event_types: the event-type filter, comma-separated (empty: every type)
--   enabled: whether deliveries are made to it
--   disabled_reason: why it was disabled (410 Gone, five days of failures, or by hand)
--   disabled_at: when it was disabled
--   failing_since: start of its current run of failed attempts (null when the last one succeeded)
--   created_at: when it was created
--   deleted_at: when it was deleted, if it was
SELECT id AS endpoint_id, organization_id, url, event_types, enabled, disabled_reason, disabled_at,
       failing_since, created_at, deleted_at
FROM {webhook_endpoints}
WHERE filename = (SELECT max(filename) FROM {webhook_endpoints})
