with source as (
    select * from {{ source('raw', 'pos_loyalty_members') }}
),

renamed as (
    select
        upper({{ clean_text('loyalty_id') }}) as loyalty_id,
        _source as source,
        {{ clean_name('first_name') }} as first_name,
        {{ clean_name('last_name') }} as last_name,
        {{ normalise_email('email') }} as email,
        {{ normalise_phone('phone') }} as phone,
        {{ clean_text('address_line1') }} as address_line1,
        {{ clean_text('city') }} as city,
        {{ normalise_postcode('postcode') }} as postcode,
        date_of_birth,
        cast(enrolled_at as {{ dbt.type_timestamp() }}) as enrolled_at,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    {{ latest_per_key('renamed', 'source, loyalty_id') }}
),

final as (
    select
        loyalty_id, source, first_name, last_name, email, phone, address_line1, city, postcode,
        date_of_birth, enrolled_at, loaded_at, load_id, landed_file, landed_row
    from latest
    where enrolled_at <= {{ as_of() }}
)

select * from final
