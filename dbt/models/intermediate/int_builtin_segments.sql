{#- The built-in segments and what they mean, for segment_catalog: one row per segment that
    int_segment_membership (or a later built-in family beside it) can produce. A new built-in
    family adds its rows here. Kept as a model rather than a seed so that a plain `dbt run`
    builds the catalog too. -#}

{%- set segments = [
    ('rfm_champions', 'rfm', 'Bought recently and often: the best customers.', "rfm_segment = 'champions' (R5 F4-5)"),
    ('rfm_loyal', 'rfm', 'Buy often and fairly recently.', "rfm_segment = 'loyal' (R3-4 F4-5)"),
    ('rfm_potential_loyalist', 'rfm', 'Recent customers with a few orders who could become loyal.', "rfm_segment = 'potential_loyalist' (R4-5 F2-3)"),
    ('rfm_new_customer', 'rfm', 'Bought very recently, for the first time or nearly.', "rfm_segment = 'new_customer' (R5 F1)"),
    ('rfm_promising', 'rfm', 'Recent, single-order customers.', "rfm_segment = 'promising' (R4 F1)"),
    ('rfm_need_attention', 'rfm', 'Middling recency and frequency.', "rfm_segment = 'need_attention' (R3 F3)"),
    ('rfm_about_to_sleep', 'rfm', 'Middling recency, few orders: slipping away.', "rfm_segment = 'about_to_sleep' (R3 F1-2)"),
    ('rfm_at_risk', 'rfm', 'Used to buy often, not for a while.', "rfm_segment = 'at_risk' (R1-2 F3-4)"),
    ('rfm_cant_lose', 'rfm', 'Bought the most often but not recently.', "rfm_segment = 'cant_lose' (R1-2 F5)"),
    ('rfm_hibernating', 'rfm', 'Long since their last order, few orders.', "rfm_segment = 'hibernating' (R2 F1-2)"),
    ('rfm_lost', 'rfm', 'Longest since their last order, few orders.', "rfm_segment = 'lost' (R1 F1-2)"),
    ('lifecycle_new', 'lifecycle', 'First order in the last 30 days.', "lifecycle_stage = 'new' (first order <= lifecycle_new_days ago)"),
    ('lifecycle_active', 'lifecycle', 'Last order in the last 90 days.', "lifecycle_stage = 'active' (last order <= lifecycle_active_days ago)"),
    ('lifecycle_lapsing', 'lifecycle', 'Last order 91 to 180 days ago.', "lifecycle_stage = 'lapsing' (last order <= lifecycle_lapsing_days ago)"),
    ('lifecycle_lapsed', 'lifecycle', 'Last order more than 180 days ago.', "lifecycle_stage = 'lapsed'"),
    ('lifecycle_never_purchased', 'lifecycle', 'Known to us, never ordered.', "lifecycle_stage = 'never_purchased' (no order up to as_of)"),
    ('high_churn_risk', 'churn', 'Recent buyers the churn model expects not to buy again within the horizon.', "churn_scores.risk_tier = 'high'"),
    ('cart_intent_likely', 'cart_intent', 'Open cart, likely to buy within 7 days without help.', "cart_intent.intent_group = 'likely'"),
    ('cart_intent_on_the_fence', 'cart_intent', 'Open cart, might buy within 7 days: worth a nudge.', "cart_intent.intent_group = 'on_the_fence'"),
    ('cart_intent_unlikely', 'cart_intent', 'Open cart, unlikely to buy within 7 days.', "cart_intent.intent_group = 'unlikely'")
] -%}

with builtin as (
    {% for segment, segment_type, description, definition in segments -%}
    select
        cast('{{ segment }}' as {{ dbt.type_string() }}) as segment,
        cast('{{ segment_type }}' as {{ dbt.type_string() }}) as segment_type,
        cast('{{ description }}' as {{ dbt.type_string() }}) as description,
        cast('{{ definition | replace("'", "''") }}' as {{ dbt.type_string() }}) as definition
    {% if not loop.last %}union all
    {% endif %}
    {%- endfor %}
)

select * from builtin
