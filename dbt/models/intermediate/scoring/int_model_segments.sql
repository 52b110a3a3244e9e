{{ config(tags=['after_scoring']) }}

{#- Built-in segments from the models: `high_churn_risk` (churn risk tier high) and one per
    cart-intent group (`cart_intent_likely`, `cart_intent_on_the_fence`, `cart_intent_unlikely`).
    Same columns as int_segment_membership, which unions them in. -#}

with churn_scores as (
    select * from {{ ref('churn_scores') }}
),

cart_intent as (
    select * from {{ ref('cart_intent') }}
),

final as (
    select 'high_churn_risk' as segment, 'churn' as segment_type, person_id
    from churn_scores
    where risk_tier = 'high'
    union all
    select 'cart_intent_' || intent_group as segment, 'cart_intent' as segment_type, person_id
    from cart_intent
)

select * from final
