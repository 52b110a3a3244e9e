{{ config(tags=['after_scoring']) }}

{#- Published experiment assignments: who is in which arm since when (syncs leave holdout arms out),
    following identity's merges and splits (experiments/remap.py). -#}

with assignments as (
    select * from {{ optional_source('experiments', 'assignments',
        "select cast(null as string) as experiment, cast(null as string) as person_id, cast(null as string) as arm, cast(null as boolean) as holdout, cast(null as timestamp) as exposed_at, cast(null as boolean) as arm_conflict where false") }}
),

customers as (
    select person_id from {{ ref('customers') }}
),

final as (
    select
        assignments.experiment,
        assignments.person_id,
        assignments.arm,
        assignments.holdout,
        assignments.exposed_at,
        assignments.arm_conflict,
        {{ as_of() }} as as_of
    from assignments
    inner join customers on customers.person_id = assignments.person_id
)

select * from final
