{#- A table, not a view like the other staging models: its seven data tests and int_orders each
    read it, and as a view each of them re-computed it (the latest load per receipt, the sum of the
    line items): 37 node-seconds of tests on a 100k day, docs/benchmarks.md. -#}
{{ config(materialized='table') }}

with source as (
    select * from {{ source('raw', 'pos_transactions') }}
),

-- A receipt landed without a total (an order export whose amounts are only on its lines) is
-- worth the sum of its lines.
line_totals as (
    select source, transaction_id, sum(line_total) as lines_total
    from {{ ref('stg_pos__line_items') }}
    group by source, transaction_id
),

renamed as (
    select
        transaction_id,
        _source as source,
        store_id,
        cast(occurred_at as {{ dbt.type_timestamp() }}) as occurred_at,
        upper({{ clean_text('loyalty_id') }}) as loyalty_id,
        {{ normalise_email('email') }} as email,
        {{ normalise_phone('phone') }} as phone,
        coalesce(channel, 'store') as channel,
        {{ clean_text('order_ref') }} as order_ref,
        subtotal,
        coalesce(discount, 0) as discount,
        total,
        payment_method,
        is_return,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    {{ latest_per_key('renamed', 'source, transaction_id') }}
),

totalled as (
    select latest.*, coalesce(latest.total, line_totals.lines_total) as receipt_total
    from latest
    left join line_totals using (source, transaction_id)
),

final as (
    select
        transaction_id, source, store_id, occurred_at, loyalty_id, email, phone, channel, order_ref,
        subtotal, discount, receipt_total as total, payment_method,
        -- a return or cancellation: flagged, or (unflagged) a receipt that pays money back
        coalesce(is_return, receipt_total < 0) as is_return,
        loaded_at, load_id, landed_file, landed_row
    from totalled
    where occurred_at <= {{ as_of() }}
)

select * from final
