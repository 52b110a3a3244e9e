"""A project run day after day publishes what one full run of the same landed files publishes.

The test-sized version of `python -m bench.bench_pipeline --days 30 --compare-full`: a full run,
a daily increment (each a `cdp run` that reuses what earlier runs built: incremental staging,
identity's saved Splink model and pairs), then a new project given the same files and one full
run at the last day. The two snapshots must hold the same person ids for the same records, the
same segment members, the same scores, offers and recommendation lists. The models are refitted
every run on both sides (`refit_every_days: 0`): between scheduled refits a saved model scores,
which is a documented difference of model age, not of data (README "One as_of per run").
"""

import datetime as dt
import shutil

import pytest

from cdp.runner import run_pipeline
from cdp.scaffold import init_project
from core.config import load_config
from core.snapshots import current_path
from core.warehouse import open_warehouse
from ingestion.generator import generate
from ingestion.generator.increment import write_day
from publish.compare import compare_snapshots

AS_OF = dt.date(2025, 6, 30)
DAYS = 1  # each run costs ~65 CPU-s at this size (mostly fixed): make test affords one day
# three whole runs: ~200 CPU-s, several minutes of wall on a loaded machine
pytestmark = pytest.mark.timeout(1800)
REFIT_EVERY_RUN = ("\nchurn: {refit_every_days: 0}\ncart_intent: {refit_every_days: 0}\n"
                   "recommendations: {refit_every_days: 0}\n")


def _project(root, name):
    cfg_path = init_project(root / name)
    text = cfg_path.read_text()
    for section in ("churn", "cart_intent", "recommendations"):
        text = text.replace(f"\n{section}: {{}}\n", "\n")
    cfg_path.write_text(text + REFIT_EVERY_RUN)
    return cfg_path, load_config(cfg_path)


def _run(cfg_path, day):
    summary = run_pipeline(cfg_path, as_of=day, accept_drift=True)
    assert summary.ok, (day, summary.failures, [c.__dict__ for c in summary.failed_checks])
    return summary


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    cfg_path, config = _project(root, "daily")
    generate(customers=200, seed=5, out=config.landing_dir, as_of=AS_OF, clean=True)
    shutil.rmtree(config.landing_dir / "ground_truth", ignore_errors=True)
    _run(cfg_path, AS_OF)
    # the busiest day of the last month as the template (200 people do little on any one day)
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        template = con.execute("""SELECT timestamp::DATE AS d FROM raw.web_events
                                  WHERE timestamp >= '2025-06-01' AND timestamp::DATE IN
                                        (SELECT occurred_at::DATE FROM raw.pos_transactions)
                                  GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1""").fetchall()[0][0]
    summaries = []
    for k in range(1, DAYS + 1):
        day = AS_OF + dt.timedelta(days=k)
        assert sum(write_day(config.landing_dir, template, day).values()) > 0
        summaries.append(_run(cfg_path, day))

    full_path, full = _project(root, "full")
    shutil.rmtree(full.landing_dir)
    shutil.copytree(config.landing_dir, full.landing_dir)
    _run(full_path, day)
    return compare_snapshots(current_path(config.published_dir), current_path(full.published_dir)), summaries


def test_daily_runs_were_incremental(snapshots):
    _, summaries = snapshots
    # each day's run did build (new files landed), and reused identity's saved model
    assert all(s.ok and not s.unchanged_since for s in summaries)


def test_the_same_persons_for_the_same_records(snapshots):
    c, _ = snapshots
    assert c.records > 500, c.summary()
    assert c.records_same_person == c.records and c.persons_moved == 0, c.summary()
    assert c.persons[0] == c.persons[1] == c.persons_same, c.summary()


def test_the_same_segment_members(snapshots):
    c, _ = snapshots
    assert c.segments and c.segment_members_differing == 0, {s: v for s, v in c.segments.items()
                                                             if v["left"] != v["both"] or v["right"] != v["both"]}


def test_the_same_scores_offers_and_lists(snapshots):
    c, _ = snapshots
    for table, s in c.scores.items():
        assert s["left"] == s["right"] == s["rows"] and s["equal"] == s["rows"], (table, s)
    assert set(c.scores) == {"churn_scores", "cart_intent"} and c.scores["churn_scores"]["rows"] > 50
    assert c.offers["persons"] == c.offers["left"] == c.offers["right"] == c.offers["same"] > 0, c.offers
    assert (c.recommendations["persons"] == c.recommendations["left"] == c.recommendations["right"]
            == c.recommendations["same"] > 0), c.recommendations
