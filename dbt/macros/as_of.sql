{#- The run's reference time as a SQL timestamp literal (naive UTC).

    var('as_of'): empty / 'now' -> the time this dbt invocation started (UTC);
    'YYYY-MM-DD' -> the end of that day (23:59:59), like cdp.yaml's `as_of`;
    'YYYY-MM-DD HH:MM[:SS]' (a 'T' separator and a trailing 'Z' / '+00:00' are accepted) -> that UTC time.
    Every model filters its event times with this, so the whole project can run as of a past date. -#}
{% macro as_of_value() -%}
    {%- set raw = var('as_of', '') -%}
    {%- set value = ('' if raw is none else (raw | string | trim)) -%}
    {%- if value in ('', 'now', 'None', 'none', 'null') -%}
        {{ return(run_started_at.strftime('%Y-%m-%d %H:%M:%S')) }}
    {%- endif -%}
    {%- set value = value.replace('T', ' ') -%}
    {%- if value.endswith('Z') -%}{%- set value = value[:-1] -%}{%- endif -%}
    {%- if value.endswith('+00:00') -%}{%- set value = value[:-6] -%}{%- endif -%}
    {%- if not modules.re.match('^\\d{4}-\\d{2}-\\d{2}( \\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?)?$', value) -%}
        {{ exceptions.raise_compiler_error("var 'as_of' must be empty, 'now', YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS' (UTC); got '" ~ raw ~ "'") }}
    {%- endif -%}
    {%- if value | length == 10 -%}{%- set value = value ~ ' 23:59:59' -%}{%- endif -%}
    {{ return(value) }}
{%- endmacro %}

{% macro as_of() -%}
    cast('{{ as_of_value() }}' as {{ dbt.type_timestamp() }})
{%- endmacro %}

{#- Whole days from `start_expr` to the run's as_of (calendar days, as dbt.datediff counts them).
    A bigint on every engine (DuckDB's datediff is one; Spark's is an int). -#}
{% macro days_before_as_of(start_expr) -%}
    cast({{ dbt.datediff(start_expr, as_of(), 'day') }} as {{ dbt.type_bigint() }})
{%- endmacro %}

{#- True for an event time within the `days` days that end at as_of: (as_of - days, as_of]. -#}
{% macro within_days_of_as_of(ts_expr, days) -%}
    ({{ ts_expr }} > {{ dbt.dateadd('day', -1 * days, as_of()) }} and {{ ts_expr }} <= {{ as_of() }})
{%- endmacro %}
