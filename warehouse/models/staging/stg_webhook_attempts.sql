-- name: stg_webhook_attempts
-- grain: one row per HTTP attempt of an outbound webhook delivery
-- key: attempt_id
-- description: Every attempt Keel's delivery workers made to a customer's endpoint, with its outcome (headers and bodies stay in Postgres).
-- columns:
--   attempt_id: the attempt's id
--   organization_id: the organization whose endpoint it was
--   endpoint_id: the endpoint
--   delivery_id: the delivery (one message to one endpoint) it belongs to
--   event_type: the message's event type, e.g. member.added
--   attempt_number: 1 for the first attempt of a delivery, then 2, 3...
--   started_at: when the request started (UTC)
--   day: the UTC date of started_at
--   duration_ms: from the request's start to its answer or error
--   status_code: the HTTP status answered (null when there was no answer)
--   error_class: timeout, dns, tls, refused, connection, protocol, ssrf_blocked, invalid_url or worker_lost (null when answered)
--   succeeded: a 2xx answer
SELECT
    id AS attempt_id, organization_id, endpoint_id, delivery_id, event_type, attempt_number, started_at,
    CAST(started_at AS DATE) AS day, duration_ms, status_code, error_class,
    coalesce(status_code BETWEEN 200 AND 299, false) AS succeeded
FROM (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY seq) AS copy_number FROM {webhook_attempts}
)
WHERE copy_number = 1
