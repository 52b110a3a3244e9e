"""One as_of per run, skipping a run where nothing changed, one dbt step per selection, and the
daily increment the pipeline bench lands (bench/bench_pipeline.py)."""

import datetime as dt

import pytest
from dagster import AssetExecutionContext, asset, materialize

from cdp import unchanged
from cdp.runner import resolve_as_of
from core.config import load_config
from core.warehouse import open_warehouse
from dagster_project.defs.resources import AS_OF_TAG, TesseraResource, run_as_of
from ingestion.generator import generate
from ingestion.generator.increment import write_day
from ingestion.loader import ingest

AS_OF = dt.date(2025, 6, 30)


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """A small generated project, landed once; then one more day written beside it."""
    from cdp.scaffold import init_project

    root = tmp_path_factory.mktemp("incremental")
    config = load_config(init_project(root / "proj"))
    generate(customers=80, seed=3, out=config.landing_dir, as_of=AS_OF, clean=True)
    with open_warehouse(config.warehouse_path) as con:
        ingest(config, con)
    before = unchanged.fingerprint(config, resolve_as_of(config, AS_OF), True)
    # the busiest day of the last month as the template (80 people do little on any one day)
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        template = con.execute("""SELECT timestamp::DATE AS d FROM raw.web_events
                                  WHERE timestamp >= '2025-06-01' AND timestamp::DATE IN
                                        (SELECT occurred_at::DATE FROM raw.pos_transactions)
                                  GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1""").fetchall()[0][0]
    day = AS_OF + dt.timedelta(days=1)
    written = write_day(config.landing_dir, template, day)
    with open_warehouse(config.warehouse_path) as con:
        report = ingest(config, con)
    return config, day, written, report, before


def test_the_increment_is_one_more_day_with_new_ids_that_the_loader_takes(landed):
    config, day, written, _, _ = landed
    assert {"web/events_2025-07-01.jsonl", "pos/transactions_2025-07-01.csv", "pos/line_items_2025-07-01.csv"
            } <= set(written) and all(n > 0 for n in written.values())
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        files = dict(con.execute("SELECT file, status FROM raw.loads WHERE file LIKE '%2025-07-01%'").fetchall())
        assert len(files) == len(written) and set(files.values()) == {"loaded"}, files
        # every landed time of the new files is on the new day, every id is new
        web = con.execute("""SELECT min(timestamp)::DATE, max(timestamp)::DATE, count(*),
                                    count(*) FILTER (WHERE messageId LIKE '%-d20250701')
                             FROM raw.web_events WHERE _file LIKE '%2025-07-01%'""").fetchall()[0]
        assert web[:2] == (day, day) and web[2] == web[3] == written["web/events_2025-07-01.jsonl"]
        assert con.execute("SELECT count(*) - count(DISTINCT messageId) FROM raw.web_events").fetchall()[0][0] == 0
        assert con.execute("SELECT count(*) - count(DISTINCT transaction_id) FROM raw.pos_transactions"
                           ).fetchall()[0][0] == 0
        # each new receipt line belongs to a new receipt
        orphans = con.execute("""SELECT count(*) FROM raw.pos_line_items l WHERE l._file LIKE '%2025-07-01%'
                                 AND l.transaction_id NOT IN (SELECT transaction_id FROM raw.pos_transactions)""")
        assert orphans.fetchall()[0][0] == 0


def test_what_counts_as_a_change(landed, tmp_path):
    config, day, _, _, before = landed
    as_of = resolve_as_of(config, AS_OF)
    after = unchanged.fingerprint(config, as_of, True)
    assert [k for k in after if after[k] != before[k]] == ["loads"]  # the new day's files landed
    assert unchanged.fingerprint(config, as_of, True) == after  # nothing new: the same

    unchanged.remember(config, after, "run-1", "2025-06-30 23:59:59")
    previous, changed = unchanged.compare(config, after)
    assert previous["run_id"] == "run-1" and changed == []

    # the as_of: an explicit one exactly; "now" by its UTC day
    morning, evening = dt.datetime(2025, 7, 2, 8), dt.datetime(2025, 7, 2, 20)
    assert unchanged.fingerprint(config, morning, False) == unchanged.fingerprint(config, evening, False)
    assert unchanged.fingerprint(config, morning, True) != unchanged.fingerprint(config, evening, True)
    assert unchanged.compare(config, unchanged.fingerprint(config, morning, False))[1] == ["as_of"]

    # the configuration as validated (not its comments), the segments file, erasure requests
    cfg_path = config.root / "cdp.yaml"
    text = cfg_path.read_text()
    try:
        cfg_path.write_text(text + "\n# a comment\n")
        assert unchanged.fingerprint(load_config(cfg_path), as_of, True) == after
        cfg_path.write_text(text.replace("\nas_of:\n", "\nas_of: 2025-06-29\n"))
        assert unchanged.compare(load_config(cfg_path), unchanged.fingerprint(load_config(cfg_path), as_of, True)
                                 )[1] == ["config"]
    finally:
        cfg_path.write_text(text)
    segments = config.segments_file
    segments.write_text(segments.read_text() + "\n")
    assert unchanged.compare(config, unchanged.fingerprint(config, as_of, True))[1] == ["segments"]
    from privacy.requests import record_request

    record_request(config, "email", "someone@example.com")
    assert "erasure" in unchanged.compare(config, unchanged.fingerprint(config, as_of, True))[1]
    unchanged.forget(config)
    assert unchanged.compare(config, after)[0] is None


def test_the_run_as_of_is_the_tag_else_the_config_else_the_run_start(project):
    seen = {}

    @asset
    def reads_as_of(context: AssetExecutionContext, tessera: TesseraResource) -> None:
        seen[context.run.run_id] = run_as_of(context, tessera.load())

    resources = {"tessera": TesseraResource(config_path=str(project.root / "cdp.yaml"))}
    tagged = materialize([reads_as_of], resources=resources, tags={AS_OF_TAG: "2025-03-01 12:00:00"})
    untagged = materialize([reads_as_of], resources=resources)
    assert seen[tagged.run_id] == dt.datetime(2025, 3, 1, 12, tzinfo=dt.timezone.utc)
    # no tag, no as_of in cdp.yaml: the run's creation time, the same for every step of the run
    now = dt.datetime.now(dt.timezone.utc)
    assert abs((now - seen[untagged.run_id]).total_seconds()) < 120
    # cdp run fixes it once: a date is the end of that day; nothing given is now, to the second
    assert resolve_as_of(project, dt.date(2025, 3, 1)) == dt.datetime(2025, 3, 1, 23, 59, 59)
    assert resolve_as_of(project).microsecond == 0


def test_each_dbt_selection_is_one_step_after_the_stages_it_waits_for(project):
    from dagster._core.execution.api import create_execution_plan

    from dagster_project.definitions import build_definitions

    job = build_definitions(project.root / "cdp.yaml").resolve_implicit_global_asset_job_def()
    steps = [s.key for s in create_execution_plan(job, run_config={}).get_all_steps_in_topo_order()]
    assert sorted(s for s in steps if s.startswith("dbt_")) == ["dbt_after_scoring", "dbt_core"]
    order = {s: i for i, s in enumerate(steps)}
    # staging reads raw.* only after the erasure requests were applied to it
    assert order["privacy__erasure"] < order["identity_resolution"] < order["dbt_core"]
    assert order["declarative_segments"] < order["dbt_after_scoring"]
