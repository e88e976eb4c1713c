-- Each organization trait's value over time, from group calls (stg_org_trait_changes): a call sets
-- the traits it names and leaves the others. A value holds from the UTC day it was set (the day's
-- last call wins) until the day another value was set; read it as of a day with keel_valid_on.
WITH settings AS (
    SELECT organization_id, changed_at, message_id, unnest(json_keys(traits)) AS trait, traits
    FROM {{ ref('stg_org_trait_changes') }}
    WHERE json_type(traits) = 'OBJECT'
),
daily AS (
    SELECT
        organization_id, trait, CAST(changed_at AS DATE) AS valid_from,
        arg_max(json_extract_string(traits, '$."' || replace(trait, '"', '\"') || '"'), row(changed_at, message_id)) AS value
    FROM settings
    GROUP BY organization_id, trait, CAST(changed_at AS DATE)
)
SELECT
    organization_id, trait, value, valid_from,
    lead(valid_from) OVER (PARTITION BY organization_id, trait ORDER BY valid_from) AS valid_to
FROM daily
