{#- Engine-specific SQL lives only here, behind adapter.dispatch: `duckdb__` for the default
    single-machine warehouse and `default__` written for Spark SQL (dbt-spark), so the models
    themselves stay portable. -#}

{#- A JSON field as text (null when absent). `path` is dotted: 'page.url'. -#}
{% macro json_text(expr, path) -%}
    {{ return(adapter.dispatch('json_text')(expr, path)) }}
{%- endmacro %}
{% macro default__json_text(expr, path) -%}
    get_json_object({{ expr }}, '$.{{ path }}')
{%- endmacro %}
{% macro duckdb__json_text(expr, path) -%}
    json_extract_string({{ expr }}, '$.{{ path }}')
{%- endmacro %}

{#- A JSON field as a number. -#}
{% macro json_number(expr, path) -%}
    cast({{ json_text(expr, path) }} as {{ dbt.type_float() }})
{%- endmacro %}

{#- The JSON array held in a JSON field, as JSON text (to store and explode later). -#}
{% macro json_array_text(expr, path) -%}
    {{ return(adapter.dispatch('json_array_text')(expr, path)) }}
{%- endmacro %}
{% macro default__json_array_text(expr, path) -%}
    get_json_object({{ expr }}, '$.{{ path }}')
{%- endmacro %}
{% macro duckdb__json_array_text(expr, path) -%}
    cast(json_extract({{ expr }}, '$.{{ path }}') as {{ dbt.type_string() }})
{%- endmacro %}

{#- Select-list expression: one output row per element of a JSON array (text), each element as JSON text. -#}
{% macro explode_json_array(expr) -%}
    {{ return(adapter.dispatch('explode_json_array')(expr)) }}
{%- endmacro %}
{% macro default__explode_json_array(expr) -%}
    explode(from_json({{ expr }}, 'array<string>'))
{%- endmacro %}
{% macro duckdb__explode_json_array(expr) -%}
    unnest(cast(json_extract(cast({{ expr }} as json), '$[*]') as {{ dbt.type_string() }}[]))
{%- endmacro %}

{#- True when a JSON array of strings holds `value`. -#}
{% macro json_array_contains(expr, value) -%}
    {{ return(adapter.dispatch('json_array_contains')(expr, value)) }}
{%- endmacro %}
{% macro default__json_array_contains(expr, value) -%}
    coalesce(array_contains(from_json({{ expr }}, 'array<string>'), '{{ value }}'), false)
{%- endmacro %}
{% macro duckdb__json_array_contains(expr, value) -%}
    coalesce(list_contains(cast(json_extract({{ expr }}, '$[*]') as {{ dbt.type_string() }}[]), '"{{ value }}"'), false)
{%- endmacro %}

{#- The digits of a string (every non-digit removed). -#}
{% macro digits_only(expr) -%}
    {{ return(adapter.dispatch('digits_only')(expr)) }}
{%- endmacro %}
{% macro default__digits_only(expr) -%}
    regexp_replace({{ expr }}, '[^0-9]', '')
{%- endmacro %}
{% macro duckdb__digits_only(expr) -%}
    regexp_replace({{ expr }}, '[^0-9]', '', 'g')
{%- endmacro %}

{#- The SHA-256 hex digest (lower case) of a string. -#}
{% macro sha256_hex(expr) -%}
    {{ return(adapter.dispatch('sha256_hex')(expr)) }}
{%- endmacro %}
{% macro default__sha256_hex(expr) -%}
    sha2({{ expr }}, 256)
{%- endmacro %}
{% macro duckdb__sha256_hex(expr) -%}
    sha256({{ expr }})
{%- endmacro %}
