{#- RFM-style score 1–5 by quintile of `order_expr` over the rows of the query:
    1 + floor(5 × (rank − 1) / n). Ties share the lower score (rank() gives them the same
    rank), so the score never decreases as the value improves; one row scores 1. -#}
{% macro quintile_score(order_expr) -%}
    cast(
        1 + floor(
            5 * cast(rank() over (order by {{ order_expr }}) - 1 as {{ dbt.type_float() }})
            / count(*) over ()
        )
    as {{ dbt.type_int() }})
{%- endmacro %}
