{#- Published: each person's identifiers by source and kind, to join back to the shop's own
    systems and to look a person up without reading the identity graph. The shop's own keys in
    clear; emails and phones as SHA-256 only (the reasons are in customer_ids.yml). -#}

with graph as (
    select * from {{ ref('stg_identity__graph') }}
),

records as (
    select record_key, source, email, phone, loyalty_id
    from {{ optional_source('identity', 'records',
        "select cast(null as string) as record_key, cast(null as string) as source, cast(null as string) as email, cast(null as string) as phone, cast(null as string) as loyalty_id where false") }}
),

-- A record's own id in its source: the loyalty member, the email tool's subscriber, the web
-- account and device (upper-cased loyalty ids, as the marts compare them).
own_ids as (
    select
        person_id,
        source,
        case entity
            when 'loyalty_members' then 'loyalty_id'
            when 'subscribers' then 'subscriber_id'
            when 'user_id' then 'user_id'
            when 'anonymous_id' then 'anonymous_id'
        end as kind,
        source_record_id as id_value,
        record_key
    from graph
    where entity in ('loyalty_members', 'subscribers', 'user_id', 'anonymous_id')
),

-- Identifiers other records carry: a loyalty id on a receipt, every email and phone seen.
carried as (
    select graph.person_id, records.source, records.record_key, records.loyalty_id, records.email, records.phone
    from records
    inner join graph on graph.record_key = records.record_key
),

identifiers as (
    select person_id, source, kind, id_value, record_key from own_ids
    union all
    select person_id, source, 'loyalty_id', upper(loyalty_id), record_key from carried where loyalty_id is not null
    union all
    select person_id, source, 'email_sha256', {{ sha256_hex('email') }}, record_key from carried where email is not null
    union all
    select person_id, source, 'phone_sha256', {{ sha256_hex('phone') }}, record_key from carried where phone is not null
),

final as (
    select
        person_id,
        source,
        kind,
        id_value,
        count(distinct record_key) as record_count,
        {{ as_of() }} as as_of
    from identifiers
    group by person_id, source, kind, id_value
)

select * from final
