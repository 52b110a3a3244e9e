with events as (
    select * from {{ ref('stg_email__events') }}
),

graph as (
    select * from {{ ref('stg_identity__graph') }}
),

final as (
    select
        events.source || ':' || events.event_id as email_event_key,
        events.event_id,
        events.source,
        events.subscriber_id,
        subscriber_record.person_id,
        events.campaign_id,
        events.event_type,
        events.occurred_at,
        events.link_tracking_id
    from events
    left join graph as subscriber_record
        on subscriber_record.entity = 'subscribers'
        and subscriber_record.source = events.source
        and subscriber_record.source_record_id = events.subscriber_id
)

select * from final
