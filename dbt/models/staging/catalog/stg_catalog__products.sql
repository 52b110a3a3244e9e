with source as (
    select * from {{ source('raw', 'catalog_products') }}
),

renamed as (
    select
        sku,
        _source as source,
        {{ clean_text('name') }} as product_name,
        -- postage, fees: no category of goods, so never a person's preferred category or affinity
        case when coalesce(non_product, false) then null else lower({{ clean_text('category') }}) end as category,
        coalesce(non_product, false) as non_product,
        price,
        margin,
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
    select sku, source, product_name, category, non_product, price, margin, loaded_at, load_id, landed_file, landed_row
    from latest
)

select * from final
