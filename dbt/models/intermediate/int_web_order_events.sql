{#- One order_completed event per web order: a web order reported twice (a replayed event
    with a new messageId) is one order, represented by its first event. Read by int_orders
    and int_order_lines, so both agree on which event stands for the order. The identify traits
    (email, names, phone) are left out: orders need the person, not their PII. -#}

with web_events as (
    select * from {{ ref('stg_web__events') }}
    where event_name = 'order_completed' and order_id is not null
),

ranked as (
    select
        web_events.*,
        row_number() over (partition by source, order_id order by occurred_at, message_id) as order_event_rank
    from web_events
),

final as (
    -- consent_* are only set on consent_updated events; the identify traits (email, names, phone)
    -- are PII; group_id is the account of group calls, never an order's. Listed, not `* exclude`:
    -- Spark SQL has no such form.
    select
        message_id, source, event_type, event_name, anonymous_id, user_id,
        page_url, page_path, utm_source, utm_medium, utm_campaign, link_tracking_id,
        product_id, product_category, product_price, product_quantity, cart_id,
        order_id, order_revenue, order_discount, order_products, search_query,
        occurred_at, loaded_at, load_id, landed_file, landed_row
    from ranked
    where order_event_rank = 1
)

select * from final
