{#- Every non-null `column_name` value appears in `to`.`field` - like `relationships`, but a
    no-op while either side has not been built yet: dbt's eager indirect selection runs a test when
    any parent is selected, and a partial build (e.g. staging only) must not fail on a mart
    that does not exist yet. -#}
{% test exists_in(model, column_name, to, field) %}
{%- if execute and (load_relation(model) is none or load_relation(to) is none) -%}
select 1 as not_built_yet where 1 = 0
{%- else -%}
select child.{{ column_name }}
from {{ model }} as child
left join {{ to }} as parent on parent.{{ field }} = child.{{ column_name }}
where child.{{ column_name }} is not null and parent.{{ field }} is null
{%- endif %}
{% endtest %}
