with source as (
    select * from {{ source('identity', 'changes') }}
),

renamed as (
    select
        run_id,
        person_id,
        change,
        other_person_id,
        cast(changed_at as {{ dbt.type_timestamp() }}) as changed_at
    from source
),

final as (
    select run_id, person_id, change, other_person_id, changed_at
    from renamed
    where changed_at <= {{ as_of() }}
)

select * from final
