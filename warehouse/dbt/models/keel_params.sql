SELECT
    {% if var('as_of') %}CAST('{{ var("as_of") }}' AS DATE){% else %}CAST(timezone('UTC', now()) AS DATE){% endif %} AS as_of,
    now() AS built_at
