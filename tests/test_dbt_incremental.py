"""Incremental event staging (dbt/macros/incremental_events.sql) and the intermediate models rebuilt
per person (dbt/macros/incremental_persons.sql), built for real by dbt on a small generated dataset:
simulated days, each landed and built incrementally (rows landed ahead of the as_of, an as_of moved
back, a re-delivered file, an identity run that merges, splits and attaches records with old
events), give exactly the rows a `--full-refresh` build gives on the same data, and a daily build
leaves the rows of persons it need not touch alone.

The models, macros and project file are the project's own, copied into a project that holds only
the event staging models, the identity graph's staging view and the two intermediate models, so
each dbt invocation parses a few files (a new as_of re-parses). The identity tables are written
here (a graph from the raw ids, and its id history), not by the identity stage."""

import datetime as dt
import json
import os
import shutil

import pytest

from core.config import load_config
from core.dbt_project import dbt_project_dir
from core.warehouse import open_warehouse
from ingestion.generator import generate
from ingestion.generator.increment import write_day
from ingestion.loader import ingest

AS_OF = dt.date(2025, 6, 30)
MODELS = {"stg_web__events": "message_id", "stg_email__events": "event_id"}  # model -> its key besides source
PER_PERSON = {"int_web_sessions": "session_id", "int_email_activity": "email_event_key"}  # model -> its key


def _event_staging_project(root):
    project = root / "dbt"
    shutil.copytree(dbt_project_dir(), project, ignore=shutil.ignore_patterns("target", "logs", "tests"))
    shutil.copytree(dbt_project_dir() / "tests/generic", project / "tests/generic")  # (the YAMLs' tests)
    for folder in project.glob("models/*"):
        if folder.name not in ("staging", "intermediate", "docs.md"):
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    for folder in project.glob("models/staging/*"):
        if folder.is_dir() and folder.name not in ("web", "email", "identity"):
            shutil.rmtree(folder)
    for model in ("staging/email/stg_email__subscribers", "staging/identity/stg_identity__golden",
                  "staging/identity/stg_identity__changes"):
        (project / f"models/{model}.sql").unlink()
        (project / f"models/{model}.yml").unlink()
    (project / "models/staging/identity/stg_identity__graph.yml").unlink()
    for path in project.glob("models/intermediate/**/*"):
        if path.is_file() and path.stem not in PER_PERSON:
            path.unlink()
    for model in PER_PERSON:  # (their YAML's tests and unit tests read models not copied)
        (project / f"models/intermediate/{model}.yml").unlink()
    return project


