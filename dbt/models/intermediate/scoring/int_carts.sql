{#- One row per web cart (the cart_id carried by product_added / checkout_started /
    order_completed events): who it belongs to, when items were added, its value, and when it
    was ordered (null when never). A cart ordered more than var('session_timeout_minutes') after
    its last add was abandoned and came back: `return_gap_hours` is that gap, the raw material
    for the expected return window. -#}

with events as (
    select * from {{ ref('stg_web__events') }}
    where cart_id is not null
        and event_name in ('product_added', 'checkout_started', 'order_completed')
),

graph as (
    select * from {{ ref('stg_identity__graph') }}
),

attributed as (
    select
        events.cart_id,
        events.event_name,
        events.occurred_at,
        events.product_id,
        {{ money_cents('coalesce(events.product_price, 0) * coalesce(events.product_quantity, 1)') }} as line_cents,
        {{ web_person_id() }} as person_id
    from events
    {{ join_web_person('events') }}
),

carts as (
    select
        cart_id,
        max(person_id) as person_id,
        min(case when event_name = 'product_added' then occurred_at end) as first_added_at,
        max(case when event_name = 'product_added' then occurred_at end) as last_added_at,
        sum(case when event_name = 'product_added' then 1 else 0 end) as items_added,
        sum(case when event_name = 'product_added' then line_cents else 0 end) as cart_cents,
        min(case when event_name = 'checkout_started' then occurred_at end) as checkout_started_at,
        min(case when event_name = 'order_completed' then occurred_at end) as ordered_at
    from attributed
    group by cart_id
),

final as (
    select
        cart_id,
        person_id,
        first_added_at,
        last_added_at,
        items_added,
        {{ cents_to_money('cart_cents') }} as cart_value,  -- summed in cents: exact on every engine
        checkout_started_at,
        ordered_at,
        case
            when ordered_at is not null
                and {{ dbt.datediff('last_added_at', 'ordered_at', 'second') }} > {{ var('session_timeout_minutes') * 60 }}
            then cast({{ dbt.datediff('last_added_at', 'ordered_at', 'second') }} as double) / 3600.0  -- DOUBLE on both engines (DECIMAL on Spark uncast)
        end as return_gap_hours
    from carts
    where last_added_at is not null
)

select * from final
