{#- Members of the marketers' declarative segments (segments.declarative_membership, written by
    the segments/declarative_membership asset from the segments file), shaped like
    int_segment_membership so that segment_membership and its history treat both alike. -#}
{{ config(tags=['after_scoring']) }}

with declarative as (
    select segment, person_id
    from {{ optional_source('segments', 'declarative_membership',
        "select cast(null as " ~ dbt.type_string() ~ ") as segment, cast(null as " ~ dbt.type_string() ~ ") as person_id where 1 = 0") }} as members
),

customers as (
    select person_id from {{ ref('customers') }}
),

final as (
    select distinct
        declarative.segment,
        'declarative' as segment_type,
        declarative.person_id
    from declarative
    -- Only people of this run (the file is evaluated on this run's traits; this guards a stale table).
    inner join customers on customers.person_id = declarative.person_id
)

select * from final
