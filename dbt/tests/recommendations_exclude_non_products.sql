{#- No recommendation is a non-product (postage, a fee): the catalog's non_product flag. -#}
{{ config(meta={'dagster': {'ref': {'name': 'recommendations'}}}) }}  {#- an asset check of recommendations in Dagster -#}

{%- if execute and (load_relation(ref('recommendations')) is none or load_relation(ref('stg_catalog__products')) is none) %}
select 1 as not_built_yet where 1 = 0  {#- a partial build that selected only one parent -#}
{%- else %}
select recommendations.person_id, recommendations.sku
from {{ ref('recommendations') }} as recommendations
inner join {{ ref('stg_catalog__products') }} as products on products.sku = recommendations.sku
where products.non_product
{%- endif %}
