{#- The goods people bought and kept, line by line, for the orders in int_orders: a web order's
    lines come from its order_completed event's products (its POS copy's lines are the same goods
    and are not repeated); a POS order's lines are its receipt lines.

    Returns are netted out, not listed: a return line (negative quantity, on a return or
    cancellation receipt) takes back the same person's latest purchases of that sku, so an item
    bought and returned is not "bought" for categories, recommendations or offers. (Revenue nets
    returns in int_orders' totals.) Non-product codes (postage, fees) are no goods bought. -#}

with orders as (
    select * from {{ ref('int_orders') }}
),

web_order_events as (
    select * from {{ ref('int_web_order_events') }}
),

pos_line_items as (
    select * from {{ ref('stg_pos__line_items') }}
),

products as (
    select * from {{ ref('stg_catalog__products') }}
),

web_products as (
    select
        orders.order_key,
        {{ explode_json_array('web_order_events.order_products') }} as product_json
    from orders
    inner join web_order_events
        on orders.order_source = 'web'
        and web_order_events.source = orders.source
        and web_order_events.order_id = orders.order_id
),

web_lines as (
    select
        order_key,
        coalesce({{ json_text('product_json', 'sku') }}, {{ json_text('product_json', 'product_id') }}) as sku,
        cast(coalesce({{ json_number('product_json', 'quantity') }}, 1) as {{ dbt.type_int() }}) as quantity,
        {{ json_number('product_json', 'price') }} as unit_price,
        cast(0 as {{ dbt.type_float() }}) as discount
    from web_products
),

web_lines_numbered as (
    select
        order_key,
        cast(row_number() over (partition by order_key order by sku, unit_price, quantity) as {{ dbt.type_int() }}) as line_no,
        sku,
        quantity,
        unit_price,
        discount
    from web_lines
),

pos_lines as (
    select
        orders.order_key,
        cast(pos_line_items.line_no as {{ dbt.type_int() }}) as line_no,
        pos_line_items.sku,
        cast(pos_line_items.quantity as {{ dbt.type_int() }}) as quantity,
        pos_line_items.unit_price,
        pos_line_items.discount
    from orders
    inner join pos_line_items
        on orders.order_source = 'pos'
        and pos_line_items.source = orders.source
        and pos_line_items.transaction_id = orders.order_id
),

all_lines as (
    select * from web_lines_numbered
    union all
    select * from pos_lines
),

with_orders as (
    select all_lines.*, orders.person_id, orders.ordered_at
    from all_lines
    inner join orders on orders.order_key = all_lines.order_key
),

returned as (
    select person_id, sku, -sum(quantity) as returned_quantity
    from with_orders
    where quantity < 0 and person_id is not null
    group by person_id, sku
),

-- Latest purchases first: what was returned is taken from them until it is used up.
kept as (
    select
        with_orders.*,
        greatest(
            with_orders.quantity - greatest(
                coalesce(returned.returned_quantity, 0) - coalesce(sum(with_orders.quantity) over (
                    partition by with_orders.person_id, with_orders.sku
                    order by with_orders.ordered_at desc, with_orders.order_key desc, with_orders.line_no desc
                    rows between unbounded preceding and 1 preceding), 0),
                0),
            0) as kept_quantity
    from with_orders
    left join returned on returned.person_id = with_orders.person_id and returned.sku = with_orders.sku
    where with_orders.quantity > 0
),

final as (
    select
        kept.order_key || ':' || cast(kept.line_no as {{ dbt.type_string() }}) as order_line_key,
        kept.order_key,
        kept.line_no,
        kept.person_id,
        kept.ordered_at,
        kept.sku,
        products.category,
        cast(kept.kept_quantity as {{ dbt.type_int() }}) as quantity,
        kept.unit_price,
        kept.discount * kept.kept_quantity / kept.quantity as discount,
        kept.kept_quantity * kept.unit_price - kept.discount * kept.kept_quantity / kept.quantity as line_total
    from kept
    left join products on products.sku = kept.sku
    where kept.kept_quantity > 0
        and not coalesce(products.non_product, false)
)

select * from final
