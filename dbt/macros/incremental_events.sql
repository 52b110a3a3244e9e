{#- Event-grain staging tables built incrementally from an append-only raw table.

    A run re-stages only the raw keys that can have changed since the table was last built: keys
    with a row loaded after the newest `loaded_at` in the table (new loads: a load's rows share
    its transaction's time, and loads never overlap a dbt build) or with a row that happened after
    the newest `occurred_at` in the table (rows an earlier, smaller as_of left out). For those keys the model recomputes from ALL their raw
    rows, so de-duplication (first or latest delivery) picks what a full build picks; the pre-hook
    first deletes their rows and every row after this run's as_of (an as_of moved back). Every
    other key's raw rows were all there at the last build and happened before its as_of, so its
    row cannot differ. `dbt build --full-refresh` rebuilds from scratch; a test keeps the two equal.

    Both thresholds are read from the table when the model is compiled, which dbt does before the
    materialization runs the pre-hook, so the delete and the insert see the same window.

    On Spark (dbt-spark, the `default__` path) the models stay plain tables: deleting rows needs
    Delta, and a full rebuild is always correct. -#}

{#- The materialization of an event staging model: incremental where rows can be deleted. -#}
{% macro event_staging_materialization() -%}
    {{ return(adapter.dispatch('event_staging_materialization')()) }}
{%- endmacro %}
{% macro default__event_staging_materialization() -%}
    {{ return('table') }}
{%- endmacro %}
{% macro duckdb__event_staging_materialization() -%}
    {{ return('incremental') }}
{%- endmacro %}

{#- SQL condition on raw columns: the row belongs to the re-stage window (see above). -#}
{% macro restage_window_condition(raw_loaded_at, raw_occurred_at) -%}
    {%- set window = none -%}
    {%- if execute and is_incremental() -%}
        {%- set window = run_query("select cast(max(loaded_at) as " ~ dbt.type_string() ~ "), cast(max(occurred_at) as "
                                   ~ dbt.type_string() ~ ") from " ~ this).rows[0] -%}
    {%- endif -%}
    {%- if window is none or window[0] is none -%}
        true
    {%- else -%}
        (cast({{ raw_loaded_at }} as {{ dbt.type_timestamp() }}) > cast('{{ window[0] }}' as {{ dbt.type_timestamp() }})
         or cast({{ raw_occurred_at }} as {{ dbt.type_timestamp() }}) > cast('{{ window[1] or window[0] }}' as {{ dbt.type_timestamp() }}))
    {%- endif -%}
{%- endmacro %}

{#- The raw rows to stage: all of them on a full build, else every raw row of a key in the window. -#}
{% macro raw_rows_to_stage(raw_table, raw_keys, raw_loaded_at, raw_occurred_at) -%}
    {%- set relation = source('raw', raw_table) -%}
    select * from {{ relation }}
    {%- if is_incremental() %}
    where ({{ raw_keys | join(', ') }}) in (
        select {{ raw_keys | join(', ') }} from {{ relation }}
        where {{ restage_window_condition(raw_loaded_at, raw_occurred_at) }})
    {%- endif %}
{%- endmacro %}

{#- Pre-hook: delete the rows about to be re-staged, and every row after this run's as_of. -#}
{% macro forget_restaged_rows(raw_table, raw_keys, keys, raw_loaded_at, raw_occurred_at) -%}
    {%- if is_incremental() -%}
    {%- set relation = source('raw', raw_table) -%}
    delete from {{ this }}
    where occurred_at > {{ as_of() }}
       or ({{ keys | join(', ') }}) in (
           select {{ raw_keys | join(', ') }} from {{ relation }}
           where {{ restage_window_condition(raw_loaded_at, raw_occurred_at) }})
    {%- endif -%}
{%- endmacro %}

{#- Pre-hook: record the keys about to be re-staged, for the build's data tests
    (macros/test_scope.sql); a whole build drops the record. Run before the delete: the window is
    read from the table as the last build left it, as the delete's and the insert's are. -#}
{% macro record_restaged_keys(raw_table, raw_keys, keys, raw_loaded_at, raw_occurred_at) -%}
    {%- if is_incremental() -%}
    {%- set relation = source('raw', raw_table) -%}
    {%- set keys_sql -%}
    select distinct {% for raw_key in raw_keys %}{{ raw_key }} as {{ keys[loop.index0] }}{% if not loop.last %}, {% endif %}{% endfor %}
    from {{ relation }}
    where {{ restage_window_condition(raw_loaded_at, raw_occurred_at) }}
    {%- endset -%}
    {{ record_rebuilt_keys(keys_sql) }}
    {%- else -%}
    {{ record_rebuilt_keys(none) }}
    {%- endif -%}
{%- endmacro %}
