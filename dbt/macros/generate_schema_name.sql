{#- Use the configured schema as is (staging, intermediate, marts), not `<target>_<schema>`:
    the layers are the warehouse's public schema names. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
