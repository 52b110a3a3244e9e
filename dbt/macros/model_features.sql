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
    DECIMAL on Spark; `float` is 4 bytes on DuckDB), rounding done in DOUBLE by feature_round,
    money summed as integer cents (money_cents) and published as DOUBLE. -#}

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

{#- Money as integer cents (BIGINT), to sum exactly: a DOUBLE sum depends on the order of its
    terms, which differs between engines (and between runs of a parallel engine), so a revenue
    could differ in its last bit and an average round one cent apart; a sum of integers is the
    same in any order. The amount is rounded to the cent as in feature_round (round(x * 100) is
    the same on DuckDB and Spark; a cast of a DOUBLE to DECIMAL(18, 2) is not: DuckDB rounds
    x * 100, Spark the shortest decimal text of x, 12.345 -> 1234 and 1235). Amounts are read as
    DOUBLE from the landing (json_number, the raw tables), so cents are exact for any amount
    below 2^53 cents. -#}
{% macro money_cents(expr) -%}
    cast(round(cast({{ expr }} as double) * 100) as bigint)
{%- endmacro %}

{#- Cents (an integer sum of money_cents) back to money as DOUBLE, the published type: the
    division of an exact integer by 100 is correctly rounded, so the same on both engines. -#}
{% macro cents_to_money(cents_expr) -%}
    (cast({{ cents_expr }} as double) / 100)
{%- endmacro %}

{#- A money average to the cent, from a sum of cents and a count: round(cents / n) cents, as
    DOUBLE money (feature_round of the average, computed from the exact sum). -#}
{% macro cents_average(cents_expr, count_expr) -%}
    (round(cast({{ cents_expr }} as double) / {{ count_expr }}) / 100)
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
