-- name: stg_inbound_events
-- grain: one row per event received from a provider (Stripe), as of the latest daily snapshot
-- key: inbound_event_id
-- description: Events Stripe sent to Keel's webhook receiver and what became of them (payloads stay in Postgres).
-- columns:
--   inbound_event_id: Keel's id for the event
--   source: the provider (stripe)
--   external_id: the provider's event id (evt_...)
--   event_type: e.g. customer.subscription.updated
--   event_created_at: the provider's own time for the event
--   status: received, processed, failed or ignored
--   attempts: how many times Keel processed it
--   last_error: the last processing error
--   duplicates: redeliveries received after the first
--   received_at: when Keel first received it
--   processed_at: when processing last finished
SELECT id AS inbound_event_id, source, external_id, event_type, event_created_at, status, attempts,
       last_error, duplicates, received_at, processed_at
FROM {inbound_events}
WHERE filename = (SELECT max(filename) FROM {inbound_events})
