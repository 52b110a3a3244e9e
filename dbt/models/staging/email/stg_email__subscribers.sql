with source as (
    select * from {{ source('raw', 'email_subscribers') }}
),

renamed as (
    select
        subscriber_id,
        _source as source,
        {{ normalise_email('email') }} as email,
        {{ clean_name('first_name') }} as first_name,
        {{ clean_name('last_name') }} as last_name,
        status as exported_status,
        cast(opted_in_at as {{ dbt.type_timestamp() }}) as opted_in_at,
        cast(opted_out_at as {{ dbt.type_timestamp() }}) as opted_out_at,
        cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    {{ latest_per_key('renamed', 'source, subscriber_id') }}
),

final as (
    select
        subscriber_id,
        source,
        email,
        first_name,
        last_name,
        -- The export holds only the current status; as of a past date, undo later opt-ins/outs.
        case
            when opted_out_at > {{ as_of() }} and opted_in_at <= {{ as_of() }} then 'subscribed'
            when opted_in_at > {{ as_of() }} then 'pending'
            else exported_status
        end as status,
        case when opted_in_at <= {{ as_of() }} then opted_in_at end as opted_in_at,
        case when opted_out_at <= {{ as_of() }} then opted_out_at end as opted_out_at,
        created_at,
        loaded_at,
        load_id,
        landed_file,
        landed_row
    from latest
    where created_at <= {{ as_of() }}
)

select * from final
