{#- Identifier normalisation used by staging. Matching (Gmail dots, nicknames, typos) is
    identity's job; staging only makes values comparable and drops known junk. -#}

{#- Trimmed text, null when empty. -#}
{% macro clean_text(expr) -%}
    nullif(trim({{ expr }}), '')
{%- endmacro %}

{#- A person's name as typed, trimmed; null when empty or a junk value ('n/a', 'test', …). -#}
{% macro clean_name(expr) -%}
    case
        when lower(trim({{ expr }})) in (
            {%- for junk in var('junk_names') %}'{{ junk }}'{{ ", " if not loop.last }}{% endfor -%}
        ) then null
        else nullif(trim({{ expr }}), '')
    end
{%- endmacro %}

{#- Lower-cased, trimmed email; null when empty, without '@', or a known junk value. -#}
{% macro normalise_email(expr) -%}
    case
        when {{ expr }} is null then null
        when lower(trim({{ expr }})) in (
            {%- for junk in var('junk_emails') %}'{{ junk }}'{{ ", " if not loop.last }}{% endfor -%}
        ) then null
        when lower(trim({{ expr }})) not like '%_@_%' then null
        else lower(trim({{ expr }}))
    end
{%- endmacro %}

{#- A UK-centric E.164 phone number: '+44…'. Numbers written 07…/01… (national), 44… or +44…
    (international) in any punctuation become '+44' + the national number without its 0.
    Null when empty or all zeros; other digit strings of 10+ digits are kept as '+<digits>'. -#}
{% macro normalise_phone(expr) -%}
    {%- set d = digits_only(expr) -%}
    case
        when {{ expr }} is null then null
        when replace({{ d }}, '0', '') = '' then null
        when {{ d }} in ({%- for junk in var('junk_phone_digits') %}'{{ junk }}'{{ ", " if not loop.last }}{% endfor -%}) then null
        when {{ d }} like '44%' and length({{ d }}) = 12 then '+' || {{ d }}
        when {{ d }} like '0%' and length({{ d }}) = 11 then '+44' || substr({{ d }}, 2)
        when length({{ d }}) >= 10 then '+' || {{ d }}
        else null
    end
{%- endmacro %}

{#- Upper-cased postcode with single spaces. -#}
{% macro normalise_postcode(expr) -%}
    nullif(upper(trim({{ expr }})), '')
{%- endmacro %}
