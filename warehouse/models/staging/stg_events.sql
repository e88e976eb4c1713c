-- name: stg_events
-- grain: one row per event (organization_id, message_id), deduplicated
-- key: organization_id, message_id
-- description: Product events from the lake, renamed and cast; a key exported twice counts once.
-- columns:
--   organization_id: the organization the event belongs to
--   message_id: the client's dedupe key (unique per organization)
--   event: the event name, e.g. report.exported
--   user_id: the identified user, when known
--   anonymous_id: the device or browser id, when the user is not identified
--   occurred_at: when it happened (UTC, clock-skew corrected)
--   day: occurred_at's UTC date
--   received_at: when Keel received it
--   properties: the event's properties (JSON text)
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
    FROM {events}
)
WHERE copy_number = 1
