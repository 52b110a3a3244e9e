with tickets as (
    select * from {{ ref('stg_support__tickets') }}
),

graph as (
    select * from {{ ref('stg_identity__graph') }}
),

final as (
    select
        tickets.source || ':' || tickets.ticket_id as ticket_key,
        tickets.ticket_id,
        tickets.source,
        ticket_record.person_id,
        tickets.channel,
        tickets.category,
        tickets.status,
        tickets.satisfaction,
        case when tickets.satisfaction = 'bad' then true else false end as is_bad_satisfaction,
        tickets.is_do_not_contact,
        tickets.created_at,
        tickets.resolved_at,
        {{ dbt.datediff('tickets.created_at', 'tickets.resolved_at', 'hour') }} as resolution_hours
    from tickets
    left join graph as ticket_record
        on ticket_record.entity = 'tickets'
        and ticket_record.source = tickets.source
        and ticket_record.source_record_id = tickets.ticket_id
)

select * from final
