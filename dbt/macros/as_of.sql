{#- The run's reference time as a SQL timestamp literal (naive UTC).

    The value: var('as_of') when set (by hand, or a unit test's override), else the environment
    variable TESSERA_AS_OF (what `cdp run` sets for its dbt invocations), else the time this dbt
    invocation started (UTC). 'YYYY-MM-DD' -> the end of that day (23:59:59), like cdp.yaml's
    `as_of`; 'YYYY-MM-DD HH:MM[:SS]' (a 'T' separator and a trailing 'Z' / '+00:00' are accepted)
    -> that UTC time; empty / 'now' -> the invocation's start.
    Every model filters its event times with this, so the whole project can run as of a past date.

    Read only when a node is executed, never while dbt parses: dbt throws its partial-parse state
    away when a --vars value changes (and re-parses every file that read a changed env var while
    parsing), so an as_of passed that way made every run with a new as_of re-parse the project.
    While parsing, the value is a placeholder that no parse result depends on. -#}
{% macro as_of_value() -%}
    {%- if not execute -%}{{ return('1970-01-01 00:00:00') }}{%- endif -%}
    {%- set raw = var('as_of', '') -%}
    {%- set value = ('' if raw is none else (raw | string | trim)) -%}
    {%- if value == '' -%}
        {%- set raw = env_var('TESSERA_AS_OF', '') -%}
        {%- set value = raw | string | trim -%}
    {%- endif -%}
    {%- if value in ('', 'now', 'None', 'none', 'null') -%}
        {{ return(run_started_at.strftime('%Y-%m-%d %H:%M:%S')) }}
    {%- endif -%}
    {%- set value = value.replace('T', ' ') -%}
    {%- if value.endswith('Z') -%}{%- set value = value[:-1] -%}{%- endif -%}
    {%- if value.endswith('+00:00') -%}{%- set value = value[:-6] -%}{%- endif -%}
    {%- if not modules.re.match('^\\d{4}-\\d{2}-\\d{2}( \\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?)?$', value) -%}
        {{ exceptions.raise_compiler_error("as_of (var 'as_of' or TESSERA_AS_OF) must be empty, 'now', YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS' (UTC); got '" ~ raw ~ "'") }}
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
