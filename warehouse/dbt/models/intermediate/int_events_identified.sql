-- Events with the user id an alias call merged their id into (identity_aliases: an earlier id,
-- the user id when the event has one, else its anonymous id), so that keel_active_user counts an
-- anonymous id aliased to a user as that user.
SELECT e.organization_id, e.message_id, e.event, e.user_id, e.anonymous_id, a.user_id AS aliased_user_id, e.day
FROM {{ ref('stg_events') }} e
LEFT JOIN {{ ref('stg_identity_aliases') }} a
    ON a.organization_id = e.organization_id AND a.previous_id = coalesce(e.user_id, e.anonymous_id)
