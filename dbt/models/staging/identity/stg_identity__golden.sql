{#- The agreed shape has one `<field>_source` per field; an identity build that records one
    `address_source` for the whole address (line, city, postcode come from one record) is
    accepted too. -#}
{%- set address_fields = ['address_line1', 'city', 'postcode'] -%}
{%- set columns = [] -%}
{%- if execute -%}
    {%- for column in adapter.get_columns_in_relation(source('identity', 'golden')) -%}
        {%- do columns.append(column.name | lower) -%}
    {%- endfor -%}
{%- endif -%}

with source as (
    select * from {{ source('identity', 'golden') }}
),

final as (
    select
        person_id,
        first_name, first_name_source,
        last_name, last_name_source,
        email, email_source,
        phone, phone_source,
        {%- for field in address_fields %}
        {{ field }},
        {% if execute and (field ~ '_source') not in columns and 'address_source' in columns -%}
        address_source as {{ field }}_source,
        {%- else -%}
        {{ field }}_source,
        {%- endif %}
        {%- endfor %}
        date_of_birth, date_of_birth_source
    from source
)

select * from final
