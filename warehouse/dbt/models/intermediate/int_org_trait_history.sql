-- Each organization trait's value over time, from group calls (stg_org_trait_changes): a call sets
-- the traits it names and leaves the others. A value holds from the UTC day it was set (the day's
-- last call wins) until the day another value was set; read it as of a day with keel_valid_on.
WITH changes AS (
    SELECT organization_id, changed_at, message_id, traits FROM {{ ref('stg_org_trait_changes') }}
),
{{ keel_trait_history('changes', ['organization_id']) }}
