with source as (
    select * from {{ source('raw', 'catalog_products') }}
),

renamed as (
    select
        sku,
        _source as source,
        {{ clean_text('name') }} as product_name,
        lower({{ clean_text('category') }}) as category,
        price,
        margin,
        -- Empty = a product: only codes marked false (postage, fees) are no product.
        coalesce(is_product, true) as is_product,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

-- One catalog for all sources: the latest version of a sku wins, whichever instance sent it.
latest as (
    {{ latest_per_key('renamed', 'sku') }}
),

final as (
    select sku, source, product_name, category, price, margin, is_product, loaded_at, load_id, landed_file, landed_row
    from latest
)

select * from final
