{#- The latest version of each record: raw tables are append-only, so a re-landed record
    (same contract key) appears again with a later _loaded_at; the latest one wins. -#}
{% macro latest_per_key(cte, key_columns, order_by='loaded_at desc, landed_file desc, landed_row desc') -%}
    select *
    from (
        select
            {{ cte }}.*,
            row_number() over (partition by {{ key_columns }} order by {{ order_by }}) as version_rank
        from {{ cte }}
    ) as versions
    where version_rank = 1
{%- endmacro %}
