with golden as (
    select * from {{ ref('stg_identity__golden') }}
),

graph as (
    select * from {{ ref('stg_identity__graph') }}
),

records as (
    select
        person_id,
        count(*) as source_record_count,
        count(distinct source) as source_count
    from graph
    group by person_id
),

final as (
    select
        golden.person_id,
        golden.first_name,
        golden.first_name_source,
        golden.last_name,
        golden.last_name_source,
        golden.email,
        golden.email_source,
        golden.phone,
        golden.phone_source,
        golden.address_line1,
        golden.address_line1_source,
        golden.city,
        golden.city_source,
        golden.postcode,
        golden.postcode_source,
        golden.date_of_birth,
        golden.date_of_birth_source,
        coalesce(records.source_record_count, 0) as source_record_count,
        coalesce(records.source_count, 0) as source_count,
        {{ as_of() }} as as_of
    from golden
    left join records on records.person_id = golden.person_id
)

select * from final
