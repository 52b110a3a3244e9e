{#- No recommendation is a product the person bought in the last `recommendations_exclude_days` days. -#}
{{ config(meta={'dagster': {'ref': {'name': 'recommendations'}}}) }}  {#- an asset check of recommendations in Dagster -#}

select recommendations.person_id, recommendations.sku
from {{ ref('recommendations') }} as recommendations
inner join {{ ref('int_order_lines') }} as order_lines
    on order_lines.person_id = recommendations.person_id
    and order_lines.sku = recommendations.sku
where {{ within_days_of_as_of('order_lines.ordered_at', var('recommendations_exclude_days')) }}
