{#- Email events attached to persons through their subscriber record. Rebuilt per subscriber on a
    daily run (macros/incremental_persons.sql): the new events, and every event of a subscriber
    whose record identity moved to another person; other rows stay. -#}
{%- set marks = last_build_marks() -%}
{{ config(
    materialized=rebuilt_per_key_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook=["{{ record_rebuilt_email_events() }}", "{{ forget_email_activity() }}"],
    post_hook="{{ record_build_marks(ref('stg_email__events')) }}",
    meta={"rebuilt_keys": ["email_event_key"]}
) }}

with graph as (
    select * from {{ ref('stg_identity__graph') }}
),

events as (
    select events.* from {{ ref('stg_email__events') }} as events
    {%- if marks is not none %}
    -- the events the first pre-hook recorded (email_events_to_rebuild)
    where (events.source, events.event_id) in (select source, event_id from {{ rebuilt_keys_relation() }})
    {%- endif %}
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
