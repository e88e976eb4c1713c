-- name: webhook_health
-- grain: one row per organization per webhook endpoint per UTC day with at least one attempt
-- key: organization_id, endpoint_id, day
-- description: How an organization's webhook endpoints fared each day: attempts, success rate and latency.
-- columns:
--   organization_id: the organization
--   endpoint_id: the endpoint
--   day: the UTC date the attempts started
--   url: the endpoint's URL (scheme, host and path), when the snapshot knows it
--   attempts: attempts started that day
--   succeeded: attempts answered 2xx
--   failed: attempts answered otherwise or not answered
--   success_rate: succeeded / attempts
--   p95_latency_ms: 95th percentile of the attempts' durations (the nearest observed value)
--   timeouts: attempts that ran out of time
--   top_error: the most frequent error class or status code among the failures that day
WITH failures AS (
    SELECT organization_id, endpoint_id, day, coalesce(error_class, 'http_' || status_code) AS error,
           count(*) AS n
    FROM stg_webhook_attempts
    WHERE NOT succeeded
    GROUP BY ALL
),
top_failure AS (
    SELECT organization_id, endpoint_id, day, arg_max(error, struct_pack(n := n, e := error)) AS top_error
    FROM failures
    GROUP BY ALL
)
SELECT
    a.organization_id,
    a.endpoint_id,
    a.day,
    any_value(e.url) AS url,
    count(*) AS attempts,
    count(*) FILTER (WHERE a.succeeded) AS succeeded,
    count(*) FILTER (WHERE NOT a.succeeded) AS failed,
    count(*) FILTER (WHERE a.succeeded) / count(*) AS success_rate,
    quantile_disc(a.duration_ms, 0.95) AS p95_latency_ms,
    count(*) FILTER (WHERE a.error_class = 'timeout') AS timeouts,
    any_value(t.top_error) AS top_error
FROM stg_webhook_attempts a
LEFT JOIN stg_webhook_endpoints e USING (endpoint_id)
LEFT JOIN top_failure t ON t.organization_id = a.organization_id AND t.endpoint_id = a.endpoint_id AND t.day = a.day
GROUP BY a.organization_id, a.endpoint_id, a.day
