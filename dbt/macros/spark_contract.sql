{#- Model contracts on Spark. The YAML declares DuckDB's types (the warehouse's default engine,
    and the published DuckDB snapshot's); dbt checks a contract by casting nulls to the declared
    types on the target engine, and Spark has no `varchar` without a length nor `hugeint` (DuckDB's
    sum of integers; Spark's is a bigint). So on Spark the declared type is read as Spark's own
    name for it; DuckDB's check is dbt's, unchanged. -#}
{% macro spark_type_of(data_type) -%}
    {%- set t = data_type.strip().lower() -%}
    {{- {'varchar': 'string', 'text': 'string', 'hugeint': 'bigint'}.get(t, t) -}}
{%- endmacro %}

{% macro spark__get_empty_schema_sql(columns) %}
    {%- set translated = {} -%}
    {%- for name in columns -%}
        {%- set col = columns[name] -%}
        {%- set copy = {} -%}
        {%- do copy.update(col) -%}
        {%- if col.get('data_type') is not none -%}{%- do copy.update({'data_type': spark_type_of(col['data_type'])}) -%}{%- endif -%}
        {%- do translated.update({name: copy}) -%}
    {%- endfor -%}
    {{ return(default__get_empty_schema_sql(translated)) }}
{% endmacro %}
