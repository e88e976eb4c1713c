-- Organizations as Keel knows them (the latest snapshot), with the vendor's id for them, the plan of
-- their current subscription (int_current_subscriptions: the one rule) and their latest traits.
SELECT
    o.organization_id, o.name, o.slug, o.status, o.created_at, o.deleted_at,
    keel_org_is_live(o.deleted_at) AS is_live,
    o.external_id,
    s.plan, s.status AS billing_status, s.seats,
    coalesce(o.traits, '{}') AS traits
FROM {{ ref('stg_organizations') }} o
LEFT JOIN {{ ref('int_current_subscriptions') }} s USING (organization_id)
