{#- A key of several columns is unique: the rows returned are its duplicated values. -#}
{% test keel_unique_key(model, columns) %}
SELECT {{ columns | join(', ') }}, count(*) AS copies
FROM {{ model }}
GROUP BY {{ columns | join(', ') }}
HAVING count(*) > 1
{% endtest %}
