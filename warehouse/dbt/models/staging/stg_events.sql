SELECT organization_id, message_id, event, user_id, anonymous_id, occurred_at, day, received_at, properties
FROM (
    SELECT
        organization_id,
        message_id,
        event,
        user_id,
        anonymous_id,
        "timestamp" AS occurred_at,
        CAST("timestamp" AS DATE) AS day,
        received_at,
        properties,
        row_number() OVER (PARTITION BY organization_id, message_id ORDER BY ingest_seq) AS copy_number
    FROM {{ source('lake', 'events') }}
)
WHERE copy_number = 1
