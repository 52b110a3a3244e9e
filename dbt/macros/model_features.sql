{#- Helpers for the model feature tables (int_churn_features, int_cart_features): windows that
    end at a per-row cutoff instead of the run's as_of. -#}

{#- True for an event time in [cutoff - days_back, cutoff - days_back_end): with the default
    end, the `days_back` days strictly before the cutoff. -#}
{% macro before_cutoff(ts_expr, cutoff_expr, days_back, days_back_end=0) -%}
    ({{ ts_expr }} >= {{ dbt.dateadd('day', -1 * days_back, cutoff_expr) }}
     and {{ ts_expr }} < {{ dbt.dateadd('day', -1 * days_back_end, cutoff_expr) }})
{%- endmacro %}

{#- Count of rows whose time falls in before_cutoff(...). -#}
{% macro count_before_cutoff(ts_expr, cutoff_expr, days_back, days_back_end=0, extra_condition='true') -%}
    sum(case when {{ before_cutoff(ts_expr, cutoff_expr, days_back, days_back_end) }} and ({{ extra_condition }}) then 1 else 0 end)
{%- endmacro %}

{#- Days (fractional) from an earlier time to a later one. -#}
{% macro days_between(start_expr, end_expr) -%}
    ({{ dbt.datediff(start_expr, end_expr, 'second') }} / 86400.0)
{%- endmacro %}

{#- The model snapshots, one row each: (snapshot, cutoff_at). `offsets` maps a snapshot name to
    how many `step_days` before as_of its cutoff is. -#}
{% macro model_cutoffs(offsets, step_days) -%}
    {%- for name, steps in offsets -%}
    select '{{ name }}' as snapshot, {{ dbt.dateadd('day', -1 * steps * step_days, as_of()) }} as cutoff_at
    {% if not loop.last %}union all
    {% endif -%}
    {%- endfor -%}
{%- endmacro %}
