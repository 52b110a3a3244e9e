{{ config(tags=['after_scoring']) }}

{#- Published recommendations: the scoring stage's lists (scoring/recommend.py - a blend of
    buy-again, co-purchase, co-view, category affinity, trending and ALS candidates ranked by a
    model fitted on a time split of the shop's orders), for the people in `customers`. -#}

with recommendations as (
    select * from {{ source('scoring', 'recommendations') }}
),

customers as (
    select person_id from {{ ref('customers') }}
),

-- Only what the catalog still sells (and a parent of the catalog test, so dbt runs it here).
products as (
    select sku from {{ ref('stg_catalog__products') }}
),

final as (
    select
        recommendations.person_id,
        cast(recommendations.{{ adapter.quote('rank') }} as {{ dbt.type_int() }}) as {{ adapter.quote('rank') }},
        recommendations.sku,
        cast(recommendations.score as double) as score,
        recommendations.reason,
        {{ as_of() }} as as_of
    from recommendations
    inner join customers on customers.person_id = recommendations.person_id
    inner join products on products.sku = recommendations.sku
)

select * from final
