{{ config(tags=['after_scoring']) }}

{#- Published churn scores: the scoring stage's predictions for every recent buyer. -#}

with predictions as (
    select * from {{ source('scoring', 'churn_predictions') }}
),

customers as (
    select person_id from {{ ref('customers') }}
),

final as (
    select
        predictions.person_id,
        cast(predictions.churn_probability as double) as churn_probability,
        predictions.risk_tier,
        predictions.model_version,
        predictions.top_reasons,
        {{ as_of() }} as as_of
    from predictions
    inner join customers on customers.person_id = predictions.person_id
)

select * from final
