{# Generated from warehouse/rules.py by `python -m warehouse.dbt_project`: do not edit. #}
{% macro keel_rules() -%}
CREATE OR REPLACE MACRO keel_org_is_live(deleted_at) AS (deleted_at IS NULL);
CREATE OR REPLACE MACRO keel_subscription_is_ended(status) AS (status IN ('canceled', 'incomplete_expired'));
CREATE OR REPLACE MACRO keel_subscription_is_in_good_standing(status) AS (status IN ('trialing', 'active', 'past_due'));
CREATE OR REPLACE MACRO keel_subscription_rank(status, created, subscription_id) AS (row(NOT (status IN ('canceled', 'incomplete_expired')), created, subscription_id));
CREATE OR REPLACE MACRO keel_membership_is_active(status) AS (status = 'active');
CREATE OR REPLACE MACRO keel_over_seat_limit(status, active_members, seats) AS (coalesce((status IN ('trialing', 'active', 'past_due')) AND active_members > seats, false));
CREATE OR REPLACE MACRO keel_active_user(user_id, anonymous_id, aliased_user_id) AS (coalesce(aliased_user_id, user_id));
CREATE OR REPLACE MACRO keel_in_trailing_days(day, as_of, days) AS (day > as_of - days AND day <= as_of);
CREATE OR REPLACE MACRO keel_in_mau_window(day, as_of) AS ((day > as_of - 30 AND day <= as_of))
{%- endmacro %}
