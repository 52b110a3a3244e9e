{{ config(tags=['after_scoring']) }}

-- Built-in and declarative segments alike.
with members as (
    select segment, segment_type, person_id from {{ ref('int_segment_membership') }}
    union all
    select segment, segment_type, person_id from {{ ref('int_model_segments') }}
    union all
    select segment, segment_type, person_id from {{ ref('int_declarative_segment_membership') }}
),

history as (
    select * from {{ ref('segment_membership_history') }}
),

-- The spell that covers as_of (at most one per segment and person: spells do not overlap).
current_spells as (
    select segment, person_id, entered_at
    from history
    where entered_at <= {{ as_of() }}
        and (exited_at is null or exited_at > {{ as_of() }})
),

final as (
    select
        members.segment,
        members.segment_type,
        members.person_id,
        coalesce(current_spells.entered_at, {{ as_of() }}) as since,
        {{ as_of() }} as as_of
    from members
    left join current_spells
        on current_spells.segment = members.segment and current_spells.person_id = members.person_id
)

select * from final