def _identity_run(con, seq: int, moves: str = "") -> None:
    """An identity run written as the identity stage writes it (graph, id_history, runs, changes):
    a person per web user id with the anonymous ids seen with it (three in four of them: the rest
    stay anonymous), a person per email subscriber; `moves` (SQL on temp table new_graph) then
    merges, splits or attaches records."""
    con.execute("CREATE SCHEMA IF NOT EXISTS identity")
    con.execute("""CREATE TABLE IF NOT EXISTS identity.graph (record_key VARCHAR, source VARCHAR, entity VARCHAR,
                   source_record_id VARCHAR, person_id VARCHAR, match_method VARCHAR, match_probability DOUBLE)""")
    con.execute("CREATE TABLE IF NOT EXISTS identity.id_history (run_id VARCHAR, run_seq BIGINT, record_key VARCHAR, person_id VARCHAR)")
    con.execute("CREATE TABLE IF NOT EXISTS identity.runs (run_id VARCHAR, seq BIGINT)")
    con.execute("""CREATE TABLE IF NOT EXISTS identity.changes (run_id VARCHAR, person_id VARCHAR, change VARCHAR,
                   other_person_id VARCHAR, records BIGINT, changed_at TIMESTAMPTZ)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE new_graph AS
        WITH users AS (SELECT DISTINCT _source AS source, trim(userId) AS id FROM raw.web_events
                       WHERE nullif(trim(userId), '') IS NOT NULL),
        anons AS (SELECT _source AS source, trim(anonymousId) AS id, min(trim(userId)) AS user_id FROM raw.web_events
                  WHERE nullif(trim(userId), '') IS NOT NULL AND nullif(trim(anonymousId), '') IS NOT NULL
                    AND hash(anonymousId) % 4 <> 0 GROUP BY ALL),
        subscribers AS (SELECT DISTINCT _source AS source, subscriber_id AS id FROM raw.email_events)
        SELECT 'user_id:' || source || ':' || id AS record_key, source, 'user_id' AS entity, id AS source_record_id,
               'P' || left(md5(source || id), 8) AS person_id FROM users
        UNION ALL SELECT 'anonymous_id:' || source || ':' || id, source, 'anonymous_id', id,
               'P' || left(md5(source || user_id), 8) FROM anons
        UNION ALL SELECT 'subscribers:' || source || ':' || id, source, 'subscribers', id,
               'S' || left(md5(source || id), 8) FROM subscribers""")
    if moves:
        con.execute(moves)
    run_id = f"run{seq}"
    con.execute(f"""INSERT INTO identity.id_history
                    SELECT '{run_id}', {seq}, n.record_key, n.person_id FROM new_graph n
                    LEFT JOIN identity.graph o USING (record_key) WHERE o.person_id IS DISTINCT FROM n.person_id""")
    con.execute(f"""INSERT INTO identity.changes SELECT DISTINCT '{run_id}', o.person_id, 'merged_into', n.person_id, 1, now()
                    FROM new_graph n JOIN identity.graph o USING (record_key) WHERE o.person_id <> n.person_id""")
    con.execute("""CREATE OR REPLACE TABLE identity.graph AS
                   SELECT record_key, source, entity, source_record_id, person_id, 'rule' AS match_method,
                          1.0 AS match_probability FROM new_graph""")
    con.execute(f"INSERT INTO identity.runs VALUES ('{run_id}', {seq})")


# The second identity run: person 1 of the web persons with old events merged into person 0, the
# anonymous records of person 2 split off to a new person, an anonymous id that had no record
# attached to person 3; subscriber 1 merged into subscriber 0's person.
MOVES = f"""
    CREATE OR REPLACE TEMP TABLE picked AS
    WITH web AS (SELECT person_id, row_number() OVER (ORDER BY person_id) - 1 AS k FROM (
                     SELECT DISTINCT g.person_id FROM new_graph g JOIN raw.web_events e
                     ON g.entity = 'anonymous_id' AND e._source = g.source AND trim(e.anonymousId) = g.source_record_id
                     WHERE e."timestamp" < '{AS_OF - dt.timedelta(days=30)}')),
    mail AS (SELECT person_id, row_number() OVER (ORDER BY person_id) - 1 AS k FROM (
                 SELECT DISTINCT person_id FROM new_graph WHERE entity = 'subscribers'))
    SELECT 'web' AS kind, k, person_id FROM web WHERE k < 4 UNION ALL SELECT 'mail', k, person_id FROM mail WHERE k < 2;
    UPDATE new_graph SET person_id = (SELECT person_id FROM picked WHERE kind = 'web' AND k = 0)
    WHERE person_id = (SELECT person_id FROM picked WHERE kind = 'web' AND k = 1);
    UPDATE new_graph SET person_id = 'Psplit'
    WHERE person_id = (SELECT person_id FROM picked WHERE kind = 'web' AND k = 2) AND entity = 'anonymous_id';
    INSERT INTO new_graph
    SELECT 'anonymous_id:' || _source || ':' || trim(anonymousId), _source, 'anonymous_id', trim(anonymousId),
           (SELECT person_id FROM picked WHERE kind = 'web' AND k = 3)
    FROM raw.web_events WHERE nullif(trim(anonymousId), '') IS NOT NULL AND hash(anonymousId) % 4 = 0
      AND "timestamp" < '{AS_OF - dt.timedelta(days=30)}'
      AND 'anonymous_id:' || _source || ':' || trim(anonymousId) NOT IN (SELECT record_key FROM new_graph)
    GROUP BY ALL ORDER BY 1 LIMIT 1;
    UPDATE new_graph SET person_id = (SELECT person_id FROM picked WHERE kind = 'mail' AND k = 0)
    WHERE person_id = (SELECT person_id FROM picked WHERE kind = 'mail' AND k = 1);
"""


