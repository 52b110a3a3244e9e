with source as (
    select * from {{ source('raw', 'pos_line_items') }}
),

renamed as (
    select
        transaction_id,
        _source as source,
        line_no,
        sku,
        quantity,
        unit_price,
        coalesce(discount, 0) as discount,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    {{ latest_per_key('renamed', 'source, transaction_id, line_no') }}
),

final as (
    select
        transaction_id, source, line_no, sku, quantity, unit_price, discount,
        quantity * unit_price - discount as line_total,
        quantity < 0 as is_return,
        loaded_at, load_id, landed_file, landed_row
    from latest
)

select * from final
