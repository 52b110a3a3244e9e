{#- A source that may not exist yet (e.g. segments.* before the declarative segments asset has
    ever run, or a `dbt build` by hand): the source when it is there, else `empty_select`, a
    query with the same columns and no rows. The source() call keeps the lineage either way. -#}
{% macro optional_source(source_name, table_name, empty_select) -%}
    {%- set relation = source(source_name, table_name) -%}
    {%- if execute and load_relation(relation) is none -%}
        ({{ empty_select }})
    {%- else -%}
        {{ relation }}
    {%- endif -%}
{%- endmacro %}
