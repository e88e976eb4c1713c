SELECT id AS inbound_event_id, source, external_id, event_type, event_created_at, status, attempts,
       last_error, duplicates, received_at, processed_at
FROM {{ source('lake', 'inbound_events') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'inbound_events') }})