def _build(project, warehouse, as_of: dt.date, *extra: str) -> None:
    from dbt.cli.main import dbtRunner

    os.environ["TESSERA_WAREHOUSE"] = str(warehouse)
    res = dbtRunner().invoke(["run", "--vars", json.dumps({"as_of": as_of.isoformat()}), *extra, "--quiet",
                              "--project-dir", str(project), "--profiles-dir", str(project)])
    assert res.success, res.exception


def _land(config, template: dt.date, day: dt.date) -> None:
    write_day(config.landing_dir, template, day)
    with open_warehouse(config.warehouse_path) as con:
        ingest(config, con)


@pytest.fixture(scope="module")
def days_built(tmp_path_factory):
    from cdp.scaffold import init_project

    root = tmp_path_factory.mktemp("dbt_incremental")
    config = load_config(init_project(root / "proj"))
    project, warehouse = _event_staging_project(root), config.warehouse_path
    generate(customers=60, seed=5, out=config.landing_dir, as_of=AS_OF, clean=True)
    with open_warehouse(warehouse) as con:
        ingest(config, con)
        _identity_run(con, 1)
        template = con.execute("""SELECT occurred_at::DATE FROM raw.email_events WHERE occurred_at >= '2025-06-01'
                                  GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1""").fetchall()[0][0]
    day = [AS_OF + dt.timedelta(days=i) for i in range(3)]
    _land(config, template, day[1])
    _build(project, warehouse, day[0])  # the first build; day 1 is landed already: its rows wait

    # An old raw row edited in place (never done by Tessera) shows whether a build re-read it.
    old = {"stg_web__events": ("web_events", "messageId", "userId", "timestamp"),
           "stg_email__events": ("email_events", "event_id", "campaign_id", "occurred_at")}
    edited = {}
    with open_warehouse(warehouse) as con:
        for model, (table, key, column, at) in old.items():
            edited[model] = con.execute(f"""SELECT {key}, {column} FROM raw.{table} WHERE {column} IS NOT NULL
                                            AND {at} < '2025-05-01' ORDER BY {key} LIMIT 1""").fetchall()[0]
            con.execute(f"UPDATE raw.{table} SET {column} = 'edited' WHERE {key} = ?", [edited[model][0]])
    _build(project, warehouse, day[0] - dt.timedelta(days=3))  # a backtest: as_of moved back
    with open_warehouse(warehouse) as con:
        kept = {model: con.execute(f"""SELECT {'user_id' if 'web' in model else 'campaign_id'} FROM staging.{model}
                                      WHERE {MODELS[model]} = ?""", [edited[model][0]]).fetchall()
                for model in MODELS}
        after_back = {model: con.execute(f"SELECT max(occurred_at) FROM staging.{model}").fetchall()[0][0]
                      for model in MODELS}
        for model, (table, key, column, _) in old.items():
            con.execute(f"UPDATE raw.{table} SET {column} = ? WHERE {key} = ?", [edited[model][1], edited[model][0]])

    # day 1 delivered again in files of other names (a re-delivery, not new events), then day 2
    for f in config.landing_dir.glob(f"*/*{day[1].isoformat()}*"):
        f.with_name(f.name.replace(day[1].isoformat(), f"{day[1].isoformat()}-again")).write_bytes(f.read_bytes())
    _land(config, template, day[2])
    # identity moves records with old events; every row there before is marked, so that the rows
    # the day's build rewrote are known (the marks are taken off before comparing)
    with open_warehouse(warehouse) as con:
        _identity_run(con, 2, MOVES)
        con.execute("CREATE TABLE main.picked AS SELECT * FROM picked")
        con.execute("UPDATE intermediate.int_web_sessions SET event_count = event_count + 1000000")
        con.execute("UPDATE intermediate.int_email_activity SET occurred_at = occurred_at + INTERVAL 100 YEAR")
        con.execute("CREATE TABLE main.email_keys_before AS SELECT email_event_key FROM intermediate.int_email_activity")
        con.execute("CREATE TABLE main.web_events_before AS SELECT source, message_id FROM staging.stg_web__events")
    _build(project, warehouse, day[2])
    with open_warehouse(warehouse) as con:
        con.execute("""CREATE TABLE main.sessions_rewritten AS SELECT DISTINCT visitor_key
                       FROM intermediate.int_web_sessions WHERE event_count < 1000000""")
        con.execute("""CREATE TABLE main.email_rewritten AS SELECT email_event_key
                       FROM intermediate.int_email_activity WHERE occurred_at < '2100-01-01'""")
        con.execute("""UPDATE intermediate.int_web_sessions SET event_count = event_count - 1000000
                       WHERE event_count >= 1000000""")
        con.execute("""UPDATE intermediate.int_email_activity SET occurred_at = occurred_at - INTERVAL 100 YEAR
                       WHERE occurred_at >= '2100-01-01'""")
        for model in MODELS:
            con.execute(f"CREATE TABLE main.{model}_incremental AS SELECT * FROM staging.{model}")
        for model in PER_PERSON:
            con.execute(f"CREATE TABLE main.{model}_incremental AS SELECT * FROM intermediate.{model}")
    _build(project, warehouse, day[2], "--full-refresh")
    return warehouse, edited, kept, after_back


