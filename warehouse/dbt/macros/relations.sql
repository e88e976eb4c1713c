{#- Models name what they read without the database: a view of the warehouse then reads the file it
    is in under any name (a copy an analyst takes, the file swapped in after the build), not the
    catalog name of the file dbt built. -#}
{% macro ref() %}
  {% do return(builtins.ref(*varargs, **kwargs).include(database=false)) %}
{% endmacro %}

{% macro source(source_name, table_name) %}
  {% do return(builtins.source(source_name, table_name).include(database=false)) %}
{% endmacro %}
