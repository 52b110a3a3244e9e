{#- A table, not a view: the largest source, read by several intermediate models; parsing its
    JSON and de-duplicating it once per run is much cheaper than once per reader. Incremental
    (macros/incremental_events.sql): a run parses only the raw rows of messages it has not staged. -#}
{{ config(
    materialized=event_staging_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook=["{{ record_restaged_keys('web_events', ['_source', 'messageId'], ['source', 'message_id'], '_loaded_at', adapter.quote('timestamp')) }}",
              "{{ forget_restaged_rows('web_events', ['_source', 'messageId'], ['source', 'message_id'], '_loaded_at', adapter.quote('timestamp')) }}"],
    meta={"rebuilt_keys": ['source', 'message_id']}
) }}

with source as (
    {{ raw_rows_to_stage('web_events', ['_source', 'messageId'], '_loaded_at', adapter.quote('timestamp')) }}
),

renamed as (
    select
        messageId as message_id,
        _source as source,
        {{ adapter.quote('type') }} as event_type,
        {{ adapter.quote('event') }} as event_name,
        {{ clean_text('anonymousId') }} as anonymous_id,
        {{ clean_text('userId') }} as user_id,
        {{ normalise_email(json_text('traits', 'email')) }} as email,
        {{ clean_name(json_text('traits', 'first_name')) }} as first_name,
        {{ clean_name(json_text('traits', 'last_name')) }} as last_name,
        {{ normalise_phone(json_text('traits', 'phone')) }} as phone,
        {{ json_text('context', 'page.url') }} as page_url,
        {{ json_text('context', 'page.path') }} as page_path,
        {{ json_text('context', 'campaign.source') }} as utm_source,
        {{ json_text('context', 'campaign.medium') }} as utm_medium,
        {{ json_text('context', 'campaign.name') }} as utm_campaign,
        regexp_extract({{ json_text('context', 'page.url') }}, 'tid=([A-Za-z0-9_-]+)', 1) as link_tracking_id,
        -- the spec's sku when sent (its product_id is a database id), else product_id (the SKU here)
        coalesce({{ json_text('properties', 'sku') }}, {{ json_text('properties', 'product_id') }}) as product_id,
        {{ json_text('properties', 'category') }} as product_category,
        {{ json_number('properties', 'price') }} as product_price,
        cast({{ json_number('properties', 'quantity') }} as {{ dbt.type_int() }}) as product_quantity,
        {{ json_text('properties', 'cart_id') }} as cart_id,
        {{ json_text('properties', 'order_id') }} as order_id,
        coalesce({{ json_number('properties', 'revenue') }}, {{ json_number('properties', 'total') }}) as order_revenue,
        {{ json_number('properties', 'discount') }} as order_discount,
        {{ json_array_text('properties', 'products') }} as order_products,
        {{ json_text('properties', 'query') }} as search_query,
        {{ clean_text('groupId') }} as group_id,
        {{ json_text('properties', 'channel') }} as consent_channel,
        lower({{ json_text('properties', 'granted') }}) = 'true' as consent_granted,
        cast({{ adapter.quote('timestamp') }} as {{ dbt.type_timestamp() }}) as occurred_at,
        cast(_loaded_at as {{ dbt.type_timestamp() }}) as loaded_at,
        _load_id as load_id,
        _file as landed_file,
        _row as landed_row
    from source
),

latest as (
    -- a re-delivered messageId (an SDK's retry, a file landed again) is one event: the first
    -- delivery counts, as in Segment's de-duplication
    {{ latest_per_key('renamed', 'source, message_id', order_by='loaded_at, landed_file, landed_row') }}
),

final as (
    select
        message_id, source, event_type, event_name, anonymous_id, user_id,
        email, first_name, last_name, phone,
        page_url, page_path, utm_source, utm_medium, utm_campaign, nullif(link_tracking_id, '') as link_tracking_id,
        product_id, product_category, product_price, product_quantity,
        cart_id, order_id, order_revenue, order_discount, order_products, search_query, group_id,
        case when event_name = 'consent_updated' then consent_channel end as consent_channel,
        case when event_name = 'consent_updated' then consent_granted end as consent_granted,
        occurred_at, loaded_at, load_id, landed_file, landed_row
    from latest
    where occurred_at <= {{ as_of() }}
)

select * from final
