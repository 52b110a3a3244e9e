{#- Which person a web row (an event or an order) belongs to: its logged-in user id's person,
    else its device's (anonymousId). One place for the rule, so that orders and sessions agree.
    `join_web_person` adds the two identity-graph joins; `web_person_id` reads the result. -#}
{% macro join_web_person(relation, graph='graph') -%}
    left join {{ graph }} as user_record
        on user_record.entity = 'user_id'
        and user_record.source = {{ relation }}.source
        and user_record.source_record_id = {{ relation }}.user_id
    left join {{ graph }} as anonymous_record
        on anonymous_record.entity = 'anonymous_id'
        and anonymous_record.source = {{ relation }}.source
        and anonymous_record.source_record_id = {{ relation }}.anonymous_id
{%- endmacro %}

{% macro web_person_id() -%}
    coalesce(user_record.person_id, anonymous_record.person_id)
{%- endmacro %}
