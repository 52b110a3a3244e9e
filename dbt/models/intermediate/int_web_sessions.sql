{#- Web sessions: a visitor's events split where the gap between two events exceeds
    var('session_timeout_minutes') (30). A visitor is the person (identity graph, by userId then
    anonymousId), so one person's devices form one timeline; events nobody can be attached to
    are sessionised per anonymousId.

    Rebuilt per visitor on a daily run (macros/incremental_persons.sql): the visitors with a new
    event, the persons identity moved a record from or to, and the anonymous visitors of the events
    of those records get all their sessions again from all their events; other rows stay. -#}
{%- set marks = last_build_marks() -%}
{{ config(
    materialized=rebuilt_per_key_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook=["{{ record_rebuilt_visitors() }}", "{{ forget_web_sessions() }}"],
    post_hook="{{ record_build_marks(ref('stg_web__events')) }}",
    meta={"rebuilt_keys": ["visitor_key"], "determines_rebuilt_keys": ["session_id"]}
) }}

with graph as (
    select * from {{ ref('stg_identity__graph') }}
),

{% if marks is not none -%}
affected as (
    -- the visitors the first pre-hook recorded (web_visitors_to_rebuild)
    select visitor_key from {{ rebuilt_keys_relation() }} where visitor_key is not null
),

affected_events as (
    -- every event of an affected visitor: through the records of the affected persons, or the
    -- anonymous visitor key (joins and a union, not an IN with an OR: see the macro)
    {%- for column in ['user_id', 'anonymous_id'] %}
    select events.source, events.message_id
    from {{ ref('stg_web__events') }} as events
    inner join graph as affected_record
        on affected_record.entity = '{{ column }}'
        and affected_record.source = events.source
        and affected_record.source_record_id = events.{{ column }}
    where affected_record.person_id in (select visitor_key from affected)
    union
    {%- endfor %}
    select events.source, events.message_id
    from {{ ref('stg_web__events') }} as events
    where 'anonymous:' || coalesce(events.anonymous_id, events.message_id) in (select visitor_key from affected)
),

{% endif -%}
events as (
    select events.* from {{ ref('stg_web__events') }} as events
    {%- if marks is not none %}
    where (events.source, events.message_id) in (select source, message_id from affected_events)
    {%- endif %}
),

attributed as (
    select
        events.message_id,
        events.occurred_at,
        events.event_type,
        events.event_name,
        events.anonymous_id,
        events.page_url,
        events.utm_source,
        events.utm_medium,
        events.utm_campaign,
        {{ web_person_id() }} as person_id
    from events
    {{ join_web_person('events') }}
),

visitors as (
    select
        attributed.*,
        coalesce(person_id, 'anonymous:' || coalesce(anonymous_id, message_id)) as visitor_key
    from attributed
    {%- if marks is not none %}
    where coalesce(person_id, 'anonymous:' || coalesce(anonymous_id, message_id)) in (select visitor_key from affected)
    {%- endif %}
),

gaps as (
    select
        visitors.*,
        lag(occurred_at) over (partition by visitor_key order by occurred_at, message_id) as previous_at
    from visitors
),

flagged as (
    select
        gaps.*,
        case
            when previous_at is null then 1
            when {{ dbt.datediff('previous_at', 'occurred_at', 'second') }} > {{ var('session_timeout_minutes') * 60 }} then 1
            else 0
        end as is_session_start
    from gaps
),

numbered as (
    select
        flagged.*,
        sum(is_session_start) over (
            partition by visitor_key order by occurred_at, message_id rows between unbounded preceding and current row
        ) as session_number
    from flagged
),

sessions as (
    select
        visitor_key,
        session_number,
        max(person_id) as person_id,
        min(occurred_at) as started_at,
        max(occurred_at) as ended_at,
        count(*) as event_count,
        sum(case when event_type in ('page', 'screen') then 1 else 0 end) as page_views,
        sum(case when event_name = 'product_viewed' then 1 else 0 end) as product_views,
        sum(case when event_name = 'product_added' then 1 else 0 end) as cart_adds,
        sum(case when event_name = 'checkout_started' then 1 else 0 end) as checkouts_started,
        sum(case when event_name = 'order_completed' then 1 else 0 end) as orders_completed
    from numbered
    group by visitor_key, session_number
),

session_entry as (
    select visitor_key, session_number, page_url as landing_url, utm_source, utm_medium, utm_campaign
    from numbered
    where is_session_start = 1
),

final as (
    select
        sessions.visitor_key || ':' || cast(sessions.session_number as {{ dbt.type_string() }}) as session_id,
        sessions.visitor_key,
        sessions.person_id,
        cast(sessions.session_number as {{ dbt.type_int() }}) as session_number,
        sessions.started_at,
        sessions.ended_at,
        {{ dbt.datediff('sessions.started_at', 'sessions.ended_at', 'second') }} as duration_seconds,
        sessions.event_count,
        sessions.page_views,
        sessions.product_views,
        sessions.cart_adds,
        sessions.checkouts_started,
        sessions.orders_completed,
        session_entry.landing_url,
        session_entry.utm_source,
        session_entry.utm_medium,
        session_entry.utm_campaign
    from sessions
    left join session_entry
        on session_entry.visitor_key = sessions.visitor_key
        and session_entry.session_number = sessions.session_number
)

select * from final
