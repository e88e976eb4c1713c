-- Who used a seat of each organization at the as-of date (keel_membership_is_active).
SELECT organization_id, user_id, membership_id
FROM {{ ref('int_membership_history') }}
WHERE keel_valid_on(valid_from, valid_to, (SELECT as_of FROM {{ ref('keel_params') }}))
  AND keel_membership_is_active(status)
