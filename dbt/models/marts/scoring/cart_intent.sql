{{ config(tags=['after_scoring']) }}

{#- Published cart intent: each person's latest open cart, scored at as_of. -#}

with predictions as (
    select * from {{ source('scoring', 'cart_predictions') }}
),

customers as (
    select person_id from {{ ref('customers') }}
),

final as (
    select
        predictions.person_id,
        predictions.cart_id,
        cast(predictions.cart_value as double) as cart_value,
        predictions.cart_added_at,
        cast(predictions.purchase_probability as double) as purchase_probability,
        predictions.intent_group,
        cast(predictions.expected_return_hours as double) as expected_return_hours,
        predictions.model_version,
        {{ as_of() }} as as_of
    from predictions
    inner join customers on customers.person_id = predictions.person_id
)

select * from final
