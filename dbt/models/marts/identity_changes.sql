with changes as (
    select * from {{ ref('stg_identity__changes') }}
),

final as (
    select
        run_id,
        person_id,
        change,
        other_person_id,
        changed_at,
        {{ as_of() }} as as_of
    from changes
)

select * from final
