SELECT id AS endpoint_id, organization_id, url, event_types, enabled, disabled_reason, disabled_at,
       failing_since, created_at, deleted_at
FROM {{ source('lake', 'webhook_endpoints') }}
WHERE filename = (SELECT max(filename) FROM {{ source('lake', 'webhook_endpoints') }})
