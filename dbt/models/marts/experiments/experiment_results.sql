{{ config(tags=['after_scoring']) }}

{#- Published experiment results: one row per experiment and arm (statistics in experiments/). -#}

with results as (
    select * from {{ optional_source('experiments', 'results',
        "select cast(null as string) as experiment, cast(null as string) as arm, cast(null as boolean) as is_control, cast(null as boolean) as holdout, cast(null as string) as metric, cast(null as integer) as window_days, cast(null as bigint) as exposed, cast(null as bigint) as n, cast(null as double) as outcome_mean, cast(null as double) as abs_lift, cast(null as double) as abs_lift_low, cast(null as double) as abs_lift_high, cast(null as double) as rel_lift, cast(null as double) as rel_lift_low, cast(null as double) as rel_lift_high, cast(null as double) as prob_beats_control, cast(null as double) as z, cast(null as double) as sequential_boundary, cast(null as boolean) as sequential_significant, cast(null as string) as decision, cast(null as double) as srm_p_value, cast(null as boolean) as srm_flag, cast(null as double) as mde_absolute, cast(null as double) as mde_relative, cast(null as double) as spending_fraction, cast(null as double) as alpha_spent, cast(null as integer) as looks, cast(null as bigint) as arm_conflicts, cast(null as string) as interval_method, cast(null as string) as posterior_method where false") }}
),

final as (
    select
        experiment, arm, is_control, holdout, metric, window_days, exposed, n, outcome_mean,
        abs_lift, abs_lift_low, abs_lift_high, rel_lift, rel_lift_low, rel_lift_high,
        prob_beats_control, z, sequential_boundary, sequential_significant, decision,
        srm_p_value, srm_flag, mde_absolute, mde_relative, spending_fraction, alpha_spent, looks, arm_conflicts,
        interval_method, posterior_method,
        {{ as_of() }} as as_of
    from results
)

select * from final
