with source as (
    select * from {{ source('identity', 'graph') }}
),

renamed as (
    select
        record_key,
        source,
        entity,
        cast(source_record_id as {{ dbt.type_string() }}) as source_record_id,
        person_id,
        match_method,
        cast(match_probability as {{ dbt.type_float() }}) as match_probability
    from source
),

final as (
    -- Loyalty ids are compared upper-cased (as in stg_pos__*).
    select
        record_key,
        source,
        entity,
        case when entity = 'loyalty_members' then upper(source_record_id) else source_record_id end as source_record_id,
        person_id,
        match_method,
        match_probability
    from renamed
)

select * from final
