{#- Product views and cart adds on the web, attached to people (the same rule as sessions:
    userId's person, else the device's), with the product's catalog category and the session
    they happened in. Read by declarative segments ("viewed electronics 3 times in 7 days") and
    by recommendations (products viewed together in a session). -#}

with events as (
    select * from {{ ref('stg_web__events') }}
    where event_name in ('product_viewed', 'product_added') and product_id is not null
),

graph as (
    select * from {{ ref('stg_identity__graph') }}
),

sessions as (
    select session_id, person_id, started_at, ended_at
    from {{ ref('int_web_sessions') }}
    where person_id is not null
),

products as (
    select sku, category from {{ ref('stg_catalog__products') }}
),

attributed as (
    select
        events.message_id,
        events.source,
        events.event_name,
        events.product_id as sku,
        events.product_category,
        events.cart_id,
        events.occurred_at,
        {{ web_person_id() }} as person_id
    from events
    {{ join_web_person('events') }}
),

final as (
    select
        attributed.source || ':' || attributed.message_id as product_event_key,
        attributed.person_id,
        sessions.session_id,
        attributed.event_name,
        attributed.sku,
        coalesce(products.category, attributed.product_category) as category,
        attributed.cart_id,
        attributed.occurred_at
    from attributed
    -- A person's sessions do not overlap, so an event falls in exactly one of them.
    inner join sessions
        on sessions.person_id = attributed.person_id
        and attributed.occurred_at >= sessions.started_at
        and attributed.occurred_at <= sessions.ended_at
    left join products on products.sku = attributed.sku
    where attributed.person_id is not null
)

select * from final
