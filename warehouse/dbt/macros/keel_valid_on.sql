{#- A history row (valid_from, valid_to: a null bound is open) describes the day. Created as a DuckDB
    macro by on-run-start, beside the business rules, so analysts can call it too. -#}
{% macro keel_valid_on_macro() -%}
CREATE OR REPLACE MACRO keel_valid_on(valid_from, valid_to, day) AS
    ((valid_from IS NULL OR day >= valid_from) AND (valid_to IS NULL OR day < valid_to))
{%- endmacro %}
