{#- Every segment there is: the built-in ones (int_builtin_segments) and the marketers'
    declarative ones (segments.definitions), with what each means and how many members it has. -#}
with builtin as (
    select segment, segment_type, description, definition
    from {{ ref('int_builtin_segments') }}
),

declarative as (
    select segment, description, definition
    from {{ optional_source('segments', 'definitions',
        "select cast(null as " ~ dbt.type_string() ~ ") as segment, cast(null as " ~ dbt.type_string() ~ ") as description, cast(null as " ~ dbt.type_string() ~ ") as definition where 1 = 0") }} as definitions
),

membership as (
    select segment, segment_type, count(*) as members
    from {{ ref('segment_membership') }}
    group by segment, segment_type
),

-- A built-in segment with members but no row in the seed still gets listed (without a
-- description, which its data test flags), so the catalog is never short of a segment.
unlisted_builtin as (
    select membership.segment, membership.segment_type
    from membership
    left join builtin on builtin.segment = membership.segment
    where membership.segment_type <> 'declarative' and builtin.segment is null
),

catalog as (
    select segment, 'builtin' as kind, segment_type, description, definition from builtin
    union all
    select segment, 'builtin' as kind, segment_type,
        cast(null as {{ dbt.type_string() }}) as description, cast(null as {{ dbt.type_string() }}) as definition
    from unlisted_builtin
    union all
    select segment, 'declarative' as kind, 'declarative' as segment_type,
        case when description = '' then null else description end as description, definition
    from declarative
),

final as (
    select
        catalog.segment,
        catalog.kind,
        catalog.segment_type,
        catalog.description,
        catalog.definition,
        coalesce(membership.members, 0) as members,
        {{ as_of() }} as as_of
    from catalog
    left join membership on membership.segment = catalog.segment
)

select * from final
