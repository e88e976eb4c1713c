WITH failures AS (
    SELECT organization_id, endpoint_id, day, coalesce(error_class, 'http_' || status_code) AS error,
           count(*) AS n
    FROM {{ ref('stg_webhook_attempts') }}
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
FROM {{ ref('stg_webhook_attempts') }} a
LEFT JOIN {{ ref('stg_webhook_endpoints') }} e USING (endpoint_id)
LEFT JOIN top_failure t ON t.organization_id = a.organization_id AND t.endpoint_id = a.endpoint_id AND t.day = a.day
GROUP BY a.organization_id, a.endpoint_id, a.day
