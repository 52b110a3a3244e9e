{#- Intermediate models rebuilt per person (per visitor, per subscriber) on a daily run.

    `int_web_sessions` and `int_email_activity` attribute events to persons through the identity
    graph, which identity recomputes every run: a merge or split can move old events to another
    person, so the tables cannot simply append. An incremental build recomputes the rows of the
    affected keys only, from all of those keys' events; every other key's rows stay:

    - keys with a new staged event: a row of the staging table loaded after the last build's newest
      `loaded_at`, or happening after its newest `occurred_at` (an as_of moved on). Staged rows
      never change once staged (the first delivery counts), so these are exactly the new rows;
    - keys identity moved: every record whose person_id is new or different in an identity run after
      the last build's (`identity.id_history`, append-only, one row per record and change), with
      its person before (deleted) and now (recomputed), and for web sessions the anonymous visitor
      key its events had.

    The last build's marks (the staging table's newest loaded_at and occurred_at, the newest
    identity run, the as_of, the session timeout) are kept in `<model>__marks` beside the model,
    written by a post-hook in the build's transaction. The model rebuilds whole (the delete removes
    every row and every event is re-read) when there are no marks, when the as_of moved back, when
    the session timeout changed, when identity erased a person since, or when `identity.id_history`
    is not there; `dbt build --full-refresh` (which Tessera passes when the dbt project changed)
    rebuilds the table itself. tests/test_dbt_incremental.py keeps incremental days equal to a
    full refresh.

    On Spark (dbt-spark on Parquet, the `default__` path) the models stay plain tables, rebuilt
    whole every run: deleting rows needs Delta.

    `identity.id_history`, `runs` and `changes` are read only on an incremental build, so the models
    do not declare them (`-- depends_on`): a unit test would then need them as inputs. -#}