def test_incremental_days_equal_a_full_refresh(days_built):
    warehouse, *_ = days_built
    with open_warehouse(warehouse) as con:
        for model, key in MODELS.items():
            full = con.execute(f"SELECT count(*) FROM staging.{model}").fetchall()[0][0]
            incremental = con.execute(f"SELECT count(*) FROM main.{model}_incremental").fetchall()[0][0]
            assert full == incremental and full > 0, (model, full, incremental)
            for a, b in ((f"staging.{model}", f"main.{model}_incremental"), (f"main.{model}_incremental", f"staging.{model}")):
                diff = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})").fetchall()[0][0]
                assert diff == 0, (model, a, b, diff)
            # the re-delivered day once; the rows landed ahead of the first as_of are in
            assert con.execute(f"SELECT count(*) - count(DISTINCT (source, {key})) FROM main.{model}_incremental"
                               ).fetchall()[0][0] == 0
            days = con.execute(f"SELECT count(DISTINCT occurred_at::DATE) FROM main.{model}_incremental "
                               f"WHERE occurred_at::DATE > '{AS_OF}'").fetchall()[0][0]
            assert days == 2, (model, days)  # day 1 (landed ahead of the first as_of, and again) and day 2


def test_per_person_models_built_by_day_equal_a_full_refresh(days_built):
    """Days with new events and an identity run that merges, splits and attaches records with old
    events: the per-person rebuilds give exactly what a full refresh gives."""
    warehouse, *_ = days_built
    with open_warehouse(warehouse) as con:
        for model, key in PER_PERSON.items():
            full = con.execute(f"SELECT count(*) FROM intermediate.{model}").fetchall()[0][0]
            assert full > 0 and full == con.execute(f"SELECT count(DISTINCT {key}) FROM main.{model}_incremental"
                                                    ).fetchall()[0][0] == con.execute(
                f"SELECT count(*) FROM main.{model}_incremental").fetchall()[0][0]
            for a, b in ((f"intermediate.{model}", f"main.{model}_incremental"),
                         (f"main.{model}_incremental", f"intermediate.{model}")):
                diff = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})").fetchall()[0][0]
                assert diff == 0, (model, a, b, diff)
        # the moves reached the tables: the merged-away person has no session left, the split-off
        # person and the attached anonymous id's events are there
        merged_away, split = con.execute("""SELECT (SELECT person_id FROM main.picked WHERE kind = 'web' AND k = 1),
            (SELECT count(*) FROM main.int_web_sessions_incremental WHERE person_id = 'Psplit')""").fetchall()[0]
        assert split > 0
        assert not con.execute("SELECT 1 FROM main.int_web_sessions_incremental WHERE person_id = ?",
                               [merged_away]).fetchall()


