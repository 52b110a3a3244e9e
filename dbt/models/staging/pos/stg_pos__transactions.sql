with source as (
    select * from {{ source('raw', 'pos_transactions') }}
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
        -- a return or cancellation: flagged, or (unflagged) a receipt that pays money back
        coalesce(is_return, total < 0) as is_return,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    {{ latest_per_key('renamed', 'source, transaction_id') }}
),

final as (
    select
        transaction_id, source, store_id, occurred_at, loyalty_id, email, phone, channel, order_ref,
        subtotal, discount, total, payment_method, is_return, loaded_at, load_id, landed_file, landed_row
    from latest
    where occurred_at <= {{ as_of() }}
)

select * from final
