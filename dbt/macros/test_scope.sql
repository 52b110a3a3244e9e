{#- Data tests of a daily build scoped to the rows the build rewrote.

    The models built incrementally (the event staging tables, macros/incremental_events.sql, and
    the intermediate models rebuilt per person, macros/incremental_persons.sql) rewrite the rows of
    some keys and leave every other row as the last build left it. Their pre-hook records the keys
    it rewrites in `<model>__rebuilt`, stamped with the dbt invocation (`record_rebuilt_keys`); a
    whole build drops that table. When the run asks for it (the environment variable
    TESSERA_TESTS_SCOPE=changed, which `cdp run` sets only when the selection's last build passed
    every test with the same dbt project: dagster_project/defs/dbt_marts.py), a data test of such a
    model in the same invocation reads only the rows of the recorded keys, through dbt's
    `get_where_subquery` (the wrapper of every generic test's model), if the test is one that
    cannot fail on rows it does not read:

    - a test of each row alone (`not_null`, `accepted_values`, `value_between`): every row outside
      the scope is a row the last build had, which passed it;
    - a uniqueness test (`unique`, `unique_combination`, `unique_key`) on columns whose value
      determines the key (the model's `meta.rebuilt_keys` among the columns, or a column named in
      `meta.determines_rebuilt_keys`): two rows with the same value have the same key, so they are
      both in scope or both outside it, and then both were in the last build, which passed it.

    Rows only ever leave an unchanged key by deletion (an erasure, an as_of moved back), which no
    such test can fail on. Every other test (relationships, `exists_in`, singular tests) reads the
    whole table; so does every test of a whole build (first build, `--full-refresh`, a rebuild the
    marks force), of `dbt test` or `dbt build` by hand (no TESSERA_TESTS_SCOPE, or another
    invocation's record), and of a run after a build that failed. -#}

{% macro rebuilt_keys_relation(relation=none) -%}
    {%- set of = relation if relation is not none else this -%}
    {{ return(api.Relation.create(database=of.database, schema=of.schema, identifier=of.identifier ~ '__rebuilt')) }}
{%- endmacro %}

{#- Hook SQL: record the keys this build rewrites (`keys_sql` selects them under the model's column
    names; extra columns may follow), stamped with this invocation, at least one row even when no
    key is rewritten; none (a whole build): drop the record. -#}
{% macro record_rebuilt_keys(keys_sql) -%}
    {{ return(adapter.dispatch('record_rebuilt_keys')(keys_sql)) }}
{%- endmacro %}
{% macro default__record_rebuilt_keys(keys_sql) -%}
{%- endmacro %}
{% macro duckdb__record_rebuilt_keys(keys_sql) -%}
    {%- if not execute -%}{{ return('') }}{%- endif -%}
    {%- if keys_sql is none -%}
    drop table if exists {{ rebuilt_keys_relation() }}
    {%- else -%}
    create or replace table {{ rebuilt_keys_relation() }} as
    select '{{ invocation_id }}' as invocation_id, rebuilt.*
    from (select 1 as stamp) as stamp
    left join ({{ keys_sql }}) as rebuilt on true
    {%- endif -%}
{%- endmacro %}

{#- The tests that cannot fail on rows they do not read, given the scope's keys (see above). -#}
{% macro test_reads_rows_alone(test, keys, determines) -%}
    {%- set name = test.get('name') -%}
    {%- set kwargs = test.get('kwargs') or {} -%}
    {%- if name in ('not_null', 'accepted_values', 'value_between') -%}
        {{ return(true) }}
    {%- elif name == 'unique' -%}
        {{ return(kwargs.get('column_name') in determines or [kwargs.get('column_name')] == keys) }}
    {%- elif name in ('unique_combination', 'unique_key') -%}
        {%- set columns = kwargs.get('columns') or [] -%}
        {%- for key in keys -%}
            {%- if key not in columns -%}{{ return(false) }}{%- endif -%}
        {%- endfor -%}
        {{ return(keys | length > 0) }}
    {%- endif -%}
    {{ return(false) }}
{%- endmacro %}

{#- SQL condition restricting this test's model to the rows this invocation rewrote, or none. -#}
{% macro rebuilt_rows_condition(relation) -%}
    {{ return(adapter.dispatch('rebuilt_rows_condition')(relation)) }}
{%- endmacro %}
{% macro default__rebuilt_rows_condition(relation) -%}
    {{ return(none) }}
{%- endmacro %}
{% macro duckdb__rebuilt_rows_condition(relation) -%}
    {%- if not execute or env_var('TESSERA_TESTS_SCOPE', '') != 'changed' or model.get('resource_type') != 'test' -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set tested = graph.nodes.get(model.get('attached_node') or '') -%}
    {%- if tested is none or relation.identifier != tested.get('alias') -%}{{ return(none) }}{%- endif -%}
    {%- set meta = tested.get('config', {}).get('meta', {}) -%}
    {%- set keys = meta.get('rebuilt_keys') or [] -%}
    {%- if not keys or not test_reads_rows_alone(model.get('test_metadata') or {}, keys,
                                                  meta.get('determines_rebuilt_keys') or []) -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set rebuilt = rebuilt_keys_relation(relation) -%}
    {#- (the catalog, not load_relation: dbt's relation cache does not see a table a hook created) -#}
    {%- set exists = run_query("select count(*) from information_schema.tables where table_catalog = '" ~ rebuilt.database
                               ~ "' and table_schema = '" ~ rebuilt.schema
                               ~ "' and table_name = '" ~ rebuilt.identifier ~ "'").rows[0][0] -%}
    {%- if exists == 0 -%}{{ return(none) }}{%- endif -%}
    {%- set stamped = run_query("select count(*) from " ~ rebuilt ~ " where invocation_id = '" ~ invocation_id ~ "'").rows[0][0] -%}
    {%- if stamped == 0 -%}{{ return(none) }}{%- endif -%}
    {#- (a row with a null key matches no key: always read, a not_null test is on it) -#}
    {%- set nulls = [] -%}
    {%- for key in keys -%}{%- do nulls.append(key ~ ' is null') -%}{%- endfor -%}
    {{ return('(' ~ nulls | join(' or ') ~ ' or (' ~ keys | join(', ') ~ ') in (select ' ~ keys | join(', ')
              ~ ' from ' ~ rebuilt ~ '))') }}
{%- endmacro %}

{#- dbt's wrapper of a generic test's model (its `where` config), plus the scope above. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set scope = rebuilt_rows_condition(relation) -%}
    {%- if scope -%}
        {%- set where = '(' ~ where ~ ') and ' ~ scope if where else scope -%}
    {%- endif -%}
    {%- if where -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
