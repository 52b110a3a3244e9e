{#- Helpers for the model feature tables (int_churn_features, int_cart_features): windows that
    end at a per-row cutoff instead of the run's as_of. -#}

{#- True for an event time in [cutoff - days_back, cutoff - days_back_end): with the default
    end, the `days_back` days strictly before the cutoff. -#}
{% macro before_cutoff(ts_expr, cutoff_expr, days_back, days_back_end=0) -%}
    ({{ ts_expr }} >= {{ dbt.dateadd('day', -1 * days_back, cutoff_expr) }}
     and {{ ts_expr }} < {{ dbt.dateadd('day', -1 * days_back_end, cutoff_expr) }})
{%- endmacro %}

{#- The features have one type on every engine, so that a model sees the same numbers on DuckDB
    and on Spark (tests/test_spark.py compares the scores to 1e-6): counts BIGINT (a SUM is
    HUGEINT on DuckDB, BIGINT on Spark), fractions DOUBLE (`x / 86400.0` is DOUBLE on DuckDB,
    DECIMAL on Spark; `float` is 4 bytes on DuckDB), rounding done in DOUBLE by feature_round. -#}

{#- Count of rows whose time falls in before_cutoff(...). -#}
{% macro count_before_cutoff(ts_expr, cutoff_expr, days_back, days_back_end=0, extra_condition='true') -%}
    cast(sum(case when {{ before_cutoff(ts_expr, cutoff_expr, days_back, days_back_end) }} and ({{ extra_condition }}) then 1 else 0 end) as bigint)
{%- endmacro %}

{#- Days (fractional, DOUBLE) from an earlier time to a later one. -#}
{% macro days_between(start_expr, end_expr) -%}
    (cast({{ dbt.datediff(start_expr, end_expr, 'second') }} as double) / 86400.0)
{%- endmacro %}

{#- A ratio as DOUBLE on both engines. -#}
{% macro feature_ratio(numerator, denominator) -%}
    (cast({{ numerator }} as double) / {{ denominator }})
{%- endmacro %}

{#- round(x, digits) in DOUBLE, the same on both engines: DuckDB rounds x * 10^digits half away
    from zero, Spark's round(double, digits) rounds the shortest decimal text of x half up, which
    differs when x * 10^digits lands just below .5 (12.345 -> 12.34 on DuckDB, 12.35 on Spark);
    round(x * 10^digits) is the same on both (DuckDB's own round(x, digits) unchanged). -#}
{% macro feature_round(expr, digits=2) -%}
    (round(cast({{ expr }} as double) * {{ 10 ** digits }}) / {{ 10 ** digits }})
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