{#- The materialization of a model rebuilt per key: incremental where rows can be deleted. -#}
{% macro rebuilt_per_key_materialization() -%}
    {{ return(adapter.dispatch('rebuilt_per_key_materialization')()) }}
{%- endmacro %}
{% macro default__rebuilt_per_key_materialization() -%}
    {{ return('table') }}
{%- endmacro %}
{% macro duckdb__rebuilt_per_key_materialization() -%}
    {{ return('incremental') }}
{%- endmacro %}

{% macro build_marks_relation() -%}
    {{ return(api.Relation.create(database=this.database, schema=this.schema, identifier=this.identifier ~ '__marks')) }}
{%- endmacro %}

{#- The last build's marks when this build may be per key, else none (rebuild whole). -#}
{% macro last_build_marks() -%}
    {#- (a unit test has no `this`: it tests the whole build) -#}
    {%- if not execute or this is none or model.resource_type == 'unit_test' or not is_incremental() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set marks = build_marks_relation() -%}
    {%- if load_relation(marks) is none or load_relation(source('identity', 'id_history')) is none
           or load_relation(source('identity', 'runs')) is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set rows = run_query("select cast(loaded_at as " ~ dbt.type_string() ~ "), cast(occurred_at as "
                             ~ dbt.type_string() ~ "), identity_seq, as_of > " ~ as_of() ~ ", session_timeout_minutes from "
                             ~ marks).rows -%}
    {%- if rows | length != 1 or rows[0][0] is none or rows[0][3] or rows[0][4] != var('session_timeout_minutes') -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set seq = rows[0][2] -%}
    {%- if seq is none -%}{{ return(none) }}{%- endif -%}
    {%- set erased = run_query("select count(*) from " ~ source('identity', 'changes') ~ " c join "
                               ~ source('identity', 'runs') ~ " r on r.run_id = c.run_id where r.seq > " ~ seq
                               ~ " and c.change = 'erased'").rows[0][0] -%}
    {%- if erased > 0 -%}{{ return(none) }}{%- endif -%}
    {{ return({'loaded_at': rows[0][0], 'occurred_at': rows[0][1] or rows[0][0], 'identity_seq': seq}) }}
{%- endmacro %}

{#- SQL condition on a staging event table's columns: the row is new since the last build. -#}
{% macro staged_since(marks, relation='events') -%}
    ({{ relation }}.loaded_at > cast('{{ marks.loaded_at }}' as {{ dbt.type_timestamp() }})
     or {{ relation }}.occurred_at > cast('{{ marks.occurred_at }}' as {{ dbt.type_timestamp() }}))
{%- endmacro %}

{#- Records identity moved since the last build: record_key, person_id now, person_id before (null
    for a record first seen). -#}
{% macro moved_records(marks) -%}
    select moved.record_key, moved.person_id, before.person_id as previous_person_id
    from (
        select record_key, person_id,
               row_number() over (partition by record_key order by run_seq desc) as newest
        from {{ source('identity', 'id_history') }}
        where run_seq > {{ marks.identity_seq }}
    ) as moved
    left join (
        select record_key, person_id,
               row_number() over (partition by record_key order by run_seq desc) as newest
        from {{ source('identity', 'id_history') }}
        where run_seq <= {{ marks.identity_seq }}
          and record_key in (select record_key from {{ source('identity', 'id_history') }}
                             where run_seq > {{ marks.identity_seq }})
    ) as before
        on before.record_key = moved.record_key and before.newest = 1
    where moved.newest = 1
{%- endmacro %}

{#- Post-hook: this build's marks, read from what it built from. -#}
{% macro record_build_marks(events) -%}
    {{ return(adapter.dispatch('record_build_marks')(events)) }}
{%- endmacro %}
{% macro default__record_build_marks(events) -%}
{%- endmacro %}
{% macro duckdb__record_build_marks(events) -%}
    {#- (not at parse time: a source named there becomes a declared dependency, see above) -#}
    {%- if not execute -%}{{ return('') }}{%- endif -%}
    {%- set runs = source('identity', 'runs') -%}
    create or replace table {{ build_marks_relation() }} as
    select
        (select max(loaded_at) from {{ events }}) as loaded_at,
        (select max(occurred_at) from {{ events }}) as occurred_at,
        {% if load_relation(runs) is none -%} cast(null as bigint) {%- else -%}
        (select coalesce(max(seq), 0) from {{ runs }}) {%- endif %} as identity_seq,
        {{ as_of() }} as as_of,
        {{ var('session_timeout_minutes') }} as session_timeout_minutes
{%- endmacro %}

{#- The email events int_email_activity rebuilds (email_event_key, source, event_id): the new
    events, and every event of a subscriber whose record identity moved. -#}
{% macro email_events_to_rebuild(marks) -%}
    select events.source || ':' || events.event_id as email_event_key, events.source, events.event_id
    from (
        -- (a union, not an IN with an OR: DuckDB plans that OR row by row)
        select events.source, events.event_id from {{ ref('stg_email__events') }} as events
        where {{ staged_since(marks) }}
        union
        select events.source, events.event_id from {{ ref('stg_email__events') }} as events
        where (events.source, events.subscriber_id) in (
            select graph.source, graph.source_record_id
            from {{ ref('stg_identity__graph') }} as graph
            where graph.entity = 'subscribers'
              and graph.record_key in (select record_key from ({{ moved_records(marks) }}) as moved))
    ) as events
{%- endmacro %}

{#- First pre-hook of int_email_activity: record the events it rebuilds (macros/test_scope.sql),
    which the model then reads; a whole rebuild drops the record. -#}
{% macro record_rebuilt_email_events() -%}
    {%- set marks = last_build_marks() -%}
    {{ record_rebuilt_keys(email_events_to_rebuild(marks) if marks is not none else none) }}
{%- endmacro %}

{#- Pre-hook of int_email_activity: delete the rows of subscribers identity moved (their events are
    inserted again); on a whole rebuild every row. New events have no row yet. -#}
{% macro forget_email_activity() -%}
    {%- if is_incremental() -%}
    {%- set marks = last_build_marks() -%}
    delete from {{ this }}
    {%- if marks is not none %}
    where (source, subscriber_id) in (
        select graph.source, graph.source_record_id
        from {{ ref('stg_identity__graph') }} as graph
        where graph.entity = 'subscribers'
          and graph.record_key in (select record_key from ({{ moved_records(marks) }}) as moved))
    {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{#- The visitor keys of int_web_sessions to rebuild (see above): the visitors of new events, the
    persons before and after of each record identity moved, and the anonymous visitor keys of the
    events of those records (their sessions before the record was attached). -#}
{% macro web_visitors_to_rebuild(marks) -%}
    {%- set events = ref('stg_web__events') -%}
    {%- set graph = ref('stg_identity__graph') -%}
    select coalesce({{ web_person_id() }}, 'anonymous:' || coalesce(events.anonymous_id, events.message_id)) as visitor_key
    from {{ events }} as events
    {{ join_web_person('events', graph) }}
    where {{ staged_since(marks) }}
    union
    select moved.person_id from ({{ moved_records(marks) }}) as moved
    union
    select moved.previous_person_id from ({{ moved_records(marks) }}) as moved
    where moved.previous_person_id is not null
    {#- (joins, not one IN with an OR: DuckDB plans that OR row by row, minutes at 100k) #}
    {%- for entity, column in [('user_id', 'user_id'), ('anonymous_id', 'anonymous_id')] %}
    union
    select 'anonymous:' || coalesce(events.anonymous_id, events.message_id)
    from {{ events }} as events
    inner join {{ graph }} as moved_record
        on moved_record.entity = '{{ entity }}'
        and moved_record.source = events.source
        and moved_record.source_record_id = events.{{ column }}
    where moved_record.record_key in (select record_key from ({{ moved_records(marks) }}) as moved)
    {%- endfor %}
{%- endmacro %}

{#- First pre-hook of int_web_sessions: record the visitors about to be rebuilt
    (macros/test_scope.sql), which the delete and the model then read; a whole rebuild drops the
    record. -#}
{% macro record_rebuilt_visitors() -%}
    {%- set marks = last_build_marks() -%}
    {{ record_rebuilt_keys(web_visitors_to_rebuild(marks) if marks is not none else none) }}
{%- endmacro %}

{#- Pre-hook of int_web_sessions: delete the sessions of the visitors about to be rebuilt; on a
    whole rebuild every row. -#}
{% macro forget_web_sessions() -%}
    {%- if is_incremental() -%}
    {%- set marks = last_build_marks() -%}
    delete from {{ this }}
    {%- if marks is not none %}
    where visitor_key in (select visitor_key from {{ rebuilt_keys_relation() }})
    {%- endif -%}
    {%- endif -%}
{%- endmacro %}
