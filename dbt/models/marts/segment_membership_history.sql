{#- Entries into and exits from every segment, as spells: one row per stay of a person in a
    segment, opened (entered_at) by the first run that found them in it and closed (exited_at) by
    the first run that did not. Each run compares int_segment_membership with the open spells:
    new members open a spell, members still there keep theirs, members gone close theirs.
    Reverse-ETL syncs read entries and exits from here.

    Time only moves forward: a run whose as_of is not later than the latest recorded run changes
    nothing (a backtest does not rewrite history). Never dropped by --full-refresh. -#}

{#- Spark: closing a spell updates a row, which needs MERGE, which dbt-spark has only on a table
    format with a log (delta, iceberg, hudi: the dbt var spark_file_format, for a cluster that has
    one). On plain Parquet (pyspark's own, local) the first build writes the table and a later
    one stops with that reason rather than duplicate spells. -#}
{%- set spark_format = var('spark_file_format', 'parquet') if target.type == 'spark' else none -%}
{%- set spark_parquet = spark_format not in (none, 'delta', 'iceberg', 'hudi') -%}
{{ config(
    materialized='incremental',
    tags=['after_scoring'],
    unique_key='spell_key',
    incremental_strategy=('append' if spark_parquet else ('merge' if target.type in ('spark', 'databricks') else 'delete+insert')),
    full_refresh=false,
    on_schema_change='fail',
) }}
{%- if spark_parquet and is_incremental() -%}
    {{ exceptions.raise_compiler_error("segment_membership_history: updating spells needs MERGE, which Spark has only on "
        ~ "delta/iceberg/hudi tables; set the dbt var spark_file_format (README 'Running on Spark'), or drop the "
        ~ "table to start its history again on Parquet") }}
{%- endif %}

-- Built-in and declarative segments alike.
with members as (
    select segment, segment_type, person_id from {{ ref('int_segment_membership') }}
    union all
    select segment, segment_type, person_id from {{ ref('int_model_segments') }}
    union all
    select segment, segment_type, person_id from {{ ref('int_declarative_segment_membership') }}
),

{% if is_incremental() %}

recorded as (
    select * from {{ this }}
),

open_spells as (
    select * from recorded where exited_at is null
),

-- 1 when this run is later than every run recorded so far.
run_moves_forward as (
    select case when max(last_evaluated_at) is null or max(last_evaluated_at) < {{ as_of() }} then 1 else 0 end as moves_forward
    from recorded
),

{% else %}

open_spells as (
    select
        cast(null as {{ dbt.type_string() }}) as spell_key,
        cast(null as {{ dbt.type_string() }}) as segment,
        cast(null as {{ dbt.type_string() }}) as segment_type,
        cast(null as {{ dbt.type_string() }}) as person_id,
        cast(null as {{ dbt.type_timestamp() }}) as entered_at,
        cast(null as {{ dbt.type_timestamp() }}) as exited_at,
        cast(null as {{ dbt.type_timestamp() }}) as last_evaluated_at
    from members
    where 1 = 0
),

run_moves_forward as (
    select 1 as moves_forward
),

{% endif %}

continuing as (
    select
        open_spells.spell_key,
        open_spells.segment,
        open_spells.segment_type,
        open_spells.person_id,
        open_spells.entered_at,
        cast(null as {{ dbt.type_timestamp() }}) as exited_at
    from open_spells
    inner join members
        on members.segment = open_spells.segment and members.person_id = open_spells.person_id
),

exited as (
    select
        open_spells.spell_key,
        open_spells.segment,
        open_spells.segment_type,
        open_spells.person_id,
        open_spells.entered_at,
        {{ as_of() }} as exited_at
    from open_spells
    left join members
        on members.segment = open_spells.segment and members.person_id = open_spells.person_id
    where members.person_id is null
),

entered as (
    select
        {{ dbt.hash(dbt.concat(["members.segment", "'|'", "members.person_id", "'|'", "'" ~ as_of_value() ~ "'"])) }} as spell_key,
        members.segment,
        members.segment_type,
        members.person_id,
        {{ as_of() }} as entered_at,
        cast(null as {{ dbt.type_timestamp() }}) as exited_at
    from members
    left join open_spells
        on open_spells.segment = members.segment and open_spells.person_id = members.person_id
    where open_spells.person_id is null
),

changes as (
    select * from continuing
    union all
    select * from exited
    union all
    select * from entered
),

final as (
    select
        spell_key,
        segment,
        segment_type,
        person_id,
        entered_at,
        exited_at,
        {{ as_of() }} as last_evaluated_at
    from changes
    where (select moves_forward from run_moves_forward) = 1
)

select * from final
