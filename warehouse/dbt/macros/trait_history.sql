{#- Traits over time as validity ranges, from a relation `changes` (a CTE the model defines before
    calling this) of trait calls: the `keys` columns naming whose traits they are, `changed_at`,
    `message_id` and `traits` (a JSON object). A call sets the traits it names and leaves the
    others; a value holds from the UTC day it was set (the day's last call wins, ties broken by
    message id) until the day another value was set. Values as text (JSON for objects and arrays).
    Emits CTEs after the model's own (`WITH changes AS (...), {{ keel_trait_history(...) }}`) and
    the final SELECT: one definition for organizations' and people's trait histories. -#}
{% macro keel_trait_history(changes, keys) -%}
{%- set k = keys | join(', ') -%}
trait_settings AS (
    SELECT {{ k }}, changed_at, message_id, unnest(json_keys(traits)) AS trait, traits
    FROM {{ changes }}
    WHERE json_type(traits) = 'OBJECT'
),
trait_days AS (
    SELECT
        {{ k }}, trait, CAST(changed_at AS DATE) AS valid_from,
        arg_max(json_extract_string(traits, '$."' || replace(trait, '"', '\"') || '"'), row(changed_at, message_id)) AS value
    FROM trait_settings
    GROUP BY {{ k }}, trait, CAST(changed_at AS DATE)
)
SELECT
    {{ k }}, trait, value, valid_from,
    lead(valid_from) OVER (PARTITION BY {{ k }}, trait ORDER BY valid_from) AS valid_to
FROM trait_days
{%- endmacro %}
