{#- A table, not a view: a large source; de-duplicating it once per run is cheaper than once
    per reader and per test. Incremental (macros/incremental_events.sql): a run types only the raw
    rows of events it has not staged. -#}
{{ config(
    materialized=event_staging_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook=["{{ record_restaged_keys('email_events', ['_source', 'event_id'], ['source', 'event_id'], '_loaded_at', 'occurred_at') }}",
              "{{ forget_restaged_rows('email_events', ['_source', 'event_id'], ['source', 'event_id'], '_loaded_at', 'occurred_at') }}"],
    meta={"rebuilt_keys": ['source', 'event_id']}
) }}

with source as (
    {{ raw_rows_to_stage('email_events', ['_source', 'event_id'], '_loaded_at', 'occurred_at') }}
),

renamed as (
    select
        event_id,
        _source as source,
        subscriber_id,
        {{ normalise_email('email') }} as email,
        campaign_id,
        event_type,
        cast(occurred_at as {{ dbt.type_timestamp() }}) as occurred_at,
        {{ clean_text('link_tracking_id') }} as link_tracking_id,
        url,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    {{ latest_per_key('renamed', 'source, event_id') }}
),

final as (
    select
        event_id, source, subscriber_id, email, campaign_id, event_type, occurred_at,
        link_tracking_id, url, loaded_at, load_id, landed_file, landed_row
    from latest
    where occurred_at <= {{ as_of() }}
)

select * from final