def test_a_day_rebuilds_only_the_persons_it_changed(days_built):
    """The day's build rewrote the rows of the affected persons only: new events, the persons
    identity moved records from or to, the anonymous visitor whose id was attached."""
    warehouse, *_ = days_built
    with open_warehouse(warehouse) as con:
        # email: exactly the new events and every event of the subscribers whose record the identity
        # run moved (or first saw)
        rewritten = {r[0] for r in con.execute("SELECT email_event_key FROM main.email_rewritten").fetchall()}
        expected = {r[0] for r in con.execute("""
            SELECT email_event_key FROM main.int_email_activity_incremental
            WHERE email_event_key NOT IN (SELECT email_event_key FROM main.email_keys_before)
               OR (source, subscriber_id) IN (
                   SELECT source, source_record_id FROM identity.graph WHERE entity = 'subscribers'
                   AND record_key IN (SELECT record_key FROM identity.id_history WHERE run_seq = 2))""").fetchall()}
        moved_subscriber = con.execute("""SELECT count(*) FROM main.int_email_activity_incremental
            WHERE person_id = (SELECT person_id FROM main.picked WHERE kind = 'mail' AND k = 0)
              AND email_event_key IN (SELECT email_event_key FROM main.email_keys_before)
              AND email_event_key IN (SELECT email_event_key FROM main.email_rewritten)""").fetchall()[0][0]
        assert moved_subscriber > 0  # the merged subscriber's old events were rewritten
        total = con.execute("SELECT count(*) FROM main.int_email_activity_incremental").fetchall()[0][0]
        assert rewritten == expected and 0 < len(rewritten) < total / 4, (len(rewritten), len(expected), total)
        # sessions: the visitors with a new event and the moved persons; nobody else
        rewritten = {r[0] for r in con.execute("SELECT visitor_key FROM main.sessions_rewritten").fetchall()}
        new_event_visitors = {r[0] for r in con.execute("""
            SELECT DISTINCT coalesce(u.person_id, a.person_id, 'anonymous:' || coalesce(e.anonymous_id, e.message_id))
            FROM staging.stg_web__events e
            LEFT JOIN identity.graph u ON u.entity = 'user_id' AND u.source = e.source AND u.source_record_id = e.user_id
            LEFT JOIN identity.graph a ON a.entity = 'anonymous_id' AND a.source = e.source AND a.source_record_id = e.anonymous_id
            WHERE (e.source, e.message_id) NOT IN (SELECT source, message_id FROM main.web_events_before)""").fetchall()}
        moved = {r[0] for r in con.execute("""SELECT person_id FROM main.picked WHERE kind = 'web' AND k IN (0, 2, 3)
                                              UNION SELECT 'Psplit'""").fetchall()}
        attached = con.execute("""SELECT 'anonymous:' || source_record_id FROM identity.graph
                                  WHERE record_key IN (SELECT record_key FROM identity.id_history WHERE run_seq = 2)
                                    AND entity = 'anonymous_id' AND person_id = (SELECT person_id FROM main.picked
                                                                                 WHERE kind = 'web' AND k = 3)""").fetchall()
        visitors = con.execute("SELECT count(DISTINCT visitor_key) FROM main.int_web_sessions_incremental").fetchall()[0][0]
        assert moved <= rewritten, moved - rewritten
        assert rewritten <= new_event_visitors | moved | {a for (a,) in attached}, \
            rewritten - new_event_visitors - moved
        assert len(rewritten) < visitors / 2, (len(rewritten), visitors)


def test_a_build_reads_only_new_rows_and_drops_rows_after_a_moved_back_as_of(days_built):
    _, edited, kept, after_back = days_built
    for model in MODELS:
        # the old row's edit did not reach the table: the build did not re-read it
        assert kept[model] == [(edited[model][1],)], (model, kept[model])
        assert after_back[model] <= dt.datetime.combine(AS_OF - dt.timedelta(days=3), dt.time(23, 59, 59)), model


def test_a_changed_dbt_project_rebuilds_the_incremental_tables_whole(tmp_path):
    from core.dbt_project import built_with_file as _built_with
    from core.dbt_project import needs_full_refresh as _needs_full_refresh
    from core.dbt_project import project_digest

    assert _needs_full_refresh(tmp_path, "dbt_core")  # no good build recorded
    _built_with(tmp_path, "dbt_core").write_text("a digest of other code\n")
    assert _needs_full_refresh(tmp_path, "dbt_core")
    _built_with(tmp_path, "dbt_core").write_text(project_digest())
    assert not _needs_full_refresh(tmp_path, "dbt_core") and _needs_full_refresh(tmp_path, "dbt_after_scoring")


