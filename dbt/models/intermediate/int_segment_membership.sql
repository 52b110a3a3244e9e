{#- Who is in which built-in segment at as_of. Each segment family is one CTE; declarative
    segments defined in cdp.yaml (next part) join the union in `final` the same way. -#}

with customers as (
    select * from {{ ref('int_customer_rfm') }}
),

rfm_segments as (
    select
        'rfm_' || rfm_segment as segment,
        'rfm' as segment_type,
        person_id
    from customers
    where rfm_segment is not null
),

lifecycle_segments as (
    select
        'lifecycle_' || lifecycle_stage as segment,
        'lifecycle' as segment_type,
        person_id
    from customers
),

final as (
    select * from rfm_segments
    union all
    select * from lifecycle_segments
)

select * from final
