{{ config(tags=['after_scoring']) }}

{#- Published model metrics: validation metrics per model and candidate, calibration deciles. -#}

with metrics as (
    select * from {{ source('scoring', 'model_metrics') }}
),

final as (
    select
        model,
        metric,
        cast(value as double) as value,
        dataset,
        algorithm,
        selected,
        cast(bin as {{ dbt.type_int() }}) as bin,
        model_version,
        {{ as_of() }} as as_of
    from metrics
)

select * from final
