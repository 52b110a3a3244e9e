{#- No recommendation is a product the person bought in the last `recommendations_exclude_days` days. -#}
{{ config(meta={'dagster': {'ref': {'name': 'recommendations'}}}) }}  {#- an asset check of recommendations in Dagster -#}

{%- if execute and (load_relation(ref('recommendations')) is none or load_relation(ref('int_order_lines')) is none) %}
select 1 as not_built_yet where 1 = 0  {#- a partial build that selected only one parent -#}
{%- else %}
select recommendations.person_id, recommendations.sku
from {{ ref('recommendations') }} as recommendations
inner join {{ ref('int_order_lines') }} as order_lines
    on order_lines.person_id = recommendations.person_id
    and order_lines.sku = recommendations.sku
where {{ within_days_of_as_of('order_lines.ordered_at', var('recommendations_exclude_days')) }}
{%- endif %}
