-- Each person trait's value over time, from identify calls (stg_person_trait_changes), as
-- int_org_trait_history does for organizations: a call sets the traits it names and leaves the
-- others; a value holds from the UTC day it was set (the day's last call wins) until the day another
-- value was set; read it as of a day with keel_valid_on. A person is as dim_people counts them: the
-- calls of an id an alias (or an identify with both ids) merged into a user id are that user's.
WITH changes AS (
    SELECT c.organization_id, coalesce(a.user_id, c.user_id) AS user_id, c.changed_at, c.message_id, c.traits
    FROM {{ ref('stg_person_trait_changes') }} c
    LEFT JOIN {{ ref('stg_identity_aliases') }} a ON a.organization_id = c.organization_id AND a.previous_id = c.user_id
),
{{ keel_trait_history('changes', ['organization_id', 'user_id']) }}
