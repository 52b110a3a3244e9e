with graph as (
    select * from {{ ref('stg_identity__graph') }}
),

final as (
    select
        source,
        entity,
        source_record_id,
        record_key,
        person_id,
        match_method,
        match_probability,
        {{ as_of() }} as as_of
    from graph
)

select * from final
