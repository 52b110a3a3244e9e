{#- Per person: order statistics, RFM scores and segment, and lifecycle stage at as_of.
    Everyone in the golden record is here; people without orders get zeros, null scores and
    lifecycle stage never_purchased. Thresholds are dbt vars (see dbt_project.yml). -#}

with people as (
    select person_id from {{ ref('stg_identity__golden') }}
),

orders as (
    select * from {{ ref('int_orders') }}
    where person_id is not null
),

-- Returns and cancellations are no orders, but pay money back: revenue is net of them. Summed
-- in integer cents (money_cents): exact, so equal revenues rank as ties on every engine.
order_stats as (
    select
        person_id,
        count(*) filter (where not coalesce(is_return, false)) as order_count,
        sum({{ money_cents('order_total') }}) as revenue_cents,
        min(case when not coalesce(is_return, false) then ordered_at end) as first_order_at,
        max(case when not coalesce(is_return, false) then ordered_at end) as last_order_at
    from orders
    group by person_id
    having sum(case when coalesce(is_return, false) then 0 else 1 end) > 0
),

purchasers as (
    select
        order_stats.*,
        {{ days_before_as_of('first_order_at') }} as days_since_first_order,
        {{ days_before_as_of('last_order_at') }} as recency_days
    from order_stats
),

-- Ranked worst to best: long ago / few orders / little revenue score 1.
scored as (
    select
        purchasers.*,
        {{ quintile_score('recency_days desc') }} as r_score,
        {{ quintile_score('order_count') }} as f_score,
        {{ quintile_score('revenue_cents') }} as m_score
    from purchasers
),

final as (
    select
        people.person_id,
        coalesce(scored.order_count, 0) as order_count,
        {{ cents_to_money('coalesce(scored.revenue_cents, 0)') }} as revenue,
        {{ cents_average('scored.revenue_cents', 'scored.order_count') }} as avg_order_value,
        scored.first_order_at,
        scored.last_order_at,
        scored.days_since_first_order,
        scored.recency_days,
        scored.r_score,
        scored.f_score,
        scored.m_score,
        cast(scored.r_score as {{ dbt.type_string() }})
            || cast(scored.f_score as {{ dbt.type_string() }})
            || cast(scored.m_score as {{ dbt.type_string() }}) as rfm_score,
        case
            when scored.r_score is null then null
            when scored.r_score = 5 and scored.f_score >= 4 then 'champions'
            when scored.r_score >= 3 and scored.f_score >= 4 then 'loyal'
            when scored.r_score >= 4 and scored.f_score >= 2 then 'potential_loyalist'
            when scored.r_score = 5 then 'new_customer'
            when scored.r_score = 4 then 'promising'
            when scored.r_score = 3 and scored.f_score = 3 then 'need_attention'
            when scored.r_score = 3 then 'about_to_sleep'
            when scored.f_score = 5 then 'cant_lose'
            when scored.f_score >= 3 then 'at_risk'
            when scored.r_score = 2 then 'hibernating'
            else 'lost'
        end as rfm_segment,
        case
            when scored.person_id is null then 'never_purchased'
            when scored.days_since_first_order <= {{ var('lifecycle_new_days') }} then 'new'
            when scored.recency_days <= {{ var('lifecycle_active_days') }} then 'active'
            when scored.recency_days <= {{ var('lifecycle_lapsing_days') }} then 'lapsing'
            else 'lapsed'
        end as lifecycle_stage
    from people
    left join scored on scored.person_id = people.person_id
)

select * from final
