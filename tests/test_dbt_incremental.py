"""Incremental event staging (dbt/macros/incremental_events.sql), built for real by dbt on a small
generated dataset: simulated days, each landed and built incrementally (rows landed ahead of the
as_of, an as_of moved back, a re-delivered file), give exactly the rows a `--full-refresh` build
gives on the same data, and a daily build leaves old rows alone.

The models, macros and project file are the project's own, copied into a project that holds only
the event staging models, so each dbt invocation parses a few files (a new as_of re-parses)."""

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


def _event_staging_project(root):
    project = root / "dbt"
    shutil.copytree(dbt_project_dir(), project, ignore=shutil.ignore_patterns("target", "logs", "tests"))
    for folder in project.glob("models/*"):
        if folder.name not in ("staging", "docs.md"):
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    for folder in project.glob("models/staging/*"):
        if folder.is_dir() and folder.name not in ("web", "email"):
            shutil.rmtree(folder)
    (project / "models/staging/email/stg_email__subscribers.sql").unlink()
    (project / "models/staging/email/stg_email__subscribers.yml").unlink()
    return project


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
    _build(project, warehouse, day[2])
    with open_warehouse(warehouse) as con:
        for model in MODELS:
            con.execute(f"CREATE TABLE main.{model}_incremental AS SELECT * FROM staging.{model}")
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
