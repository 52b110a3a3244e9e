{{ config(tags=['after_scoring']) }}

{#- Published next-best-offer: one row per contactable person (rules in scoring/offers.py). -#}

with decisions as (
    select * from {{ source('scoring', 'offer_decisions') }}
),

customers as (
    select person_id from {{ ref('customers') }}
),

final as (
    select
        decisions.person_id,
        decisions.offer,
        decisions.channel,
        cast(decisions.expected_value as double) as expected_value,
        decisions.reason_codes,
        decisions.holdout,
        decisions.experiment,
        cast(decisions.arm as string) as arm,
        decisions.assigned_offer,
        cast(decisions.assigned_expected_value as double) as assigned_expected_value,
        decisions.cart_id,
        decisions.sku,
        {{ as_of() }} as as_of
    from decisions
    inner join customers on customers.person_id = decisions.person_id
)

select * from final
