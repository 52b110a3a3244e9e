{#- The key of a published table (read by core/published.py as the table's key): the combination
    of `columns` is unique and none of them is null. One per published model; the quality gate
    measures the same again on the final tables before publishing. -#}
{% test unique_key(model, columns) %}
select {{ columns | join(', ') }}, count(*) as n_rows
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1 or {% for c in columns %}{{ c }} is null{% if not loop.last %} or {% endif %}{% endfor %}
{% endtest %}
