with source as (
    select * from {{ source('raw', 'support_tickets') }}
),

renamed as (
    select
        ticket_id,
        _source as source,
        {{ clean_name('requester_name') }} as requester_name,
        {{ normalise_email('requester_email') }} as requester_email,
        {{ normalise_phone('requester_phone') }} as requester_phone,
        channel,
        category,
        status as exported_status,
        satisfaction as exported_satisfaction,
        {{ json_array_contains('tags', 'do_not_contact') }} as is_do_not_contact,
        cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
        cast(resolved_at as {{ dbt.type_timestamp() }}) as exported_resolved_at,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    {{ latest_per_key('renamed', 'source, ticket_id') }}
),

final as (
    select
        ticket_id,
        source,
        requester_name,
        requester_email,
        requester_phone,
        channel,
        category,
        -- A ticket resolved after as_of was still open then, and had no rating yet.
        case when exported_resolved_at > {{ as_of() }} then 'open' else exported_status end as status,
        case when exported_resolved_at > {{ as_of() }} then null else exported_satisfaction end as satisfaction,
        is_do_not_contact,
        created_at,
        case when exported_resolved_at <= {{ as_of() }} then exported_resolved_at end as resolved_at,
        loaded_at,
        load_id,
        landed_file,
        landed_row
    from latest
    where created_at <= {{ as_of() }}
)

select * from final
