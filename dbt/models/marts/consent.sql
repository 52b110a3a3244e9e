{#- Consent per person and channel: every consent signal any source gives, the latest one
    winning. No row means no consent: marketing goes only to status = 'granted'. -#}

with graph as (
    select * from {{ ref('stg_identity__graph') }}
),

subscribers as (
    select * from {{ ref('stg_email__subscribers') }}
),

email_events as (
    select * from {{ ref('int_email_activity') }}
),

web_events as (
    select * from {{ ref('stg_web__events') }}
    where consent_channel is not null
),

tickets as (
    select * from {{ ref('int_support_tickets') }}
),

subscriber_people as (
    select subscribers.*, subscriber_record.person_id
    from subscribers
    inner join graph as subscriber_record
        on subscriber_record.entity = 'subscribers'
        and subscriber_record.source = subscribers.source
        and subscriber_record.source_record_id = subscribers.subscriber_id
),

signals as (
    -- The email tool's opt-in.
    select person_id, 'email_marketing' as channel, 'granted' as status,
           opted_in_at as signalled_at, 'email:' || source || ':opt_in' as signal_source
    from subscriber_people
    where opted_in_at is not null

    union all
    -- Its opt-out; a cleaned (hard-bouncing or complained) address cannot take marketing either.
    select person_id, 'email_marketing', 'denied',
           coalesce(opted_out_at, opted_in_at, created_at),
           'email:' || source || ':' || status
    from subscriber_people
    where status in ('unsubscribed', 'cleaned')

    union all
    -- Unsubscribes and spam complaints in the event export.
    select person_id, 'email_marketing', 'denied', occurred_at,
           'email:' || source || ':' || event_type
    from email_events
    where event_type in ('unsubscribe', 'spam_complaint') and person_id is not null

    union all
    -- Consent banners and preference centres on the website.
    select {{ web_person_id() }}, consent_channel,
           case when consent_granted then 'granted' else 'denied' end,
           occurred_at, 'web:' || web_events.source || ':consent_updated'
    from web_events
    {{ join_web_person('web_events') }}
    where {{ web_person_id() }} is not null

    union all
    -- A "do not contact" request to support withdraws every marketing channel.
    select tickets.person_id, channels.channel, 'denied', tickets.created_at,
           'support:' || tickets.source || ':do_not_contact'
    from tickets
    cross join (
        select 'email_marketing' as channel
        union all select 'sms_marketing'
    ) as channels
    where tickets.is_do_not_contact and tickets.person_id is not null
),

ranked as (
    select
        signals.*,
        -- Latest wins; on a tie a withdrawal beats a grant.
        row_number() over (
            partition by person_id, channel
            order by signalled_at desc, case when status = 'denied' then 0 else 1 end, signal_source
        ) as recency
    from signals
    where signalled_at is not null
),

final as (
    select
        person_id,
        channel,
        status,
        signalled_at as since,
        signal_source as source,
        {{ as_of() }} as as_of
    from ranked
    where recency = 1
)

select * from final
