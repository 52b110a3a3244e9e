with source as (
    select * from {{ source('raw', 'pos_loyalty_members') }}
),

-- An export without enrolment dates: the member's first receipt stands in for it (a backtest
-- must not see members before anything of theirs happened).
first_receipts as (
    select _source as source, upper({{ clean_text('loyalty_id') }}) as loyalty_id,
        min(cast(occurred_at as {{ dbt.type_timestamp() }})) as first_receipt_at
    from {{ source('raw', 'pos_transactions') }}
    where loyalty_id is not null
    group by 1, 2
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
    left join first_receipts using (source, loyalty_id)
    where coalesce(enrolled_at, first_receipts.first_receipt_at) <= {{ as_of() }}
        or coalesce(enrolled_at, first_receipts.first_receipt_at) is null
)

select * from final
