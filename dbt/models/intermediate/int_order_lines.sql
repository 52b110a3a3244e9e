{#- The lines of every order in int_orders: a web order's lines come from its order_completed
    event's products (its POS copy's lines are the same goods and are not repeated); a POS order's
    lines are its receipt lines. -#}

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

final as (
    select
        all_lines.order_key || ':' || cast(all_lines.line_no as {{ dbt.type_string() }}) as order_line_key,
        all_lines.order_key,
        all_lines.line_no,
        orders.person_id,
        orders.ordered_at,
        all_lines.sku,
        products.category,
        all_lines.quantity,
        all_lines.unit_price,
        all_lines.discount,
        all_lines.quantity * all_lines.unit_price - all_lines.discount as line_total
    from all_lines
    inner join orders on orders.order_key = all_lines.order_key
    left join products on products.sku = all_lines.sku
)

select * from final