def _invoke(project, warehouse, as_of: dt.date, *args: str, scope: bool):
    """A dbt invocation (build or test) as `cdp run` makes it, data tests scoped or not; its results."""
    from dbt.cli.main import dbtRunner

    os.environ["TESSERA_WAREHOUSE"] = str(warehouse)
    os.environ["TESSERA_TESTS_SCOPE"] = "changed" if scope else ""
    try:
        res = dbtRunner().invoke([*args, "--vars", json.dumps({"as_of": as_of.isoformat()}), "--quiet",
                                  "--project-dir", str(project), "--profiles-dir", str(project)])
    finally:
        os.environ.pop("TESSERA_TESTS_SCOPE")
    assert res.exception is None, res.exception
    return {r.node.name: (r.status, r.failures) for r in res.result.results}


def test_a_daily_build_tests_the_rows_it_rewrote_and_a_test_by_hand_all(days_built, tmp_path):
    """dbt/macros/test_scope.sql: a daily build's row tests read the rows it re-staged (the day's bad
    row fails it), not the rows it left (an old row made bad by hand, which no build wrote, is not
    read); a test in another invocation, or unscoped, reads every row."""
    warehouse, *_ = days_built
    copy = tmp_path / warehouse.name  # (the same name: it is the catalog's; and its write-ahead log)
    for path in warehouse.parent.glob(warehouse.name + "*"):
        shutil.copy(path, tmp_path / path.name)
    project = warehouse.parent.parent.parent / "dbt"
    with open_warehouse(copy) as con:
        con.execute("""UPDATE staging.stg_web__events SET event_type = 'bad_old' WHERE message_id =
                       (SELECT min(message_id) FROM staging.stg_web__events WHERE occurred_at < '2025-05-01')""")
        con.execute("""INSERT INTO raw.web_events SELECT * REPLACE ('day-row-1' AS messageId, now() AS _loaded_at,
                       'bad_new' AS "type") FROM raw.web_events WHERE "timestamp" < '2025-06-01' LIMIT 1""")
    built = _invoke(project, copy, AS_OF + dt.timedelta(days=2), "build", "--select", "stg_web__events", scope=True)
    name = next(n for n in built if n.startswith("accepted_values_stg_web__events_event_type"))
    with open_warehouse(copy) as con:  # DEBUG
        print("DEBUG", con.execute("SELECT * FROM staging.stg_web__events__rebuilt").fetchall()[:5],
              con.execute("SELECT count(*) FROM staging.stg_web__events__rebuilt").fetchall())
    assert built[name] == ("fail", 1), built  # the day's bad value, not the old one (one row each)
    assert all(status in ("pass", "success") for n, (status, _) in built.items() if n != name), built
    # the same tests in another invocation (or a build with no scope) read every row
    assert _invoke(project, copy, AS_OF + dt.timedelta(days=2), "test", "--select", "stg_web__events",
                   scope=True)[name] == ("fail", 2)
    assert _invoke(project, copy, AS_OF + dt.timedelta(days=2), "test", "--select", "stg_web__events",
                   scope=False)[name] == ("fail", 2)


def test_tests_are_scoped_only_after_a_build_that_passed_them_all(tmp_path):
    from core.dbt_project import built_with_file as _built_with
    from core.dbt_project import may_scope_tests, project_digest, tests_passed_file

    assert not may_scope_tests(tmp_path, "dbt_core")  # no build recorded: every test reads everything
    _built_with(tmp_path, "dbt_core").write_text(project_digest())
    assert not may_scope_tests(tmp_path, "dbt_core")  # built, but no record that its tests passed
    tests_passed_file(tmp_path, "dbt_core").write_text(project_digest())
    assert may_scope_tests(tmp_path, "dbt_core") and not may_scope_tests(tmp_path, "dbt_after_scoring")
    _built_with(tmp_path, "dbt_core").write_text("a digest of other code\n")  # a full refresh: all
    assert not may_scope_tests(tmp_path, "dbt_core")
