SELECT
    id AS attempt_id, organization_id, endpoint_id, delivery_id, event_type, attempt_number, started_at,
    CAST(started_at AS DATE) AS day, duration_ms, status_code, error_class,
    coalesce(status_code BETWEEN 200 AND 299, false) AS succeeded
FROM (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY seq) AS copy_number FROM {{ source('lake', 'webhook_attempts') }}
)
WHERE copy_number = 1
